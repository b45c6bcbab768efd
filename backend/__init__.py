"""Closed Loop backend: train a causal LM on a data mixture, evaluate each
skill, propose new mixture weights, apply the approved ones.

Nothing here imports torch, transformers or lm_eval at module import time;
they are imported where they are used so that the dashboard and the command
line start fast.
"""

__version__ = "0.1.0"
