"""The shipped model catalog (``catalog.yaml``): named transformer shapes with their sources."""

from __future__ import annotations

from functools import cache
from importlib import resources
from typing import Any

import yaml


@cache
def model_catalog() -> dict[str, dict[str, Any]]:
    """Raw catalog entries (plain mappings, validated by the scenario schema), by model name."""
    text = resources.files("simulator.models").joinpath("catalog.yaml").read_text()
    raw: dict[str, dict[str, Any]] = yaml.safe_load(text)
    return raw


def model_names() -> list[str]:
    """Every catalog model name, sorted."""
    return sorted(model_catalog())
