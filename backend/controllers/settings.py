"""Checks the strategies' settings dataclasses share; every error is a
ConfigError naming the field by its dotted path
(``controller.options.step_size``)."""

from __future__ import annotations


def config_error(message: str) -> Exception:
    from backend.config import ConfigError  # config imports the registry lazily: no cycle

    return ConfigError(message)


def check_positive(settings, name: str, path: str) -> None:
    """settings.<name> must be > 0."""
    v = getattr(settings, name)
    if not v > 0:
        raise config_error(f"{path}.{name}: must be > 0, got {v}")


def check_unit(settings, names: tuple[str, ...], path: str) -> None:
    """Each settings.<name> must lie within [0, 1]."""
    for name in names:
        v = getattr(settings, name)
        if not 0.0 <= v <= 1.0:
            raise config_error(f"{path}.{name}: must be within [0, 1], got {v}")
