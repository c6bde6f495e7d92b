"""lm/kernels.py (attention, activation checkpointing) and the PPO model speed helpers:
each must give the same numbers as the plain path it replaces."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from rankloop.lm import kernels

from tiny import build_causal_lm, build_tokenizer


class _Module:  # what transformers passes as `module`: the attention layer
    num_key_value_groups = 3
    is_causal = True


def _inputs(t=12, dtype=torch.bfloat16):
    torch.manual_seed(0)
    q = torch.randn(2, 6, t, 8, dtype=torch.float64)
    k, v = (
        torch.randn(2, 2, t, 8, dtype=torch.float64),
        torch.randn(2, 2, t, 8, dtype=torch.float64),
    )
    mask = torch.ones(t, t, dtype=torch.bool).tril()[None, None].repeat(2, 1, 1, 1)
    mask[1, :, 6:, 2:6] = False  # a packed block: later tokens do not see tokens 2..5
    return q, k, v, mask


def _reference(q, k, v, mask):
    k, v = (x.repeat_interleave(q.shape[1] // k.shape[1], dim=1) for x in (k, v))
    s = (q @ k.transpose(-1, -2)) * q.shape[-1] ** -0.5
    return (s.masked_fill(~mask, float("-inf")).softmax(-1) @ v).transpose(1, 2)  # (B, T, H, D)


def test_rankloop_sdpa_matches_fp64_attention_and_beats_bf16_gradients():
    q, k, v, mask = _inputs()
    ref_in = [x.clone().requires_grad_() for x in (q, k, v)]
    ref = _reference(*ref_in, mask)
    g = torch.randn_like(ref)
    ref_grads = torch.autograd.grad(ref, ref_in, g)

    xs = [x.to(torch.bfloat16).requires_grad_() for x in (q, k, v)]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, weights = kernels.rankloop_sdpa(_Module(), *xs, mask)
    assert weights is None and out.dtype == torch.bfloat16 and out.shape == ref.shape
    grads = torch.autograd.grad(out, xs, g.to(torch.bfloat16))
    assert (out.double() - ref).abs().max() < 0.03  # bf16 inputs and output

    # the bf16 path it replaces, on the same bf16 inputs
    xb = [x.to(torch.bfloat16).requires_grad_() for x in (q, k, v)]
    kb, vb = (x.repeat_interleave(3, dim=1) for x in xb[1:])
    ob = F.scaled_dot_product_attention(xb[0], kb, vb, attn_mask=mask).transpose(1, 2)
    grads_bf16 = torch.autograd.grad(ob, xb, g.to(torch.bfloat16))

    def err(gs):
        return max(
            float((a.double() - r).abs().max() / r.abs().max()) for a, r in zip(gs, ref_grads)
        )

    assert err(grads) < 0.02
    assert err(grads) <= err(grads_bf16)


def test_rankloop_sdpa_without_grad_or_in_fp32_is_transformers_sdpa():
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    q, k, v, mask = _inputs()
    for dtype in (torch.float32, torch.bfloat16):
        xs = [x.to(dtype) for x in (q, k, v)]
        with torch.no_grad():
            ours, _ = kernels.rankloop_sdpa(_Module(), *xs, mask)
            theirs, _ = sdpa_attention_forward(_Module(), *xs, mask)
        assert torch.equal(ours, theirs)


def test_rankloop_sdpa_causal_without_a_mask():
    q, k, v, _mask = _inputs()
    xs = [x.float().requires_grad_() for x in (q, k, v)]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, _ = kernels.rankloop_sdpa(_Module(), *xs, None)
    causal = torch.ones(12, 12, dtype=torch.bool).tril()[None, None]
    assert (out.double() - _reference(q, k, v, causal)).abs().max() < 0.03


def _tiny(seed=0):
    tok = build_tokenizer()
    return tok, build_causal_lm(tok, seed=seed, hidden=48, layers=2)


def _loss_and_grads(model, ids, mask, autocast):
    model.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        logits = model(input_ids=ids, attention_mask=mask).logits
    loss = logits.float().logsumexp(-1).mean()
    loss.backward()
    return float(loss.detach()), {n: p.grad.clone() for n, p in model.named_parameters()}


def test_use_training_attention_same_model_outputs_and_not_saved(tmp_path):
    tok, model = _tiny()
    ids = torch.randint(3, len(tok), (3, 10))
    mask = torch.ones_like(ids)
    mask[0, :4] = 0  # left padding: a real mask goes to SDPA
    loss_ref, grads_ref = _loss_and_grads(model, ids, mask, autocast=False)
    kernels.use_training_attention(model)
    assert model.config._attn_implementation == kernels.NAME
    loss_fp32, _grads_fp32 = _loss_and_grads(model, ids, mask, autocast=False)
    assert loss_fp32 == pytest.approx(loss_ref, rel=1e-6)  # fp32: transformers' own path
    loss_bf16, grads_bf16 = _loss_and_grads(model, ids, mask, autocast=True)
    assert loss_bf16 == pytest.approx(loss_ref, rel=2e-2)
    for n, g in grads_ref.items():
        assert (grads_bf16[n] - g).abs().max() <= 0.05 * g.abs().max() + 1e-6, n
    model.save_pretrained(tmp_path)
    assert kernels.NAME not in json.dumps(json.loads((tmp_path / "config.json").read_text()))


def test_contiguous_lm_head_input_same_logits():
    from rankloop.ppo.actor_critic import contiguous_lm_head_input

    tok, model = _tiny()
    for p in model.parameters():
        p.requires_grad_(False)
    ids = torch.randint(3, len(tok), (2, 9))
    emb = model.get_input_embeddings()(ids).requires_grad_()
    before = model(inputs_embeds=emb, logits_to_keep=4).logits
    contiguous_lm_head_input(model)
    seen = []
    model.get_output_embeddings().register_forward_pre_hook(
        lambda _m, args: seen.append(args[0].is_contiguous())
    )
    after = model(inputs_embeds=emb, logits_to_keep=4).logits
    assert seen == [True]
    assert torch.equal(before, after)


def test_merged_adapter_samples_merged_and_restores_weights_exactly():
    from peft import LoraConfig, get_peft_model

    from rankloop.ppo.actor_critic import merged_adapter

    tok, model = _tiny()
    model = model.to(torch.bfloat16)
    lm = get_peft_model(
        model,
        LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False),
    )
    before = {n: p.detach().clone() for n, p in lm.named_parameters()}
    ids = torch.randint(3, len(tok), (2, 7))
    with torch.no_grad():
        unmerged = lm(input_ids=ids).logits.float()
        with merged_adapter(lm):
            assert all(m.merged for m in lm.modules() if hasattr(m, "merged"))
            merged = lm(input_ids=ids).logits.float()
        with lm.disable_adapter():
            base = lm(input_ids=ids).logits.float()
    assert (merged - unmerged).abs().max() < 0.1 * (unmerged - base).abs().max()
    assert not any(m.merged for m in lm.modules() if hasattr(m, "merged"))
    for n, p in lm.named_parameters():
        assert torch.equal(p, before[n]), n  # bit for bit: the reference does not drift


def test_rankloop_sdpa_long_rows_keep_the_bf16_path():
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    q, k, v, mask = _inputs(t=kernels.FP32_MAX_KEYS + 1)
    xs = [x.to(torch.bfloat16).requires_grad_() for x in (q, k, v)]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ours, _ = kernels.rankloop_sdpa(_Module(), *xs, mask)
        theirs, _ = sdpa_attention_forward(_Module(), *xs, mask)
    assert torch.equal(ours, theirs)


def test_adapter_inputs_stay_bf16_under_autocast():
    """peft copies each adapter's input to the adapter's fp32 (then autocast copies it back to
    bf16 for the matmul); with the switch the copy is gone and the output is the same."""
    from peft import LoraConfig, get_peft_model
    from torch.utils._python_dispatch import TorchDispatchMode

    class CountUpcasts(TorchDispatchMode):  # bf16 -> fp32 copies of activations (3-D)
        def __init__(self):
            super().__init__()
            self.n = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            x = args[0] if args else None
            if (
                func is torch.ops.aten._to_copy.default
                and isinstance(x, torch.Tensor)
                and x.dtype == torch.bfloat16
                and x.dim() == 3
                and kwargs.get("dtype") == torch.float32
            ):
                self.n += 1
            return func(*args, **kwargs)

    tok, model = _tiny()
    lm = get_peft_model(
        model.to(torch.bfloat16),
        LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False),
    )
    ids = torch.randint(3, len(tok), (2, 7))

    def run():
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16), CountUpcasts() as c:
            out = lm(input_ids=ids).logits.float()
        return out, c.n

    before, n_before = run()
    kernels.keep_adapter_inputs_in_autocast_dtype(lm)
    after, n_after = run()
    assert n_before - n_after == 4  # q_proj and v_proj in each of the 2 blocks
    torch.testing.assert_close(after, before)


TRIM_CHECK = """
import os, torch
from rankloop.lm import kernels

def rss():
    return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

# 2000 x 64 KiB tensors come from malloc's heap (below its mmap threshold); a small tensor
# after each keeps the freed ones from merging into the heap's top, which free() would trim
big, pins = [], []
for _ in range(2000):
    big.append(torch.ones(16 * 1024))
    pins.append(torch.ones(4))
del big
before = rss()
released = kernels.release_freed_memory()
print(released, before - rss())
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc_trim")
def test_release_freed_memory_hands_freed_heap_pages_back():
    # in a fresh interpreter: what a long test session did to the heap does not matter
    out = subprocess.run(
        [sys.executable, "-c", TRIM_CHECK], capture_output=True, text=True, check=True
    ).stdout.split()
    assert out[0] == "True"
    assert int(out[1]) > 64 * 2**20, out  # most of the 125 MiB freed goes back to the OS
