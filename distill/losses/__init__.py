"""Training losses: supervised segmentation loss and the distillation terms (KD, IDD, PID, CWD)."""

from distill.losses.cwd import ChannelWiseLoss, channel_wise_loss
from distill.losses.idd import IDD_DISTANCES, IDD_SCALES, IDDLoss, class_centres, idd_loss
from distill.losses.kd import PixelKDLoss, pixel_kd_loss
from distill.losses.labels import resize_labels
from distill.losses.pid import (
    PID_MODES,
    PIDLoss,
    PositionReadout,
    fit_position_readout,
    position_report,
    position_targets,
)
from distill.losses.segmentation import SegmentationLoss

__all__ = [
    "IDD_DISTANCES",
    "IDD_SCALES",
    "PID_MODES",
    "ChannelWiseLoss",
    "IDDLoss",
    "PIDLoss",
    "PixelKDLoss",
    "PositionReadout",
    "SegmentationLoss",
    "channel_wise_loss",
    "class_centres",
    "fit_position_readout",
    "idd_loss",
    "pixel_kd_loss",
    "position_report",
    "position_targets",
    "resize_labels",
]
