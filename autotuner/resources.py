"""Locate the asset folders (prompts/, sandbox/, baselines/, audit_policies/) in a wheel or in
a checkout.

A wheel carries them under ``autotuner/_data/``; an editable install or a plain checkout has them
beside the package. Both layouts must work, so every lookup goes through here.
"""

from __future__ import annotations

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent


def asset_dir(name: str) -> Path:
    """Return the folder ``name`` (``prompts``, ``sandbox``, ``baselines`` or
    ``audit_policies``)."""
    for candidate in (_PACKAGE / "_data" / name, _PACKAGE.parent / name):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"autotuner's {name}/ folder is missing from this installation")


def baseline_path(name: str) -> Path:
    """Path of a shipped baseline policy, by file stem (``fixed_chunk``) or file name."""
    stem = name[:-3] if name.endswith(".py") else name
    path = asset_dir("baselines") / f"{stem}.py"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in asset_dir("baselines").glob("*.py")))
        raise FileNotFoundError(f"no baseline named {name!r} (known: {known})")
    return path
