"""The ``rmsd`` config section: defaults and validation from ``schema.yaml`` (beside this module).

When the workflow schema (``workflow/schemas/config.schema.yaml``) carries an ``rmsd`` section, that one is
used (it is pasted from ``schema.yaml``; a test checks the two agree); otherwise the local fragment.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import yaml

from visd import config as cfgmod

FRAGMENT = Path(__file__).with_name("schema.yaml")


@lru_cache(maxsize=1)
def fragment() -> dict:
    """The JSON schema of the ``rmsd`` section."""
    return yaml.safe_load(FRAGMENT.read_text())["rmsd"]


def section(value: dict | None = None) -> dict:
    """The ``rmsd`` section with defaults filled in; ``ConfigError`` names a bad key."""
    if "rmsd" in cfgmod.load_schema().get("properties", {}):
        return cfgmod.section("rmsd", value)
    schema = {"type": "object", "additionalProperties": False, "properties": {"rmsd": fragment()}}
    return cfgmod.validate({"rmsd": value or {}}, schema)["rmsd"]
