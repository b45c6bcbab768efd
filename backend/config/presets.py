"""Presets: shipped TOML config files in backend/config/presets/.

A preset is an ordinary config file (it may itself start from another preset
with `preset = "..."`), so every preset is checked the way a user's file is,
and adding one is adding a file.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

from backend.config.schema import ConfigError, RunConfig

FOLDER = Path(__file__).resolve().parent / "presets"
PRESETS: dict[str, Path] = {p.stem: p for p in sorted(FOLDER.glob("*.toml"))}
"""Preset name -> its TOML file."""


def preset_data(name, _chain: tuple[str, ...] = ()) -> dict:
    """A preset's plain data, merged over the preset it names in turn; the
    error lists the presets that exist."""
    from backend.config.loader import merge

    if not isinstance(name, str):
        raise ConfigError(f"preset: expected a preset name (a string), got {type(name).__name__}")
    if name not in PRESETS:
        shown = name if name.isprintable() and len(name) <= 64 else repr(name[:64])
        raise ConfigError(f"preset: unknown preset {shown!r} (known: {', '.join(PRESETS)})")
    if name in _chain:
        raise ConfigError(f"preset: presets {' -> '.join(_chain + (name,))} form a cycle")
    data = tomllib.loads(PRESETS[name].read_text(encoding="utf-8"))
    base = data.pop("preset", None)
    return merge(preset_data(base, _chain + (name,)), data) if base is not None else data


def preset(name: str) -> RunConfig:
    """A preset by name, validated; the error lists the presets that exist."""
    from backend.config.loader import from_dict

    return from_dict(preset_data(name))
