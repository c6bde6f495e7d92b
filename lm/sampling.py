"""Batched sampling from a causal LM: chat template, left padding, KV cache, stop at EOS.

Used for annotation candidates (`rankloop generate`) and for PPO rollouts. Batching is where the
speed is: one forward over B sequences costs little more than over one on a CPU, because the
decode step is bound by reading the weights, not by arithmetic. Prompts are sorted by length
before batching so a batch carries little padding.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from transformers import (
    LogitsProcessor,
    LogitsProcessorList,
    TemperatureLogitsWarper,
    TopPLogitsWarper,
)

from .device import autocast
from .seeds import seed_everything


@dataclass(frozen=True)
class Sample:
    """One sampled continuation."""

    text: str
    token_ids: tuple[int, ...]
    finished: bool  # True when the model emitted EOS before max_new_tokens


class InverseCDFSampler(LogitsProcessor):
    """Draws each row's next token and returns scores that are 0 there and -inf elsewhere.

    Placed last in `generate`'s logits processors with `do_sample=False`, greedy selection then
    picks the drawn token. The draw inverts the cumulative distribution with one uniform number
    per row: token = min{i : cdf_i > u}, u ~ U[0, cdf_V). That is the same distribution as
    `torch.multinomial(softmax(scores), 1)`, which on the CPU draws a random number per vocabulary
    entry and costs ~10 ms per step for 8 rows of SmolLM2's 49k tokens; this costs ~0.3 ms.
    Tokens of probability 0 (masked to -inf by top-p) are never drawn.
    """

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        cdf = scores.float().softmax(-1).cumsum(-1)  # (B, V)
        total = cdf[:, -1:].contiguous()  # (B, 1) ~1, up to rounding
        u = torch.rand(total.shape, device=cdf.device, dtype=cdf.dtype) * total  # (B, 1)
        token = torch.searchsorted(cdf, u, right=True)  # (B, 1) first index with cdf > u
        # u * total may round up to total: fall back to the last token of non-zero probability
        last = torch.searchsorted(cdf, total)  # (B, 1) first index with cdf >= total
        token = torch.minimum(token, last)
        out = torch.full_like(scores, float("-inf"))
        return out.scatter_(1, token, 0.0)


def sampling_kwargs(temperature: float, top_p: float = 1.0) -> dict:
    """`generate` keyword arguments for ancestral sampling (greedy when temperature is 0).

    Temperature and top-p are HF's own warpers; the draw itself is `InverseCDFSampler`.
    """
    if temperature == 0:
        return {"do_sample": False}
    procs = []
    if temperature != 1.0:
        procs.append(TemperatureLogitsWarper(temperature))
    if top_p < 1.0:
        procs.append(TopPLogitsWarper(top_p))
    procs.append(InverseCDFSampler())
    return {"do_sample": False, "logits_processor": LogitsProcessorList(procs)}


def encode_chats(tokenizer, chats: Sequence[list[dict]]) -> list[list[int]]:
    """Token ids of each conversation with the chat template and the assistant turn opened.

    A tokenizer without a chat template gets the plain text of the turns joined by newlines.
    """
    out = []
    for chat in chats:
        if tokenizer.chat_template:
            ids = tokenizer.apply_chat_template(
                chat, add_generation_prompt=True, tokenize=True, return_dict=False
            )
            if isinstance(ids, dict) or hasattr(ids, "input_ids"):
                ids = ids["input_ids"]
        else:
            ids = tokenizer("\n".join(m["content"] for m in chat) + "\n")["input_ids"]
        out.append(list(ids))
    return out


def left_pad(seqs: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad token lists into (input_ids, attention_mask), both (B, T)."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)  # (B, T)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)  # (B, T)
    for i, s in enumerate(seqs):
        ids[i, width - len(s) :] = torch.tensor(s, dtype=torch.long)
        mask[i, width - len(s) :] = 1
    return ids, mask


def repeats_of(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> int:
    """r > 1 when the rows come in runs of r identical rows (a prompt's samples side by side,
    as the optimisers with k samples per prompt lay them out), else 1."""
    B = input_ids.shape[0]
    for r in range(B, 1, -1):
        if B % r:
            continue
        ids, mask = input_ids.view(B // r, r, -1), attention_mask.view(B // r, r, -1)
        if bool((ids == ids[:, :1]).all()) and bool((mask == mask[:, :1]).all()):
            return r
    return 1


def generate_shared_prompts(model, input_ids, attention_mask, **kwargs) -> torch.Tensor:
    """`model.generate(input_ids=..., attention_mask=..., **kwargs)` for left-padded rows
    that repeat each prompt r times side by side (`repeats_of`): each distinct prompt but its
    last token runs through the model once, its KV cache is copied to its r rows, and
    `generate` goes on from there. The prompt is most of the tokens of a short rollout, so
    this saves about (r - 1) / r of that work (docs/benchmarks.md); the same distribution,
    the same tokens up to the rounding of a differently shaped matmul. With no repeats (or a
    1-token prompt), plain `generate`."""
    r = repeats_of(input_ids, attention_mask)
    if r == 1 or input_ids.shape[1] < 2:
        return model.generate(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
    ids, mask = input_ids[::r, :-1], attention_mask[::r, :-1]  # (B / r, L - 1)
    position_ids = (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 1)  # as generate's
    with torch.no_grad():
        cache = model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=position_ids,
            use_cache=True,
            logits_to_keep=1,
        ).cache
    cache.batch_repeat_interleave(r)  # (B, ...): each prompt's cache for its r rows
    return model.generate(input_ids=input_ids, attention_mask=attention_mask, cache=cache, **kwargs)


@torch.inference_mode()
def sample_batch(
    model,
    tokenizer,
    prompt_ids: Sequence[Sequence[int]],
    *,
    temperature: float,
    top_p: float,
    max_new_tokens: int,
    seed: int,
    bf16: bool = False,
) -> list[Sample]:
    """Sample one continuation for each tokenised prompt, in one batched `generate` call."""
    device = next(model.parameters()).device
    input_ids, attention_mask = left_pad(prompt_ids, tokenizer.pad_token_id)
    input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
    seed_everything(seed)
    sampling = sampling_kwargs(temperature, top_p)
    with autocast(device, bf16 and next(model.parameters()).dtype == torch.float32):
        out = model.generate(
            input_ids=input_ids,
            attention_mask=attention_mask,
            max_new_tokens=max_new_tokens,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
            use_cache=True,
            **sampling,
        )
    new = out[:, input_ids.shape[1] :].tolist()  # (B, <= max_new_tokens)
    eos = tokenizer.eos_token_id
    samples = []
    for row in new:
        finished = eos in row
        tokens = row[: row.index(eos)] if finished else row
        samples.append(
            Sample(
                text=tokenizer.decode(tokens, skip_special_tokens=True).strip(),
                token_ids=tuple(tokens),
                finished=finished,
            )
        )
    return samples


def plan_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Indices grouped into batches of similar length (longest first), to cut padding."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def sample_many(
    model,
    tokenizer,
    chats: Sequence[list[dict]],
    *,
    temperature: float,
    top_p: float,
    max_new_tokens: int,
    batch_size: int,
    seed_for: Callable,
    bf16: bool = False,
    on_batch: Callable | None = None,
) -> None:
    """Sample one continuation per chat in length-sorted batches.

    `seed_for(indices)` gives the torch seed for a batch of chat indices; `on_batch(indices,
    samples, seed)` receives each finished batch (so the caller can store it at once and a run
    killed midway keeps what it finished).
    """
    prompt_ids = encode_chats(tokenizer, chats)
    for batch in plan_batches([len(p) for p in prompt_ids], batch_size):
        seed = seed_for(batch)
        samples = sample_batch(
            model,
            tokenizer,
            [prompt_ids[i] for i in batch],
            temperature=temperature,
            top_p=top_p,
            max_new_tokens=max_new_tokens,
            seed=seed,
            bf16=bf16,
        )
        if on_batch:
            on_batch(batch, samples, seed)
