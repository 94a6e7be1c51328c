"""The wheel must ship every subpackage and the data the product reads at run time."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _declared() -> set[str]:
    doc = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return set(doc["tool"]["setuptools"]["packages"])


def test_every_subpackage_is_listed_in_pyproject():
    found = {
        ".".join(p.parent.relative_to(ROOT).parts)
        for p in (ROOT / "simulator").rglob("__init__.py")
        if "__pycache__" not in p.parts
    }
    missing = found - _declared()
    assert not missing, f"add to [tool.setuptools] packages: {sorted(missing)}"


def test_shipped_data_folders_are_mapped():
    doc = tomllib.loads((ROOT / "pyproject.toml").read_text())
    mapping = doc["tool"]["setuptools"]["package-dir"]
    assert mapping["simulator._shipped.topologies"] == "topologies"
    assert mapping["simulator._shipped.scenarios"] == "scenarios"
    assert {"simulator._shipped.topologies", "simulator._shipped.scenarios"} <= _declared()
