"""Run configuration: schema (dataclasses, validation), loader (files and
plain data), presets (shipped TOML files) and limits (untrusted input).

`from backend.config import RunConfig, load, preset, ...` is the public face;
each name lives in the module that owns its job.
"""

from backend.config.limits import Limits, check_untrusted, data_roots
from backend.config.loader import from_data, from_dict, from_text, load, merge
from backend.config.presets import PRESETS, preset
from backend.config.schema import (
    ConfigError,
    ControllerConfig,
    DataConfig,
    DomainConfig,
    EvalConfig,
    MixtureConfig,
    ModelConfig,
    ObjectiveConfig,
    RunConfig,
    TaskSpec,
    TrainConfig,
)

__all__ = [
    "PRESETS", "ConfigError", "ControllerConfig", "DataConfig", "DomainConfig", "EvalConfig",
    "Limits", "MixtureConfig", "ModelConfig", "ObjectiveConfig", "RunConfig", "TaskSpec", "TrainConfig", "check_untrusted", "data_roots",
    "from_data", "from_dict", "from_text", "load", "merge", "preset",
]
