"""Pipeline report: report.md / report.json / figures from a realistic, tiny report dict."""

from __future__ import annotations

import copy
import json
import re
import sys
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from pipeline.report import fmt_ms, fmt_pct, md_table, to_jsonable, write_report

CLASSES = ["road", "car", "person", "sky"]
PALETTE = [[128, 64, 128], [0, 0, 142], [220, 20, 60], [70, 130, 180]]
ARTIFACTS = [
    # name, backend, precision, size, miou, drop, agreement, p50, p99, fps
    ("torch fp32", "torch", "fp32", 44.7, 0.61234, 0.0, None, 41.3, 55.2, 23.1),
    ("onnxruntime fp16", "onnxruntime", "fp16", 22.4, 0.61187, 0.047, 0.9991, 30.2, 38.9, 31.5),
    ("onnxruntime int8", "onnxruntime", "int8", 11.3, 0.60021, 1.213, 0.9874, 12.6, 19.4, 74.8),
]


def _iou(rng: np.random.Generator, centre: float) -> dict[str, float | None]:
    out: dict[str, float | None] = {
        c: float(np.clip(centre + rng.normal(0, 0.1), 0, 1)) for c in CLASSES
    }
    out["person"] = None  # a class absent from the evaluation
    return out


def _model(rng: np.random.Generator, arch: str, params: float, miou: float) -> dict[str, Any]:
    return {
        "arch": arch, "params_m": params, "gmacs": params * 2.1, "input_size": [48, 96],
        "val_miou": miou, "checkpoint": f"{arch}.pt", "iters": 300, "trained_here": True,
        "iou": _iou(rng, miou),
    }  # fmt: skip


def make_report(seed: int = 0) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    artifacts = []
    for name, backend, prec, size, miou, drop, agree, p50, p99, fps in ARTIFACTS:
        artifacts.append(
            {
                "name": name, "file": f"export/model.{prec}.onnx", "backend": backend,
                "precision": prec, "device": "cpu", "size_mb": size, "miou": np.float32(miou),
                "drop_vs_torch": drop, "pixel_agreement": agree,
                "latency_ms": {"p50": p50, "p99": p99, "mean": p50 * 1.05},
                "fps": fps,
                "stages_ms": {"preprocess": 1.2, "inference": p50 * 0.9, "postprocess": 0.8},
                "iou": _iou(rng, miou),
            }
        )  # fmt: skip
    examples = []
    for _ in range(2):
        gt = rng.integers(0, len(CLASSES), (48, 96), dtype=np.uint8)
        gt[:5] = 255
        examples.append(
            {
                "image": rng.integers(0, 256, (48, 96, 3), dtype=np.uint8),
                "ground_truth": gt,
                "predictions": {
                    a["name"]: rng.integers(0, len(CLASSES), (48, 96), dtype=np.uint8)
                    for a in artifacts
                },
            }
        )
    student = _model(rng, "pspnet_r18", 12.9, 0.6123)
    student["losses"] = ["kd", "idd", "pid"]
    return {
        "title": "segkd pipeline: synthetic",
        "created": "2025-01-01T12:00:00",
        "machine": {
            "cpu": "x86_64",
            "cores": 2,
            "gpu": None,
            "python": "3.10.14",
            "torch": "2.13.0",
            "onnxruntime": "1.31.0",
            "tensorrt": None,
        },
        "data": "synthetic",
        "class_names": CLASSES,
        "palette": PALETTE,
        "teacher": _model(rng, "pspnet_r50", 46.6, 0.7011),
        "student": student,
        "baseline": _model(rng, "pspnet_r18", 12.9, 0.5802),
        "distillation": {
            "gain_vs_baseline": 3.21,
            "position_information": {
                "teacher": {"mse": 0.0123, "corr": 0.91},
                "student": {"mse": 0.0311, "corr": 0.78},
            },
        },
        "artifacts": artifacts,
        "max_drop": 1.0,
        "gate_passed": False,
        "steps": [
            {"step": "teacher", "ran": True, "seconds": 123.4},
            {"step": "distill", "ran": True, "seconds": 98.7},
            {"step": "export", "ran": False, "seconds": 0.0},
        ],
        "skipped": [{"what": "tensorrt", "why": "no NVIDIA GPU"}],
        "examples": examples,
    }


def _md_links(md: str) -> list[str]:
    return re.findall(r"\]\(([^)\s]+)\)", md)


def _table_rows(md: str, header_start: str) -> list[list[str]]:
    lines = md.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header_start))
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.strip("|").split(" | ")])
    return rows


def _no_arrays(x: Any) -> bool:
    """Only plain scalars, and no list long enough to be image data."""
    if isinstance(x, dict):
        return all(_no_arrays(v) for v in x.values())
    if isinstance(x, list):
        return len(x) < 64 and all(_no_arrays(v) for v in x)
    return isinstance(x, (str, int, float, bool)) or x is None


def test_full_report(tmp_path: Path) -> None:
    report = make_report()
    files = write_report(report, tmp_path / "run")
    out = tmp_path / "run"
    assert {"markdown", "json", "class_iou", "latency", "miou_vs_latency", "examples"} <= set(files)
    for path in files.values():
        assert path.is_file() and path.stat().st_size > 0
    for key in ("class_iou", "latency", "miou_vs_latency", "examples"):
        img = cv2.imread(str(files[key]))
        assert img is not None, key
        h, w = img.shape[:2]
        assert 200 <= w <= 2400 and 150 <= h <= 2400, (key, w, h)
        assert files[key].stat().st_size < 400_000, key
        assert img.std() > 5, key  # something was drawn
    # no temp files left behind
    assert not [p for p in out.rglob("*") if p.name.startswith(".") or p.suffix == ".tmp"]

    data = json.loads((out / "report.json").read_text())
    assert _no_arrays(data)
    assert "image" not in json.dumps(data["examples"])
    assert data["examples"][0]["shape"] == [48, 96]
    assert data["artifacts"][0]["miou"] == pytest.approx(0.61234, abs=1e-6)
    for key, rel in data["figures"].items():
        assert (out / rel).resolve() == files[key].resolve()

    md = (out / "report.md").read_text()
    rows = {r[0]: r for r in _table_rows(md, "| artifact |")}
    assert len(rows) == len(ARTIFACTS)
    cols = [
        c.strip() for c in md.split("| artifact |", 1)[1].splitlines()[0].strip("|").split(" | ")
    ]
    miou_col = 1 + cols.index("mIoU")
    for name, *_rest in ARTIFACTS:
        assert name in rows
        miou = next(a["miou"] for a in report["artifacts"] if a["name"] == name)
        assert rows[name][miou_col] == f"{float(miou) * 100:.2f}%"
    assert "61.23%" in rows["torch fp32"]
    links = _md_links(md)
    assert len(links) == 4
    for link in links:
        assert (out / link).is_file(), link
    # key results and sections a reader looks for
    assert "**61.23%**" in md and "58.02%" in md and "70.11%" in md and "+3.21" in md
    assert "74.8 FPS" in md
    assert "FAILED" in md and "onnxruntime int8" in md.split("FAILED", 1)[1].splitlines()[0]
    assert "no NVIDIA GPU" in md and "up to date (skipped)" in md and "Position information" in md
    assert "ONNX Runtime" in md and "1.31.0" in md


def test_degraded_report(tmp_path: Path) -> None:
    report = make_report()
    report.update(baseline=None, artifacts=[], examples=[], distillation=None, max_drop=None)
    report.update(gate_passed=None, machine=None, steps=[], skipped=[])
    files = write_report(report, tmp_path)
    md = files["markdown"].read_text()
    assert "No artifact was exported" in md and "not checked" in md
    assert set(files) == {"markdown", "json", "class_iou"}  # models still have per-class IoU
    for link in _md_links(md):
        assert (tmp_path / link).is_file()
    json.loads(files["json"].read_text())

    # nothing at all: still a report, and the stale figures of the earlier run are gone
    files = write_report({"title": "empty"}, tmp_path)
    assert set(files) == {"markdown", "json"}
    assert not list((tmp_path / "figures").glob("*.png"))
    assert "No model" in files["markdown"].read_text()


def test_missing_values_and_odd_numbers(tmp_path: Path) -> None:
    report = make_report()
    a = report["artifacts"][1]
    a.update(miou=None, pixel_agreement=float("nan"), fps=float("inf"), stages_ms=None)
    report["artifacts"][2]["latency_ms"] = None
    report["teacher"]["val_miou"] = None
    report["examples"][0]["predictions"].pop("torch fp32")
    files = write_report(copy.deepcopy(report), tmp_path)
    data = json.loads(files["json"].read_text())  # strict JSON: NaN/inf became null
    assert data["artifacts"][1]["fps"] is None and data["artifacts"][1]["pixel_agreement"] is None
    rows = {r[0]: r for r in _table_rows(files["markdown"].read_text(), "| artifact |")}
    assert rows["onnxruntime fp16"][5] == "–"
    for key in ("latency", "miou_vs_latency", "examples"):
        assert cv2.imread(str(files[key])) is not None


def test_without_matplotlib(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    files = write_report(make_report(), tmp_path)
    assert set(files) == {"markdown", "json"}
    md = files["markdown"].read_text()
    assert "matplotlib is not installed" in md and not _md_links(md)


def test_out_is_a_file(tmp_path: Path) -> None:
    from core.errors import SegkdError

    f = tmp_path / "taken"
    f.write_text("x")
    with pytest.raises(SegkdError, match="taken"):
        write_report(make_report(), f)


def test_formatting_helpers() -> None:
    assert fmt_pct(0.65123) == "65.12%" and fmt_pct(None) == "–" and fmt_pct(float("nan")) == "–"
    assert fmt_ms(6.931) == "6.93" and fmt_ms(23.45) == "23.4"
    table = md_table(["a", "b"], [["x|y", 1.5]], "lr")
    assert table.splitlines() == ["| a | b |", "| --- | ---: |", "| x\\|y | 1.5 |"]
    data = to_jsonable({"a": np.float64(0.5), "b": np.zeros(3), "c": (np.int64(2), Path("p"))})
    assert data == {"a": 0.5, "c": [2, "p"]}


def test_rerender_from_report_json(tmp_path: Path) -> None:
    # report.json keeps only the examples' shapes: re-rendering from it must not fail on them.
    write_report(make_report(), tmp_path / "run")
    data = json.loads((tmp_path / "run" / "report.json").read_text())
    files = write_report(data, tmp_path / "again")
    md = files["markdown"].read_text()
    assert "KeyError" not in md and "examples" not in files
    assert "**61.23%**" in md


def test_models_show_the_training_validation_at_native_and_deploy_size(tmp_path: Path) -> None:
    report = make_report()
    report["student"]["train_val"] = {"native": 0.6543, "deploy": 0.6012, "images": 4}
    write_report(report, tmp_path / "run")
    md = (tmp_path / "run" / "report.md").read_text()
    header = next(line for line in md.splitlines() if line.startswith("| model |"))
    cols = [c.strip() for c in header.strip("|").split(" | ")]
    col = cols.index("training val: native / deploy size")
    rows = {r[0]: r for r in _table_rows(md, "| model |")}
    assert rows["distilled student"][col] == "65.43% / 60.12%"
    assert rows["teacher"][col] == "–"  # a checkpoint without the figures (e.g. given)


@pytest.mark.parametrize(
    ("loss", "said"),
    [
        ({"loss": "ce", "ohem_threshold": 0.9, "ohem_min_kept": 131072, "class_weights": None},
         "plain cross-entropy"),
        ({"loss": "ohem", "ohem_threshold": 0.9, "ohem_min_kept": 131072,
          "class_weights": "cityscapes"},
         "OHEM cross-entropy (threshold 0.9, at least 131072 pixels kept per process batch, "
         "class weights cityscapes"),
    ],
)  # fmt: skip
def test_report_says_which_loss_trained_the_baseline(
    tmp_path: Path, loss: dict[str, Any], said: str
) -> None:
    report = make_report()
    report["distillation"]["supervised_loss"] = loss
    text = write_report(report, tmp_path / "run")["markdown"].read_text()
    line = next(x for x in text.splitlines() if x.startswith("Supervised loss of the student"))
    assert said in line
