"""The project's settings: one flat dataclass per section of `rankloop.toml`.

`rankloop init` writes every field below, commented with its docstring, at its default; the CLI's
options override the same fields (`data.config.replace`).
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from rankloop.lm.device import DEVICES
from rankloop.lm.loading import DEFAULT_MODEL
from rankloop.ppo.config import OPTIMIZERS, DPOConfig, PPOConfig
from rankloop.reward.config import RewardConfig
from rankloop.settings import ConfigError, from_table, render_toml


@dataclass
class ModelsConfig:
    """Which models the project starts from."""

    policy: str = DEFAULT_MODEL
    """Base policy: a local checkpoint folder, a Hugging Face hub id, or 'smollm2-135m-instruct' (the embedded default, no network)."""
    reward_model: str = DEFAULT_MODEL
    """Backbone of the reward model (any sequence-classification model or causal LM); it need not share the policy's tokenizer."""

    def validate(self) -> None:
        for name in ("policy", "reward_model"):
            if not getattr(self, name).strip():
                raise ConfigError(f"[models] {name} is empty: give a model path or hub id")


ENGINES = ("hf", "vllm")


@dataclass
class RuntimeConfig:
    """Where sampling and scoring run (the trainers run where `accelerate` puts them)."""

    device: str = "auto"
    """'auto' (a CUDA GPU if torch sees one, else Apple's MPS where torch has it, else the CPU), or 'cpu', 'cuda', 'cuda:N', 'mps'."""

    def validate(self) -> None:
        if self.device.split(":")[0] not in DEVICES:
            raise ConfigError(
                f"[runtime] device must be one of {', '.join(DEVICES)} (or "
                f"'cuda:N'), got {self.device!r}"
            )


@dataclass
class GenerateConfig:
    """Candidate generation: how `rankloop generate` samples responses to label."""

    n: int = 2
    """Responses sampled per prompt and round."""
    temperature: float = 0.7
    """Sampling temperature (0 = greedy)."""
    top_p: float = 0.95
    """Nucleus sampling: keep the smallest set of tokens whose probability reaches top_p."""
    max_new_tokens: int = 128
    """Longest response, in tokens; a response cut there is marked unfinished."""
    batch_size: int = 32
    """Prompts sampled together in one batched forward (more is faster until memory runs out)."""
    seed: int = 0
    """Base random seed; each batch's seed is derived from it and the batch's contents."""
    bf16: str = "auto"
    """Run sampling in bfloat16: 'auto' (where the CPU or GPU supports it fast), 'yes' or 'no'."""
    engine: str = "hf"
    """Sampler: 'hf' (transformers' generate, batched; needs nothing more) or 'vllm' (vLLM, where it is installed: pip install 'rankloop[vllm]' on a GPU machine)."""

    def validate(self) -> None:
        if self.engine not in ENGINES:
            raise ConfigError(
                f"[generate] engine must be one of {', '.join(ENGINES)}, got {self.engine!r}"
            )
        if self.n < 1:
            raise ConfigError("[generate] n must be at least 1")
        if self.temperature < 0:
            raise ConfigError("[generate] temperature must be >= 0")
        if not 0 < self.top_p <= 1:
            raise ConfigError("[generate] top_p must be in (0, 1]")
        if self.max_new_tokens < 1:
            raise ConfigError("[generate] max_new_tokens must be at least 1")
        if self.batch_size < 1:
            raise ConfigError("[generate] batch_size must be at least 1")
        if self.bf16 not in ("auto", "yes", "no"):
            raise ConfigError("[generate] bf16 must be 'auto', 'yes' or 'no'")


@dataclass
class LabelingConfig:
    """How responses are grouped into comparisons for the annotators."""

    k: int = 2
    """Responses per comparison: 2 = pairwise (A / B / tie / both bad), 3..9 = rank them (ties allowed)."""
    labels_per_comparison: int = 1
    """Independent labels each comparison needs, never two from one annotator (more than 1 gives overlap to measure agreement)."""
    lease_seconds: int = 900
    """How long a task stays reserved for the annotator it was shown to; after that an abandoned task returns to the queue."""
    order: str = "oldest"
    """Queue order: 'oldest' first, 'random', 'uncertainty' (the comparisons the latest reward model is least sure about first: an ensemble's largest disagreement, a single model's smallest score gap; oldest first until one has scored responses), or 'balanced' (uncertainty balanced across prompts: the prompts with the fewest labels first, the most uncertain of their comparisons first; docs/labeling.md)."""
    gold_rate: float = 0.0
    """Share of tasks drawn from the gold comparisons (known answers set by an admin), each shown once per annotator; 0 = none."""
    concurrency: int = 16
    """Page events the app handles at once (Gradio's queue concurrency limit); database writes still take turns."""
    current_round_first: bool = True
    """Serve the current round's comparisons before leftovers of earlier rounds (then each in `order`)."""

    def validate(self) -> None:
        if not 2 <= self.k <= 9:
            raise ConfigError("[labeling] k must be between 2 and 9")
        if self.labels_per_comparison < 1:
            raise ConfigError("[labeling] labels_per_comparison must be at least 1")
        if self.lease_seconds < 10:
            raise ConfigError("[labeling] lease_seconds must be at least 10")
        if self.order not in ("oldest", "random", "uncertainty", "balanced"):
            raise ConfigError(
                "[labeling] order must be 'oldest', 'random', 'uncertainty' or 'balanced'"
            )
        if not 0 <= self.gold_rate <= 1:
            raise ConfigError("[labeling] gold_rate must be between 0 and 1")
        if self.concurrency < 1:
            raise ConfigError("[labeling] concurrency must be at least 1")


@dataclass
class RoundsConfig:
    """`rankloop round`: which prompts measure the rounds, and when a round stops."""

    eval_fraction: float = 0.2
    """Share of prompts held out from PPO (chosen by prompt hash, stable as prompts are added); their new samples also get cross-round comparisons, the human win-rate's matches."""
    eval_comparisons: int = 1
    """Cross-round comparisons per evaluation prompt and opponent: a new response against one of round R and one of round 0."""
    weak_reward: str = "probe"
    """When the reward model's held-out accuracy does not beat its baseline (its frozen-feature probe, else chance): 'probe' (the default) warns and goes on, and when the model lost to its probe by more than the held-out standard error the policy stage optimises the probe instead (measured: docs/benchmarks.md); 'warn' warns and goes on but stops the round on such a loss; 'stop' stops before the policy stage whenever the model does not beat its baseline (label more, then `rankloop round --redo reward`); 'run' optimises the model anyway (docs/rounds.md)."""
    reward: str = "auto"
    """What the policy stage optimises when no --reward-fn is given: 'model' (the round's reward model), 'model+probe' (the mean of the model's and its frozen-feature probe's scores, each normalised by its own training statistics: two views of the labels, measured in docs/benchmarks.md) or 'auto' (the default: 'model+probe' when the probe ranks the round's training labels above chance with 95% confidence, cross-validated, and the model's held-out accuracy is not clearly above the probe's (on the same held-out pairs, or against its cross-validated accuracy), else 'model'; a probe at chance, or far behind the model, only dilutes the model's score; best on average on the reward-quality benchmark, docs/benchmarks.md). Under weak_reward = 'probe' a model that lost to its probe still hands the stage the probe alone."""
    simulated_labels: bool = True
    """Reward training (`round`, `train-reward`) uses the labels of simulated annotators (`rankloop simulate`); false = people's and imported labels only."""
    optimizer: str = "auto"
    """The policy stage's optimiser. 'auto' (the default) is 'ppo' against a trusted reward function (`--reward-fn`: twice best-of-n's gain on a known-good reward) and 'bon' against a learned reward model (it won the loop benchmark's head-to-head), docs/benchmarks.md. Or: 'ppo' (a critic, each token an action), 'rloo' (k samples per prompt, leave-one-out baseline, no critic; [ppo] rloo_k), 'bon' (best-of-n fine-tuning: supervised steps on each prompt's best of n samples; [ppo] bon_n, bon_margin) or 'odpo' (online DPO on each prompt's best and worst of k samples and the round's labelled pairs; [ppo] odpo_*). All read the [ppo] section."""

    def validate(self) -> None:
        if not 0 <= self.eval_fraction < 1:
            raise ConfigError("[rounds] eval_fraction must be in [0, 1)")
        if self.eval_comparisons < 0:
            raise ConfigError("[rounds] eval_comparisons must be >= 0")
        if self.weak_reward not in ("warn", "stop", "run", "probe"):
            raise ConfigError("[rounds] weak_reward must be 'warn', 'stop', 'run' or 'probe'")
        if self.reward not in ("model", "model+probe", "auto"):
            raise ConfigError(
                f"[rounds] reward = {self.reward!r}: expected 'model', 'model+probe' or 'auto'"
            )
        if self.optimizer != "auto" and self.optimizer not in OPTIMIZERS:
            raise ConfigError(
                f"[rounds] optimizer = {self.optimizer!r}: expected 'auto' or one of "
                f"{', '.join(OPTIMIZERS)}"
            )


MOVED = {
    "ppo.dpo_beta": "[dpo] beta",
    "ppo.dpo_epochs": "[dpo] epochs",
    "ppo.dpo_lr": "[dpo] lr",
    "labeling.margin_slightly": "[reward] margin_slightly",
    "labeling.margin_much": "[reward] margin_much",
    "ppo.early_stop_min_delta": "[ppo] early_stop_drop (standard errors of a fall, not a rise)",
}
# Moved settings that `rankloop init` wrote into every project: at their old default they say
# nothing the new setting's default does not, so they are dropped instead of refused.
MOVED_AT_DEFAULT = {
    "labeling.margin_slightly": 0.33,
    "labeling.margin_much": 1.0,
    "ppo.early_stop_min_delta": 0.5,
}


@dataclass
class ProjectConfig:
    """All sections of rankloop.toml."""

    models: ModelsConfig = field(default_factory=ModelsConfig)
    generate: GenerateConfig = field(default_factory=GenerateConfig)
    labeling: LabelingConfig = field(default_factory=LabelingConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    ppo: PPOConfig = field(default_factory=PPOConfig)
    dpo: DPOConfig = field(default_factory=DPOConfig)
    rounds: RoundsConfig = field(default_factory=RoundsConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)

    SECTIONS = ("models", "generate", "labeling", "reward", "ppo", "dpo", "rounds", "runtime")

    @classmethod
    def load(cls, path: Path) -> ProjectConfig:
        try:
            raw = tomllib.loads(path.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{path}: not valid TOML: {e}") from e
        unknown = set(raw) - set(cls.SECTIONS)
        if unknown:
            raise ConfigError(
                f"{path}: unknown section [{min(unknown)}]; known: {', '.join(cls.SECTIONS)}"
            )
        for key, new in MOVED.items():  # settings of older projects that now live elsewhere
            section, name = key.split(".")
            if name not in raw.get(section, {}):
                continue
            if key in MOVED_AT_DEFAULT and raw[section][name] == MOVED_AT_DEFAULT[key]:
                del raw[section][name]
            else:
                raise ConfigError(f"{path}: [{section}] {name} is now {new}: move it there")
        defaults = cls()
        parts = {s: from_table(type(getattr(defaults, s)), raw.get(s, {}), s) for s in cls.SECTIONS}
        return cls(**parts)

    def to_toml(self) -> str:
        header = (
            "# rankloop project settings. Every setting is listed with its default;\n"
            "# command-line options override them for one run."
        )
        return render_toml({s: getattr(self, s) for s in self.SECTIONS}, header)
