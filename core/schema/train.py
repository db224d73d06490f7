"""Options of a training run (`segkd train`, `segkd distill`, the pipeline's teacher and
student sections); distill.training.config.TrainConfig takes its defaults from here.
None means the dataset's default (distill/data/spec.py)."""

from __future__ import annotations

from pathlib import Path

from core.options import Option, OptionSet

# Names only; distill.losses.recipe builds them.
SUPERVISED_LOSSES = ("ce", "ohem")
CLASS_WEIGHT_SETS = ("cityscapes",)
AMP_DTYPES = ("float16", "bfloat16")

TRAIN = OptionSet([
    # The command and the pipeline name these themselves (--model/--student, --out, data).
    Option("data", str, "synthetic",
           "dataset SPEC: synthetic, cityscapes:PATH, voc:PATH, ade20k:PATH, folder:PATH",
           config=False),
    Option("model", str, "pspnet_r18", "architecture, see `segkd models`", cli=False),
    Option("out", str, "runs/train", "output folder for checkpoints and logs", cli=False,
           config=False),
    Option("iters", int | None, None, "training iterations (dataset default)"),
    Option("batch_size", int | None, None, "per-process batch size (dataset default)"),
    Option("crop_size", str | None, None, "training crop HxW (dataset default)"),
    Option("scale_range", list | None, None, "random rescale before cropping (dataset default)",
           cli=False),
    Option("export_size", str | None, None,
           "deploy input size HxW, also validated at (dataset default)"),
    Option("lr", float | None, None, "base learning rate (dataset default)"),
    Option("momentum", float, 0.9, "SGD momentum", cli=False, config=False),
    Option("weight_decay", float | None, None, "(dataset default)"),
    Option("poly_power", float, 0.9, "poly learning-rate decay power", cli=False, config=False),
    Option("warmup_iters", int, 0, "linear warm-up iterations", cli=False, config=False),
    Option("aux_weight", float, 0.4, "weight of the auxiliary head's CE", cli=False,
           config=False),
    Option("eval_interval", int | None, None,
           "validate + checkpoint every N iterations (default: iters/4)"),
    Option("val_images", int | None, None,
           "val images (spread over the split) every evaluation scores (default: all)"),
    Option("log_interval", int, 10, "log every N iterations", cli=False, config=False),
    Option("num_workers", int | None, None,
           "data loader workers per process (default: this process's share of the CPUs, less one)",
           config=False),
    Option("seed", int, 0, "random seed (the same on every process; data order per process)",
           config=False),
    Option("device", str, "auto", "auto, cpu, cuda or cuda:N", config=False),
    Option("amp", bool, True, "mixed precision on CUDA"),
    Option("amp_dtype", str, "float16",
           "float16 (with GradScaler) or bfloat16 (GPUs that have it; no scaler)", config=False),
    Option("max_skips", int, 20,
           "fp16 AMP: stop after this many consecutive non-finite steps skipped", config=False),
    # Long enough for rank 0's checkpoint writes and readout fit while the others wait,
    # short enough that a dead rank does not hold 8 GPUs for half an hour (torch's
    # defaults: 10 min NCCL, 30 min gloo).
    Option("dist_timeout", float, 900.0,
           "under torchrun: seconds a rank waits for the others, then stops", config=False),
    Option("channels_last", bool, True, "channels-last memory format on CUDA", cli=False,
           config=False),
    Option("sync_bn", bool, False, "SyncBatchNorm under torchrun"),
    Option("deep_stem", bool, False, "three-conv stem of the reference code bases"),
    Option("backbone_weights", Path | None, None,
           "local ImageNet weights: torchvision ResNet, or the authors' DDRNet/PIDNet file"),
    Option("resume", bool, False, "continue the run in --out from resume.pt", config=False),
    # The supervised loss: plain CE, or the DDRNet/PIDNet authors' OHEM recipe
    # (docs/notes/authors.md); the four after it apply to ohem only.
    Option("loss", str, "ce", "supervised loss: ce, or ohem (the DDRNet/PIDNet authors' recipe)"),
    Option("ohem_threshold", float, 0.9, "ohem: pixels below this true-class probability count"),
    Option("ohem_min_kept", int, 131072, "ohem: the hardest pixels always kept per process batch"),
    Option("class_weights", str | None, None,
           "ohem: per-class CE weights, e.g. cityscapes (the authors')"),
    Option("ohem_align", bool, False, "ohem: align_corners of the loss's upsampling (PIDNet: on)"),
    Option("role", str, "model", "teacher, student or model (recorded in the checkpoint)",
           cli=False, config=False),
])  # fmt: skip
