"""Closed Loop backend: train a causal LM on a data mixture, evaluate each
skill, propose new mixture weights, apply the approved ones.

Nothing here imports torch, transformers or lm_eval at module import time;
they are imported where they are used so that the dashboard and the command
line start fast.
"""

__version__ = "0.1.0"

import os as _os

# No network at run time: models, tokenizers and datasets come from local
# folders and caches, never from a hub. Set before transformers / datasets /
# lm_eval are first imported (they read these once); a person who wants the
# hub sets them to 0 explicitly.
for _var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
    _os.environ.setdefault(_var, "1")
