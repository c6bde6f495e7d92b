"""Reward ensembles: N linear heads on one shared backbone, their aggregate and their spread.

Members differ only in their heads (`[reward] ensemble = N`): one LoRA-adapted backbone pass
gives each response's last-token hidden state h (H,), and member m scores r_m = w_m . h + b_m.
Because the heads are linear, the mean score is itself a linear head,

    mean_m r_m = (mean_m w_m) . h + mean_m b_m,

so the saved checkpoint carries a standard one-output head with the members' mean weights
(`AutoModelForSequenceClassification` / `pipeline("text-classification")` give the mean score)
and the members' own heads in its config.json (`rankloop_ensemble`), which rankloop's scorer
reads to score with every member. Diversity comes from bootstrap resamples of the training
comparisons (Efron 1979; the bootstrapped heads of Osband et al. 2016, "Deep Exploration via
Bootstrapped DQN"); Coste et al. 2023 ("Reward Model Ensembles Help Mitigate
Overoptimization") optimise the mean minus k standard deviations or the worst member.
"""

from __future__ import annotations

import numpy as np
import torch

from rankloop.data.queue import gap_spread  # noqa: F401  (the members' disagreement on a pair)

from .model import head_name

CONFIG_KEY = "rankloop_ensemble"
"""The config.json entry holding the members' heads and the aggregate the scorer applies."""


def aggregate_scores(members: torch.Tensor, how: str = "mean", k: float = 1.0) -> torch.Tensor:
    """One score per row from the members' scores `members` (N, M):

        mean:            r = (1/M) sum_m r_m
        mean_minus_std:  r = mean - k * std,  std = sqrt((1/M) sum_m (r_m - mean)^2)
        min:             r = min_m r_m        (the worst case, Coste et al. 2023)

    std is the population standard deviation (divide by M), so one member gives std = 0 and
    every aggregate equals that member's score. Returns (N,) float32.
    """
    if members.ndim != 2:
        raise ValueError(f"members must be (N, M), got shape {tuple(members.shape)}")
    r = members.float()
    if how == "mean":
        return r.mean(1)
    if how == "mean_minus_std":
        return r.mean(1) - k * r.std(1, correction=0)
    if how == "min":
        return r.min(1).values
    raise ValueError(f"unknown aggregate {how!r}: 'mean', 'mean_minus_std' or 'min'")


def bootstrap_weights(n: int, members: int, seed: int) -> np.ndarray:
    """(members, n) resampling counts: row m counts how often each of the n training examples
    is drawn in n draws with replacement (a bootstrap resample; each count ~ Binomial(n, 1/n),
    about 37% zeros). One member gets all ones (the plain data: then `ensemble = 1` is exactly
    the single model). Deterministic given seed."""
    if members == 1:
        return np.ones((1, n))
    rng = np.random.default_rng([seed, 23])
    return np.stack([np.bincount(rng.integers(0, n, n), minlength=n) for _ in range(members)])


def head_weights(model) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(weight (M, H), bias (M,) or None) of the model's scalar head (M = 1 without members)."""
    head = getattr(model, head_name(model))
    bias = head.bias.detach().float() if head.bias is not None else None
    return head.weight.detach().float(), bias


def set_head(model, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
    """Replace the model's head by a linear head with these weights: (M, H) and (M,) or None;
    M outputs give M member scores in the logits. Keeps the old head's dtype and device."""
    name = head_name(model)
    old = getattr(model, name)
    head = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
    head.to(device=old.weight.device, dtype=old.weight.dtype)
    with torch.no_grad():
        head.weight.copy_(weight)
        if bias is not None:
            head.bias.copy_(bias)
    setattr(model, name, head)


def fold_members(model, aggregate: str, k: float) -> None:
    """Make a model whose head has M > 1 outputs a standard one-output model: the head becomes
    the members' mean (see the module docstring) and the members go into the config under
    `CONFIG_KEY`, with the aggregate rankloop's scorer applies. Nothing changes when M = 1."""
    weight, bias = head_weights(model)
    if weight.shape[0] == 1:
        return
    model.config.__dict__[CONFIG_KEY] = {
        "members": weight.shape[0],
        "aggregate": aggregate,
        "k": float(k),
        "weight": weight.tolist(),  # fp32 -> Python floats: round-trips exactly through JSON
        "bias": bias.tolist() if bias is not None else None,
    }
    set_head(
        model,
        weight.mean(0, keepdim=True),
        bias.mean(0, keepdim=True) if bias is not None else None,
    )


def unfold_members(model) -> dict | None:
    """Give a loaded model (or a wrapper holding it as `.model`) its members' heads back, from
    its config; returns the ensemble's entry ({members, aggregate, k, ...}) or None for a single
    model. Afterwards the model's logits are (N, M), one column per member."""
    hf = model if hasattr(model, "config") else getattr(model, "model", None)
    entry = getattr(getattr(hf, "config", None), CONFIG_KEY, None)
    if not entry:
        return None
    weight = torch.tensor(entry["weight"], dtype=torch.float32)
    bias = torch.tensor(entry["bias"], dtype=torch.float32) if entry["bias"] is not None else None
    if head_weights(hf)[0].shape[0] != weight.shape[0]:
        set_head(hf, weight, bias)
    return entry
