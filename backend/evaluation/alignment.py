"""Gradient alignment: which domain's data pushes the model toward each
steer skill's answers, measured on the model at a checkpoint.

For domain j, g_j is the gradient of the next-token loss on its fixed
held-out sequences (the ones its held-out loss is measured on); for steer
skill s, h_s is the gradient of the answer loss (the target's tokens after
the prompt) on the items just evaluated. A small SGD step on domain j's
data changes the skill's answer loss by -lr <g_j, h_s> (first order).

Every domain's gradient shares a large common part (what all text teaches
a model at once: token frequencies, spacing), and so does the answer's:
raw cosines are all alike (on the synthetic suite at step 0, 0.6-0.9 for
every domain holding digits against a digit skill). So the value is the
CENTRED alignment: cos(g_j - gbar, h_s - proj_gbar h_s), gbar the mean of
the domains' gradients: how much more than the average domain domain j
pushes toward the skill's answers, along the directions the average does
not cover. Positive: training on j rather than on the mix teaches s now;
the domain with the largest value teaches it most. With one domain it is 0
(there is nothing to tell apart). Nothing is trained: the gradients are
taken with torch.autograd.grad, so `.grad` (and DDP's reducer) never sees
them.

Memory does not grow with the model: each gradient is compressed into
SKETCH numbers by a count sketch (every parameter index hashed to a bucket
and a sign, fixed by the index alone), which keeps inner products in
expectation (error about |g| |h| / sqrt(SKETCH): 0.004 in cosine). Each
probe is split into CHUNKS parts; the standard error is the jackknife
over them (part k of every probe left out in turn).
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch
import torch.nn.functional as F

SKETCH = 1 << 16  # numbers per compressed gradient
CHUNKS = 4  # parts per probe, for the jackknife standard error
MAX_ITEMS = 48  # a skill's probe: at most this many of the items just evaluated
MAX_SEQUENCES = 32  # a domain's probe: at most this many held-out sequences
_HASH = 2654435761  # Knuth's multiplicative hash


def _sketch(grads: list[torch.Tensor | None], params: list[torch.Tensor]) -> torch.Tensor:
    """Count sketch (SKETCH,) of the gradient `grads` of `params` (float32)."""
    out = torch.zeros(SKETCH, dtype=torch.float32, device=params[0].device)
    offset = 0
    for g, p in zip(grads, params):
        n = p.numel()
        if g is not None:
            h = ((torch.arange(offset, offset + n, device=out.device, dtype=torch.int64) * _HASH) >> 7) \
                & 0x7FFFFFFF
            sign = (h & 1).to(torch.float32) * 2 - 1
            out.index_add_(0, h >> 1 & (SKETCH - 1), g.detach().reshape(-1).float() * sign)
        offset += n
    return out


def _parts(n: int) -> list[range]:
    """Split n items into min(CHUNKS, n) contiguous parts."""
    k = min(CHUNKS, n)
    edges = [round(i * n / k) for i in range(k + 1)]
    return [range(a, b) for a, b in zip(edges, edges[1:])]


def _grad(model, params, ids: torch.Tensor, mask: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Sketched gradient of the SUM of next-token losses at the positions
    where `target` is not -100 (ids, mask: (n, T); target: (n, T) labels
    already shifted)."""
    logits = model(input_ids=ids, attention_mask=mask).logits.float()  # (n, T, V)
    loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), target.reshape(-1), ignore_index=-100,
                           reduction="sum")
    return _sketch(list(torch.autograd.grad(loss, params, allow_unused=True)), params)


def _answer_batch(tokenizer, items: list[tuple[str, str]], max_length: int, device):
    """(ids, mask, labels) of prompt + continuation, labels only on the
    continuation's tokens; left-truncated to max_length, right-padded."""
    rows = []
    for prompt, target in items:
        if target and not target[0].isspace() and prompt and not prompt[-1].isspace():
            target = " " + target  # lm-eval's default target_delimiter
        p = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        t = tokenizer(target, add_special_tokens=False)["input_ids"]
        seq = (p + t)[-(max_length + 1):]
        n_t = min(len(t), len(seq) - 1)
        rows.append((seq, n_t))
    width = max(len(s) for s, _ in rows) - 1
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    labels = torch.full((len(rows), width), -100, dtype=torch.long)
    for i, (seq, n_t) in enumerate(rows):
        x, y = seq[:-1], seq[1:]
        ids[i, :len(x)] = torch.tensor(x)
        mask[i, :len(x)] = 1
        labels[i, len(y) - n_t:len(y)] = torch.tensor(y[len(y) - n_t:])
    return ids.to(device), mask.to(device), labels.to(device)


def _centred_cosines(G: list[torch.Tensor], h: torch.Tensor) -> np.ndarray:
    """(len(G),) cos(G_j - gbar, h - proj_gbar h), gbar the mean of G (the
    module docstring's centred alignment; 0 where a side is 0)."""
    gbar = sum(G) / len(G)
    nb = float(gbar @ gbar)
    if nb > 0:
        h = h - float(h @ gbar) / nb * gbar
    out = np.zeros(len(G))
    hn = float(h.norm())
    for j, g in enumerate(G):
        c = g - gbar
        den = float(c.norm()) * hn
        out[j] = float(c @ h) / den if den > 0 else 0.0
    return out


def _jackknife(parts_g: list[list[torch.Tensor]], parts_h: list[torch.Tensor]) -> tuple[np.ndarray, np.ndarray]:
    """Centred cosines of every domain's summed gradient (parts_g[j]: domain
    j's parts) with the skill's (its parts), and their jackknife standard
    errors (part k of every probe left out in turn; 0 with one part)."""
    G, H = [sum(p) for p in parts_g], sum(parts_h)
    value = _centred_cosines(G, H)
    k = min(min(len(p) for p in parts_g), len(parts_h))
    if k < 2:
        return value, np.zeros(len(G))
    loo = np.array([_centred_cosines([g - p[i] for g, p in zip(G, parts_g)], H - parts_h[i]) for i in range(k)])
    return value, np.sqrt((k - 1) / k * ((loo - loo.mean(0)) ** 2).sum(0))


def gradient_alignment(model, tokenizer, heldout: dict[str, np.ndarray], probes: dict[str, list[tuple[str, str]]],
                       device, *, max_length: int, precision=None) -> list[dict]:
    """Rows {skill, domain, value (centred cosine), stderr, n (items)}:
    the alignment of every domain's held-out gradient with every skill's
    answer gradient (the module docstring). heldout: domain -> (n, T+1)
    token ids; probes: steer skill -> [(prompt, target)]; precision: a
    context manager to run the forward in (the evaluator's autocast), or
    None."""
    params = [p for p in model.parameters() if p.requires_grad]
    if not params or not heldout or not probes:
        return []
    was_training = model.training
    model.eval()
    ctx = precision if precision is not None else contextlib.nullcontext()
    try:
        with ctx, torch.enable_grad():
            dom = {}
            for d, arr in heldout.items():
                batch = torch.from_numpy(np.asarray(arr[:MAX_SEQUENCES])).to(device)
                x, y = batch[:, :-1], batch[:, 1:]
                dom[d] = [_grad(model, params, x[r], torch.ones_like(x[r]), y[r]) for r in _parts(len(x))]
            skl = {}
            for s, items in probes.items():
                items = items[:MAX_ITEMS]
                if not items:
                    continue
                ids, mask, labels = _answer_batch(tokenizer, items, max_length, device)
                skl[s] = ([_grad(model, params, ids[r], mask[r], labels[r]) for r in _parts(len(items))],
                          len(items))
    finally:
        model.train(was_training)
    rows = []
    names = list(dom)
    for s, (hs, n) in sorted(skl.items()):
        values, ses = _jackknife([dom[d] for d in names], hs)
        rows.extend({"skill": s, "domain": d, "value": float(v), "stderr": float(se), "n": n}
                    for d, v, se in zip(names, values, ses))
    return rows


def probes(measurements: list[dict], samples: list[dict], skills: set[str]) -> dict[str, list[tuple[str, str]]]:
    """Skill -> its distinct (prompt, target) items among `samples`, for
    the skills in `skills` (the steer skills: a held-out skill is never
    shown to the controller). A sample's skill is its task's, as the
    measurements name it."""
    skill_of = {m["task"]: m["skill"] for m in measurements if m.get("skill")}
    out: dict[str, list[tuple[str, str]]] = {}
    seen: set[tuple[str, str, str]] = set()
    for row in samples:
        s = skill_of.get(row.get("task"))
        target = row.get("target")
        if s not in skills or not row.get("prompt") or target in (None, ""):
            continue
        key = (s, row["prompt"], str(target).strip())
        if key not in seen:
            seen.add(key)
            out.setdefault(s, []).append((row["prompt"], str(target).strip()))
    return out
