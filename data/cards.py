"""The dataset card written beside a preference export, and what every card shares.

Cards are Hugging Face cards (`huggingface_hub.DatasetCard` / `ModelCard`): YAML metadata the
Hub reads (license, tags, task categories, sizes) and a Markdown body for people. rankloop's
own figures also go into the metadata under `rankloop:` so a script (or a test) reads them
back with `DatasetCard.load(path).data.rankloop`.
"""

from __future__ import annotations

import collections
from pathlib import Path

from .agreement import alpha_of_labels
from .store import Store

CARD_FILE = "README.md"


def size_category(n: int) -> str:
    """The Hub's size bucket for n rows."""
    for bound, name in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K")):
        if n < bound:
            return name
    return "100K<n<1M" if n < 1_000_000 else "n>1M"


def table(rows: list[tuple[str, object]]) -> str:
    """A two-column Markdown table."""
    lines = ["| | |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in rows]
    return "\n".join(lines)


def preference_summary(store: Store, round: int | None = None) -> dict:
    """What the dataset card reports: label and pair counts by source, people vs simulated
    annotators, and agreement (Krippendorff's alpha over people's labels)."""
    labels = store.labels(round=round)
    prefs = list(store.preferences(round=round))
    by_source = collections.Counter(lab.source for lab in labels)
    pairs_by_source = collections.Counter(p.source for p in prefs)
    roles = {a.id: a.role for a in store.annotators()}
    people = {
        lab.annotator_id for lab in labels if roles[lab.annotator_id] in ("annotator", "admin")
    }
    simulated = {lab.annotator_id for lab in labels if roles[lab.annotator_id] == "simulated"}
    external = {lab.annotator_id for lab in labels if roles[lab.annotator_id] == "external"}
    human = [lab for lab in labels if lab.source == "human"]
    return {
        "labels": len(labels),
        "pairs": len(prefs),
        "ties": sum(p.tie for p in prefs),
        "labels_by_source": dict(sorted(by_source.items())),
        "pairs_by_source": dict(sorted(pairs_by_source.items())),
        "annotators": {
            "people": len(people),
            "simulated": len(simulated),
            "external": len(external),
        },
        "agreement_alpha": alpha_of_labels(human),
        "rounds": sorted({p.round for p in prefs}),
    }


def dataset_card(summary: dict, *, license: str | None = None):
    """A `DatasetCard` for a preference export with the figures of `preference_summary`."""
    from huggingface_hub import DatasetCard, DatasetCardData

    data = DatasetCardData(
        license=license,
        tags=["rankloop", "preference", "rlhf", "human-feedback"],
        task_categories=["text-classification", "reinforcement-learning"],
        size_categories=[size_category(summary["pairs"])],
        rankloop=summary,
    )
    a = summary["annotators"]
    alpha = summary["agreement_alpha"]
    body = "\n\n".join(
        [
            "# Preference pairs from rankloop",
            (
                "Pairs of responses to one prompt, the chosen one ranked above the rejected one by "
                "an annotator (people labeling in rankloop, labels imported from other tools, or "
                "simulated annotators). Load with `datasets.load_from_disk` (or `load_dataset` "
                "once pushed); TRL's RewardTrainer and DPOTrainer read it unchanged."
            ),
            "## Fields\n\n"
            + table(
                [
                    ("`prompt`", "the prompt (a string, or {role, content} turns)"),
                    ("`chosen` / `rejected`", "the preferred and the other response"),
                    ("`tie`", "the annotator tied them (order meaningless)"),
                    ("`both_bad`", "a pairwise 'both bad' verdict"),
                    ("`strength` / `margin`", "how much better, when given"),
                    ("`annotator`, `source`", "who judged, and human / external / simulated"),
                    ("`simulated`", "the label came from a simulated annotator"),
                    ("`round`", "the rankloop round of the comparison"),
                    ("`label_id`, `comparison_id`, `pairs_in_label`", "one K-ranking's pairs"),
                ]
            ),
            "## Counts\n\n"
            + table(
                [("labels", summary["labels"]), ("pairs", summary["pairs"])]
                + [("ties", summary["ties"])]
                + [(f"pairs from {s}", n) for s, n in summary["pairs_by_source"].items()]
                + [
                    ("people", a["people"]),
                    ("simulated annotators", a["simulated"]),
                    ("imported annotators", a["external"]),
                    (
                        "agreement (Krippendorff's alpha, people)",
                        "n/a (no item labeled twice)" if alpha is None else f"{alpha:.3f}",
                    ),
                ]
            ),
        ]
    )
    return DatasetCard(f"---\n{data.to_yaml()}\n---\n\n{body}\n")


def write_dataset_card(store: Store, folder: Path, round: int | None = None) -> Path:
    """Write the dataset card of a preference export into its folder."""
    path = Path(folder) / CARD_FILE
    dataset_card(preference_summary(store, round)).save(path)
    return path
