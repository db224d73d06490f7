"""The L4T (Jetson Linux) release and the JetPack it belongs to, from /etc/nv_tegra_release.

NVIDIA's Jetson Linux Developer Guide ("Quick Start", checking the release) reads the
release from /etc/nv_tegra_release, whose first line is like
`# R36 (release), REVISION: 4.3, GCID: 38968081, BOARD: generic, EABI: aarch64, DATE: ...`.
Engines are keyed on it too: a JetPack upgrade changes TensorRT, CUDA and the driver.
The JetPack table is in docs/DEPLOY_FACTS.md ("TensorRT versions segkd builds with").
"""

from __future__ import annotations

import re
from pathlib import Path

_LINE = re.compile(r"#\s*R(\d+)\s*\(release\),\s*REVISION:\s*([\d.]+)")

# (L4T major, minor) -> JetPack, per NVIDIA's JetPack archive (docs/DEPLOY_FACTS.md).
JETPACK = {
    (35, 3): "5.1.1",
    (35, 4): "5.1.2",
    (35, 5): "5.1.3",
    (35, 6): "5.1.4",
    (36, 2): "6.0 DP",
    (36, 3): "6.0",
    (36, 4): "6.1/6.2",
    (39, 2): "7.2",
}


def parse_nv_tegra_release(text: str) -> str | None:
    """'36.4.3' from the file's text, None when it is not an L4T release line."""
    m = _LINE.search(text)
    return f"{m.group(1)}.{m.group(2)}" if m else None


def l4t_release(root: Path | str = "/") -> str | None:
    """This machine's L4T release, or None off a Jetson (no /etc/nv_tegra_release)."""
    try:
        text = (Path(root) / "etc" / "nv_tegra_release").read_text(errors="replace")
    except OSError:
        return None
    return parse_nv_tegra_release(text)


def jetpack_of(l4t: str | None) -> str | None:
    if not l4t:
        return None
    parts = l4t.split(".")
    try:
        return JETPACK.get((int(parts[0]), int(parts[1])))
    except (IndexError, ValueError):
        return None
