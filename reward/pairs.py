"""From the store's labels to reward-model training examples.

One `Example` is one batch element: the K responses of one comparison as judged by one
annotator (or by all of them, aggregated), with every pair that judgment implies. A pairwise
label is K = 2 and one pair; a ranking of K responses gives its C(K,2) pairs, each weighted
1/C(K,2) and kept in the same example, so the K responses go through the model once and one
ranking counts as one comparison (InstructGPT, Ouyang et al. 2022, section 3.5).

Choices (see docs/reward.md):
* ties are kept: a pair of responses in the same tier is a `Pair` with `tie=True`, which the
  tie-aware losses model (Rao-Kupper, Davidson, or Bradley-Terry with a tie as half a win each
  way);
* "both bad" (pairwise choice `both_bad`) says nothing about which response is better:
  `both_bad="drop"` (default) leaves it out, `"tie"` keeps it as a tie;
* strength -> margin: "slightly" -> `margin_slightly`, "much" -> `margin_much`; an imported
  numeric `Label.margin` is used as given;
* several annotators on one comparison: `aggregate="each"` keeps every label as its own
  example; `"majority"` merges them into one example per comparison (per response pair, the
  outcome most annotators chose; a split vote is a tie).
"""

from __future__ import annotations

import hashlib
import itertools
import math
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

from rankloop.data import rankings
from rankloop.data.rankings import disagreement_rate, pair_outcome, tier_of
from rankloop.data.records import Label, Prompt
from rankloop.data.store import Store

BOTH_BAD_CHOICES = ("drop", "tie")
AGGREGATE_CHOICES = ("each", "majority")


class RewardDataError(ValueError):
    """Labels that cannot train a reward model (none, a single class, too few to split)."""


@dataclass(frozen=True)
class Pair:
    """One judged pair inside an `Example`: indices into `Example.responses`.

    `better` was preferred over `worse`; when `tie` is True the order means nothing.
    """

    better: int
    worse: int
    tie: bool
    margin: float  # target reward gap for the Bradley-Terry loss (0 = plain)
    weight: float  # 1 / C(K,2) for a K-wise ranking: one example weighs one comparison


@dataclass(frozen=True)
class Example:
    """One comparison judged by one annotator (or aggregated): one batch element.

    Built from a store by `build_examples`, or from plain data by `pairwise_example` /
    `ranking_example` (then the ids are None: a trainer needs only the texts and pairs).
    """

    prompt: Prompt
    responses: tuple[str, ...]  # the K responses, in the comparison's order
    tiers: tuple[int, ...]  # tier of each response (0 = best, equal = tied): Plackett-Luce input
    pairs: tuple[Pair, ...]
    comparison_id: int | None = None
    prompt_id: int | None = None
    annotator: str = ""  # "majority" for an aggregated example
    label_ids: tuple[int, ...] = ()


def _as_prompt(prompt: Prompt | str) -> Prompt:
    return Prompt.from_text(prompt) if isinstance(prompt, str) else prompt


def ranking_example(
    prompt: Prompt | str,
    responses: Sequence[str],
    tiers: Sequence[int],
    *,
    margin: float = 0.0,
    annotator: str = "",
) -> Example:
    """An example from K responses and the tier of each (0 = best, equal = tied), with every
    strict pair given `margin`: labels that never saw a rankloop store."""
    if len(responses) != len(tiers) or len(responses) < 2:
        raise ValueError("give at least 2 responses and one tier per response")
    ids = tuple(range(len(responses)))
    return _example(
        _as_prompt(prompt),
        ids,
        dict(enumerate(responses)),
        dict(enumerate(tiers)),
        {pair: margin for pair in itertools.combinations(ids, 2)},
        None,
        annotator,
        (),
    )


def pairwise_example(
    prompt: Prompt | str,
    chosen: str,
    rejected: str,
    *,
    tie: bool = False,
    margin: float = 0.0,
    annotator: str = "",
) -> Example:
    """An example from one preference pair (TRL's prompt / chosen / rejected)."""
    return ranking_example(
        prompt, [chosen, rejected], [0, 0] if tie else [0, 1], margin=margin, annotator=annotator
    )


@dataclass(frozen=True)
class PreferenceData:
    """Everything the trainer needs from the store, with the counts it reports."""

    examples: tuple[Example, ...]
    labels: int  # labels read (before dropping "both bad")
    dropped_both_bad: int
    disagreement: float  # see `disagreement_rate`; NaN when no comparison has 2+ labels

    @property
    def pairs(self) -> int:
        return sum(len(e.pairs) for e in self.examples)

    @property
    def ties(self) -> int:
        return sum(p.tie for e in self.examples for p in e.pairs)


def label_margin(label: Label, margin_slightly: float, margin_much: float) -> float:
    """The Bradley-Terry margin of a label (`rankings.label_margin`: its numeric margin, else
    from its strength, else 0)."""
    return rankings.label_margin(label.margin, label.strength, margin_slightly, margin_much)


def _example(
    prompt: Prompt,
    response_ids: tuple[int, ...],
    texts: dict[int, str],
    tiers: dict[int, int],
    margins: dict[tuple[int, int], float],
    comparison_id: int,
    annotator: str,
    label_ids: tuple[int, ...],
) -> Example:
    """An example from a tier per response id; pairs in the comparison's order."""
    k = len(response_ids)
    w = 1.0 / math.comb(k, 2)
    pairs = []
    for i, j in itertools.combinations(range(k), 2):
        a, b = response_ids[i], response_ids[j]
        out = pair_outcome(tiers, a, b)
        better, worse = (j, i) if out < 0 else (i, j)
        pairs.append(
            Pair(better, worse, out == 0, 0.0 if out == 0 else margins.get((a, b), 0.0), w)
        )
    # tiers renumbered 0..T-1 so equal values mean a tie and gaps do not matter
    levels = sorted({tiers[r] for r in response_ids})
    return Example(
        prompt=prompt,
        responses=tuple(texts[r] for r in response_ids),
        tiers=tuple(levels.index(tiers[r]) for r in response_ids),
        pairs=tuple(pairs),
        comparison_id=comparison_id,
        prompt_id=prompt.id,
        annotator=annotator,
        label_ids=label_ids,
    )


def build_examples(
    store: Store,
    round: int | None = None,
    *,
    both_bad: str = "drop",
    aggregate: str = "each",
    margin_slightly: float = 0.0,
    margin_much: float = 1.0,
    sources: tuple[str, ...] | None = None,
) -> PreferenceData:
    """Read every label of comparisons up to `round` (all when None; of the label `sources`
    only, when given) into examples.

    Order is deterministic: by comparison id, then label id.
    """
    if both_bad not in BOTH_BAD_CHOICES:
        raise ValueError(f"both_bad must be one of {BOTH_BAD_CHOICES}, got {both_bad!r}")
    if aggregate not in AGGREGATE_CHOICES:
        raise ValueError(f"aggregate must be one of {AGGREGATE_CHOICES}, got {aggregate!r}")
    labels = [lab for lab in store.labels(round=round) if sources is None or lab.source in sources]
    names = {a.id: a.name for a in store.annotators()}
    by_comp: dict[int, list[Label]] = defaultdict(list)
    for lab in labels:
        by_comp[lab.comparison_id].append(lab)
    disagreement = disagreement_rate(
        {c: [lab.ranking for lab in labs] for c, labs in by_comp.items()}
    )

    examples: list[Example] = []
    dropped = 0
    prompts: dict[int, Prompt] = {}
    for cid in sorted(by_comp):
        labs = [lab for lab in by_comp[cid] if not (lab.both_bad and both_bad == "drop")]
        dropped += len(by_comp[cid]) - len(labs)
        if not labs:
            continue
        comp = store.comparison(cid)
        if comp.prompt_id not in prompts:
            prompts[comp.prompt_id] = store.prompt(comp.prompt_id)
        prompt = prompts[comp.prompt_id]
        texts = {r.id: r.text for r in store.responses(ids=list(comp.response_ids))}
        rids = comp.response_ids
        judged = []  # (tiers, margins) per label
        for lab in labs:
            m = label_margin(lab, margin_slightly, margin_much)
            judged.append(
                (tier_of(lab.ranking), {(a, b): m for a, b in itertools.combinations(rids, 2)})
            )
        if aggregate == "each":
            for lab, (tiers, margins) in zip(labs, judged):
                examples.append(
                    _example(
                        prompt,
                        rids,
                        texts,
                        tiers,
                        margins,
                        cid,
                        names.get(lab.annotator_id, str(lab.annotator_id)),
                        (lab.id,),
                    )
                )
        else:
            examples.append(
                _majority(prompt, rids, texts, judged, cid, tuple(lab.id for lab in labs))
            )
    return PreferenceData(
        examples=tuple(examples),
        labels=len(labels),
        dropped_both_bad=dropped,
        disagreement=disagreement,
    )


def _majority(prompt, rids, texts, judged, cid, label_ids) -> Example:
    """One example from several labels: per response pair the majority outcome.

    A split vote (no strict majority among better / worse / tie) is a tie. The margin of a
    pair is the mean margin of the labels that voted for the winning outcome. The tiers for
    Plackett-Luce are the responses ordered by their mean tier across labels (equal = tied).
    """
    k = len(rids)
    w = 1.0 / math.comb(k, 2)
    pairs = []
    for i, j in itertools.combinations(range(k), 2):
        a, b = rids[i], rids[j]
        outs = [pair_outcome(t, a, b) for t, _ in judged]
        (top, n_top), *rest = Counter(outs).most_common() + [(None, 0)]
        out = top if n_top > rest[0][1] else 0
        better, worse = (j, i) if out < 0 else (i, j)
        margin = 0.0
        if out != 0:
            ms = [m[(a, b)] for (t, m), o in zip(judged, outs) if o == out]
            margin = sum(ms) / len(ms)
        pairs.append(Pair(better, worse, out == 0, margin, w))
    mean_tier = {r: sum(t[r] / max(len(set(t.values())) - 1, 1) for t, _ in judged) for r in rids}
    levels = sorted(set(mean_tier.values()))
    tiers = tuple(levels.index(mean_tier[r]) for r in rids)
    return Example(
        prompt=prompt,
        responses=tuple(texts[r] for r in rids),
        tiers=tiers,
        pairs=tuple(pairs),
        comparison_id=cid,
        prompt_id=prompt.id,
        annotator="majority",
        label_ids=label_ids,
    )


def split_by_prompt(examples, eval_fraction: float, seed: int = 0):
    """(train, held_out): whole prompts go to one side, never both.

    Prompts are ordered by sha256(seed, prompt text) and the first ceil(eval_fraction * n)
    are held out: deterministic given the seed, and a prompt keeps its side as labels are added
    in later rounds (its hash does not change). eval_fraction = 0 holds out nothing.
    """
    examples = tuple(examples)
    if not 0 <= eval_fraction < 1:
        raise ValueError(f"eval_fraction must be in [0, 1), got {eval_fraction}")
    if eval_fraction == 0:
        return examples, ()
    keys = {e.prompt.hash for e in examples}
    if len(keys) < 2:
        raise RewardDataError(
            f"only {len(keys)} labeled prompt(s): a held-out split by prompt needs at least 2; "
            f"label comparisons of more prompts, or set [reward] eval_fraction = 0"
        )
    order = sorted(keys, key=lambda key: hashlib.sha256(f"{seed}:{key}".encode()).hexdigest())
    n_eval = min(math.ceil(eval_fraction * len(order)), len(order) - 1)
    held = set(order[:n_eval])
    return (
        tuple(e for e in examples if e.prompt.hash not in held),
        tuple(e for e in examples if e.prompt.hash in held),
    )


def check_trainable(data: PreferenceData, round: int | None) -> None:
    """Fail with one clear message when the labels cannot train a reward model."""
    where = f" up to round {round}" if round is not None else ""
    if data.labels == 0:
        raise RewardDataError(
            f"no labels{where}: label comparisons in the app (`rankloop serve`) or import "
            f"preference data (`rankloop import FILE`) first"
        )
    if not data.examples:
        raise RewardDataError(
            f"all {data.labels} labels{where} are 'both bad', which [reward] both_bad = 'drop' "
            f"leaves out: label more comparisons, or set both_bad = 'tie'"
        )
    if data.pairs == data.ties:
        raise RewardDataError(
            f"every one of the {data.pairs} labeled pairs{where} is a tie (a single label "
            f"class): a reward model needs at least one strict preference to learn from"
        )
