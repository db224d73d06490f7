"""The last export step: the complete new folder replaces the old one in one rename.

The shipped artifacts, their sidecars, reference.npz, the user's own files (hard-linked)
and export.json are gathered in `staging/publish`, then core.atomic_io.publish_folder
swaps it in: until that step the earlier export stays exactly as it was
(docs/notes/badinputs.md).
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

from core.atomic_io import publish_folder
from core.errors import SegkdError
from export.manifest import write_json_atomic
from export.plan import ExportPlan
from runtime.metadata import EXPORT_JSON
from runtime.reference_set import REFERENCE_FILE

# Files an export writes into its folder; anything else there is the user's and is kept.
_OWN_FILE = re.compile(
    r"(export\.json|reference\.npz|model(\.[\w-]+)*\.(onnx|engine)(\.json)?|\.export-staging-.*)"
)


def publish(plan: ExportPlan) -> None:
    assert plan.manifest is not None
    manifest, staging = plan.manifest, plan.staging
    for a in plan.staged.values():
        if a.ship:
            manifest.artifacts.append(a.entry)
    manifest.artifacts.extend(plan.engines)
    # The new folder, complete, then one step: the old export stays until that step.
    fresh = staging / "publish"
    fresh.mkdir()
    for entry in manifest.artifacts:
        os.replace(staging / entry["file"], fresh / entry["file"])
        sidecar = staging / (entry["file"] + ".json")
        if sidecar.exists():
            os.replace(sidecar, fresh / sidecar.name)
    os.replace(staging / REFERENCE_FILE, fresh / REFERENCE_FILE)
    # Listed now, not at the start: an --engine-cache inside --out was filled meanwhile.
    for name in user_entries(plan.out, refuse=False):
        _link_copy(plan.target / name, fresh / name)
    plan.written = manifest.to_dict()
    write_json_atomic(plan.written, fresh / EXPORT_JSON)
    publish_folder(fresh, plan.target)


def user_entries(out: Path, refuse: bool = True) -> list[str]:
    """Names in an existing --out that the export did not write (kept in the new folder).

    refuse: a non-empty folder that is not an export is refused (checked before the work
    starts): replacing it would drop its files.
    """
    if not out.exists():
        return []
    if not out.is_dir():
        raise SegkdError(f"--out {out}: exists and is not a folder")
    names = sorted(p.name for p in out.iterdir())
    other = [n for n in names if not _OWN_FILE.fullmatch(n)]
    if refuse and other and not (out / EXPORT_JSON).is_file():
        raise SegkdError(
            f"--out {out}: the folder is not empty and is not an export folder (it holds "
            f"{other[0]!r}{f' and {len(other) - 1} more' if len(other) > 1 else ''}); "
            "choose a new or empty folder, or a previous export to replace"
        )
    return other


def _link_copy(src: Path, dst: Path) -> None:
    """Hard-link (else copy) a user's file or folder into the new export folder."""
    try:
        if src.is_dir() and not src.is_symlink():
            shutil.copytree(src, dst, symlinks=True, copy_function=os.link)
        elif src.is_symlink():
            os.symlink(os.readlink(src), dst)
        else:
            os.link(src, dst)
    except OSError:  # no hard links here (another file system, FAT, some NAS): copy
        if dst.is_dir():
            shutil.rmtree(dst, ignore_errors=True)
        else:
            dst.unlink(missing_ok=True)
        if src.is_dir():
            shutil.copytree(src, dst, symlinks=True)
        else:
            shutil.copy2(src, dst)
