"""The record every interop format maps onto, and its way into and out of the store.

An `ExternalItem` is one task of another tool: a prompt, the responses shown (in the tool's
order) and every annotator's judgment of them (a ranking in tiers of response indices, best
first, ties sharing a tier; or a skip). Parsers (Label Studio, Argilla) turn a file into items,
checking every field first; `write_items` then stores them in one transaction, so a file that
fails anywhere writes nothing. `read_items` gives the store's comparisons back as items for the
writers. Each annotator of the other tool becomes an account of its own (role 'external', it
cannot log in) named as that tool names them, and their labels have source 'external'.
"""

from __future__ import annotations

import collections
from collections.abc import Sequence
from dataclasses import dataclass

from ..io import ImportFileError
from ..records import Comparison, Label, Prompt, Response
from ..store import Store, StoreError, now

#: The reason recorded with a skip imported from another tool (which keeps none of its own).
SKIP_REASON = "skipped in {tool}"


class InteropError(ImportFileError):
    """An export of another tool that cannot be imported: the message names the file, the
    record and the field."""


@dataclass(frozen=True)
class Judgment:
    """One annotator's verdict on one item: `tiers` of response indices (0-based, in the item's
    order), best first; None when the annotator skipped the item. `choice` keeps a pairwise
    verdict ("A" = the first response, "B", "tie", "both_bad") so "both bad" survives."""

    annotator: str
    tiers: tuple[tuple[int, ...], ...] | None
    choice: str | None = None
    seconds: float | None = None
    created_at: str | None = None

    @property
    def skipped(self) -> bool:
        return self.tiers is None


@dataclass(frozen=True)
class ExternalItem:
    """One task of another tool: what was shown and every judgment of it."""

    prompt: Prompt
    responses: tuple[str, ...]
    judgments: tuple[Judgment, ...] = ()
    comparison_id: int | None = None  # the rankloop comparison it was exported from, if any
    round: int = 0


@dataclass(frozen=True)
class InteropReport:
    items: int
    prompts_added: int
    responses_added: int
    comparisons_added: int
    labels_added: int
    skips_added: int
    annotators: tuple[str, ...]


def tiers_from_ranks(ranks: Sequence[int]) -> tuple[tuple[int, ...], ...]:
    """Tiers (best first) from one rank per response (1 = best; equal ranks tie):
    [2, 1, 2] -> ((1,), (0, 2))."""
    by_rank: dict[int, list[int]] = collections.defaultdict(list)
    for i, r in enumerate(ranks):
        by_rank[r].append(i)
    return tuple(tuple(by_rank[r]) for r in sorted(by_rank))


def ranks_from_tiers(tiers: Sequence[Sequence[int]], k: int) -> list[int]:
    """The inverse of `tiers_from_ranks`: rank (1 = best) of each of the k responses."""
    ranks = [0] * k
    for t, tier in enumerate(tiers, start=1):
        for i in tier:
            ranks[i] = t
    return ranks


def pairwise_tiers(choice: str) -> tuple[tuple[int, ...], ...]:
    """The tiers of a pairwise verdict over responses (0, 1)."""
    return {"A": ((0,), (1,)), "B": ((1,), (0,))}.get(choice, ((0, 1),))


def write_items(store: Store, items: Sequence[ExternalItem], source: str, tool: str):
    """Store checked items in one transaction; returns an `InteropReport`.

    An item that names a comparison of this store with the same prompt and response texts (a
    task rankloop exported) is labeled there; any other item becomes a prompt, responses and a
    comparison of its own (idempotent by content). A judgment an annotator already has on that
    comparison (a label or a skip) is left as it is, so importing a file twice adds nothing.
    """
    before = store.inserted.copy()
    skips = 0
    names: dict[str, int] = {}
    with store.transaction():
        for item in items:
            cid, rids = _comparison_for(store, item, source)
            for j in item.judgments:
                if j.annotator not in names:
                    names[j.annotator] = store.external_annotator(j.annotator).id
                aid = names[j.annotator]
                if _judged(store, cid, aid):
                    continue
                if j.skipped:
                    store.db.execute(
                        "insert into skips (comparison_id, annotator_id, reason, created_at) "
                        "values (?, ?, ?, ?)",
                        [cid, aid, SKIP_REASON.format(tool=tool), j.created_at or now()],
                    )
                    skips += 1
                    continue
                store._add_label(_label(cid, aid, rids, j))
    added = store.inserted - before
    return InteropReport(
        items=len(items),
        prompts_added=added["prompts"],
        responses_added=added["responses"],
        comparisons_added=added["comparisons"],
        labels_added=added["labels"],
        skips_added=skips,
        annotators=tuple(names),
    )


def _comparison_for(store: Store, item: ExternalItem, source: str) -> tuple[int, list[int]]:
    """(comparison id, response id of each of the item's responses, in the item's order)."""
    if item.comparison_id is not None:
        try:
            comp = store.comparison(item.comparison_id)
        except StoreError:
            comp = None
        if comp is not None:
            texts = {r.id: r.text for r in store.responses(ids=list(comp.response_ids))}
            by_text = {t: rid for rid, t in texts.items()}
            same_prompt = store.prompt(comp.prompt_id).messages == item.prompt.messages
            if same_prompt and sorted(texts.values()) == sorted(item.responses):
                return comp.id, [by_text[t] for t in item.responses]
    prompt = Prompt(messages=item.prompt.messages, source=source, metadata=item.prompt.metadata)
    pid = store._add_prompt(prompt)
    rids = [
        store._add_response(
            Response(prompt_id=pid, text=t, round=item.round, source=source, sample_index=i)
        )
        for i, t in enumerate(item.responses)
    ]
    return store._add_comparison(Comparison(pid, tuple(rids), item.round)), rids


def _judged(store: Store, cid: int, aid: int) -> bool:
    return bool(
        store.db.execute(
            "select 1 from labels where comparison_id = ? and annotator_id = ? union all "
            "select 1 from skips where comparison_id = ? and annotator_id = ?",
            [cid, aid, cid, aid],
        ).fetchone()
    )


def _label(cid: int, aid: int, rids: list[int], j: Judgment) -> Label:
    common = {"seconds_spent": j.seconds, "source": "external", "created_at": j.created_at}
    if j.choice is not None and len(rids) == 2:
        return Label.pairwise(cid, aid, (rids[0], rids[1]), j.choice, **common)
    ranking = tuple(tuple(rids[i] for i in tier) for tier in j.tiers)
    return Label(cid, aid, ranking, mode="ranking", display_order=tuple(rids), **common)


def read_items(store: Store, round: int | None = None) -> list[ExternalItem]:
    """Every comparison (of rounds <= `round`, or all) as an item, with its labels and skips,
    in comparison order; the responses in the comparison's order."""
    names = {a.id: a.name for a in store.annotators()}
    labels: dict[int, list[Label]] = collections.defaultdict(list)
    for lab in store.labels(round=round):
        labels[lab.comparison_id].append(lab)
    skips: dict[int, list[tuple[int, str]]] = collections.defaultdict(list)
    for cid, aid, at in store.db.execute(
        "select comparison_id, annotator_id, created_at from skips order by id"
    ).fetchall():
        skips[cid].append((aid, at))
    comps = [c for c in store.comparisons() if round is None or c.round <= round]
    items = []
    for comp in comps:
        texts = {r.id: r.text for r in store.responses(ids=list(comp.response_ids))}
        index = {rid: i for i, rid in enumerate(comp.response_ids)}
        judgments = [_judgment(lab, index, names) for lab in labels[comp.id]]
        judgments += [Judgment(names[aid], None, created_at=at) for aid, at in skips[comp.id]]
        items.append(
            ExternalItem(
                prompt=store.prompt(comp.prompt_id),
                responses=tuple(texts[r] for r in comp.response_ids),
                judgments=tuple(judgments),
                comparison_id=comp.id,
                round=comp.round,
            )
        )
    return items


def _judgment(lab: Label, index: dict[int, int], names: dict[int, str]) -> Judgment:
    tiers = tuple(tuple(sorted(index[r] for r in tier)) for tier in lab.ranking)
    choice = None
    if lab.mode == "pairwise" and lab.choice is not None:
        choice = lab.choice
        if lab.choice in ("A", "B") and index[lab.display_order[0]] == 1:  # shown as (B, A)
            choice = "B" if lab.choice == "A" else "A"
    return Judgment(names[lab.annotator_id], tiers, choice, lab.seconds_spent, lab.created_at)
