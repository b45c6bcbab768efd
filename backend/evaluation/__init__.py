"""Evaluation: lm-eval tasks per skill (steer and held-out variants) run on
the in-memory model through lm-eval's HFLM, and per-domain held-out loss."""
