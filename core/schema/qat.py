"""Options of `segkd qat` (and the pipeline's qat section, where steps 0 means off)."""

from __future__ import annotations

from core.options import Option, OptionSet
from core.schema.export import EXPORT

QAT = OptionSet([
    Option("input_size", str | None, None,
           "deploy HxW the INT8 file will have (default: the checkpoint's)", config=False),
    Option("data", str | None, None, "dataset SPEC (default: the checkpoint's)", config=False),
    Option("steps", int, 200, "fine-tuning steps"),
    Option("batch_size", int, 2, "images per step"),
    # A static graph's weights and scales do not depend on its size (the same exporter
    # names every node and initializer alike at any size), so QAT can train on crops
    # of the deploy-size images: 4x fewer pixels per step at 512x1024 with 256x512 crops.
    Option("crop_size", str | None, None,
           "train on random HxW crops of the deploy-size images (default: whole images)"),
    Option("train_images", int, 64, "train-split images QAT draws from"),
    Option("calib_images", int, EXPORT.default("calib_images"),
           "images of the initial calibration", config=False),
    Option("int8_method", str, EXPORT.default("int8_method"),
           "initial calibration: minmax, entropy, percentile", config=False),
    # Conv weights and biases: SGD with momentum, preconditioned as the unfolded network
    # (distill.qat.train.precondition_folded). Adam's per-weight normalised steps drifted
    # small channels and lowered agreement; so did plain SGD on folded kernels
    # (docs/notes/qat.md).
    Option("lr", float, 1e-4, "SGD learning rate of the Conv weights"),
    # Activation log-scales (Adam, LSQ gradient): ~0.1 % a step.
    Option("scale_lr", float, 1e-3, "Adam learning rate of the activation scales"),
    # Cosine decay to 0 over the steps: the sweep's best runs used it with 3x the rates
    # (docs/notes/qat.md, "Settings"); the default stays constant (see the note's figures).
    Option("schedule", str, "constant",
           "learning-rate schedule of weights and scales: constant or cosine (decays to 0)"),
    Option("learn_scales", bool, True,
           "learn the activation scales (LSQ) or keep the calibrated ones"),
    # The distillation teacher in the loop: its logits as a second KD target beside the fp32
    # student's. The deploy metric is agreement with the fp32 student, which the teacher
    # pulls away from; it is off unless given a weight (docs/notes/qat.md measures both).
    Option("teacher", str | None, None,
           "teacher checkpoint or zoo SPEC: a second KD target",
           config=False),
    Option("teacher_weight", float, 0.0,
           "weight of the teacher's KD term (0: the fp32 student's only)"),
    Option("temperature", float, 1.0, "KD temperature against the fp32 student", cli=False,
           config=False),
    Option("seed", int, 0, "seed of the image draw and the batches", config=False),
])  # fmt: skip
