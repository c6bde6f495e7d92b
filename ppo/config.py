"""`PPOConfig` and `DPOConfig`: every setting of the PPO loop and of the DPO adapter RTO uses,
one flat dataclass each (the `[ppo]` and `[dpo]` sections of `rankloop.toml`; the options of
`rankloop ppo` and `rankloop train-dpo` override the same fields).

PPO's defaults follow PPO-max (Zheng et al. 2023): score normalisation and clipping, advantage
whitening, a token-level KL penalty, value clipping, a critic initialised from the reward model,
global gradient clipping. Two defaults bound how far a round can move the policy when its reward
is weak: an adaptive KL coefficient toward `kl_target` (Ziegler et al. 2019) and early stopping
on a held-out prompt set, keeping the best evaluated policy (docs/ppo.md, "Bounding the drift").
"""

from __future__ import annotations

from dataclasses import dataclass

from rankloop.lm.tracking import parse_trackers
from rankloop.settings import ConfigError

CRITICS = ("reward", "policy")
KL_ESTIMATORS = ("k1", "k2", "k3")
KEEP_POLICY = ("guarded", "best", "last")
OPTIMIZERS = ("ppo", "rloo", "bon", "odpo")
"""The policy stage's optimisers ([rounds] optimizer): one update module each under ppo/."""


@dataclass
class PPOConfig:
    """The policy stage: optimise the policy against the reward model (`rankloop ppo`,
    `rankloop rloo`, `rankloop bon`, `rankloop odpo`). One section for every optimiser: the
    rollout, KL, evaluation, LoRA and checkpoint fields are the scaffold's; the critic, GAE and
    value fields are PPO's only, `rloo_k` is RLOO's only, `bon_n` and `bon_margin` best-of-n's
    only, the `odpo_*` fields online DPO's."""

    steps: int = 100
    """PPO steps (one step = rollout of batch_size prompts, scoring, then ppo_epochs of updates)."""
    batch_size: int = 8
    """Prompts per step on each process (rollout batch)."""
    mini_batch_size: int = 4
    """Prompts per gradient step inside an epoch (PPO: their responses; RLOO: their rloo_k responses each; best-of-n: kept responses; online DPO: their pairs); must divide batch_size."""
    ppo_epochs: int = 4
    """Passes over each rollout batch, in shuffled mini-batches (RLOO with 1 epoch of one mini-batch is plain REINFORCE)."""
    max_new_tokens: int = 32
    """Longest response sampled during PPO, in tokens."""
    temperature: float = 1.0
    """Sampling temperature of the rollouts (1.0 = the policy's own distribution, as PPO assumes)."""
    lr: float = 1e-4
    """Learning rate of the policy's LoRA adapter (AdamW)."""
    critic_lr: float = 1e-4
    """Learning rate of the critic (its LoRA adapter and value head)."""
    cliprange: float = 0.2
    """PPO clip range of the policy ratio (epsilon)."""
    cliprange_value: float = 0.2
    """Clip range of the value update around the rollout's values (0 disables value clipping)."""
    gamma: float = 1.0
    """Discount factor of GAE (1.0 = undiscounted, as in RLHF)."""
    lam_actor: float = 0.95
    """GAE lambda for the policy's advantages."""
    lam_critic: float = 0.95
    """GAE lambda for the critic's value targets (VC-PPO decoupled GAE: 1.0, Monte-Carlo returns)."""
    whiten_advantages: bool = True
    """Normalise advantages to zero mean, unit variance over each rollout batch (PPO-max)."""
    kl_estimator: str = "k1"
    """Per-token KL estimator in the reward: 'k1' (log ratio), 'k2' (squared/2) or 'k3'."""
    kl_coef: float = 0.05
    """KL penalty coefficient (with kl_target: its start and smallest value)."""
    kl_target: float = 2.0
    """Adaptive KL: how far past the start policy's KL to the reference (0 for the base policy; round R-1's for round R), in nats per response, the KL may grow before the coefficient rises (0 = fixed coefficient kl_coef)."""
    kl_horizon: float = 160.0
    """Adaptive KL: each step the coefficient moves by (KL - kl_target) * samples / kl_horizon (160 with 8 prompts a step: +0.05 per nat above the target)."""
    missing_eos_penalty: float = 0.0
    """Subtracted from the score of a response that hit max_new_tokens without EOS (0 = off)."""
    normalize_scores: bool = True
    """Normalise reward-model scores with the mean/std saved with the reward model (PPO-max)."""
    score_clip: float = 5.0
    """Clip normalised scores to [-score_clip, score_clip] (0 = no clip)."""
    vf_coef: float = 0.1
    """Weight of the value loss in the summed loss (matters for critic = 'policy', where policy and value share the backbone)."""
    entropy_coef: float = 0.0
    """Entropy bonus coefficient in the policy loss (0 = off)."""
    max_grad_norm: float = 1.0
    """Global gradient-norm clipping of policy and critic (0 = off)."""
    target_approxkl: float = 0.0
    """Stop a step's PPO epochs early when the mean approximate KL exceeds this (0 = never)."""
    rloo_k: int = 4
    """RLOO only: responses sampled per prompt each step (k >= 2); each one's baseline is the mean reward of the other k - 1, so a step trains on batch_size * k responses."""
    odpo_k: int = 4
    """Online DPO only: responses sampled per prompt each step (k >= 2); the best and the worst by the reward's score make the prompt's pair."""
    odpo_beta: float = 0.1
    """Online DPO only: beta of the DPO loss, the scale of its implicit reward beta * log(pi / pi_ref); larger keeps the policy closer to the reference (it replaces kl_coef, which online DPO's loss does not use)."""
    odpo_margin: float = 0.5
    """Online DPO only: a prompt's pair is kept when its best and worst samples' scores differ by at least this (in the reward's units: standard deviations of the reward model's scores with normalize_scores); alike samples teach only the reward's noise."""
    odpo_label_pairs: int = 4
    """Online DPO in a round: people's (and simulated annotators') labelled pairs of the round's candidates added to each step's update, cycled in a seeded order (0 = reward-model pairs only)."""
    bon_n: int = 4
    """Best-of-n only: responses sampled per prompt each step (n >= 2); the one with the highest shaped reward (score - KL term) is kept for the supervised step if it clears bon_margin."""
    bon_margin: float = 0.5
    """Best-of-n only: keep a prompt's best response only when its shaped reward beats the mean of the prompt's other responses by at least this many standard deviations of the step's rewards (0 = any strict best)."""
    value_pretrain_steps: int = 0
    """Steps that train only the critic before the policy moves (VC-PPO value pretraining)."""
    critic: str = "reward"
    """Critic kind: 'reward' (separate LoRA value model initialised from the reward model, PPO-max) or 'policy' (value head on the policy)."""
    lora_layers: int = 0
    """LoRA only on the policy's last N blocks (0 = all blocks): the frozen blocks below run once per rollout, and the update only runs the top N (much faster, less capacity)."""
    critic_lora_layers: int = 4
    """LoRA only on the critic's last N blocks (0 = all blocks): its backward stops there, so the critic's update costs about a forward pass."""
    gradient_checkpointing: bool = False
    """Recompute the adapted blocks' activations in the backward instead of keeping them (policy and critic): less peak memory for a longer update (measured in docs/benchmarks.md)."""
    lora_r: int = 16
    """LoRA rank of the policy and critic adapters."""
    lora_alpha: int = 32
    """LoRA alpha (the adapter's output is scaled by alpha / r)."""
    lora_dropout: float = 0.0
    """LoRA dropout (0 keeps rollout and update log-probabilities identical)."""
    rto: bool = False
    """RTO: add DPO token rewards beta * (log pi_dpo - log pi_ref) to the reward (needs a DPO model)."""
    rto_model: str = ""
    """RTO: path of the DPO model (adapter folder from `rankloop train-dpo`); empty = rounds/R/dpo."""
    rto_beta: float = 0.05
    """RTO: scale of the DPO token rewards."""
    ptx_coef: float = 0.0
    """PPO-ptx: coefficient of the language-modelling loss on ptx_dataset (0 = off)."""
    ptx_dataset: str = ""
    """PPO-ptx: a text or JSONL file (a 'text' field per line) or a datasets folder with a 'text' column."""
    ptx_batch_size: int = 4
    """PPO-ptx: texts per mini-batch for the language-modelling loss."""
    eval_every: int = 5
    """Evaluate the policy on the held-out prompts before training and every N steps: mean score and KL of eval_samples sampled responses per prompt (0 = no evaluation, no early stopping)."""
    eval_prompts: int = 16
    """Prompts held out from training for the evaluation, drawn with the seed (at most a quarter of the prompts; a multiple of the number of processes)."""
    eval_samples: int = 4
    """Responses sampled per held-out prompt at each evaluation: the standard error falls with the square root of their number, so early stopping sees smaller gains, at the cost of more sampling."""
    early_stop_patience: int = 3
    """Stop when this many evaluations in a row fell below the best held-out score by more than early_stop_drop standard errors (0 = never stop early)."""
    early_stop_drop: float = 2.0
    """How far below the best an evaluation's held-out score must be to count as a fall, in standard errors of the difference of the two means: a fall the evaluation's noise cannot explain."""
    kl_budget: float = 6.0
    """Stop when a held-out evaluation's KL to the reference has risen this many nats per response past the stage's start (its step-0 evaluation), and keep the last evaluated policy within it (0 = no budget): a bound on how far a stage may move that holds whatever the reward says, since no rule reading the reward can see that the reward is wrong."""
    keep_policy: str = "guarded"
    """Policy saved at the end: 'guarded' (the last, unless its held-out score fell by early_stop_drop standard errors below the best: then the best), 'best' (the best held-out score, often a lucky one) or 'last'."""
    seed: int = 0
    """Random seed (prompt order, sampling, mini-batch shuffling)."""
    checkpoint_every: int = 0
    """Save a resumable checkpoint every N steps (0 = only at the end)."""
    log_every: int = 1
    """Log metrics (and a few decoded samples) every N steps."""
    log_samples: int = 2
    """Decoded samples printed with their score and KL at each log interval."""
    log_with: str = ""
    """Trackers, comma-separated: 'tensorboard', 'trackio', 'wandb' (offline), or '' for none;
    written under the project's logs/."""
    bf16: str = "auto"
    """bfloat16 weights and autocast: 'auto' (where the CPU/GPU does bf16 fast), 'yes', 'no'."""
    merge_on_save: bool = False
    """Save the policy merged into full weights instead of a LoRA adapter."""

    def validate(self) -> None:
        def bad(name: str, what: str) -> ConfigError:
            return ConfigError(f"[ppo] {name} = {getattr(self, name)!r}: {what}")

        for name in (
            "steps",
            "batch_size",
            "mini_batch_size",
            "ppo_epochs",
            "max_new_tokens",
            "lora_r",
            "lora_alpha",
            "log_every",
            "ptx_batch_size",
            "eval_samples",
        ):
            if getattr(self, name) < 1:
                raise bad(name, "must be at least 1")
        if self.rloo_k < 2:
            raise bad("rloo_k", "must be at least 2 (the baseline is the other samples' mean)")
        if self.odpo_k < 2:
            raise bad("odpo_k", "must be at least 2 (a pair is the best and the worst sample)")
        if self.bon_n < 2:
            raise bad("bon_n", "must be at least 2 (the best is kept only if it beats the others)")
        for name in (
            "value_pretrain_steps",
            "checkpoint_every",
            "critic_lora_layers",
            "lora_layers",
            "log_samples",
            "kl_coef",
            "kl_target",
            "missing_eos_penalty",
            "score_clip",
            "entropy_coef",
            "max_grad_norm",
            "target_approxkl",
            "vf_coef",
            "ptx_coef",
            "cliprange_value",
            "lora_dropout",
            "eval_every",
            "eval_prompts",
            "early_stop_patience",
            "early_stop_drop",
            "kl_budget",
            "bon_margin",
            "odpo_margin",
            "odpo_label_pairs",
        ):
            if getattr(self, name) < 0:
                raise bad(name, "must be >= 0")
        if self.batch_size % self.mini_batch_size:
            raise bad("mini_batch_size", f"must divide batch_size ({self.batch_size})")
        for name in (
            "lr",
            "critic_lr",
            "cliprange",
            "temperature",
            "kl_horizon",
            "rto_beta",
            "odpo_beta",
        ):
            if getattr(self, name) <= 0:
                raise bad(name, "must be > 0")
        for name in ("gamma", "lam_actor", "lam_critic"):
            if not 0 <= getattr(self, name) <= 1:
                raise bad(name, "must be in [0, 1]")
        if self.kl_estimator not in KL_ESTIMATORS:
            raise bad("kl_estimator", f"expected one of {', '.join(KL_ESTIMATORS)}")
        if self.keep_policy not in KEEP_POLICY:
            raise bad("keep_policy", f"expected one of {', '.join(KEEP_POLICY)}")
        if self.critic not in CRITICS:
            raise bad("critic", f"expected one of {', '.join(CRITICS)}")
        if self.bf16 not in ("auto", "yes", "no"):
            raise bad("bf16", "expected 'auto', 'yes' or 'no'")
        if self.ptx_coef > 0 and not self.ptx_dataset:
            raise bad("ptx_dataset", "is empty but ptx_coef > 0: give a text dataset")
        parse_trackers(self.log_with, "ppo")


@dataclass
class DPOConfig:
    """DPO: the adapter `rankloop train-dpo` trains on the preferences, for RTO's token rewards."""

    beta: float = 0.1
    """Beta of the DPO loss (Rafailov et al. 2023): the implicit reward's scale; larger keeps the adapter closer to the reference."""
    label_smoothing: float = 0.0
    """Conservative DPO (cDPO): the probability that a preference label is flipped (0 = plain DPO)."""
    epochs: int = 1
    """Passes over the untied preference pairs."""
    batch_size: int = 4
    """Preference pairs per gradient step."""
    lr: float = 5e-5
    """Learning rate of the DPO LoRA adapter (AdamW)."""
    max_grad_norm: float = 1.0
    """Gradient-norm clipping (0 = off)."""
    lora_r: int = 16
    """LoRA rank of the DPO adapter."""
    lora_alpha: int = 32
    """LoRA alpha (the adapter's output is scaled by alpha / r)."""
    lora_layers: int = 0
    """LoRA only on the last N blocks (0 = all blocks)."""
    seed: int = 0
    """Random seed (adapter initialisation, pair order)."""
    bf16: str = "auto"
    """bfloat16 weights and autocast: 'auto' (where the CPU/GPU does bf16 fast), 'yes', 'no'."""

    def validate(self) -> None:
        def bad(name: str, what: str) -> ConfigError:
            return ConfigError(f"[dpo] {name} = {getattr(self, name)!r}: {what}")

        for name in ("epochs", "batch_size", "lora_r", "lora_alpha"):
            if getattr(self, name) < 1:
                raise bad(name, "must be at least 1")
        for name in ("beta", "lr"):
            if getattr(self, name) <= 0:
                raise bad(name, "must be > 0")
        for name in ("max_grad_norm", "lora_layers"):
            if getattr(self, name) < 0:
                raise bad(name, "must be >= 0")
        if not 0 <= self.label_smoothing < 0.5:
            raise bad("label_smoothing", "must be in [0, 0.5)")
        if self.bf16 not in ("auto", "yes", "no"):
            raise bad("bf16", "expected 'auto', 'yes' or 'no'")
