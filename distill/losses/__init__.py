"""Training losses: the supervised segmentation loss (segkd's CE or the authors' OHEM)
and the distillation terms (KD, IDD, PID, CWD)."""

from distill.losses.authors import OhemSegmentationLoss
from distill.losses.cwd import ChannelWiseLoss, channel_wise_loss
from distill.losses.idd import IDD_DISTANCES, IDD_SCALES, IDDLoss, class_centres, idd_loss
from distill.losses.kd import PixelKDLoss, pixel_kd_loss
from distill.losses.labels import resize_labels
from distill.losses.ohem import ohem_cross_entropy
from distill.losses.pid import (
    PID_MODES,
    PIDLoss,
    PositionReadout,
    fit_position_readout,
    position_report,
    position_targets,
)
from distill.losses.recipe import build_supervised_loss
from distill.losses.segmentation import SegmentationLoss

__all__ = [
    "IDD_DISTANCES",
    "IDD_SCALES",
    "PID_MODES",
    "ChannelWiseLoss",
    "IDDLoss",
    "OhemSegmentationLoss",
    "PIDLoss",
    "PixelKDLoss",
    "PositionReadout",
    "SegmentationLoss",
    "build_supervised_loss",
    "channel_wise_loss",
    "class_centres",
    "fit_position_readout",
    "idd_loss",
    "ohem_cross_entropy",
    "pixel_kd_loss",
    "position_report",
    "position_targets",
    "resize_labels",
]
