"""Online DPO's update (phases 5 and 6 of `ppo/train.py`'s scaffold): DPO on pairs of the
current policy's own samples (Xiong et al. 2024, "Iterative Preference Learning from Human
Feedback", arXiv:2312.11456; RLHFlow's online iterative RLHF; Guo et al. 2024, "Direct
Language Model Alignment from Online AI Feedback").

The scaffold samples `odpo_k` responses to each prompt and scores them. Each prompt's best and
worst sample by the score make its pair, kept when their scores differ by at least
`odpo_margin` (`core.best_worst_pairs`): samples that score alike teach only the reward's noise.
The score is the reward's, not the KL-shaped reward PPO and RLOO use: DPO's beta already
carries the KL to the reference (its loss is the KL-regularised objective's own), so
subtracting the KL again would count it twice and would let a long, costly sample lose its
pair to a short one on KL alone. The loss is `core.dpo_loss` of the policy's sequence
log-probs against the reference's (the scaffold's: the base weights, adapter disabled),
`ppo_epochs` passes over shuffled mini-batches of `mini_batch_size` prompts' pairs.

In a round, the pairs people (and simulated annotators) labelled on the round's candidates,
which the round's start policy sampled, are DPO pairs too and need no reward model:
`train_policy(..., preferences=...)` hands them to this update, which adds `odpo_label_pairs`
of them to each step's mini-batches, cycling through them in a seeded order.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from rankloop.data.records import Preference
from rankloop.lm.device import autocast
from rankloop.lm.sampling import encode_chats, left_pad
from rankloop.lm.seeds import derive_seed

from . import core
from .config import PPOConfig
from .train import (
    CriticFreeUpdate,
    Reference,
    Rollout,
    StepContext,
    _sequence_logprobs,
    forward_minibatch,
    optimizer_step,
    prompts_for_step,
    reference_pass,
    step_seed,
)


@dataclass
class LabelPairs:
    """Labelled pairs as token ids: the prompt with the chat template (assistant turn opened),
    the chosen and the rejected response each ending with EOS."""

    queries: list[list[int]]
    chosen: list[list[int]]
    rejected: list[list[int]]

    def __len__(self) -> int:
        return len(self.queries)


def encode_pairs(tokenizer, preferences: Sequence[Preference]) -> LabelPairs:
    """Tokenise the untied pairs of `preferences` (DPO has no tie outcome), as `train_dpo`
    does."""
    pairs = [p for p in preferences if not p.tie]
    eos = [tokenizer.eos_token_id]
    ids = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"] + eos
    return LabelPairs(
        encode_chats(tokenizer, [p.prompt.as_chat() for p in pairs]),
        [ids(p.chosen) for p in pairs],
        [ids(p.rejected) for p in pairs],
    )


def pairs_rollout(pairs: LabelPairs, idx: Sequence[int], pad_id: int, device) -> Rollout:
    """Pairs `idx` as the rows of a rollout batch, the chosen responses first, then the
    rejected ones (2n rows): left-padded prompts, right-padded responses, as phase 1 lays
    them out, so the reference pass and the update's forward read them as samples."""
    queries = [pairs.queries[i] for i in idx] * 2
    responses = [pairs.chosen[i] for i in idx] + [pairs.rejected[i] for i in idx]
    query, query_mask = left_pad(queries, pad_id)  # (2n, Q)
    T = max(len(r) for r in responses)
    response = torch.full((len(responses), T), pad_id, dtype=torch.long)  # (2n, T)
    mask = torch.zeros((len(responses), T), dtype=torch.bool)  # (2n, T)
    for i, r in enumerate(responses):
        response[i, : len(r)] = torch.tensor(r, dtype=torch.long)
        mask[i, : len(r)] = True
    return Rollout(
        input_ids=torch.cat([query, response], 1).to(device),
        attention_mask=torch.cat([query_mask, mask.long()], 1).to(device),
        response=response.to(device),
        mask=mask.to(device),
        finished=torch.ones(len(responses), dtype=torch.bool, device=device),
        texts=[],
    )


def sequence_logps(logprobs: Tensor, mask: Tensor) -> Tensor:
    """Summed log-prob of each response, padding left out: (B, T) -> (B,)."""
    return torch.where(mask.bool(), logprobs, torch.zeros_like(logprobs)).sum(-1)


DPO_STATS = {
    "dpo/loss": "policy/dpo_loss",
    "dpo/chosen_reward": "policy/dpo_chosen_reward",
    "dpo/rejected_reward": "policy/dpo_rejected_reward",
    "dpo/margin": "policy/dpo_margin",
    "dpo/accuracy": "policy/dpo_accuracy",
}
"""`core.dpo_loss`'s stats under the update's names (docs/ppo.md, "Metrics")."""


class OnlineDPOUpdate(CriticFreeUpdate):
    """Online DPO: k responses per prompt, DPO on the best-versus-worst pair of each, plus
    the round's labelled pairs."""

    name = "odpo"
    samples_field = "odpo_k"
    takes_preferences = True
    # RTO's token rewards mean nothing to the DPO loss either
    refused = (*CriticFreeUpdate.refused, "rto")

    def __init__(self, config: PPOConfig, tokenizer, preferences: Sequence[Preference] = ()):
        super().__init__(config, tokenizer)
        self.pad_id = tokenizer.pad_token_id
        self.labels = encode_pairs(tokenizer, preferences)

    @staticmethod
    def critic_origin(critic) -> str:
        return "none (DPO: the reference's log-probs are the baseline)"

    def step_labels(self, ctx: StepContext, step: int) -> tuple[Rollout, Reference] | None:
        """This step's labelled pairs on this process, as a rollout batch with its reference
        pass: `odpo_label_pairs` of them (at most all), epochs over a seeded order, the same
        at every resume (`prompts_for_step`)."""
        n = min(self.config.odpo_label_pairs, len(self.labels))
        if n == 0:
            return None
        world = ctx.accelerator.num_processes
        seed = derive_seed(self.config.seed, "label-pairs")
        idx = prompts_for_step(len(self.labels), n, step, ctx.rank, world, seed)
        batch = pairs_rollout(self.labels, idx, self.pad_id, ctx.device)
        ref = reference_pass(ctx.raw_actor, None, batch, self.config, ctx.device, ctx.bf16, False)
        return batch, ref

    def policy_logps(self, ctx: StepContext, batch: Rollout, ref: Reference, rows: Tensor):
        """Sequence log-probs (b,) of rows `rows` under the policy, with gradient."""
        logits, _ = forward_minibatch(ctx.model, batch, ref, rows, value=False)
        logprobs, _ = _sequence_logprobs(
            logits[:, :-1], batch.response[rows], self.config.temperature, keep_logits=False
        )  # (b, T)
        return sequence_logps(logprobs, batch.mask[rows])  # (b,)

    def step(
        self,
        ctx: StepContext,
        step: int,
        batch: Rollout,
        ref: Reference,
        rewards: Tensor,
        scores: Tensor,
    ) -> dict[str, Tensor]:
        """Phases 5 and 6 on one rollout batch of B = prompts x k responses. `rewards` (the
        KL-shaped ones) are not used: the pairs come from `scores` (B,), DPO's beta carries
        the KL."""
        config, device, k = self.config, ctx.device, self.samples_per_prompt

        # ---- 5. pairs: each prompt's best and worst sample, and this step's labelled pairs ----
        with torch.no_grad():
            chosen, rejected, gap, kept = core.best_worst_pairs(
                scores.float(), k, config.odpo_margin
            )  # (P,) each
            ref_seq = sequence_logps(ref.ref_logprobs, batch.mask)  # (B,)
            labelled = self.step_labels(ctx, step)
            n_labels = labelled[0].response.shape[0] // 2 if labelled else 0
            if labelled:
                label_ref = sequence_logps(labelled[1].ref_logprobs, labelled[0].mask)  # (2L,)

        # ---- 6. update: the DPO loss over ppo_epochs of shuffled mini-batches ----------------
        n_prompts = chosen.shape[0]
        n_chunks = max(1, n_prompts // config.mini_batch_size)  # the same on every process
        shuffle = torch.Generator().manual_seed(step_seed(config.seed, step, ctx.rank, "shuffle"))
        plan = []  # per epoch and mini-batch: (its prompts, its labelled pairs)
        for _epoch in range(config.ppo_epochs):
            prompts = torch.randperm(n_prompts, generator=shuffle).tensor_split(n_chunks)
            labels = torch.randperm(n_labels, generator=shuffle).tensor_split(n_chunks)
            plan.append(list(zip(prompts, labels)))
        # a mini-batch no process has a pair for is skipped: a step on zero gradients would
        # still move the adapter (AdamW's momentum and weight decay). Every process runs the
        # same forwards (DDP's collectives must match): the sampled pairs' forward wherever any
        # process kept a pair, on a stand-in pair at weight 0 where this one kept none; the
        # labelled pairs' forward, whose count is the same on every process.
        pair_counts = torch.tensor(
            [[int(kept[p].sum()) for p, _ in epoch] for epoch in plan],
            dtype=torch.float32,
            device=device,
        )  # (epochs, chunks)
        pair_counts = ctx.accelerator.reduce(pair_counts, reduction="sum")
        stats_sum: dict[str, Tensor] = {}
        n_mb = 0
        for e, epoch in enumerate(plan):
            for c, (p, lab) in enumerate(epoch):
                if pair_counts[e, c] == 0 and len(lab) == 0:
                    continue
                p = p.to(device)[kept[p.to(device)]]  # (p,) this mini-batch's kept prompts
                stand_in = pair_counts[e, c] > 0 and len(p) == 0  # another process has pairs
                idle = len(p) == 0 and len(lab) == 0  # nothing of this process's own to learn
                pc, pr, rc, rr = [], [], [], []
                keep_graph = None  # the stand-in pair's log-probs, weighted 0 in the loss
                with autocast(device, ctx.bf16):
                    if stand_in:
                        zero = torch.zeros(1, dtype=torch.long, device=device)
                        rows = torch.cat([chosen[zero], rejected[zero]])  # (2,)
                        keep_graph = self.policy_logps(ctx, batch, ref, rows).sum() * 0.0
                    elif len(p):
                        rows = torch.cat([chosen[p], rejected[p]])  # (2p,)
                        pol = self.policy_logps(ctx, batch, ref, rows)  # (2p,)
                        pc.append(pol[: len(p)])
                        pr.append(pol[len(p) :])
                        rc.append(ref_seq[chosen[p]])
                        rr.append(ref_seq[rejected[p]])
                    if len(lab):
                        lab = lab.to(device)
                        rows = torch.cat([lab, lab + n_labels])  # (2l,) chosen, rejected
                        pol = self.policy_logps(ctx, *labelled, rows)  # (2l,)
                        pc.append(pol[: len(lab)])
                        pr.append(pol[len(lab) :])
                        rc.append(label_ref[lab])
                        rr.append(label_ref[lab + n_labels])
                    if idle:
                        loss, mb_stats = keep_graph, {}
                    else:
                        loss, mb_stats = core.dpo_loss(
                            torch.cat(pc),
                            torch.cat(pr),
                            torch.cat(rc),
                            torch.cat(rr),
                            config.odpo_beta,
                        )
                        if keep_graph is not None:
                            loss = loss + keep_graph
                ctx.accelerator.backward(loss)
                optimizer_step(
                    ctx.accelerator, ctx.raw_actor, None, ctx.optimizer, config, train_policy=True
                )
                if not idle:
                    for name, v in mb_stats.items():
                        stats_sum[name] = stats_sum.get(name, 0.0) + v.float()
                    n_mb += 1

        # without a pair on this process the DPO stats have no value: NaN, left out of curves
        nan = torch.tensor(float("nan"))
        stats = {ours: stats_sum[name] / n_mb if n_mb else nan for name, ours in DPO_STATS.items()}
        with torch.no_grad():
            stats.update(
                {
                    "policy/pairs_kept": kept.float().mean(),
                    "policy/score_gap": gap.mean(),
                    "policy/label_pairs": torch.tensor(float(n_labels)),
                    "policy/epochs": torch.tensor(float(config.ppo_epochs)),
                }
            )
        return stats
