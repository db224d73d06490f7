"""`segkd pipeline`: teacher -> baseline -> distilled student -> export -> eval -> bench -> report.

Each step is skipped when its outputs exist and its inputs and settings did not change
(pipeline/steps.py), so an interrupted pipeline resumes where it stopped and a finished
one does no work.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core.atomic_io import write_json_atomic
from core.errors import SegkdError
from core.numbers import finite
from pipeline.config import section_hash_view, student_seeds
from pipeline.gain import seed_gain
from pipeline.ranks import RankedSteps, join, leave, on_main
from pipeline.steps import Step, StepRunner
from runtime.machine import cpu_info
from runtime.sizes import parse_size

if TYPE_CHECKING:  # torch: imported when a step runs
    from distill.qat.train import QatOptions


def _fresh(folder: Path) -> None:
    """A step that re-runs starts from an empty folder (no stale resume.pt or artifacts)."""
    if folder.exists():
        shutil.rmtree(folder)


def _section_size(cfg: dict[str, Any], section: str, key: str) -> tuple[int, int] | None:
    """A config section's optional HxW size (None when unset), errors naming `section.key`."""
    value = cfg[section].get(key)
    return parse_size(value, f"{section}.{key}", minimum=32) if value else None


def _train_config(cfg: dict[str, Any], section: str, out: Path, role: str, seed: int | None = None):  # type: ignore[no-untyped-def]
    """The TrainConfig of a pipeline stage (teacher / student) from its config section;
    `seed` overrides the run's seed (the students' seeds)."""
    from distill.training import TrainConfig

    s = cfg[section]
    return TrainConfig(
        data=cfg["data"],
        model=s["model"],
        out=str(out),
        iters=s["iters"],
        batch_size=s["batch_size"],
        crop_size=_section_size(cfg, section, "crop_size"),
        scale_range=tuple(s["scale_range"]) if s.get("scale_range") else None,
        export_size=_section_size(cfg, section, "export_size"),
        lr=s["lr"],
        weight_decay=s["weight_decay"],
        eval_interval=s["eval_interval"],
        val_images=s["val_images"],
        deep_stem=bool(s["deep_stem"]),
        backbone_weights=s["backbone_weights"],
        amp=bool(s["amp"]),
        sync_bn=bool(s["sync_bn"]),
        loss=s["loss"],
        ohem_threshold=s["ohem_threshold"],
        ohem_min_kept=s["ohem_min_kept"],
        class_weights=s["class_weights"],
        ohem_align=bool(s["ohem_align"]),
        seed=cfg["seed"] if seed is None else seed,
        device=cfg["device"],
        num_workers=cfg["num_workers"],
        dist_timeout=float(cfg["dist_timeout"]),
        role=role,
    )


def qat_options(cfg: dict[str, Any]) -> QatOptions:
    """The qat section as distill.qat's QatOptions (which checks every value)."""
    from distill.qat.train import QatOptions

    crop = _section_size(cfg, "qat", "crop_size")
    try:
        return QatOptions.from_options(cfg["qat"], crop_size=crop, seed=int(cfg["seed"]))
    except SegkdError as e:
        raise SegkdError(f"config section qat: {e}") from None


def check_stages(cfg: dict[str, Any], out: Path) -> None:
    """Each stage's own checks, all before the first step: a bad export or eval value must
    not surface only after the teacher and the student have trained for minutes."""
    from distill.distillation import DistillConfig

    student_seeds(cfg)
    for section in ("teacher", "student"):
        try:
            _train_config(cfg, section, out / section, section).validate()
        except SegkdError as e:
            raise SegkdError(f"config section {section}: {e}") from None
        # A missing ImageNet file would otherwise stop the run only when that stage starts
        # training, e.g. the student's after hours of teacher training.
        weights = cfg[section]["backbone_weights"]
        trains = section == "student" or not cfg["teacher"].get("checkpoint")
        if weights and trains and not Path(weights).is_file():
            raise SegkdError(f"config option {section}.backbone_weights: file not found: {weights}")
    DistillConfig.from_dict(dict(cfg["distill"])).require_a_term("config option distill.losses")
    if cfg["qat"]["steps"]:  # 0: no QAT step
        qat_options(cfg)
    for key, least in (("export.calib_images", 1), ("export.verify_images", 1),
                       ("export.opset", 1), ("eval.max_images", 1), ("bench.iters", 1),
                       ("bench.warmup", 0), ("report.examples", 0)):  # fmt: skip
        section, name = key.split(".")
        value = cfg[section][name]
        if value is not None and value < least:
            raise SegkdError(f"config option {key}: must be >= {least}, got {value!r}")
    max_drop = cfg["eval"]["max_drop"]
    if max_drop is not None:
        finite("config option eval.max_drop", max_drop)
    for key in ("min_fp16", "min_int8"):  # fractions of pixels
        finite(f"config option export.{key}", cfg["export"][key], low=0.0, high=1.0)


def machine_info() -> dict[str, Any]:
    cpu = cpu_info()
    info: dict[str, Any] = {"python": platform.python_version(), "cores": cpu["cores"]}
    info["cpu"] = cpu["model"]
    info["cpu_flags"] = " ".join(cpu["flags"]) or None
    try:
        import torch

        info["torch"] = torch.__version__
        info["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except ImportError:
        info["torch"], info["gpu"] = None, None
    try:
        import onnxruntime

        info["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        info["onnxruntime"] = None
    try:
        import tensorrt  # type: ignore[import-not-found]

        info["tensorrt"] = tensorrt.__version__
    except ImportError:
        info["tensorrt"] = None
    return info


def artifact_name(entry: dict[str, Any]) -> tuple[str, str]:
    """(display name, file-system-safe key) of an export.json artifact entry."""
    file = entry["file"]
    backend = "tensorrt" if file.endswith(".engine") else "onnxruntime"
    variant = entry.get("variant")
    label = entry["precision"] + (
        f" ({variant})" if variant and entry["precision"] == "int8" else ""
    )
    # model.onnx -> fp32, model.int8-cpu.onnx -> int8-cpu, model.fp16.engine -> fp16-trt
    stem = file.removesuffix(".onnx").removesuffix(".engine").removeprefix("model")
    key = (stem.lstrip(".") or "fp32") + ("-trt" if file.endswith(".engine") else "")
    return f"{backend} {label}", f"{backend}-{key}"


class Pipeline:
    def __init__(
        self, cfg: dict[str, Any], out: Path, log: Callable[[str], None], ctx: Any
    ) -> None:
        """`ctx`: this process's DistContext (pipeline/ranks.py); rank 0 writes `out`."""
        self.cfg, self.out, self.ctx = cfg, out, ctx
        self.log = log if ctx.is_main else _quiet
        if ctx.is_main:
            out.mkdir(parents=True, exist_ok=True)
        self.runner: StepRunner = RankedSteps(out, self.log, ctx)
        self.skipped: list[dict[str, str]] = []

    def alone(self) -> None:
        """Rank 0 after the training stages: the rest runs in this process only."""
        from distill.training.distributed import DistContext

        self.ctx = self.runner.ctx = DistContext()  # type: ignore[attr-defined]

    # -- training ---------------------------------------------------------------------------
    def teacher(self) -> tuple[str | Path, bool]:
        """(the teacher: a checkpoint path or a given SPEC, whether the pipeline trained it)."""
        given = self.cfg["teacher"]["checkpoint"]
        if given:
            from distill.distillation import DistillConfig

            pid = DistillConfig.from_dict(dict(self.cfg["distill"])).active("pid")
            return check_given_teacher(str(given), self.cfg["data"], pid), False
        folder = self.out / "teacher"
        ckpt = folder / "best.pt"

        def run() -> None:
            from distill.training import train
            from distill.training.distill_run import embed_teacher_readout

            on_main(self.ctx, lambda: _fresh(folder))
            tcfg = _train_config(self.cfg, "teacher", folder, "teacher")
            train(tcfg)
            if "pid" in self.cfg["distill"]["losses"]:  # fitted once, by rank 0
                iters = int(self.cfg["teacher"]["readout_iters"])
                on_main(self.ctx, lambda: embed_teacher_readout(tcfg, folder, iters))

        self.runner.run(
            Step(
                "teacher",
                run,
                outputs=[ckpt],
                settings=section_hash_view(self.cfg, "data", "seed", "teacher")
                | {"pid": "pid" in self.cfg["distill"]["losses"]},
            )
        )
        return ckpt, True

    def baseline(self, seed: int, first: bool) -> Path | None:
        if not self.cfg["baseline"]:
            return None
        folder = self.out / _seeded("baseline", seed, first)

        def run() -> None:
            from distill.training import train

            on_main(self.ctx, lambda: _fresh(folder))
            train(_train_config(self.cfg, "student", folder, "student", seed))

        self.runner.run(
            Step(
                _seeded("baseline", seed, first),
                run,
                outputs=[folder / "best.pt"],
                settings=section_hash_view(self.cfg, "data", "student") | {"seed": seed},
            )
        )
        return folder / "best.pt"

    def student(self, teacher: str | Path, seed: int, first: bool) -> Path:
        folder = self.out / _seeded("student", seed, first)

        def run() -> None:
            from distill.distillation import DistillConfig
            from distill.training.distill_run import run_distillation

            on_main(self.ctx, lambda: _fresh(folder))
            run_distillation(
                _train_config(self.cfg, "student", folder, "student", seed),
                teacher,
                DistillConfig.from_dict(dict(self.cfg["distill"])),
                readout_iters=int(self.cfg["teacher"]["readout_iters"]),
            )

        self.runner.run(
            Step(
                _seeded("distill", seed, first),
                run,
                outputs=[folder / "best.pt"],
                inputs=[teacher_file(teacher)],  # a changed teacher file re-runs distillation
                settings=section_hash_view(self.cfg, "data", "student", "distill") | {"seed": seed},
            )
        )
        return folder / "best.pt"

    # -- export --------------------------------------------------------------------------------
    def export(self, student: Path) -> dict[str, Any]:
        folder = self.out / "export"
        manifest = folder / "export.json"
        e = self.cfg["export"]

        def outputs() -> list[Path]:
            """export.json and every artifact it lists: a deleted artifact makes the step stale."""
            if not manifest.is_file():
                return [manifest]
            try:
                files = [a["file"] for a in json.loads(manifest.read_text())["artifacts"]]
            except (json.JSONDecodeError, KeyError, TypeError):
                return [manifest, folder / ".unreadable-export-json"]  # forces a re-export
            return [manifest, *(folder / f for f in files)]

        def run() -> None:
            from core.schema.export import EXPORT
            from export.api import Tolerances, export_checkpoint

            export_checkpoint(
                student,
                folder,
                calib_data=self.cfg["data"],
                # the section's export options, type-checked by load_config
                **{name: e[name] for name in EXPORT.config_section()},
                tolerances=Tolerances(
                    fp16_min_agreement=float(e["min_fp16"]),
                    int8_min_agreement=float(e["min_int8"]),
                ),
                progress=lambda msg: self.log(f"  export: {msg}"),
            )

        self.runner.run(
            Step(
                "export",
                run,
                outputs=outputs,
                inputs=[student],
                settings=section_hash_view(self.cfg, "data", "export"),
            )
        )
        data = json.loads(manifest.read_text())
        self.skipped.extend(data.get("skipped", []))
        return data

    def qat(self, student: Path, ptq: dict[str, Any], teacher: str | Path) -> dict[str, Any]:
        """`segkd qat` on the exported student, then its INT8 files; PTQ beside QAT. The
        teacher joins the loop when qat.teacher_weight > 0."""
        from distill.qat.report import comparison
        from distill.qat.stage import QAT_FILE, QAT_JSON, run_qat

        q, e = self.cfg["qat"], self.cfg["export"]
        folder, exported = self.out / "qat", self.out / "export-qat"
        size = tuple(ptq["options"]["input_size"])
        in_loop = teacher if float(q["teacher_weight"]) > 0 else None
        teacher_files = [Path(in_loop)] if in_loop and Path(in_loop).is_file() else []

        def run() -> None:
            from export.api import Tolerances, export_checkpoint

            opts = qat_options(self.cfg)
            run_qat(student, folder, input_size=size, data=self.cfg["data"],
                    calib_images=int(e["calib_images"]), train_images=int(q["train_images"]),
                    method=e["int8_method"], opts=opts,
                    teacher=in_loop,
                    progress=lambda msg: self.log(f"  qat: {msg}"))  # fmt: skip
            export_checkpoint(folder / QAT_FILE, exported, precisions="int8",
                              calib_data=self.cfg["data"], verify_images=int(e["verify_images"]),
                              int8_variants=e["int8_variants"], build_engines=False,
                              tolerances=Tolerances(int8_min_agreement=float(e["min_int8"])))  # fmt: skip

        self.runner.run(
            Step("qat", run, outputs=[folder / QAT_FILE, exported / "export.json"],
                 inputs=[student, *teacher_files],
                 settings=section_hash_view(self.cfg, "data", "export", "qat"))
        )  # fmt: skip
        distill = [r["seconds"] for r in self.runner.record if r["step"] == "distill" and r["ran"]]
        return comparison(ptq, json.loads((exported / "export.json").read_text()),
                          json.loads((folder / QAT_JSON).read_text()),
                          distill[0] if distill else None)  # fmt: skip

    # -- measurement -------------------------------------------------------------------------
    def evaluate(self, name: str, key: str, model: str | Path, backend: str) -> dict[str, Any]:
        """mIoU of `model` (a file, or a zoo SPEC such as mmseg:FILE, scored in the zoo
        model's own input convention and reduced to the dataset's classes)."""
        ev = self.cfg["eval"]
        path = self.out / "eval" / f"{key}.json"

        def run() -> None:
            from pipeline.artifacts import evaluate_on_dataset

            # One convention for every row, torch included: the artifacts output label
            # maps, so drops compare like with like (segkd eval shows the other one).
            result = evaluate_on_dataset(
                model, self.cfg["data"], ev["split"], ev["max_images"], backend,
                self.cfg["device"], convention="labels",
            )  # fmt: skip
            write_json_atomic({"name": name, "model": str(model), **result.to_dict()}, path)

        self.runner.run(
            Step(
                f"eval-{key}",
                run,
                outputs=[path],
                inputs=[teacher_file(model)],
                settings=section_hash_view(self.cfg, "data", "eval", "device") | {"b": backend},
            )
        )
        return json.loads(path.read_text())

    def bench(self, name: str, key: str, model: Path, backend: str) -> dict[str, Any]:
        b = self.cfg["bench"]
        path = self.out / "bench" / f"{key}.json"

        def run() -> None:
            from pipeline.artifacts import dataset_split, open_model
            from runtime.bench import benchmark

            samples, _, _, _ = dataset_split(self.cfg["data"], self.cfg["eval"]["split"], 4)
            frames = [img[:, :, ::-1].copy() for img, _, _ in samples()]  # RGB -> camera BGR
            with open_model(model, backend, self.cfg["device"], threads=b["threads"]) as seg:
                res = benchmark(seg, frames, iters=int(b["iters"]), warmup=int(b["warmup"]))
            write_json_atomic({"name": name, **res.to_dict()}, path)

        self.runner.run(
            Step(
                f"bench-{key}",
                run,
                outputs=[path],
                inputs=[model],
                settings=section_hash_view(self.cfg, "data", "bench", "device") | {"b": backend},
            )
        )
        return json.loads(path.read_text())

    # -- report --------------------------------------------------------------------------------
    def model_facts(
        self, ckpt_path: str | Path, ev: dict[str, Any], trained_here: bool
    ) -> dict[str, Any]:
        """Arch, size and scores of a segkd checkpoint or a zoo teacher SPEC (its arch as the
        zoo names it, its own input size; aux heads counted, as for segkd's teachers)."""
        from distill.models.complexity import count_macs, count_params
        from distill.zoo.entry import load_any_model

        model, ckpt = load_any_model(ckpt_path)
        size = tuple(ckpt["preprocess"]["input_size"])
        return {
            "arch": ckpt["arch"],
            "source": ckpt.get("source", "segkd"),  # as distillation records the teacher
            "params_m": count_params(model) / 1e6,
            "gmacs": count_macs(model, size) / 1e9,
            "input_size": list(size),
            "val_miou": ev["miou"],
            "iou": ev.get("iou") or ev.get("metrics", {}).get("iou"),
            "checkpoint": str(ckpt_path),
            "iters": ckpt.get("iteration"),
            "trained_here": trained_here,
            "losses": ckpt.get("distillation", {}).get("config", {}).get("losses"),
            "position": ckpt.get("metrics", {}).get("position"),
            "train_val": _train_val(ckpt.get("metrics", {})),
        }

    def examples(self, models: dict[str, tuple[str | Path, str]]) -> list[dict[str, Any]]:
        from pipeline.artifacts import dataset_split, open_model

        n = int(self.cfg["report"]["examples"])
        if n <= 0:
            return []
        samples, labels, _, _ = dataset_split(self.cfg["data"], self.cfg["eval"]["split"], n)
        items = [
            {"image": img, "ground_truth": mask, "predictions": {}} for img, mask, _ in samples()
        ]
        for name, (path, backend) in models.items():
            # dataset: a zoo teacher's logits reduced to the dataset's classes, so its labels
            # index the report's palette like every other model's.
            with open_model(path, backend, self.cfg["device"], dataset=labels) as seg:
                for item in items:
                    item["predictions"][name] = seg.predict(
                        item["image"], input_order="RGB", out_size=item["ground_truth"].shape[:2]
                    )
        return items


def check_given_teacher(spec: str, data: str, pid: bool = False) -> str:
    """teacher.checkpoint: a segkd .pt or a model-zoo SPEC (FILE, mmseg:FILE, cirkd:FILE,
    torchvision:NAME:FILE), loaded now as distillation will load it, so a missing or broken
    file, an unknown layout, classes that do not cover the dataset's or (with `pid`) a
    read-only folder for the readout cache fail in one line before the baseline trains."""
    from core.preprocess import PreprocessSpec
    from distill.data import build_dataset
    from distill.teacher import cached_readout, sidecar_path
    from distill.zoo.entry import load_teacher

    option = "teacher.checkpoint"
    path = teacher_file(spec)
    if not path.is_file():
        raise SegkdError(f"{option}: file not found: {path}")
    try:
        _, record, _ = load_teacher(
            spec, build_dataset(data, "val").labels.names, PreprocessSpec(), option
        )
    except SegkdError as e:
        text = str(e)
        raise SegkdError(text if text.startswith(option) else f"{option}: {text}") from None
    if pid and cached_readout(path, record) is None and not os.access(path.parent, os.W_OK):
        raise SegkdError(
            f"{option}: {path.parent} is not writable, and distillation caches the teacher's "
            f"position readout (pid) beside {path.name} as {sidecar_path(path).name}; copy the "
            "file to a writable folder, or leave pid out of distill.losses"
        )
    return spec


def teacher_file(model: str | Path) -> Path:
    """The file behind a model argument: a zoo SPEC such as torchvision:NAME:FILE names FILE
    (an existing path is taken as it is)."""
    from distill.zoo.load import parse_teacher_spec

    return parse_teacher_spec(model).path


def _seeded(name: str, seed: int, first: bool) -> str:
    """Folder / step name of a student run: the first seed keeps the plain name (it is the
    one exported), the others get theirs, e.g. student-seed1."""
    return name if first else f"{name}-seed{seed}"


def _train_val(metrics: dict[str, Any]) -> dict[str, Any]:
    """The trainer's own validation of this checkpoint: native size and deploy size."""
    return {
        "native": metrics.get("val_miou"),
        "deploy": metrics.get("val_miou_deploy"),
        "images": metrics.get("val_images"),
    }


def _position_info(pos: dict[str, float] | None) -> dict[str, dict[str, float]] | None:
    """{"teacher_mse": .., "student_corr": ..} -> {"teacher": {"mse", "corr"}, "student": {..}}."""
    if not pos:
        return None
    return {
        who: {m: pos[f"{who}_{m}"] for m in ("mse", "corr") if f"{who}_{m}" in pos}
        for who in ("teacher", "student")
        if any(k.startswith(who) for k in pos)
    }


def _quiet(_message: str) -> None:
    """The log of ranks other than 0: rank 0 says what the pipeline does, once."""


def _miou(ev: dict[str, Any]) -> float:
    return float(ev["miou"])


@dataclass
class PipelineRun:
    """What the pipeline's stages share: each stage reads what the earlier ones left here."""

    cfg: dict[str, Any]
    out: Path
    log: Callable[[str], None]
    started: str
    p: Pipeline
    teacher: str | Path = ""  # a checkpoint path or a given zoo SPEC
    teacher_trained: bool = False
    # (seed, baseline checkpoint or None, distilled checkpoint); the first is exported
    seeds: list[tuple[int, Path | None, Path]] = field(default_factory=list)
    manifest: dict[str, Any] = field(default_factory=dict)  # the export's export.json
    qat: dict[str, Any] | None = None
    ev_teacher: dict[str, Any] = field(default_factory=dict)
    # (seed, baseline eval or None, distilled eval), in the order of `seeds`
    per_seed: list[tuple[int, dict[str, Any] | None, dict[str, Any]]] = field(default_factory=list)
    # (name, key, file, backend, export.json entry or None for the torch student)
    runs: list[tuple[str, str, Path, str, dict[str, Any] | None]] = field(default_factory=list)
    artifacts: list[dict[str, Any]] = field(default_factory=list)  # the report's rows

    @property
    def student(self) -> Path:
        return self.seeds[0][2]

    @property
    def baseline(self) -> Path | None:
        return self.seeds[0][1]

    @property
    def ev_student(self) -> dict[str, Any]:
        return self.per_seed[0][2]


def train_models(r: PipelineRun) -> None:
    """Teacher, then per seed the student alone (baseline) and the distilled student."""
    r.teacher, r.teacher_trained = r.p.teacher()
    r.seeds = [
        (seed, r.p.baseline(seed, i == 0), r.p.student(r.teacher, seed, i == 0))
        for i, seed in enumerate(student_seeds(r.cfg))
    ]


def export_student(r: PipelineRun) -> None:
    """The first seed's distilled student: export, then QAT beside PTQ when asked."""
    r.manifest = r.p.export(r.student)
    r.qat = r.p.qat(r.student, r.manifest, r.teacher) if int(r.cfg["qat"]["steps"]) > 0 else None


def score_torch_models(r: PipelineRun) -> None:
    """Every model is scored on the same val images, so the numbers compare."""
    r.ev_teacher = r.p.evaluate("teacher (torch)", "teacher", r.teacher, "torch")
    for i, (seed, base_ckpt, dist_ckpt) in enumerate(r.seeds):
        tag = "" if i == 0 else f" seed {seed}"
        base_key, dist_key = _seeded("baseline", seed, i == 0), _seeded("torch-fp32", seed, i == 0)
        ev_b = (
            r.p.evaluate(f"baseline (torch){tag}", base_key, base_ckpt, "torch")
            if base_ckpt
            else None
        )
        ev_d = r.p.evaluate(f"torch fp32{tag}", dist_key, dist_ckpt, "torch")
        r.per_seed.append((seed, ev_b, ev_d))


def score_artifacts(r: PipelineRun) -> None:
    """The torch student and every exported artifact: mIoU, drop and speed, one row each."""
    r.runs = [("torch fp32", "torch-fp32", r.student, "torch", None)]
    for entry in r.manifest["artifacts"]:
        name, key = artifact_name(entry)
        backend = "tensorrt" if entry["file"].endswith(".engine") else "onnxruntime"
        r.runs.append((name, key, r.out / "export" / entry["file"], backend, entry))
    for name, key, path, backend, entry in r.runs:
        ev = r.ev_student if key == "torch-fp32" else r.p.evaluate(name, key, path, backend)
        bench = r.p.bench(name, key, path, backend)
        e2e = bench["end_to_end"]
        r.artifacts.append(
            {
                "name": name,
                "file": str(path.relative_to(r.out)),
                "backend": backend,
                "precision": (entry or {}).get("precision", "fp32"),
                "device": f"{bench['device']} ({bench['provider']})",
                "size_mb": path.stat().st_size / 1e6,
                "miou": _miou(ev),
                "drop_vs_torch": 100 * (_miou(r.ev_student) - _miou(ev)),
                "pixel_agreement": (
                    (entry or {}).get("agreement") or (entry or {}).get("parity") or {}
                ).get("pixel_agreement"),
                "latency_ms": {k: e2e[f"{k}_ms"] for k in ("p50", "p99", "mean")},
                "fps": e2e["fps"],
                "stages_ms": {
                    s: bench[s]["mean_ms"] for s in ("preprocess", "inference", "postprocess")
                },
                "iou": ev.get("iou") or ev.get("metrics", {}).get("iou"),
            }
        )


def write_pipeline_report(r: PipelineRun) -> dict[str, Any]:
    """report.json / report.md; SegkdError when an artifact lost more than eval.max_drop."""
    from pipeline.report import write_report

    max_drop = r.cfg["eval"]["max_drop"]
    failing = [
        a["name"] for a in r.artifacts if max_drop is not None and a["drop_vs_torch"] > max_drop
    ]
    report = _report(r, max_drop, failing)
    paths = write_report(report, r.out)
    r.log(f"report: {paths['markdown']}")
    if failing:
        raise SegkdError(
            f"--max-drop {max_drop}: {', '.join(failing)} lost more mIoU than allowed "
            f"(see {paths['markdown']})"
        )
    return report


def _report(r: PipelineRun, max_drop: float | None, failing: list[str]) -> dict[str, Any]:
    from core.labels import LabelSpec

    cfg, p = r.cfg, r.p
    labels = LabelSpec.from_dict(r.manifest["labels"])
    teacher = p.model_facts(r.teacher, r.ev_teacher, r.teacher_trained)
    student = p.model_facts(r.student, r.ev_student, True)
    ev_baseline = r.per_seed[0][1]
    baseline = p.model_facts(r.baseline, ev_baseline, True) if r.baseline and ev_baseline else None
    return {
        "title": f"segkd pipeline: {teacher['arch']}{'' if r.teacher_trained else ' (given)'} -> "
        f"{cfg['student']['model']} on {cfg['data']}",
        "created": r.started,
        "machine": machine_info(),
        "data": cfg["data"],
        "class_names": list(labels.names),
        "palette": [list(c) for c in labels.palette],
        "teacher": teacher,
        "student": student,
        "baseline": baseline,
        "distillation": _distillation(r, student),
        "artifacts": r.artifacts,
        "qat": r.qat,
        "max_drop": max_drop,
        "gate_passed": None if max_drop is None else not failing,
        "steps": p.runner.record,
        "skipped": p.skipped,
        "examples": p.examples(_example_models(r)),
        "config": cfg,
    }


def _distillation(r: PipelineRun, student: dict[str, Any]) -> dict[str, Any]:
    """The gain over the student alone across seeds, position information, the loss."""
    return {
        **seed_gain(
            [seed for seed, _, _ in r.per_seed],
            [_miou(ev_b) for _, ev_b, _ in r.per_seed if ev_b is not None] or None,
            [_miou(ev_d) for _, _, ev_d in r.per_seed],
        ),
        "position_information": _position_info(student.get("position")),
        # Which loss trained the baseline and the distilled student (report: one line).
        "supervised_loss": {
            k: r.cfg["student"][k]
            for k in ("loss", "ohem_threshold", "ohem_min_kept", "class_weights")
        },
    }


def _example_models(r: PipelineRun) -> dict[str, tuple[str | Path, str]]:
    """The models whose labels the report shows on example images: teacher, student alone,
    distilled, and the first INT8 artifact."""
    models: dict[str, tuple[str | Path, str]] = {"teacher": (r.teacher, "torch")}
    if r.baseline:
        models["student alone"] = (r.baseline, "torch")
    models["distilled"] = (r.student, "torch")
    int8 = [run for run in r.runs if run[4] and run[4].get("precision") == "int8"]
    if int8:
        models[int8[0][0]] = (int8[0][2], int8[0][3])
    return models


# The pipeline, in order. The training stages run on every rank (pipeline/ranks.py); the
# rest on rank 0 alone. Each stage's steps skip themselves when up to date (steps.py).
TRAINING: tuple[Callable[[PipelineRun], None], ...] = (train_models,)
AFTER_TRAINING: tuple[Callable[[PipelineRun], None], ...] = (
    export_student,
    score_torch_models,
    score_artifacts,
)


def run_pipeline(
    cfg: dict[str, Any], out: Path, log: Callable[[str], None] = print
) -> dict[str, Any] | None:
    """Run (or resume) the whole pipeline; returns the report dict (also written to out/).
    Under torchrun, ranks other than 0 return None after the training stages."""
    started = time.strftime("%Y-%m-%dT%H:%M:%S")
    check_stages(cfg, out)
    ctx = join(cfg)
    try:
        r = PipelineRun(cfg, out, log, started, Pipeline(cfg, out, log, ctx))
        for stage in TRAINING:
            stage(r)
    except BaseException:
        from distill.training.distributed import shutdown

        shutdown(ctx)
        raise
    if not leave(ctx):
        return None  # a rank other than 0: its part (training) is done
    r.p.alone()
    for stage in AFTER_TRAINING:
        stage(r)
    return write_pipeline_report(r)
