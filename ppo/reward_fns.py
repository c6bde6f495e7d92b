"""Reward sources for PPO: what turns (prompt, response) texts into one score each.

A reward source is any callable `(prompts, responses) -> Tensor (N,)`: prompts are `Prompt`
records, responses the decoded response texts (no special tokens). Sources here:

* `ScorerReward` - a trained reward model (`rankloop.reward.scoring.RewardScorer`): raw scores
  normalised with the mean/std saved with the model and clipped (PPO-max, Zheng et al. 2023).
  It scores decoded text, so policy and reward model need not share a tokenizer.
* `load_callable("module:function")` - any Python function, for custom and rule-based rewards.
* `WeightedSum` - a weighted sum of several sources.

`parse_reward_spec` builds a source from the command line's `--reward-fn` strings.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from rankloop.ppo.core import normalize_scores
from rankloop.settings import ConfigError, load_function

RewardFn = Callable[[Sequence, Sequence[str]], torch.Tensor]


def as_scores(value, n: int, name: str) -> torch.Tensor:
    """A reward function's output as a float tensor (N,); a clear error for anything else."""
    scores = torch.as_tensor(value, dtype=torch.float32).detach().cpu().reshape(-1)
    if scores.numel() != n:
        raise ValueError(f"reward {name} returned {scores.numel()} scores for {n} responses")
    if not torch.isfinite(scores).all():
        raise ValueError(f"reward {name} returned a non-finite score: {scores.tolist()}")
    return scores


class ScorerReward:
    """A reward model's scores, normalised and clipped (PPO-max).

        s' = clamp((s - mean) / std, -clip, clip)

    `mean` / `std` are the reward model's statistics on its training responses
    (`reward_stats.json`), so 0 means "as good as an average training response".

    Give a loaded `scorer` (a `RewardScorer`), or a `path` to load lazily: then, when the PPO
    critic is initialised from the same reward model, `share_critic` scores with the critic's
    frozen weights (its LoRA adapter disabled) instead of loading a second copy.
    """

    def __init__(
        self,
        scorer=None,
        normalize: bool = True,
        clip: float | None = 5.0,
        *,
        path: str | None = None,
        bf16: str = "auto",
    ):
        if scorer is None and path is None:
            raise ValueError("ScorerReward needs a scorer or a path")
        self.scorer = scorer
        self.path = path
        self.bf16 = bf16
        self.normalize = normalize
        self.clip = clip if clip else None
        self.name = f"reward-model:{path or getattr(scorer, 'path', 'scorer')}"
        self.shared = False

    def share_critic(self, critic) -> bool:
        """Score with the critic's backbone (adapter disabled) and the reward model's own head,
        when the critic was initialised from this reward model. True if shared."""
        from rankloop.reward.model import load_reward_tokenizer
        from rankloop.reward.scoring import RewardScorer, read_stats

        rm = getattr(critic, "reward_model", None)
        if self.scorer is not None or rm is None or self.path is None:
            return False
        if Path(critic.reward_model_path).resolve() != Path(self.path).resolve():
            return False
        tokenizer = load_reward_tokenizer(self.path)
        mean, std = read_stats(self.path)
        device = next(rm.parameters()).device
        self.scorer = RewardScorer(
            _AdapterDisabled(rm, critic.backbone),
            tokenizer,
            device,
            bf16=next(rm.parameters()).dtype == torch.bfloat16,
            mean=mean,
            std=std,
            max_length=min(tokenizer.model_max_length, 1 << 16),
        )
        self.shared = True
        return True

    def __call__(self, prompts, responses) -> torch.Tensor:
        if self.scorer is None:
            from rankloop.lm.kernels import release_freed_memory
            from rankloop.reward.scoring import RewardScorer

            # loading peaks at the file's pages plus the weights: on top of what the rollout
            # left in malloc's heaps, it set the optimiser's peak memory (docs/benchmarks.md)
            release_freed_memory()
            self.scorer = RewardScorer.from_pretrained(self.path, bf16=self.bf16)
        raw = as_scores(
            self.scorer.score(list(prompts), list(responses)), len(responses), self.name
        )  # (N,)
        if not self.normalize:
            return raw if self.clip is None else raw.clamp(-self.clip, self.clip)
        std = float(getattr(self.scorer, "std", 1.0) or 1.0)
        return normalize_scores(raw, float(getattr(self.scorer, "mean", 0.0)), std, self.clip)


class _AdapterDisabled(torch.nn.Module):
    """Runs `model` with the LoRA adapters of `peft_model` (injected into it) switched off."""

    def __init__(self, model, peft_model):
        super().__init__()
        self.model = model
        self._peft = [peft_model]  # a list: not registered as a submodule twice

    def forward(self, **kwargs):
        with self._peft[0].disable_adapter():
            return self.model(**kwargs)


class CallableReward:
    """Wraps a Python reward function and checks its output (shape, finiteness)."""

    def __init__(self, fn: RewardFn, name: str):
        self.fn, self.name = fn, name

    def __call__(self, prompts, responses) -> torch.Tensor:
        return as_scores(self.fn(list(prompts), list(responses)), len(responses), self.name)


class WeightedSum:
    """sum_i w_i * source_i(prompts, responses)."""

    def __init__(self, parts: Sequence[tuple[float, RewardFn]]):
        if not parts:
            raise ValueError("WeightedSum needs at least one reward source")
        self.parts = list(parts)
        self.name = " + ".join(f"{w:g}*{getattr(s, 'name', 'fn')}" for w, s in self.parts)

    def share_critic(self, critic) -> bool:
        """Let each part that can score with the critic's frozen weights do so (ScorerReward)."""
        shared = [s.share_critic(critic) for _, s in self.parts if hasattr(s, "share_critic")]
        return any(shared)

    def __call__(self, prompts, responses) -> torch.Tensor:
        total = torch.zeros(len(responses))  # (N,)
        for weight, source in self.parts:
            total = total + weight * as_scores(
                source(prompts, responses), len(responses), getattr(source, "name", "fn")
            )
        return total


def missing_eos_penalty(
    scores: torch.Tensor, finished: torch.Tensor, penalty: float
) -> torch.Tensor:
    """Subtract `penalty` from the score of each response cut at max_new_tokens (no EOS).

    The N+ implementation details of RLHF (Huang et al. 2024): without it, a policy can learn
    to ramble past the length limit, where the reward model never sees an ending.
    """
    return scores - penalty * (~finished.bool()).to(scores.dtype)  # (N,)


def load_callable(spec: str, option: str = "--reward-fn") -> RewardFn:
    """`module:function` (or `path/to/file.py:function`) -> a checked reward source; errors
    name `option`, the flag the user gave."""
    return CallableReward(load_function(spec, option), spec)


def parse_reward_spec(specs: Sequence[str]) -> RewardFn:
    """Build a reward source from strings `[WEIGHT*]module:function`; several are summed.

    Example: `["my_rewards:helpful", "0.1*my_rewards:short"]` -> helpful + 0.1 * short.
    """
    parts = []
    for spec in specs:
        weight = 1.0
        head, sep, rest = spec.partition("*")
        if sep:
            try:
                weight = float(head)
            except ValueError:
                raise ConfigError(
                    f"--reward-fn {spec!r}: the weight before '*' must be a number"
                ) from None
            spec = rest
        parts.append((weight, load_callable(spec)))
    if len(parts) == 1 and parts[0][0] == 1.0:
        return parts[0][1]
    return WeightedSum(parts)
