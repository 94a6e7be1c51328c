"""Input files: where a reference points (a path, or the bare name of a shipped file).

Lives just above ``errors`` in DESIGN.md's order so that ``topology`` and ``scenario`` both use it
without importing each other.

The rule for a reference such as ``cluster: ...`` or ``--cluster ...`` (issue #12, "Paths"):

* a **bare name** (no path separator: ``dgx-h100`` or ``dgx-h100.yaml``) is a file of that name in the
  folder the reference is relative to, else the shipped file of that name;
* anything else is a **path**: it must exist (relative to that folder); it never falls back on a shipped
  file that happens to have the same file name, which would silently simulate another cluster.
"""

from __future__ import annotations

import os
from pathlib import Path

import simulator
from simulator.errors import ScenarioError

YAML_SUFFIXES = (".yaml", ".yml")


def shipped_dir(kind: str) -> Path | None:
    """The folder of shipped ``topologies`` or ``scenarios``: inside the installed wheel
    (``simulator/_shipped/<kind>``) or, in a source checkout, at the repository root."""
    pkg = Path(simulator.__file__).resolve().parent
    for cand in (pkg / "_shipped" / kind, pkg.parent / kind):
        if cand.is_dir():
            return cand
    return None


def is_bare_name(ref: str) -> bool:
    """Whether ``ref`` names a file without any folder (``dgx-h100``, ``dgx-h100.yaml``)."""
    seps = {"/", os.sep, os.altsep or "/"}
    return (
        bool(ref) and not any(s in ref for s in seps) and ref not in (".", "..") and not ref.startswith("~")
    )


def shipped_file(kind: str, name: str) -> Path | None:
    """The shipped ``kind`` file (``topologies``, ``scenarios``) called ``name`` (with or without
    ``.yaml``), if ``name`` is a bare name and there is one."""
    if not is_bare_name(name):
        return None
    folder = shipped_dir(kind)
    if folder is None:
        return None
    stem = name[: -len(Path(name).suffix)] if name.endswith(YAML_SUFFIXES) else name
    for suffix in YAML_SUFFIXES:
        cand = folder / f"{stem}{suffix}"
        if cand.is_file():
            return cand
    return None


def shipped_names(kind: str) -> list[str]:
    """The bare names of the shipped ``kind`` files, sorted."""
    folder = shipped_dir(kind)
    return sorted(p.stem for p in folder.glob("*.yaml")) if folder is not None else []


def _exists(path: Path) -> bool:
    """``path.exists()`` that treats an unreadable path (too long, a loop, through a file) as absent."""
    try:
        return path.exists()
    except (OSError, ValueError):
        return False


def resolve_reference(
    ref: str, base_dir: Path, *, kind: str, what: str, file: str | None, field: str | None
) -> Path:
    """The file ``ref`` names (see the module docstring); not found: a ``ScenarioError`` naming ``file``,
    ``field`` and ``ref``, and listing what is valid."""
    if not ref.strip():
        raise ScenarioError(f"{what} is empty; valid: a path or a shipped name", file=file, field=field)
    local = base_dir / Path(ref).expanduser()
    if _exists(local):
        return local if local.is_absolute() else local.absolute()
    shipped = shipped_file(kind, ref)
    if shipped is not None:
        return shipped
    names = ", ".join(shipped_names(kind)) or "none installed"
    if is_bare_name(ref):
        raise ScenarioError(
            f"{what} {ref!r} not found: no such file in {base_dir} and no shipped {kind[:-1]} of that name; "
            f"valid shipped names: {names}",
            file=file,
            field=field,
        )
    raise ScenarioError(
        f"{what} {ref!r} not found (resolved to {local}); a path must exist (relative paths start from "
        f"{base_dir}); shipped {kind} are used only for a bare name without a folder ({names})",
        file=file,
        field=field,
    )
