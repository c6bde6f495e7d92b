"""Attention forward + backward on the CPU: SDPA in bf16 (what bf16 autocast gives) vs in fp32
(`rankloop.lm.kernels.rankloop_sdpa`), with the gradient error of each against fp64.

Shapes of the reward trainer's packed batches with SmolLM2-135M: 8 rows of T tokens, 9 query
heads sharing 3 key/value heads, head size 64, a block mask (two responses after a shared
prompt, causal inside each). Both variants in this one process, interleaved, median of --reps.

Usage:  flock /tmp/rankloop-cpu.lock python bench/attention.py [--lengths 100,150,300]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F


def block_mask(t: int) -> torch.Tensor:
    """(1, 1, t, t) bool: a prompt of t/4 tokens, then two responses that see it and themselves."""
    p = t // 4
    seg = torch.zeros(t, dtype=torch.long)
    seg[p : p + (t - p) // 2] = 1
    seg[p + (t - p) // 2 :] = 2
    causal = torch.ones(t, t, dtype=torch.bool).tril()
    return (causal & ((seg[None, :] == 0) | (seg[None, :] == seg[:, None])))[None, None]


def attention(q, k, v, mask, fp32: bool):
    if fp32:
        out = F.scaled_dot_product_attention(
            q.float(), k.float(), v.float(), attn_mask=mask, enable_gqa=True
        )
        return out.to(q.dtype)
    rep = q.shape[1] // k.shape[1]  # transformers repeats the key/value heads when masked
    k, v = (x.repeat_interleave(rep, dim=1) for x in (k, v))
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


def run(t: int, reps: int) -> dict:
    torch.manual_seed(0)
    b, h, hkv, d = 8, 9, 3, 64
    mask = block_mask(t)
    q64 = torch.randn(b, h, t, d, dtype=torch.float64)
    k64, v64 = (torch.randn(b, hkv, t, d, dtype=torch.float64) for _ in range(2))
    g64 = torch.randn(b, h, t, d, dtype=torch.float64)
    ref = [x.clone().requires_grad_() for x in (q64, k64, v64)]
    ref_grads = torch.autograd.grad(attention(*ref, mask, fp32=False), ref, g64)
    times = {"bf16": [], "fp32": []}
    errors = {}
    for _ in range(reps):
        for name, series in times.items():
            xs = [x.to(torch.bfloat16).requires_grad_() for x in (q64, k64, v64)]
            t0 = time.perf_counter()
            out = attention(*xs, mask, fp32=name == "fp32")
            grads = torch.autograd.grad(out, xs, g64.to(torch.bfloat16))
            series.append(time.perf_counter() - t0)
            errors[name] = max(
                float((g.double() - r).abs().max() / r.abs().max())
                for g, r in zip(grads, ref_grads)
            )
    med = {k: statistics.median(v) * 1000 for k, v in times.items()}
    return {
        "t": t,
        "bf16_ms": med["bf16"],
        "fp32_ms": med["fp32"],
        "speedup": med["bf16"] / med["fp32"],
        "bf16_rel_err": errors["bf16"],
        "fp32_rel_err": errors["fp32"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lengths", default="100,150,300")
    ap.add_argument("--reps", type=int, default=20)
    args = ap.parse_args()
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; 8 x 9 heads (3 kv), "
        f"head 64; forward + backward per layer, median of {args.reps}"
    )
    print("| T | SDPA bf16 (ms) | SDPA fp32 (ms) | speed-up | grad rel. error bf16 | fp32 |")
    print("|---:|---:|---:|---:|---:|---:|")
    for t in map(int, args.lengths.split(",")):
        r = run(t, args.reps)
        print(
            f"| {r['t']} | {r['bf16_ms']:.1f} | {r['fp32_ms']:.1f} | {r['speedup']:.2f}x | "
            f"{r['bf16_rel_err']:.1e} | {r['fp32_rel_err']:.1e} |"
        )


if __name__ == "__main__":
    main()
