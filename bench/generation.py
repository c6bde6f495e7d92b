"""Candidate-generation throughput: rankloop's batched sampler vs a plain one-at-a-time loop.

Both run in this one process on the same prompts and sampling settings, side by side:
  anchor   : `model.generate` one prompt at a time, fp32 (what a first script would do)
  rankloop : `lm.sampling.sample_many` (length-sorted batches, KV cache, bf16 weights where the
             CPU has bf16 units), at one or more batch sizes
Throughput counts only real new tokens (up to and including EOS), so the work a batch wastes on
rows that already finished counts against it.

Quality check: every sample is re-scored under the fp32 model (mean log-prob per token of the
sampled tokens, given the prompt): samples from the bf16 batched sampler should be as likely
under the fp32 model as the anchor's. Also reported: EOS rate, mean length, distinct-2.

Usage:  python bench/generation.py [--prompts 16] [--max-new-tokens 64] [--batch-sizes 8,16] [--reps 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import torch

from rankloop.data.io import bundled_prompts
from rankloop.lm.device import cpu_supports_bf16
from rankloop.lm.loading import DEFAULT_MODEL, load_causal_lm, load_tokenizer
from rankloop.lm.sampling import encode_chats, sample_batch, sample_many


def load_prompts(n: int) -> list[list[dict]]:
    rows = [json.loads(line) for line in bundled_prompts().read_text().splitlines()]
    chats = []
    for r in rows[:n]:
        p = r["prompt"]
        chats.append([{"role": "user", "content": p}] if isinstance(p, str) else p)
    return chats


@torch.inference_mode()
def fp32_logprob(model, tok, chats, samples) -> float:
    """Mean log-prob per sampled token under the fp32 model (higher = more model-like)."""
    total, count = 0.0, 0
    for ids, s in zip(encode_chats(tok, chats), samples):
        gen = list(s.token_ids) + ([tok.eos_token_id] if s.finished else [])
        if not gen:
            continue
        x = torch.tensor([ids + gen])
        logits = model(x).logits[0, len(ids) - 1 : -1].float()  # (T_gen, V)
        lp = torch.log_softmax(logits, -1).gather(-1, torch.tensor(gen)[:, None])
        total += lp.sum().item()
        count += len(gen)
    return total / max(count, 1)


def summary(name, samples, seconds, model, tok, chats) -> dict:
    tokens = sum(len(s.token_ids) + int(s.finished) for s in samples)
    bigrams = [tuple(s.token_ids[i : i + 2]) for s in samples for i in range(len(s.token_ids) - 1)]
    return {
        "system": name,
        "seconds": round(seconds, 2),
        "new_tokens": tokens,
        "tokens_per_s": round(tokens / seconds, 1),
        "eos_rate": round(sum(s.finished for s in samples) / len(samples), 3),
        "mean_len": round(tokens / len(samples), 1),
        "distinct2": round(len(set(bigrams)) / max(len(bigrams), 1), 3),
        "fp32_logprob_per_token": round(fp32_logprob(model, tok, chats, samples), 3),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--batch-sizes", default="8,16")
    ap.add_argument("--temperature", type=float, default=0.7)
    ap.add_argument("--top-p", type=float, default=0.95)
    ap.add_argument("--reps", type=int, default=3, help="runs of each system (median kept)")
    args = ap.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)

    tok = load_tokenizer(DEFAULT_MODEL)
    fp32 = load_causal_lm(DEFAULT_MODEL)
    chats = load_prompts(args.prompts)
    kw = {
        "temperature": args.temperature,
        "top_p": args.top_p,
        "max_new_tokens": args.max_new_tokens,
    }
    ids = encode_chats(tok, chats)
    bf16 = cpu_supports_bf16()
    fast = load_causal_lm(DEFAULT_MODEL, dtype=torch.bfloat16) if bf16 else fp32

    def plain_loop():
        return [sample_batch(fp32, tok, [i], seed=k, **kw)[0] for k, i in enumerate(ids)]

    def batched(model, bs):
        def run():
            out = [None] * len(chats)

            def keep(batch, samples, seed):
                for i, s in zip(batch, samples):
                    out[i] = s

            sample_many(
                model,
                tok,
                chats,
                batch_size=bs,
                seed_for=lambda b: b[0],
                bf16=False,
                on_batch=keep,
                **kw,
            )
            return out

        return run

    systems = [("plain loop, batch 1, fp32", plain_loop)]
    for bs in [int(b) for b in args.batch_sizes.split(",")]:
        systems.append((f"rankloop, batch {bs}, fp32", batched(fp32, bs)))
        if bf16:
            systems.append((f"rankloop, batch {bs}, bf16", batched(fast, bs)))

    # The machine is shared: run the systems in turn, `--reps` times, and keep each one's median
    # time, so a burst of load elsewhere hits the anchor and rankloop alike.
    # CPU seconds (all threads) are reported too: under load from other processes they grow far
    # less than wall time, so their ratio is the steadier one.
    times: dict[str, list[float]] = {name: [] for name, _ in systems}
    cpu: dict[str, list[float]] = {name: [] for name, _ in systems}
    samples = {}
    for _ in range(args.reps):
        for name, fn in systems:
            t, c = time.perf_counter(), time.process_time()
            samples[name] = fn()
            times[name].append(time.perf_counter() - t)
            cpu[name].append(time.process_time() - c)
    results = [
        summary(name, samples[name], statistics.median(times[name]), fp32, tok, chats)
        for name, _ in systems
    ]
    for r in results:
        r["tokens_per_cpu_s"] = round(r["new_tokens"] / statistics.median(cpu[r["system"]]), 1)

    base = results[0]["tokens_per_s"]
    base_cpu = results[0]["tokens_per_cpu_s"]
    print(
        f"# machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"torch {torch.__version__}, bf16 units: {bf16}"
    )
    print(
        f"# {args.prompts} bundled prompts, max_new_tokens={args.max_new_tokens}, "
        f"temperature={args.temperature}, top_p={args.top_p}"
    )
    cols = [
        "system",
        "tokens_per_s",
        "speedup",
        "tokens_per_cpu_s",
        "cpu_speedup",
        "seconds",
        "new_tokens",
        "eos_rate",
        "mean_len",
        "distinct2",
        "fp32_logprob_per_token",
    ]
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for r in results:
        r["speedup"] = f"{r['tokens_per_s'] / base:.1f}x"
        r["cpu_speedup"] = f"{r['tokens_per_cpu_s'] / base_cpu:.1f}x"
        print("| " + " | ".join(str(r[c]) for c in cols) + " |")


if __name__ == "__main__":
    main()
