"""Scoring (prompt, response) texts with a saved reward model: the contract PPO codes against.

    scorer = RewardScorer.from_pretrained("rounds/0/reward")
    r = scorer.score(prompts, responses)          # (N,) raw scores, float32, CPU
    r_norm = (r - scorer.mean) / scorer.std        # normalised with the training statistics

An ensemble (`[reward] ensemble = N`) scores with every member: `score_members` gives (N, M)
and `score` their aggregate, the one saved with the model (`[reward] ensemble_aggregate`: the
mean, mean - k * std, or the worst member; `reward.ensemble`), so the policy stage optimises
the conservative score without knowing about members; `mean` / `std` are the aggregate's.

Prompts are `Prompt` records, strings (one user turn) or lists of {role, content} dicts;
responses are decoded strings. The reward model formats each pair with its own tokenizer's chat
template (`rankloop.reward.model.format_text`), exactly as in training, so the policy's
tokenizer does not matter.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch

from rankloop.lm.device import autocast, pick_device, use_bf16, weights_dtype

from .ensemble import aggregate_scores, unfold_members
from .model import (
    PromptLike,
    format_text,
    load_backbone,
    load_reward_tokenizer,
    load_saved,
    right_pad,
    to_chat,
    tokenize,
)

STATS_FILE = "reward_stats.json"
PROBE_FILE = "probe.json"
PACK_MAX = 8  # responses packed in one row at most: its attention grows with the square


def prompt_runs(prompts: Sequence[PromptLike], most: int) -> list[list[int]]:
    """Indices grouped by identical prompt, in order of first appearance, in runs of at most
    `most` (each run becomes one packed row)."""
    groups: dict[str, list[int]] = {}
    for i, p in enumerate(prompts):
        groups.setdefault(json.dumps(to_chat(p), sort_keys=True), []).append(i)
    return [g[j : j + most] for g in groups.values() for j in range(0, len(g), most)]


class RewardScorer:
    """A saved reward model ready to score batches of decoded (prompt, response) pairs."""

    def __init__(
        self,
        model,
        tokenizer,
        device: torch.device,
        batch_size: int = 16,
        bf16: bool = False,
        mean: float = 0.0,
        std: float = 1.0,
        max_length: int = 512,
        aggregate: str | None = None,
        k: float | None = None,
    ):
        self.model = model.to(device).eval()
        entry = unfold_members(self.model) or {}  # an ensemble's members, from its config
        self.members = int(entry.get("members", 1))
        """Ensemble members (1: a single model)."""
        self.aggregate = aggregate or entry.get("aggregate", "mean")
        """How `score` combines the members: 'mean', 'mean_minus_std' or 'min'."""
        self.k = float(entry.get("k", 1.0) if k is None else k)
        """k of 'mean_minus_std'."""
        self.tokenizer = tokenizer
        self.device = device
        self.batch_size = batch_size
        self.bf16 = bf16
        self.mean = mean
        """Mean reward over the training data (0.0 when the model has no reward_stats.json)."""
        self.std = std
        """Std of the reward over the training data (1.0 when absent)."""
        self.max_length = max_length

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        device: str | torch.device | None = None,
        batch_size: int = 16,
        bf16: str = "auto",
    ) -> RewardScorer:
        """Load `path` (a folder written by `rankloop train-reward`, or any sequence-
        classification checkpoint with one label). `device`: as `[runtime] device`, 'auto'
        (None) taking a GPU when there is one (`lm.device.pick_device`)."""
        device = pick_device(str(device) if device is not None else "auto")
        tokenizer = load_reward_tokenizer(str(path))
        bf16_on = use_bf16(bf16, device)
        # under bf16 autocast the matmuls see bf16 weights anyway: store them so (half the
        # memory, no cast per forward), as the policy's frozen base is stored
        model = load_saved(path, dtype=weights_dtype(bf16_on))
        if model.config.pad_token_id is None:
            model.config.pad_token_id = tokenizer.pad_token_id
        mean, std = read_stats(path)
        max_length = min(tokenizer.model_max_length, 1 << 16)
        return cls(model, tokenizer, device, batch_size, bf16_on, mean, std, max_length)

    def score(self, prompts: Sequence[PromptLike], responses: Sequence[str]) -> torch.Tensor:
        """Raw reward of each (prompt, response): a float32 CPU tensor (N,), in input order; an
        ensemble's aggregate of its members (`self.aggregate`)."""
        return aggregate_scores(self.score_members(prompts, responses), self.aggregate, self.k)

    @torch.no_grad()
    def score_members(
        self, prompts: Sequence[PromptLike], responses: Sequence[str]
    ) -> torch.Tensor:
        """Every member's raw reward of each (prompt, response): float32 CPU (N, M), M = 1 for
        a single model."""
        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
        if not responses:
            return torch.zeros(0, self.members)
        texts = [format_text(self.tokenizer, p, r) for p, r in zip(prompts, responses)]
        ids = tokenize(self.tokenizer, texts, self.max_length)
        runs = prompt_runs(prompts, PACK_MAX)
        if max(len(r) for r in runs) > 1 and self._decoder_only():
            return self._score_packed(ids, runs)
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))  # little padding per batch
        out = torch.empty(len(ids), self.members)
        for start in range(0, len(order), self.batch_size):
            idx = order[start : start + self.batch_size]
            input_ids, mask = right_pad([ids[i] for i in idx], self.tokenizer.pad_token_id)
            with autocast(self.device, self.bf16):
                logits = self.model(
                    input_ids=input_ids.to(self.device),
                    attention_mask=mask.to(self.device),
                    use_cache=False,
                ).logits  # (b, M)
            out[idx] = logits.float().cpu()
        return out

    def _decoder_only(self) -> bool:
        """A causal (decoder-only) architecture: a response then sees only what precedes it,
        so packing a prompt's responses in one row gives each its score alone."""
        from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

        config = getattr(
            self.model, "config", None
        )  # None: a wrapper (ScorerReward's shared critic)
        return getattr(config, "model_type", None) in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    def _score_packed(self, ids: list[list[int]], runs: list[list[int]]) -> torch.Tensor:
        """Scores (N, M) with each run of a prompt's responses packed in one row, as the
        reward trainer packs a comparison (`reward.train.pack`): the formatted prompt once,
        then each response, a block mask, positions continuing from the prompt. The prompt
        runs once instead of once per response (policy stages score k samples of a prompt);
        each score is what the response gets alone, up to the rounding of other shapes."""
        from .train import RewardModule, pack

        module = RewardModule(self.model, 0.0)
        rows = sorted(runs, key=lambda run: sum(len(ids[i]) for i in run))  # similar lengths
        out = torch.empty(len(ids), self.members)
        batch: list[list[int]] = []
        for n, run in enumerate(rows):
            batch.append(run)
            if n + 1 < len(rows) and sum(map(len, batch)) + len(rows[n + 1]) <= self.batch_size:
                continue
            input_ids, position_ids, mask, ends, _ = pack(
                [[ids[i] for i in r] for r in batch], self.tokenizer.pad_token_id
            )
            with autocast(self.device, self.bf16):
                scores = module(
                    input_ids.to(self.device),
                    position_ids.to(self.device),
                    mask.to(self.device),
                    ends.to(self.device),
                )  # (S, M) in the order of the runs' responses
            out[[i for r in batch for i in r]] = scores.float().cpu()
            batch = []
        return out

    def normalized(self, prompts: Sequence[PromptLike], responses: Sequence[str]) -> torch.Tensor:
        """(score - mean) / std with the training statistics (N,)."""
        return (self.score(prompts, responses) - self.mean) / self.std


class ProbeScorer:
    """A reward model's frozen-feature probe as a reward: r = w . mean of the base model's last
    hidden states over the formatted (prompt, response) tokens, the baseline `rankloop
    train-reward` reports (`reward/probe_accuracy`), with the same `score` / `mean` / `std`
    contract as `RewardScorer`. The base model is the one the reward model was trained from
    (probe.json's `base`), without the reward model's fine-tuning."""

    members = 1

    def __init__(
        self, backbone, tokenizer, w, device, batch_size=16, bf16=False, mean=0.0, std=1.0
    ):
        self.backbone = backbone.to(device).eval()
        self.tokenizer = tokenizer
        self.w = torch.as_tensor(w, dtype=torch.float32, device=device)  # (H,)
        self.device = device
        self.batch_size = batch_size
        self.bf16 = bf16
        self.mean = mean
        self.std = std
        self.max_length = min(tokenizer.model_max_length, 1 << 16)

    @classmethod
    def from_pretrained(cls, path: str | Path, device=None, batch_size: int = 16) -> ProbeScorer:
        """The probe saved with the reward model in `path` (probe.json); a clear error when the
        folder has none (a model trained before probes were saved, or resumed)."""
        f = Path(path) / PROBE_FILE
        if not f.exists():
            raise FileNotFoundError(
                f"{path} has no {PROBE_FILE}: the reward model was trained without its probe "
                f"(resumed, or by an older rankloop); train it again to optimise the probe"
            )
        spec = json.loads(f.read_text())
        device = pick_device(str(device) if device is not None else "auto")
        bf16 = bool(spec.get("bf16")) and use_bf16("auto", device)
        tokenizer = load_reward_tokenizer(str(path))
        model = load_backbone(spec["base"], tokenizer, dtype=weights_dtype(bf16))
        backbone = getattr(model, model.base_model_prefix)
        return cls(
            backbone, tokenizer, spec["w"], device, batch_size, bf16, spec["mean"], spec["std"]
        )

    def score(self, prompts: Sequence[PromptLike], responses: Sequence[str]) -> torch.Tensor:
        """The probe's raw score of each (prompt, response): float32 CPU (N,), in input order."""
        return self.score_members(prompts, responses)[:, 0]

    @torch.no_grad()
    def score_members(
        self, prompts: Sequence[PromptLike], responses: Sequence[str]
    ) -> torch.Tensor:
        """(N, 1): the probe is one member."""
        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
        texts = [format_text(self.tokenizer, p, r) for p, r in zip(prompts, responses)]
        ids = tokenize(self.tokenizer, texts, self.max_length)
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))  # little padding per batch
        out = torch.empty(len(ids), 1)
        for start in range(0, len(order), self.batch_size):
            idx = order[start : start + self.batch_size]
            input_ids, mask = right_pad([ids[i] for i in idx], self.tokenizer.pad_token_id)
            mask = mask.to(self.device)
            with autocast(self.device, self.bf16):
                hidden = self.backbone(
                    input_ids=input_ids.to(self.device), attention_mask=mask, use_cache=False
                ).last_hidden_state  # (b, T, H)
            m = mask.to(torch.float32)  # (b, T)
            pooled = torch.einsum("bt,bth->bh", m, hidden.float()) / m.sum(1, keepdim=True)
            out[idx, 0] = (pooled @ self.w).cpu()
        return out


def read_stats(path: str | Path) -> tuple[float, float]:
    """(mean, std) from reward_stats.json next to the model; (0.0, 1.0) if absent."""
    f = Path(path) / STATS_FILE
    if not f.exists():
        return 0.0, 1.0
    stats = json.loads(f.read_text())
    return float(stats["mean"]), float(stats["std"]) or 1.0
