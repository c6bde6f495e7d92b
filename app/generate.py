"""Candidate generation: sample K responses per prompt from a round's policy, make comparisons.

Resumable: each finished batch is committed at once, and a run only samples the (prompt, sample)
slots that are still missing, so a run killed midway and started again finishes the job without
doubling anything.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from tqdm.auto import tqdm

from rankloop.data.records import Comparison, Response, Sampling, content_hash
from rankloop.data.store import Store
from rankloop.lm.device import pick_device, use_bf16, weights_dtype
from rankloop.lm.loading import load_causal_lm, load_tokenizer
from rankloop.lm.sampling import sample_many
from rankloop.lm.seeds import derive_seed
from rankloop.lm.vllm_engine import VLLMSampler

from .config import GenerateConfig


@dataclass(frozen=True)
class GenerateReport:
    policy: str
    round: int
    prompts: int
    generated: int
    skipped_existing: int
    comparisons_created: int
    unfinished: int


def make_comparisons(store: Store, round: int, k: int, prompt_ids=None) -> int:
    """Group each prompt's responses of `round` into comparisons of k (in sample order).

    Responses already in a comparison of this round are left alone; a last group smaller than
    2 waits for more responses. Returns how many comparisons were created.
    """
    taken = {rid for c in store.comparisons(round=round) for rid in c.response_ids}
    by_prompt: dict[int, list[int]] = {}
    for r in store.responses(round=round):
        if r.id not in taken and (prompt_ids is None or r.prompt_id in prompt_ids):
            by_prompt.setdefault(r.prompt_id, []).append(r.id)
    new = []
    for pid, rids in by_prompt.items():
        for i in range(0, len(rids) - 1, k):
            group = rids[i : i + k]
            if len(group) >= 2:
                new.append(Comparison(pid, tuple(group), round))
    store.add_comparisons(new)
    return len(new)


def make_cross_round_comparisons(
    store: Store,
    round: int,
    opponents: Sequence[int],
    prompt_ids: Sequence[int],
    per_prompt: int,
    seed: int = 0,
) -> int:
    """Comparisons of `round`'s generated responses against earlier rounds' (win-rates).

    For each prompt and each distinct opponent round, `per_prompt` pairwise comparisons of one
    of its round-`round` responses against one of the opponent round's responses to the same
    prompt. Successive comparisons of a prompt take successive new responses (so with 2 or more
    samples the new responses facing round R and round 0 differ) and successive opponent
    responses; each pair's order is shuffled (seeded: the same call gives the same rows, and a
    comparison made before is not made again). They belong to `round` and are labeled blind,
    like every comparison. Returns how many were created.
    """
    by_round: dict[int, dict[int, list[int]]] = {}
    for rnd in {round, *opponents}:
        per: dict[int, list[int]] = {}
        for r in store.responses(round=rnd):
            if r.source == "generated" and r.prompt_id in set(prompt_ids):
                per.setdefault(r.prompt_id, []).append(r.id)
        by_round[rnd] = per
    existing = {c.hash for c in store.comparisons(round=round)}
    new = []
    for pid in sorted(set(prompt_ids)):
        mine = by_round[round].get(pid, [])
        slot = 0
        for opp in dict.fromkeys(o for o in opponents if o != round):  # distinct, in order
            theirs = by_round[opp].get(pid, [])
            for i in range(per_prompt if mine and theirs else 0):
                pair = [mine[slot % len(mine)], theirs[i % len(theirs)]]
                slot += 1
                random.Random(content_hash(seed, pid, sorted(pair))).shuffle(pair)
                c = Comparison(pid, tuple(pair), round)
                if c.hash not in existing:
                    existing.add(c.hash)
                    new.append(c)
    store.add_comparisons(new)
    return len(new)


def generate(
    store: Store,
    policy: str,
    config: GenerateConfig,
    *,
    round: int = 0,
    k: int = 2,
    limit: int | None = None,
    model=None,
    tokenizer=None,
    progress: bool = True,
    on_batch: Callable[[int], None] | None = None,
    device: str = "auto",
    policy_name: str | None = None,
) -> GenerateReport:
    """Sample `config.n` responses per prompt (the first `limit` prompts) and make comparisons.

    The responses record `policy_name` (default `policy`: the path it was loaded from); a
    project passes the form its store keeps (`Project.stored`), so a moved project resumes.

    `model` / `tokenizer` may be passed in (tests pass a tiny random model); otherwise `policy`
    is loaded on `device` (`[runtime] device`: 'auto' is a GPU when there is one), or served by
    vLLM with `config.engine = "vllm"`. `on_batch(n)` is called after each batch is committed,
    with the responses written so far in this run.
    """
    prompts = store.prompts(limit=limit)
    name = policy_name or policy
    have = store.generated_counts(round, name)
    todo = [(p, i) for p in prompts for i in range(have.get(p.id, 0), config.n)]
    skipped = sum(min(have.get(p.id, 0), config.n) for p in prompts)
    unfinished = 0
    if todo:
        if tokenizer is None:
            tokenizer = load_tokenizer(policy)
        sampler = None
        if model is None:
            where = pick_device(device)
            bf16 = use_bf16(config.bf16, where)
            if config.engine == "vllm":
                sampler = VLLMSampler(policy, bf16=bf16, seed=config.seed)
            else:
                # Sampling reads every weight once per token: bf16 weights halve that traffic
                # and use bf16 matmul units (autocast would re-cast the weights every step).
                model = load_causal_lm(policy, dtype=weights_dtype(bf16)).to(where)
        else:  # a caller's model is left as it is; sample_batch autocasts an fp32 one
            bf16 = use_bf16(config.bf16, next(model.parameters()).device)
        tokenizer.padding_side = "left"
        bar = tqdm(
            total=len(todo), desc=f"generate round {round}", unit="resp", disable=not progress
        )

        def seed_for(batch):
            # not the policy's path: a project moved or rebuilt elsewhere draws the same numbers
            return derive_seed(config.seed, round, [(todo[i][0].id, todo[i][1]) for i in batch])

        done = 0

        def save_batch(batch, samples, seed):
            nonlocal unfinished, done
            sampling = Sampling(
                temperature=config.temperature,
                top_p=config.top_p,
                max_new_tokens=config.max_new_tokens,
                seed=seed,
            )
            store.add_responses(
                Response(
                    prompt_id=todo[i][0].id,
                    text=s.text,
                    round=round,
                    policy=name,
                    source="generated",
                    sample_index=todo[i][1],
                    sampling=sampling,
                    finished=s.finished,
                )
                for i, s in zip(batch, samples)
            )
            unfinished += sum(not s.finished for s in samples)
            done += len(batch)
            bar.update(len(batch))
            if on_batch is not None:
                on_batch(done)

        chats = [p.as_chat() for p, _ in todo]
        settings = {
            "temperature": config.temperature,
            "top_p": config.top_p,
            "max_new_tokens": config.max_new_tokens,
            "batch_size": config.batch_size,
            "seed_for": seed_for,
            "on_batch": save_batch,
        }
        if sampler is not None:
            sampler.sample_many(tokenizer, chats, **settings)
        else:
            sample_many(model, tokenizer, chats, bf16=bf16, **settings)
        bar.close()
    created = make_comparisons(store, round, k, prompt_ids={p.id for p in prompts})
    return GenerateReport(
        policy=name,
        round=round,
        prompts=len(prompts),
        generated=len(todo),
        skipped_existing=skipped,
        comparisons_created=created,
        unfinished=unfinished,
    )
