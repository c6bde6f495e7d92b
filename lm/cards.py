"""Model cards for what rankloop saves: the reward model and the policy adapter.

Each folder gets a `README.md` that `huggingface_hub.ModelCard.load` parses: Hub metadata
(base model, library, license, tags) and a body saying what was trained on what, its metrics
and how to load it. The license is the base model's: the embedded default SmolLM2-135M-Instruct
is Apache-2.0, a local base's card gives its own, and a model trained from a rankloop folder
inherits that folder's, so the license travels with every derived model. rankloop's figures are
also in the metadata under `rankloop:` (`ModelCard.load(p).data.rankloop["metrics"]`).
"""

from __future__ import annotations

import math
import re
from pathlib import Path

from rankloop.data.cards import CARD_FILE, table

from .loading import DEFAULT_MODEL

#: The hub id and license of the embedded default (its model card on the Hub says Apache-2.0).
DEFAULT_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
DEFAULT_LICENSE = "apache-2.0"


def base_of(base: str) -> tuple[str | None, str | None]:
    """(the base's hub id, its license), read without the network: the embedded default's
    are known; a local folder's come from its card (a rankloop folder names its own base)."""
    if base in (DEFAULT_MODEL, "default", DEFAULT_HUB_ID) or Path(base).name == DEFAULT_MODEL:
        return DEFAULT_HUB_ID, DEFAULT_LICENSE
    card = Path(base) / CARD_FILE
    if Path(base).is_dir():
        if not card.exists():
            return None, None
        from huggingface_hub import ModelCard

        data = ModelCard.load(card).data
        return data.base_model or None, data.license or None
    hub_id = base if re.fullmatch(r"[\w.-]+/[\w.-]+", base) else None
    return hub_id, None


def round_of(folder: Path) -> int | None:
    """The round a saved model belongs to, from the project layout `rounds/N/...`."""
    parts = Path(folder).resolve().parts
    for i in range(len(parts) - 1):
        if parts[i] == "rounds" and parts[i + 1].isdigit():
            return int(parts[i + 1])
    return None


def _clean(metrics: dict) -> dict:
    out = {}
    for k, v in sorted(metrics.items()):
        if isinstance(v, float) and not math.isfinite(v):
            continue
        if isinstance(v, (int, float, str, bool)):
            out[k] = v
    return out


def _fmt(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def model_card(
    *,
    kind: str,
    base: str,
    metrics: dict,
    config: dict,
    trained_on: dict,
    round: int | None,
    library: str,
    load: str,
):
    """A `ModelCard` for a reward model (`kind="reward"`) or a policy (`"policy"`)."""
    from huggingface_hub import ModelCard, ModelCardData

    hub_id, license = base_of(base)
    tags = ["rankloop", "rlhf"] + (
        ["reward-model", "text-classification"] if kind == "reward" else ["ppo", "lora"]
    )
    data = ModelCardData(
        base_model=hub_id,
        library_name=library,
        license=license,
        tags=tags,
        pipeline_tag="text-classification" if kind == "reward" else "text-generation",
        rankloop={
            "kind": kind,
            "round": round,
            "base": base,
            "metrics": _clean(metrics),
            "trained_on": trained_on,
            "config": _clean(config),
        },
    )
    title = "Reward model" if kind == "reward" else "Policy"
    where = f" (round {round})" if round is not None else ""
    if kind == "reward":
        keys = [k for k in ("reward/accuracy", "reward/probe_accuracy") if k in metrics]
        keys += [
            k
            for k in ("reward/accuracy_tie_aware", "reward/nll", "reward/train_accuracy")
            if k in metrics
        ]
        what = (
            "A reward model fitted by rankloop on ranked responses: held-out pairwise accuracy "
            "beside the frozen-feature probe's (a linear probe on the base model's features), "
            "which the trained model should beat."
        )
    elif config.get("optimizer") == "DPO":
        keys = [k for k in ("dpo/accuracy", "dpo/margin", "dpo/loss", "dpo/pairs") if k in metrics]
        what = (
            f"A policy adapter trained by rankloop with DPO on preference pairs (beta "
            f"{_fmt(config.get('beta', 'n/a'))}: the strength of the implicit KL penalty to "
            f"the base)."
        )
    else:
        keys = [
            k
            for k in (
                "ppo/kl_final",
                "ppo/eval_score_start",
                "ppo/eval_score_final",
                "ppo/score_first",
                "ppo/score_last",
                "ppo/steps",
            )
            if k in metrics
        ]
        what = (
            f"A policy optimised by rankloop ({config.get('optimizer', 'PPO')}) against a "
            f"reward model, with a KL penalty to the base (coefficient "
            f"{_fmt(config.get('kl_coef', 'n/a'))}, estimator {config.get('kl_estimator', 'n/a')})."
        )
    body = "\n\n".join(
        [
            f"# {title}{where}",
            what,
            "## Base and license\n\n"
            + f"Base: `{base}`"
            + (f" (`{hub_id}`)" if hub_id and hub_id != base else "")
            + f". License: {license or 'unknown: see the base model'}; the base model's "
            "license applies to this derived model.",
            "## Trained on\n\n" + table([(k, _fmt(v)) for k, v in trained_on.items()]),
            "## Metrics\n\n" + table([(f"`{k}`", _fmt(metrics[k])) for k in keys]),
            f"## Load it\n\n```python\n{load}\n```",
        ]
    )
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n{body}\n")


def write_reward_card(
    out_dir: Path, *, base: str, config: dict, metrics: dict, examples: int, eval_examples: int
) -> Path:
    """The card of a saved reward model (reward/train.py calls this after saving)."""
    card = model_card(
        kind="reward",
        base=base,
        metrics=metrics,
        config=config,
        trained_on={
            "training examples (judged comparisons)": examples,
            "held-out examples": eval_examples,
            "loss": config.get("loss", "bt"),
        },
        round=round_of(out_dir),
        library="transformers",
        load=(
            "from transformers import AutoModelForSequenceClassification, AutoTokenizer\n"
            f'model = AutoModelForSequenceClassification.from_pretrained("{Path(out_dir).name}")\n'
            f'tokenizer = AutoTokenizer.from_pretrained("{Path(out_dir).name}")\n'
            "# or score texts with rankloop: rankloop score --reward-model FOLDER FILE"
        ),
    )
    card.save(Path(out_dir) / CARD_FILE)
    return Path(out_dir) / CARD_FILE


def write_policy_card(
    out_dir: Path,
    *,
    base: str,
    config: dict,
    summary: dict,
    trained_on: dict,
    optimizer: str = "PPO",
) -> Path:
    """The card of a saved policy (ppo/train.py and ppo/dpo.py call this after saving)."""
    adapter = (Path(out_dir) / "adapter_config.json").exists()
    name = Path(out_dir).name
    load = (
        "from peft import AutoPeftModelForCausalLM\n"
        f'model = AutoPeftModelForCausalLM.from_pretrained("{name}")  # base + LoRA adapter'
        if adapter
        else f'from transformers import AutoModelForCausalLM\nmodel = AutoModelForCausalLM.from_pretrained("{name}")'
    )
    card = model_card(
        kind="policy",
        base=base,
        metrics=summary,
        config={**config, "optimizer": optimizer},
        trained_on=trained_on,
        round=round_of(out_dir),
        library="peft" if adapter else "transformers",
        load=load,
    )
    card.save(Path(out_dir) / CARD_FILE)
    return Path(out_dir) / CARD_FILE
