"""Settings of the reward trainer: the `[reward]` section of rankloop.toml.

One flat dataclass; `rankloop train-reward`'s options override the same fields. See
docs/reward.md for what each choice does.
"""

from __future__ import annotations

from dataclasses import dataclass

from rankloop.data.rankings import DEFAULT_MARGINS
from rankloop.lm.tracking import parse_trackers
from rankloop.settings import ConfigError

LOSSES = ("bt", "rao-kupper", "davidson", "plackett-luce")
ENSEMBLE_AGGREGATES = ("mean", "mean_minus_std", "min")


@dataclass
class RewardConfig:
    """Reward model training: `rankloop train-reward`."""

    base: str = ""
    """Backbone to start from: a sequence-classification model or a causal LM (given a scalar head); empty = [models] reward_model."""
    lora: bool = True
    """Train a LoRA adapter (plus the scalar head) instead of every weight; saved merged."""
    lora_r: int = 16
    """LoRA rank."""
    lora_alpha: int = 32
    """LoRA scaling numerator (the update is scaled by lora_alpha / lora_r)."""
    lora_dropout: float = 0.0
    """Dropout on the LoRA branch (0 keeps steps deterministic and a little faster)."""
    lora_target_modules: str = "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj"
    """Comma-separated module names that get LoRA adapters (attention and MLP projections)."""
    lora_layers: int = 0
    """LoRA on the top this many decoder blocks only (0 = every block). The blocks below stay frozen, so their output for each comparison is computed once, in the frozen-feature pass, and every step and the scoring after the loop run the top blocks only (docs/reward.md)."""
    loss: str = "bt"
    """'bt' (Bradley-Terry; a tie counts as half a win each way), 'rao-kupper' or 'davidson' (tie models, parameter learned), 'plackett-luce' (whole rankings)."""
    center_coef: float = 0.0
    """Reward-centering penalty coef * mean((r_c + r_r)^2) (Eisenstein et al. 2023); 0 = off, 0.01 is typical."""
    margin_slightly: float = DEFAULT_MARGINS[0]
    """Bradley-Terry margin for a 'slightly better' label (Llama 2's scale: 1/3); the one setting that turns an annotator's strength into a margin, for training and export alike."""
    margin_much: float = DEFAULT_MARGINS[1]
    """Bradley-Terry margin for a 'much better' label (Llama 2's margin loss: 1 for significantly better)."""
    both_bad: str = "drop"
    """What a 'both bad' label becomes: 'drop' (it says nothing about which is better) or 'tie'."""
    aggregate: str = "each"
    """Several annotators on one comparison: 'each' keeps every label, 'majority' merges them (split votes are ties)."""
    epochs: float = 2.0
    """Passes over the training labels (fractions allowed); with select_best, the most it runs."""
    batch_size: int = 8
    """Comparisons per optimizer step (a pairwise comparison is 2 sequences, a K-ranking K)."""
    grad_accum: int = 1
    """Batches accumulated before each optimizer step."""
    lr: float = 0.0
    """Peak learning rate; 0 = 3e-4 with LoRA, 1e-5 for full fine-tuning."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    warmup_ratio: float = 0.03
    """Fraction of steps with a linear warm-up, then linear decay to 0."""
    max_grad_norm: float = 1.0
    """Gradient clipping by global norm (0 = off)."""
    max_length: int = 512
    """Longest prompt + response, in tokens; longer ones lose the start of the prompt."""
    eval_fraction: float = 0.1
    """Share of prompts held out for evaluation (whole prompts, never split); 0 = none."""
    seed: int = 0
    """Seed of the held-out split, the batch order and the head's initialisation."""
    bf16: str = "auto"
    """bf16 autocast: 'auto' (where the CPU or GPU has fast bf16), 'yes' or 'no'."""
    gradient_checkpointing: bool = False
    """Recompute each block's activations in the backward pass: far less memory, about a third more compute (see docs/benchmarks.md)."""
    compile: str | bool = "auto"
    """torch.compile each transformer block (dynamic shapes): faster steps and less memory after a
    one-off compile. 'auto': when the run has at least 32 optimizer steps and torch.compile works
    here (on the CPU it needs a C++ compiler); 'yes' or 'no' (true / false also; see
    docs/reward.md)."""
    pad_to_multiple_of: int = 16
    """Pad each batch's packed rows to a multiple of this many tokens: batch shapes repeat, so the
    C allocator reuses freed activation memory instead of growing (see docs/reward.md)."""
    warm_start: bool = True
    """LP-FT: before fine-tuning, fit the scalar head as a logistic-regression probe on the frozen
    model's features of the training pairs (Kumar et al. 2022), instead of a random head."""
    select_best: bool = False
    """Early stopping: evaluate on the held-out split at the start and after every epoch, keep
    the best model (held-out accuracy, then loss); needs eval_fraction > 0. Off by default: with
    a few hundred labels the split is ~30 pairs, too few to choose by (docs/reward.md)."""
    patience: int = 1
    """Stop once this many evaluations in a row did not beat the best (0 = run every epoch).
    1: on bench/reward_quality.py no epoch ever beat the best after one that did not (4 tasks),
    so a second stale epoch only cost time (docs/reward.md)."""
    checkpoint_every: int = 0
    """Save a resumable checkpoint every N optimizer steps (0 = only at the end)."""
    eval_every: int = 0
    """Evaluate on the held-out split every N optimizer steps (0 = only at the end)."""
    stats_sample: int = 128
    """Training comparisons scored after the loop, drawn at random, for the reward's statistics
    (mean and std: the policy stage's normalisation), the tie threshold and the training
    accuracy; 0 = all. 128 comparisons give the std to about 4% and cost a few seconds where
    scoring every comparison costs a forward pass over the training set (docs/reward.md)."""
    merge_lora: bool = True
    """Save the LoRA model merged into a plain checkpoint (False: the adapter, see docs)."""
    log_with: str = ""
    """Trackers, comma-separated: 'tensorboard', 'trackio', 'wandb' (offline), or '' for none;
    written under the project's logs/."""
    ensemble: int = 1
    """Members of the reward ensemble: 1 = one model; N > 1 = one shared backbone (one LoRA
    adapter, one forward pass) with N linear heads, each warm-started on and trained with its own
    bootstrap resample of the training comparisons (docs/reward.md)."""
    ensemble_aggregate: str = "mean"
    """What rankloop's scorer (and so the policy stage) reads from an ensemble: 'mean',
    'mean_minus_std' (mean - ensemble_k * std of the members, Coste et al. 2023) or 'min' (the
    worst member). Saved with the model; `from_pretrained` / pipeline always give the mean."""
    ensemble_k: float = 1.0
    """k in mean - k * std (ensemble_aggregate = 'mean_minus_std')."""

    def validate(self) -> None:
        if isinstance(self.compile, bool):  # compile = true / false
            self.compile = "yes" if self.compile else "no"
        if self.compile not in ("auto", "yes", "no"):
            raise ConfigError("[reward] compile must be 'auto', 'yes' or 'no'")
        if self.loss not in LOSSES:
            raise ConfigError(
                f"[reward] loss must be one of {', '.join(LOSSES)}, got {self.loss!r}"
            )
        if self.both_bad not in ("drop", "tie"):
            raise ConfigError("[reward] both_bad must be 'drop' or 'tie'")
        if self.aggregate not in ("each", "majority"):
            raise ConfigError("[reward] aggregate must be 'each' or 'majority'")
        if self.bf16 not in ("auto", "yes", "no"):
            raise ConfigError("[reward] bf16 must be 'auto', 'yes' or 'no'")
        parse_trackers(self.log_with, "reward")
        for name in (
            "lora_r",
            "lora_alpha",
            "batch_size",
            "grad_accum",
            "max_length",
            "pad_to_multiple_of",
        ):
            if getattr(self, name) < 1:
                raise ConfigError(f"[reward] {name} must be at least 1")
        for name in (
            "lr",
            "weight_decay",
            "center_coef",
            "max_grad_norm",
            "margin_slightly",
            "margin_much",
            "checkpoint_every",
            "eval_every",
            "stats_sample",
            "patience",
            "lora_layers",
        ):
            if getattr(self, name) < 0:
                raise ConfigError(f"[reward] {name} must be >= 0")
        if not self.epochs > 0:
            raise ConfigError("[reward] epochs must be > 0")
        if not 0 <= self.lora_dropout < 1:
            raise ConfigError("[reward] lora_dropout must be in [0, 1)")
        if not 0 <= self.warmup_ratio < 1:
            raise ConfigError("[reward] warmup_ratio must be in [0, 1)")
        if not 0 <= self.eval_fraction < 1:
            raise ConfigError("[reward] eval_fraction must be in [0, 1)")
        if self.ensemble < 1:
            raise ConfigError("[reward] ensemble must be at least 1 (1 = a single model)")
        if self.ensemble_aggregate not in ENSEMBLE_AGGREGATES:
            raise ConfigError(
                f"[reward] ensemble_aggregate must be one of {', '.join(ENSEMBLE_AGGREGATES)}, "
                f"got {self.ensemble_aggregate!r}"
            )
        if not self.ensemble_k >= 0:
            raise ConfigError("[reward] ensemble_k must be >= 0")
        if self.ensemble > 1 and self.lora and not self.merge_lora:
            raise ConfigError(
                "[reward] ensemble > 1 needs merge_lora = true: an unmerged adapter folder "
                "cannot carry the members' heads"
            )
        if self.lora and not self.target_modules:
            raise ConfigError("[reward] lora_target_modules is empty: name the modules to adapt")

    @property
    def target_modules(self) -> list[str]:
        return [m.strip() for m in self.lora_target_modules.split(",") if m.strip()]

    @property
    def learning_rate(self) -> float:
        """The peak learning rate actually used (the default depends on LoRA / full)."""
        return self.lr or (3e-4 if self.lora else 1e-5)
