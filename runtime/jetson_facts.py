"""What a Jetson benchmark must state: release, power mode, clocks, and power drawn.

Read from the files NVIDIA's Jetson Linux Developer Guide documents for Orin ("Platform
Power and Performance"; layouts and sources in tests/fixtures/jetson/README.md and
docs/DEPLOY_FACTS.md): /etc/nv_tegra_release, nvpmodel's /etc/nvpmodel.conf and
/var/lib/nvpmodel/status, cpufreq and the GPU's devfreq node, the EMC clock in the BPMP
debugfs (root only), and the INA3221 power monitors under hwmon. A figure is only
comparable with clocks locked (`sudo jetson_clocks`): min = max on CPU and GPU.
Every reader takes a root folder (tests pass a fixture tree) and returns None for what
it cannot read; off a Jetson `read_jetson_facts` is None. Torch-free, Python 3.10.
"""

from __future__ import annotations

import re
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from runtime.jetson_release import jetpack_of, l4t_release

GPU_DEVFREQ = ("17000000.gpu", "17000000.ga10b")  # JetPack 6 / JetPack 5 node names
EMC_DEBUGFS = "sys/kernel/debug/bpmp/debug/clk/emc"
INA3221 = "sys/bus/i2c/drivers/ina3221"
# The rail that feeds the whole module where the board has one (Orin Nano / NX).
MODULE_INPUT_RAIL = "VDD_IN"


def _read(path: Path) -> str | None:
    try:
        return path.read_text(errors="replace").strip().strip("\x00")
    except OSError:
        return None


def _int(path: Path) -> int | None:
    text = _read(path)
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None


def nvpmodel_mode(root: Path) -> tuple[int | None, str | None]:
    """(id, name) of the active power mode: the id from nvpmodel's status file (else the
    conf's default), the name from its `< POWER_MODEL ID=n NAME=... >` entry."""
    conf = _read(root / "etc/nvpmodel.conf") or ""
    names = {int(i): n for i, n in re.findall(r"<\s*POWER_MODEL\s+ID=(\d+)\s+NAME=(\S+)\s*>", conf)}
    status = _read(root / "var/lib/nvpmodel/status") or ""
    m = re.search(r"pmode:(\d+)", status) or re.search(r"PM_CONFIG\s+DEFAULT=(\d+)", conf)
    mode = int(m.group(1)) if m else None
    return mode, names.get(mode) if mode is not None else None


def _gpu_node(root: Path) -> Path | None:
    for name in GPU_DEVFREQ:
        node = root / "sys/class/devfreq" / name
        if node.is_dir():
            return node
    return None


@dataclass(frozen=True)
class Clocks:
    gpu_hz: int | None
    gpu_max_hz: int | None
    emc_hz: int | None
    emc_max_hz: int | None
    cpu_locked: bool | None
    gpu_locked: bool | None
    emc_locked: bool | None  # None: debugfs not readable (not root)

    @property
    def locked(self) -> bool | None:
        """True when jetson_clocks pinned CPU and GPU (and EMC, where it can be read)."""
        if self.cpu_locked is None or self.gpu_locked is None:
            return None
        return self.cpu_locked and self.gpu_locked and self.emc_locked is not False


def read_clocks(root: Path) -> Clocks:
    cpus = sorted((root / "sys/devices/system/cpu").glob("cpu[0-9]*/cpufreq"))
    cpu_locked = None
    if cpus:
        cpu_locked = all(
            _int(c / "scaling_min_freq") is not None
            and _int(c / "scaling_min_freq") == _int(c / "scaling_max_freq") == _int(c / "cpuinfo_max_freq")
            for c in cpus
        )  # fmt: skip
    gpu = _gpu_node(root)
    gpu_hz = _int(gpu / "cur_freq") if gpu else None
    gpu_min = _int(gpu / "min_freq") if gpu else None
    gpu_max = _int(gpu / "max_freq") if gpu else None
    gpu_top = None
    if gpu:
        avail = (_read(gpu / "available_frequencies") or "").split()
        gpu_top = max((int(f) for f in avail if f.isdigit()), default=gpu_max)
    gpu_locked = None if gpu_min is None or gpu_max is None else gpu_min == gpu_max == gpu_top
    emc = root / EMC_DEBUGFS
    lock_flag = _int(emc / "mrq_rate_locked")
    return Clocks(
        gpu_hz=gpu_hz,
        gpu_max_hz=gpu_top,
        emc_hz=_int(emc / "rate"),
        emc_max_hz=_int(emc / "max_rate"),
        cpu_locked=cpu_locked,
        gpu_locked=gpu_locked,
        emc_locked=None if lock_flag is None else lock_flag == 1,
    )


@dataclass(frozen=True)
class Rail:
    label: str
    voltage: Path  # inN_input, mV
    current: Path  # currN_input, mA

    def watts(self) -> float | None:
        mv, ma = _int(self.voltage), _int(self.current)
        return None if mv is None or ma is None else mv * ma / 1e6


def power_rails(root: Path) -> list[Rail]:
    """Every labelled INA3221 channel (channels labelled NC are not connected)."""
    rails = []
    for hwmon in sorted((root / INA3221).glob("*/hwmon/hwmon*")):
        for label_file in sorted(hwmon.glob("in[0-9]_label")):
            n = label_file.name[2]
            label = _read(label_file)
            if not label or label.upper() == "NC":
                continue
            rails.append(Rail(label, hwmon / f"in{n}_input", hwmon / f"curr{n}_input"))
    return rails


@dataclass(frozen=True)
class JetsonFacts:
    model: str | None
    l4t: str | None
    jetpack: str | None
    nvpmodel_id: int | None
    nvpmodel_name: str | None
    clocks_locked: bool | None
    cpu_locked: bool | None
    gpu_locked: bool | None
    emc_locked: bool | None
    gpu_mhz: float | None
    gpu_max_mhz: float | None
    emc_mhz: float | None
    emc_max_mhz: float | None
    power_rails: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _mhz(hz: int | None) -> float | None:
    return None if hz is None else round(hz / 1e6, 1)


def read_jetson_facts(root: Path | str = "/") -> JetsonFacts | None:
    """The Jetson's release, power mode, clocks and rails; None off a Jetson."""
    root = Path(root)
    l4t = l4t_release(root)
    if l4t is None:
        return None
    mode, name = nvpmodel_mode(root)
    clocks = read_clocks(root)
    return JetsonFacts(
        model=_read(root / "proc/device-tree/model"),
        l4t=l4t,
        jetpack=jetpack_of(l4t),
        nvpmodel_id=mode,
        nvpmodel_name=name,
        clocks_locked=clocks.locked,
        cpu_locked=clocks.cpu_locked,
        gpu_locked=clocks.gpu_locked,
        emc_locked=clocks.emc_locked,
        gpu_mhz=_mhz(clocks.gpu_hz),
        gpu_max_mhz=_mhz(clocks.gpu_max_hz),
        emc_mhz=_mhz(clocks.emc_hz),
        emc_max_mhz=_mhz(clocks.emc_max_hz),
        power_rails=[r.label for r in power_rails(root)],
    )


def clocks_warning(facts: JetsonFacts | None) -> str | None:
    """One line when a Jetson figure is taken with clocks that can still move."""
    if facts is None or facts.clocks_locked:
        return None
    what = "not locked" if facts.clocks_locked is False else "unknown (cannot read cpufreq/devfreq)"
    return (
        f"clocks {what}: DVFS can move this figure; run `sudo jetson_clocks` (and keep the "
        f"power mode, now {facts.nvpmodel_name or facts.nvpmodel_id}) before benchmarking"
    )


class PowerMeter:
    """Samples the INA3221 rails on a thread while a timed loop runs.

    mean watts per rail; the total is the module input rail (VDD_IN) where the board
    has one, else the sum of the monitored rails (AGX Orin has no single input rail on
    its INA3221s: the sum leaves out what they do not see).
    """

    def __init__(self, rails: list[Rail], interval_s: float = 0.02) -> None:
        if not rails:
            raise ValueError("no power rails to sample")
        self.rails, self.interval_s = rails, interval_s
        self._samples: list[list[float | None]] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._t0 = self._t1 = 0.0

    def _sample(self) -> None:
        self._samples.append([r.watts() for r in self.rails])

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self.interval_s)

    def start(self) -> None:
        self._t0 = time.perf_counter()
        self._thread = threading.Thread(target=self._run, name="segkd-power", daemon=True)
        self._thread.start()

    def stop(self, frames: int) -> dict[str, Any]:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._t1 = time.perf_counter()
        self._sample()  # at least one sample, even for a loop shorter than the interval
        seconds = self._t1 - self._t0
        means: dict[str, float | None] = {}
        for k, rail in enumerate(self.rails):
            values = [s[k] for s in self._samples if s[k] is not None]
            means[rail.label] = sum(values) / len(values) if values else None
        if MODULE_INPUT_RAIL in means:
            total, basis = means[MODULE_INPUT_RAIL], MODULE_INPUT_RAIL
        else:
            known = [v for v in means.values() if v is not None]
            total, basis = (sum(known) if known else None), "sum of monitored rails"
        mj = None if total is None or frames < 1 else 1e3 * total * seconds / frames
        return {
            "mean_w": total,
            "basis": basis,
            "mj_per_frame": mj,
            "rails_mean_w": means,
            "samples": len(self._samples),
            "seconds": seconds,
        }


def power_meter(root: Path | str = "/", interval_s: float = 0.02) -> PowerMeter | None:
    """A meter over this machine's INA3221 rails, or None where there are none."""
    rails = power_rails(Path(root))
    return PowerMeter(rails, interval_s) if rails else None


def describe_run(jetson: dict[str, Any] | None, power: dict[str, Any] | None) -> str | None:
    """The line `segkd bench` prints under its table on a Jetson; None elsewhere."""
    if jetson is None:
        return None
    locked = {True: "locked", False: "NOT locked", None: "unknown"}[jetson["clocks_locked"]]
    text = (
        f"Jetson {jetson['model'] or ''}: JetPack {jetson['jetpack'] or '?'} (L4T {jetson['l4t']}), "
        f"power mode {jetson['nvpmodel_id']} {jetson['nvpmodel_name'] or ''}, clocks {locked}, "
        f"GPU {jetson['gpu_mhz']} MHz, EMC {jetson['emc_mhz'] or '?'} MHz"
    )
    if power and power.get("mean_w") is not None:
        text += (
            f"; {power['mean_w']:.2f} W ({power['basis']}), "
            f"{power['mj_per_frame']:.1f} mJ/frame over {power['samples']} samples"
        )
    return text
