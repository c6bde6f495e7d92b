"""Speed and memory helpers the trainers share: attention on the CPU, LoRA inputs under
autocast, compiled transformer blocks, freed memory handed back to the OS.

Attention on the CPU: SDPA in fp32 inside bf16 autocast
--------------------------------------------------------
Under bf16 autocast, q, k and v reach `F.scaled_dot_product_attention` in bf16, and on the CPU
with a mask (padding, or the reward trainer's packed block mask) its backward runs PyTorch's
flash-attention kernels in bf16, which are slow there for short rows: forward + backward of one
SmolLM2-135M layer (8 rows, 9 query / 3 key-value heads) took 29.0 ms in bf16 against 15.2 ms in
fp32 at 150 tokens, on this project's 2-core AVX-512 machine (`bench/attention.py`; level at
256 tokens, fp32 slower beyond). In the reward trainer that was ~0.4 s of a 1.3 s backward pass.
So `rankloop_sdpa` runs attention in fp32 when a gradient is needed on the CPU and the keys
number at most `FP32_MAX_KEYS` (key/value heads shared through `enable_gqa` rather than
copied), and hands the output back in the autocast dtype; the gradient is also more exact.
Everywhere else (CUDA, no gradient, longer rows, dropout, a position bias, soft-capping, a
cache) the call goes to transformers' own SDPA path unchanged.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import sys

import torch
import torch.nn.functional as F

NAME = "rankloop_sdpa"
FP32_MAX_KEYS = 256  # bench/attention.py: fp32 1.9x faster at 150 keys, level at 256, slower at 512


def rankloop_sdpa(
    module,
    query,
    key,
    value,
    attention_mask,
    dropout: float = 0.0,
    scaling: float | None = None,
    is_causal: bool | None = None,
    **kwargs,
):
    """transformers attention function (see `AttentionInterface`): (B, T, H, D) output.

    query (B, H, T, D), key and value (B, Hkv, S, D); attention_mask None or the (B, 1, T, S)
    mask transformers' `sdpa_mask` builds (True = may attend), or a caller's 4D mask.
    """
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    needs_grad = torch.is_grad_enabled() and (
        query.requires_grad or key.requires_grad or value.requires_grad
    )
    autocast = torch.is_autocast_enabled("cpu")
    low_precision = autocast or any(x.dtype != torch.float32 for x in (query, key, value))
    if (
        not needs_grad
        or query.device.type != "cpu"
        or dropout > 0
        or not low_precision
        or key.shape[2] > FP32_MAX_KEYS
        or kwargs.get("position_bias") is not None
        or kwargs.get("softcap") is not None
        or kwargs.get("cache") is not None
    ):
        return sdpa_attention_forward(
            module,
            query,
            key,
            value,
            attention_mask,
            dropout=dropout,
            scaling=scaling,
            is_causal=is_causal,
            **kwargs,
        )
    t, s = query.shape[2], key.shape[2]
    mask = attention_mask
    causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    if mask is None and causal and t > 1:
        # causal, aligned to the end (the queries are the last t of the s positions)
        mask = torch.ones(t, s, dtype=torch.bool, device=query.device).tril(s - t)
    elif mask is not None:
        mask = mask[..., :s]
        if mask.dtype != torch.bool:
            mask = mask.float()
    with torch.autocast("cpu", enabled=False):
        out = F.scaled_dot_product_attention(
            query.float(),
            key.float(),
            value.float(),
            attn_mask=mask,
            scale=scaling,
            enable_gqa=query.shape[1] != key.shape[1],
        )  # (B, H, T, D) fp32
    dtype = torch.get_autocast_dtype("cpu") if autocast else value.dtype
    return out.to(dtype).transpose(1, 2).contiguous(), None


def keep_adapter_inputs_in_autocast_dtype(*models) -> None:
    """Stop peft from casting each LoRA layer's input to the adapter's fp32 before the adapter
    matmul. With bf16 base weights under bf16 autocast the matmul casts it straight back to
    bf16, so each adapted layer paid two activation copies forward and two backward (the
    adapter weights stay fp32 for the optimizer; autocast casts them once per forward)."""
    from peft.tuners.lora import LoraLayer

    for model in models:
        for m in model.modules() if model is not None else ():
            if isinstance(m, LoraLayer):
                m.cast_input_dtype_enabled = False


def register() -> str:
    """Register `rankloop_sdpa` with transformers (idempotent); returns its name."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(NAME, rankloop_sdpa)
    AttentionMaskInterface.register(NAME, sdpa_mask)  # the masks SDPA gets
    return NAME


def use_training_attention(model) -> None:
    """Switch a transformers model (or a peft model around one) to `rankloop_sdpa` when it
    uses SDPA; other implementations (eager, flash-attention 2 on a GPU) are left alone."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if getattr(base.config, "_attn_implementation", None) != "sdpa":
        return
    register()
    base.set_attn_implementation(NAME)


@functools.cache
def _malloc_trim():
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc (musl has no malloc_trim)
        return None


def release_freed_memory() -> bool:
    """Hand the memory that glibc's malloc holds but no tensor uses back to the OS.

    PyTorch's CPU tensors come from malloc. A training step allocates and frees activations
    whose shapes change from batch to batch, and glibc keeps freed pages in its heaps rather
    than returning them, so the resident memory of a training process climbs step after step
    far above what is live (reward trainer, SmolLM2-135M, LoRA, 256 pairs, batch shapes of
    every length: from 1.7 to 2.8 GB over 32 steps). `malloc_trim(0)` hands those pages back,
    but calling it after every step cost ~20% of the step time on the CPU (the next step
    page-faults all of its activation memory in again), so the reward trainer calls it once,
    before the save and instead keeps its batch shapes
    repeating (`RewardConfig.pad_to_multiple_of`), which lets malloc reuse what it holds. The
    PPO loop still calls it after each step. Returns False where there is no glibc (macOS,
    Windows, musl).
    """
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True


COMPILE_MIN_STEPS = 32
"""`compile = "auto"` compiles from this many optimizer steps: the compile (~15-30 s for
SmolLM2-135M on a 2-core CPU) against ~0.5 s saved per step (docs/benchmarks.md)."""


@functools.cache
def compile_works(device_type: str) -> bool:
    """Whether `torch.compile` builds and runs a kernel on this kind of device here (on the CPU,
    inductor needs a C++ compiler); checked once per process with a one-line function."""
    try:
        fn = torch.compile(lambda x: torch.sin(x) * 2 + 1, dynamic=False)
        x = torch.linspace(0, 1, 8, device=device_type)
        return bool(torch.allclose(fn(x), torch.sin(x) * 2 + 1))
    except Exception:  # noqa: BLE001 (no compiler, no headers, an unsupported platform...)
        return False


def use_compile(setting: str, steps: int, device_type: str) -> bool:
    """The `compile` setting ('auto', 'yes', 'no') for a run of `steps` optimizer steps."""
    if setting != "auto":
        return setting == "yes"
    return steps >= COMPILE_MIN_STEPS and compile_works(device_type)


def compile_blocks(model) -> int:
    """`torch.compile` every transformer block of a transformers model (or a peft model around
    one), with dynamic shapes so that batches of new lengths do not recompile; returns how many.

    Blocks rather than the whole model: the model's Python around them (masks, packing, the
    loss) stays eager. Inductor fuses the element-wise work between the matrix products (norms,
    rotary embeddings, SiLU, residual adds, the LoRA branch), which is a third of an eager step
    on the CPU, and recomputes cheap element-wise results in the backward instead of saving
    them. Measured on this project's 2-core machine with SmolLM2-135M (`bench/reward.py --set
    compile=true`): steps 1.25-1.45x faster than eager; the compile, paid in the first step,
    ~30-50 s the first time and ~12-21 s with inductor's on-disk cache warm.
    """
    from transformers.modeling_layers import GradientCheckpointingLayer

    blocks = [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer)]
    for block in blocks:
        block.compile(dynamic=True)
    return len(blocks)
