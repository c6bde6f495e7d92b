"""Decoder blocks below the first adapted one: frozen, so their output can be computed once.

With LoRA on the top blocks only, the blocks below are frozen and adapter-free: their output
for a given input never changes while the adapters train. PPO's critic keeps it for a rollout
batch's epochs; the reward trainer keeps it for every training comparison from its frozen-feature
pass. A forward then runs the top blocks only, and the backward stops there as well.

The adapted blocks themselves can keep less: `CheckpointBlocks` has each of them save only its
input during a forward with gradients and recompute the rest in the backward (activation
checkpointing), for the policy stage's `[ppo] gradient_checkpointing`.
"""

from __future__ import annotations

import torch
from torch import nn


def decoder_layers(model: nn.Module) -> nn.ModuleList | None:
    """The list of decoder blocks of a (peft-wrapped) HF model, or None if it has none."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    for cand in (
        base,
        getattr(base, "model", None),
        base.get_decoder() if hasattr(base, "get_decoder") else None,
    ):
        layers = getattr(cand, "layers", None)
        if isinstance(layers, nn.ModuleList):
            return layers
    return None


def first_adapted_block(layers: nn.ModuleList | None, adapter: str = "default") -> int:
    """Index of the first block holding `adapter`'s LoRA weights: the blocks below it are
    frozen and adapter-free, so their output can be computed once and reused. 0 = none."""
    if layers is None:
        return 0
    for i, layer in enumerate(layers):
        if any(f"lora_A.{adapter}." in n for n, _ in layer.named_parameters()):
            return i
    return 0


class SkipLowerBlocks:
    """Context manager for a forward pass that starts at block `split` from cached hidden
    states `lower` (B, L, H): the blocks below `split` are swapped out, the last of them for
    one that returns `lower`, so block `split` itself is untouched (no hook on it: a compiled
    block would recompile for one). With `keep=True` instead, records the input of block
    `split` (the output of the frozen blocks) into `.kept`."""

    def __init__(self, layers, split: int, lower=None, keep: bool = False):
        self.layers, self.split, self.lower, self.keep = layers, split, lower, keep
        self.kept = None
        self.handles, self.saved = [], []

    def __enter__(self):
        if not self.split:
            return self
        if self.keep:

            def record(mod, args):
                self.kept = args[0].detach()

            self.handles.append(self.layers[self.split].register_forward_pre_hook(record))
        if self.lower is not None:
            self.saved = [self.layers[i] for i in range(self.split)]
            for i in range(self.split - 1):
                self.layers[i] = _Skip()
            self.layers[self.split - 1] = _Inject(self.lower)
        return self

    def __exit__(self, *exc):
        for h in self.handles:
            h.remove()
        for i, layer in enumerate(self.saved):
            self.layers[i] = layer
        return False


class _Skip(nn.Module):
    """A decoder block that passes its input through (its output is supplied from a cache)."""

    def forward(self, hidden_states, *args, **kwargs):
        return hidden_states


class _Inject(nn.Module):
    """The last skipped block: returns the cached output of the frozen blocks."""

    def __init__(self, lower: torch.Tensor):
        super().__init__()
        self.lower = lower

    def forward(self, hidden_states, *args, **kwargs):
        return self.lower.to(hidden_states.dtype)


class CheckpointBlocks:
    """Context manager for a forward pass whose backward recomputes each block's activations:
    blocks `start` and up are swapped for wrappers that run them under
    `torch.utils.checkpoint` (non-reentrant: keyword arguments, autocast and RNG state are
    kept), so a block holds only its input until the backward instead of every intermediate.
    Inactive (`on` False) or without gradients it changes nothing. The swap ends with the
    context; the backward may come later, as the recomputation calls the block it saved."""

    def __init__(self, layers, start: int = 0, on: bool = True):
        self.layers, self.start = layers, start
        self.on = on and layers is not None and torch.is_grad_enabled()
        self.saved: list[nn.Module] = []

    def __enter__(self):
        if self.on:
            self.saved = [self.layers[i] for i in range(self.start, len(self.layers))]
            for i, block in enumerate(self.saved, self.start):
                self.layers[i] = _Checkpointed(block)
        return self

    def __exit__(self, *exc):
        for i, block in enumerate(self.saved, self.start):
            self.layers[i] = block
        return False


class _Checkpointed(nn.Module):
    def __init__(self, block: nn.Module):
        super().__init__()
        self.block = block

    def forward(self, *args, **kwargs):
        from torch.utils.checkpoint import checkpoint

        return checkpoint(self.block, *args, use_reentrant=False, **kwargs)
