"""The Jetson benchmark facts, read from fixture trees laid out as NVIDIA documents them
for Orin (tests/fixtures/jetson/README.md names the sources), and `segkd bench` carrying
them: null off a Jetson, release/mode/clocks/power on one."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest

from runtime.bench import benchmark
from runtime.jetson_facts import (
    PowerMeter,
    clocks_warning,
    nvpmodel_mode,
    power_meter,
    power_rails,
    read_jetson_facts,
)
from runtime.jetson_release import jetpack_of, parse_nv_tegra_release
from runtime.loader import open_segmenter

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "jetson"
NANO, AGX = FIXTURES / "orin_nano", FIXTURES / "agx_orin"


def test_release_line() -> None:
    text = (NANO / "etc/nv_tegra_release").read_text()
    assert parse_nv_tegra_release(text) == "36.4.3" and jetpack_of("36.4.3") == "6.1/6.2"
    assert parse_nv_tegra_release("Ubuntu 22.04") is None and jetpack_of("34.1") is None


def test_orin_nano_in_15w_with_clocks_free() -> None:
    f = read_jetson_facts(NANO)
    assert f is not None
    assert f.model and f.model.startswith("NVIDIA Jetson Orin Nano")
    assert (f.l4t, f.jetpack, f.nvpmodel_id, f.nvpmodel_name) == ("36.4.3", "6.1/6.2", 0, "15W")
    assert f.clocks_locked is False and f.cpu_locked is False and f.gpu_locked is False
    assert (f.gpu_mhz, f.gpu_max_mhz, f.emc_mhz, f.emc_max_mhz) == (306.0, 1020.0, 2133.0, 3199.0)
    assert f.power_rails == ["VDD_IN", "VDD_CPU_GPU_CV", "VDD_SOC"]
    warning = clocks_warning(f)
    assert warning and "sudo jetson_clocks" in warning and "15W" in warning


def test_agx_orin_maxn_after_jetson_clocks() -> None:
    f = read_jetson_facts(AGX)
    assert f is not None and (f.nvpmodel_id, f.nvpmodel_name) == (0, "MAXN")
    assert f.clocks_locked is True and f.emc_locked is True and clocks_warning(f) is None
    assert f.gpu_mhz == f.gpu_max_mhz == 1300.5
    # two INA3221s; the channel labelled NC is not connected
    assert f.power_rails == ["VDD_GPU_SOC", "VDD_CPU_CV", "VIN_SYS_5V0", "VDDQ_VDD2_1V8AO"]


def test_emc_unreadable_without_root_is_unknown_not_unlocked(tmp_path: Path) -> None:
    root = tmp_path / "agx"
    shutil.copytree(AGX, root)
    shutil.rmtree(root / "sys/kernel/debug")  # debugfs is root-only
    f = read_jetson_facts(root)
    assert f is not None and f.emc_locked is None and f.emc_mhz is None
    assert f.clocks_locked is True  # CPU and GPU pinned: what can be read says locked


def test_mode_from_the_conf_default_when_no_status_file(tmp_path: Path) -> None:
    root = tmp_path / "nano"
    shutil.copytree(NANO, root)
    (root / "var/lib/nvpmodel/status").unlink()
    assert nvpmodel_mode(root) == (0, "15W")  # PM_CONFIG DEFAULT=0


def test_off_a_jetson_everything_is_none(tmp_path: Path) -> None:
    assert read_jetson_facts(tmp_path) is None and power_meter(tmp_path) is None
    assert clocks_warning(None) is None


def test_power_meter_samples_the_rails() -> None:
    rails = power_rails(NANO)
    meter = PowerMeter(rails, interval_s=0.001)
    meter.start()
    out = meter.stop(frames=10)
    vdd_in = 5032 * 1392 / 1e6  # mV x mA -> W, from the fixture files
    assert out["basis"] == "VDD_IN" and out["mean_w"] == pytest.approx(vdd_in)
    assert out["mj_per_frame"] == pytest.approx(1e3 * vdd_in * out["seconds"] / 10)
    assert out["samples"] >= 1 and set(out["rails_mean_w"]) == {r.label for r in rails}
    agx = power_meter(AGX, interval_s=0.001)
    assert agx is not None
    agx.start()
    total = agx.stop(frames=1)
    expected = (4992 * 2600 + 4992 * 800 + 4976 * 1100 + 4984 * 400) / 1e6
    assert total["basis"] == "sum of monitored rails"
    assert total["mean_w"] == pytest.approx(expected)


def test_bench_records_jetson_facts_and_power(model_dir: Path, caplog) -> None:
    with open_segmenter(model_dir / "model.onnx") as seg:
        here = benchmark(seg, frame_size=(64, 64), iters=2, warmup=1)
        with caplog.at_level(logging.WARNING):
            nano = benchmark(seg, frame_size=(64, 64), iters=3, warmup=1, device_root=NANO)
    assert here.jetson is None or Path("/etc/nv_tegra_release").exists()
    assert here.power is None or Path("/etc/nv_tegra_release").exists()
    d = json.loads(json.dumps(nano.to_dict()))
    assert d["jetson"]["nvpmodel_name"] == "15W" and d["jetson"]["clocks_locked"] is False
    assert d["power"]["mean_w"] == pytest.approx(5032 * 1392 / 1e6)
    assert d["power"]["mj_per_frame"] > 0
    assert any("jetson_clocks" in r.message for r in caplog.records)


def test_the_bench_line_names_mode_clocks_and_power() -> None:
    from runtime.jetson_facts import describe_run

    f = read_jetson_facts(AGX)
    assert f is not None
    meter = power_meter(AGX, interval_s=0.001)
    assert meter is not None
    meter.start()
    line = describe_run(f.to_dict(), meter.stop(frames=4))
    assert line and "L4T 36.4.0" in line and "power mode 0 MAXN" in line
    assert "clocks locked" in line and "mJ/frame" in line
    assert describe_run(None, None) is None
