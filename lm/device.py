"""Where and in which dtype to run: the one device rule, bf16, the accelerator factory."""

from __future__ import annotations

from pathlib import Path

from rankloop.settings import ConfigError

DEVICES = ("auto", "cpu", "cuda", "mps")


def pick_device(setting: str = "auto"):
    """The device for sampling and scoring (`[runtime] device`): 'auto' takes CUDA when torch
    sees a GPU, else Apple's MPS where torch has it, else the CPU; 'cpu', 'cuda', 'cuda:1' or
    'mps' force one (an unavailable one is a ConfigError naming the setting). The trainers run on
    `accelerate`'s device, which follows the same order."""
    import torch

    if isinstance(setting, torch.device):
        return setting
    if setting == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(setting)
    except RuntimeError:
        raise ConfigError(
            f"[runtime] device = {setting!r}: expected one of {', '.join(DEVICES)} (or 'cuda:N')"
        ) from None
    if device.type not in DEVICES:
        raise ConfigError(f"[runtime] device = {setting!r}: expected one of {', '.join(DEVICES)}")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            "[runtime] device = 'cuda' but torch sees no CUDA GPU here: set "
            "device = 'auto' or 'cpu'"
        )
    if device.type == "mps" and not (
        getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()
    ):
        raise ConfigError(
            "[runtime] device = 'mps' but torch has no MPS here: set device = 'auto' or 'cpu'"
        )
    return device


def cpu_supports_bf16() -> bool:
    """True where bf16 matmuls are fast on the CPU (AVX-512 BF16 or AMX)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def use_bf16(setting: str, device) -> bool:
    """Whether to run in bf16: 'yes', 'no', or 'auto' (CUDA with bf16 support, or a CPU with
    AVX-512 BF16 / AMX, where bf16 matmuls are ~4x faster than fp32 here; MPS stays fp32 under
    'auto': its bf16 support depends on the macOS version)."""
    import torch

    if setting != "auto":
        return setting == "yes"
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and cpu_supports_bf16()


def weights_dtype(bf16: bool):
    """The dtype to load weights that are not trained in full (a frozen base under LoRA, a model
    that only samples or scores): bf16 where bf16 runs (half the memory, the bf16 matmul units),
    else fp32, never whatever dtype the checkpoint was saved in."""
    import torch

    return torch.bfloat16 if bf16 else torch.float32


def autocast(device, enabled: bool):
    """bf16 autocast on the device's type when `enabled`, else a no-op context: the one way
    every stage runs mixed precision."""
    import contextlib

    import torch

    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16)


def new_accelerator(**kwargs):
    """An `accelerate.Accelerator` built from `kwargs`, even if this process already built one.

    Accelerate keeps its state in process-wide singletons and refuses a second Accelerator with
    other settings ("AcceleratorState has already been initialized"), which breaks a notebook or
    a test session that trains a reward model after a PPO run, or after a TRL trainer. The
    accelerator-level state is reset first; the process-level state (`PartialState`: ranks and
    the process group of an `accelerate launch`) is kept.
    """
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=False)
    GradientState._reset_state()
    if "cpu" not in kwargs and launched_without_gpus():
        # accelerate makes a multi-process launch on CPUs a gloo group only when told `cpu`;
        # otherwise every process would train alone and all write the same files
        kwargs["cpu"] = True
    return Accelerator(**kwargs)


def launched_without_gpus() -> bool:
    """Whether this process is one of several that `accelerate launch` / torchrun started on a
    machine without a CUDA GPU (e.g. docs/accelerate/cpu-ddp.yaml)."""
    import os

    import torch

    several = int(os.environ.get("WORLD_SIZE", "1")) > 1 or "LOCAL_RANK" in os.environ
    return several and not torch.cuda.is_available()
