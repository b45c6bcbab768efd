"""Per-domain held-out loss: mean next-token cross-entropy (nats/token) on
fixed held-out sequences of each domain, with its standard error over
sequences."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F


@torch.no_grad()
def domain_losses(model, heldout: dict[str, np.ndarray], device) -> dict[str, dict]:
    """heldout: domain -> (n, T+1) token ids. Returns domain -> {value, stderr, n}."""
    was_training = model.training
    model.eval()
    out = {}
    for name, ids in heldout.items():
        batch = torch.from_numpy(ids).to(device)
        x, y = batch[:, :-1], batch[:, 1:]  # (n, T)
        logits = model(input_ids=x).logits.float()  # (n, T, V)
        per_tok = F.cross_entropy(logits.reshape(-1, logits.size(-1)), y.reshape(-1), reduction="none")
        per_seq = per_tok.view(y.shape).mean(dim=1).cpu().numpy()  # (n,)
        n = len(per_seq)
        stderr = float(per_seq.std(ddof=1) / math.sqrt(n)) if n > 1 else None
        out[name] = {"value": float(per_seq.mean()), "stderr": stderr, "n": n}
    model.train(was_training)
    return out
