"""The one device rule (`lm.device.pick_device`) and bf16's 'auto'."""

from __future__ import annotations

import pytest
import torch

from rankloop.lm import device as dev
from rankloop.settings import ConfigError


def test_auto_takes_cuda_then_mps_then_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert dev.pick_device("auto") == torch.device("cpu")
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert dev.pick_device("auto") == torch.device("mps")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert dev.pick_device("auto") == torch.device("cuda")


def test_forced_devices_and_clear_refusals(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert dev.pick_device("cpu") == torch.device("cpu")
    with pytest.raises(ConfigError, match=r"device = 'cuda' but torch sees no CUDA GPU"):
        dev.pick_device("cuda")
    with pytest.raises(ConfigError, match=r"device = 'mps' but torch has no MPS"):
        dev.pick_device("mps")
    with pytest.raises(ConfigError, match=r"device = 'tpu0': expected one of auto, cpu, cuda"):
        dev.pick_device("tpu0")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert dev.pick_device("cuda:1") == torch.device("cuda", 1)


def test_bf16_auto_follows_the_hardware(monkeypatch):
    monkeypatch.setattr(dev, "cpu_supports_bf16", lambda: True)
    assert dev.use_bf16("auto", "cpu") is True
    assert dev.use_bf16("auto", "mps") is False
    assert dev.use_bf16("no", "cpu") is False and dev.use_bf16("yes", "mps") is True
    monkeypatch.setattr(dev, "cpu_supports_bf16", lambda: False)
    assert dev.use_bf16("auto", "cpu") is False
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    assert dev.use_bf16("auto", "cuda") is True
