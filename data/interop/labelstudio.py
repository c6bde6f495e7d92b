"""Label Studio: its JSON export in, tasks and a labeling configuration out.

Formats, as Label Studio documents them:
- the JSON export: a list of tasks, each with `data` (the task's fields) and `annotations`,
  each annotation with `result` (one region per control), `completed_by` (a user id, or an
  object with `id` and `email`), `lead_time` (seconds), `was_cancelled` (the annotator skipped
  the task) and `created_at` (https://labelstud.io/guide/task_format);
- the "Human Preferences collection for RLHF" template: `<Pairwise name toName="a,b">` over two
  `<Text>`s, a result `{"type": "pairwise", "value": {"selected": "left" | "right"}}`
  (https://labelstud.io/templates/generative-pairwise-human-preference,
  https://labelstud.io/tags/pairwise);
- the ranking template: `<List name value="$items">` (items `{id, title, body}`) and
  `<Ranker name toName>`, a result `{"type": "ranker", "value": {"ranker": {NAME: [ids]}}}`,
  or with nested `<Bucket>`s one list of ids per bucket (https://labelstud.io/tags/ranker).

Mapping: the prompt is the one `<Text>` the Pairwise/Ranker does not compare; the responses
are the two compared texts (left = A) or the list's items (their `body`, else `title`). A
ranker without buckets is a strict order; with buckets each bucket is a tier (best first, in
the configuration's order; items in one bucket are tied). A `<Choices>` whose choices are
"Tie" and/or "Both bad" gives a pairwise task those verdicts. A cancelled annotation is a skip.
An annotator is named by their email, else `label-studio:<user id>`.
"""

from __future__ import annotations

import json
import math
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from xml.sax.saxutils import quoteattr

from ..records import Message, Prompt
from .common import (
    ExternalItem,
    InteropError,
    Judgment,
    pairwise_tiers,
)

TOOL = "Label Studio"
#: A verdict choice's text (case and spaces ignored) -> rankloop's pairwise choice.
VERDICTS = {"tie": "tie", "bothbad": "both_bad", "both_bad": "both_bad"}
TASKS_FILE = "tasks.json"
CONFIG_FILE = "labeling.xml"


@dataclass(frozen=True)
class LabelStudioConfig:
    """Which task fields and controls of a Label Studio project hold what rankloop needs."""

    kind: str  # "pairwise" or "ranker"
    prompt: str  # the task data field holding the prompt
    responses: tuple[str, ...]  # pairwise: the two data fields (left, right); ranker: the list
    control: str | None = None  # the Pairwise/Ranker's name (None: any control of that kind)
    verdict: str | None = None  # a <Choices> with "Tie" / "Both bad" (pairwise only)
    buckets: tuple[str, ...] = ()  # a ranker's buckets, best first

    def __post_init__(self) -> None:
        if self.kind not in ("pairwise", "ranker"):
            raise ValueError(f"kind must be 'pairwise' or 'ranker', got {self.kind!r}")
        want = 2 if self.kind == "pairwise" else 1
        if len(self.responses) != want:
            raise InteropError(
                f"a {self.kind} project has {want} response field(s), got {list(self.responses)}"
            )


def config_from_fields(prompt: str, responses: tuple[str, ...]) -> LabelStudioConfig:
    """The configuration given by flags: two response fields are a pairwise project, one is a
    ranker's list."""
    return LabelStudioConfig("pairwise" if len(responses) == 2 else "ranker", prompt, responses)


def parse_config(text: str, where: str = "labeling configuration") -> LabelStudioConfig:
    """Read a Label Studio labeling configuration (XML)."""
    try:
        root = ET.fromstring(text)
    except ET.ParseError as e:
        raise InteropError(f"{where}: not valid XML ({e})") from None
    fields = {
        el.get("name"): el.get("value", "").removeprefix("$")
        for el in root.iter()
        if el.tag in ("Text", "HyperText", "List") and el.get("value", "").startswith("$")
    }
    controls = [el for el in root.iter() if el.tag in ("Pairwise", "Ranker")]
    if len(controls) != 1:
        raise InteropError(
            f"{where}: needs exactly one <Pairwise> or <Ranker> control, found {len(controls)}"
        )
    ctl = controls[0]
    compared = [n.strip() for n in (ctl.get("toName") or "").split(",") if n.strip()]
    missing = [n for n in compared if n not in fields]
    if missing or not compared:
        raise InteropError(
            f"{where}: <{ctl.tag} name={ctl.get('name')!r}> compares {compared}, but "
            f"{missing or 'nothing'} is not a <Text>/<List> bound to a task field ($field)"
        )
    prompts = [f for n, f in fields.items() if n not in compared]
    if len(prompts) != 1:
        raise InteropError(
            f"{where}: expected one <Text> holding the prompt besides the compared ones, "
            f"found {prompts}; give --prompt-column and --responses-column instead"
        )
    verdict = None
    for ch in root.iter("Choices"):
        values = [_verdict_key(c.get("value", "")) for c in ch.iter("Choice")]
        if values and all(v in VERDICTS for v in values):
            verdict = ch.get("name")
    kind = "pairwise" if ctl.tag == "Pairwise" else "ranker"
    return LabelStudioConfig(
        kind=kind,
        prompt=prompts[0],
        responses=tuple(fields[n] for n in compared),
        control=ctl.get("name"),
        verdict=verdict if kind == "pairwise" else None,
        buckets=tuple(b.get("name") for b in ctl.iter("Bucket")),
    )


def _verdict_key(text: str) -> str:
    return "".join(text.lower().split())


# -- import -----------------------------------------------------------------------------------


def parse_export(path: Path, config: LabelStudioConfig) -> list[ExternalItem]:
    """Every task of a Label Studio JSON export as an item; refuses the whole file (one
    `InteropError` naming the task, the annotation and the field) on the first bad record."""
    try:
        tasks = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise InteropError(f"{path}: not UTF-8 text") from None
    except json.JSONDecodeError as e:
        raise InteropError(
            f"{path}: not valid JSON at line {e.lineno}, column {e.colno} ({e.msg}); "
            f"a truncated export? Export the project again"
        ) from None
    if not isinstance(tasks, list):
        raise InteropError(
            f"{path}: a Label Studio JSON export is a list of tasks, got {type(tasks).__name__}"
        )
    items = [_task(t, i, config, path) for i, t in enumerate(tasks, start=1)]
    if not items:
        raise InteropError(f"{path}: no tasks to import")
    return items


def _task(task, n: int, cfg: LabelStudioConfig, path: Path) -> ExternalItem:
    where = f"{path}: task {task.get('id', n) if isinstance(task, dict) else n}"
    if not isinstance(task, dict) or not isinstance(task.get("data"), dict):
        raise InteropError(f"{where}: field 'data' is missing or not an object")
    data = task["data"]
    prompt = _prompt(data, cfg.prompt, where)
    if cfg.kind == "pairwise":
        responses = tuple(_text(data, f, where) for f in cfg.responses)
        ids: tuple[str, ...] = ("left", "right")
    else:
        ids, responses = _list_items(data, cfg.responses[0], where)
    if len(set(responses)) != len(responses):
        raise InteropError(f"{where}: two of its responses are the same text")
    anns = task.get("annotations", [])
    if not isinstance(anns, list):
        raise InteropError(f"{where}: field 'annotations' must be a list")
    judgments = tuple(
        _annotation(
            a, f"{where}, annotation {a.get('id', k) if isinstance(a, dict) else k}", cfg, ids
        )
        for k, a in enumerate(anns, start=1)
    )
    cid = data.get("rankloop_comparison_id")
    return ExternalItem(
        prompt, responses, judgments, comparison_id=cid if isinstance(cid, int) else None
    )


def _prompt(data: dict, field: str, where: str) -> Prompt:
    messages = data.get("rankloop_messages")  # a conversation rankloop exported
    if isinstance(messages, list) and messages:
        try:
            return Prompt(messages=tuple(Message(m["role"], m["content"]) for m in messages))
        except (KeyError, TypeError, ValueError) as e:
            raise InteropError(
                f"{where}: field 'data.rankloop_messages' is malformed ({e})"
            ) from None
    return Prompt.from_text(_text(data, field, where))


def _text(data: dict, field: str, where: str) -> str:
    if field not in data:
        raise InteropError(
            f"{where}: field 'data.{field}' is missing (fields here: {', '.join(data) or 'none'})"
        )
    value = data[field]
    if not isinstance(value, str) or not value.strip():
        raise InteropError(f"{where}: field 'data.{field}' must be non-empty text, got {value!r}")
    return value


def _list_items(data: dict, field: str, where: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    items = data.get(field)
    if not isinstance(items, list) or len(items) < 2:
        raise InteropError(f"{where}: field 'data.{field}' must be a list of 2 or more items")
    ids, texts = [], []
    for k, it in enumerate(items):
        text = it.get("body") or it.get("title") if isinstance(it, dict) else None
        if not isinstance(it, dict) or "id" not in it or not isinstance(text, str):
            raise InteropError(
                f"{where}: field 'data.{field}[{k}]' must be an object with 'id' and 'body'"
            )
        ids.append(str(it["id"]))
        texts.append(text)
    if len(set(ids)) != len(ids):
        raise InteropError(f"{where}: field 'data.{field}' repeats an item id")
    return tuple(ids), tuple(texts)


def _annotator(ann: dict, where: str) -> str:
    who = ann.get("completed_by")
    if isinstance(who, dict):
        if isinstance(who.get("email"), str) and who["email"].strip():
            return who["email"].strip()
        who = who.get("id")
    if isinstance(who, int) and not isinstance(who, bool):
        return f"label-studio:{who}"
    raise InteropError(
        f"{where}: field 'completed_by' must be a user id or an object with 'email' or 'id', "
        f"got {who!r}"
    )


def _annotation(ann, where: str, cfg: LabelStudioConfig, ids: tuple[str, ...]) -> Judgment:
    if not isinstance(ann, dict):
        raise InteropError(f"{where}: an annotation must be an object")
    name = _annotator(ann, where)
    seconds = ann.get("lead_time")
    if seconds is not None and (
        isinstance(seconds, bool)
        or not isinstance(seconds, (int, float))
        or not math.isfinite(seconds)
        or seconds < 0
    ):
        raise InteropError(
            f"{where}: field 'lead_time' must be seconds (a number), got {seconds!r}"
        )
    created = ann.get("created_at") if isinstance(ann.get("created_at"), str) else None
    cancelled = ann.get("was_cancelled", False)
    if not isinstance(cancelled, bool):
        raise InteropError(f"{where}: field 'was_cancelled' must be true or false")
    if cancelled:
        return Judgment(name, None, seconds=seconds, created_at=created)
    result = ann.get("result")
    if not isinstance(result, list):
        raise InteropError(f"{where}: field 'result' must be a list")
    if cfg.kind == "pairwise":
        choice = _pairwise_choice(result, where, cfg)
        return Judgment(name, pairwise_tiers(choice), choice, seconds, created)
    return Judgment(name, _ranker_tiers(result, where, cfg, ids), None, seconds, created)


def _regions(result: list, kind: str, control: str | None, where: str) -> list[tuple[int, dict]]:
    out = []
    for k, r in enumerate(result):
        if not isinstance(r, dict) or not isinstance(r.get("value"), dict):
            raise InteropError(f"{where}: field 'result[{k}]' must be an object with a 'value'")
        if r.get("type") == kind and (control is None or r.get("from_name") == control):
            out.append((k, r["value"]))
    return out


def _pairwise_choice(result: list, where: str, cfg: LabelStudioConfig) -> str:
    picks = _regions(result, "pairwise", cfg.control, where)
    verdicts = _regions(result, "choices", cfg.verdict, where) if cfg.verdict else []
    if len(picks) + len(verdicts) != 1:
        raise InteropError(
            f"{where}: field 'result' must hold one pairwise choice"
            + (f" or one '{cfg.verdict}' verdict" if cfg.verdict else "")
            + f", found {len(picks) + len(verdicts)}"
        )
    if picks:
        k, value = picks[0]
        sel = value.get("selected")
        if sel not in ("left", "right"):
            raise InteropError(
                f"{where}: field 'result[{k}].value.selected' is {sel!r}; expected 'left' or 'right'"
            )
        return "A" if sel == "left" else "B"
    k, value = verdicts[0]
    chosen = value.get("choices")
    key = _verdict_key(chosen[0]) if isinstance(chosen, list) and len(chosen) == 1 else None
    if key not in VERDICTS:
        raise InteropError(
            f"{where}: field 'result[{k}].value.choices' is {chosen!r}; expected ['Tie'] or "
            f"['Both bad']"
        )
    return VERDICTS[key]


def _ranker_tiers(result: list, where: str, cfg: LabelStudioConfig, ids: tuple[str, ...]):
    regions = _regions(result, "ranker", cfg.control, where)
    if len(regions) != 1:
        raise InteropError(
            f"{where}: field 'result' must hold one ranker result, found {len(regions)}"
        )
    k, value = regions[0]
    ranker = value.get("ranker")
    if not isinstance(ranker, dict):
        raise InteropError(f"{where}: field 'result[{k}].value.ranker' must be an object")
    if cfg.buckets:
        unknown = [b for b in ranker if b not in cfg.buckets and ranker[b]]
        if unknown:
            raise InteropError(
                f"{where}: field 'result[{k}].value.ranker' has items outside the buckets "
                f"{list(cfg.buckets)}: in {unknown}; rank every response"
            )
        groups = [ranker.get(b) or [] for b in cfg.buckets]
    else:
        if len(ranker) != 1:
            raise InteropError(
                f"{where}: field 'result[{k}].value.ranker' must hold one ordered list, "
                f"got keys {list(ranker)} (a project with buckets needs --ls-config)"
            )
        order = next(iter(ranker.values()))
        groups = [[x] for x in order] if isinstance(order, list) else [order]
    index = {x: i for i, x in enumerate(ids)}
    tiers, seen = [], []
    for g in groups:
        if not isinstance(g, list):
            raise InteropError(f"{where}: field 'result[{k}].value.ranker' must hold lists of ids")
        for x in g:
            if str(x) not in index:
                raise InteropError(
                    f"{where}: field 'result[{k}].value.ranker' names item {x!r}, which the "
                    f"task does not have (items: {list(ids)})"
                )
        if g:
            tiers.append(tuple(index[str(x)] for x in g))
            seen += [str(x) for x in g]
    if sorted(seen) != sorted(ids):
        raise InteropError(
            f"{where}: field 'result[{k}].value.ranker' must place each of {list(ids)} exactly "
            f"once, got {seen}"
        )
    return tuple(tiers)


# -- export -----------------------------------------------------------------------------------


def pairwise_config() -> str:
    """The RLHF template's configuration, plus a Tie / Both bad verdict."""
    return (
        "<View>\n"
        '  <Text name="prompt" value="$prompt"/>\n'
        '  <Pairwise name="comparison" toName="answer1,answer2"/>\n'
        '  <Text name="answer1" value="$answer1"/>\n'
        '  <Text name="answer2" value="$answer2"/>\n'
        '  <Choices name="verdict" toName="prompt" choice="single">\n'
        '    <Choice value="Tie"/>\n'
        '    <Choice value="Both bad"/>\n'
        "  </Choices>\n"
        "</View>\n"
    )


def ranker_config(k: int) -> str:
    """A ranking configuration with one bucket per tier (best first): a bucket holds ties."""
    buckets = "".join(
        f"    <Bucket name={quoteattr(f'tier-{t}')} "
        f"title={quoteattr(f'Tier {t}' + (' (best)' if t == 1 else ''))}/>\n"
        for t in range(1, k + 1)
    )
    return (
        "<View>\n"
        '  <Text name="prompt" value="$prompt"/>\n'
        '  <List name="answers" value="$answers" title="Responses"/>\n'
        '  <Ranker name="rank" toName="answers">\n'
        f"{buckets}"
        "  </Ranker>\n"
        "</View>\n"
    )


def write_export(items: list[ExternalItem], out: Path) -> int:
    """Write `out/tasks.json` (the items as Label Studio tasks, their labels and skips as
    annotations) and `out/labeling.xml` (the matching configuration): the pairwise template
    when every item has 2 responses, else a ranker with a bucket per tier. Returns the task
    count."""
    pairwise = all(len(it.responses) == 2 for it in items)
    k = max(len(it.responses) for it in items)
    out.mkdir(parents=True, exist_ok=True)
    tasks = [_task_json(n, it, pairwise) for n, it in enumerate(items, start=1)]
    (out / TASKS_FILE).write_text(json.dumps(tasks, ensure_ascii=False, indent=1) + "\n")
    (out / CONFIG_FILE).write_text(pairwise_config() if pairwise else ranker_config(k))
    return len(tasks)


def _task_json(n: int, it: ExternalItem, pairwise: bool) -> dict:
    data: dict = {"prompt": it.prompt.text}
    if it.prompt.is_conversation:
        data["rankloop_messages"] = it.prompt.as_chat()
    if pairwise:
        data["answer1"], data["answer2"] = it.responses
    else:
        data["answers"] = [
            {"id": f"response-{i + 1}", "title": f"Response {i + 1}", "body": t}
            for i, t in enumerate(it.responses)
        ]
    if it.comparison_id is not None:
        data["rankloop_comparison_id"] = it.comparison_id
    anns = []
    for a, j in enumerate(it.judgments, start=1):
        anns.append(
            {
                "id": n * 1000 + a,
                "completed_by": {"email": j.annotator},
                "result": [] if j.skipped else _result(j, pairwise),
                "was_cancelled": j.skipped,
                "lead_time": j.seconds,
                "created_at": j.created_at,
                "task": n,
            }
        )
    return {"id": n, "data": data, "annotations": anns}


def _result(j: Judgment, pairwise: bool) -> list[dict]:
    if pairwise:
        choice = j.choice or {((0,), (1,)): "A", ((1,), (0,)): "B"}.get(j.tiers, "tie")
        if choice in ("A", "B"):
            return [
                {
                    "from_name": "comparison",
                    "to_name": "answer1,answer2",
                    "type": "pairwise",
                    "value": {"selected": "left" if choice == "A" else "right"},
                }
            ]
        text = "Tie" if choice == "tie" else "Both bad"
        return [
            {
                "from_name": "verdict",
                "to_name": "prompt",
                "type": "choices",
                "value": {"choices": [text]},
            }
        ]
    buckets = {
        f"tier-{t}": [f"response-{i + 1}" for i in tier] for t, tier in enumerate(j.tiers, start=1)
    }
    return [
        {"from_name": "rank", "to_name": "answers", "type": "ranker", "value": {"ranker": buckets}}
    ]


def export_config(items: list[ExternalItem]) -> LabelStudioConfig:
    """The configuration `write_export` writes for these items, parsed back (for tests)."""
    pairwise = all(len(it.responses) == 2 for it in items)
    k = max(len(it.responses) for it in items)
    return parse_config(pairwise_config() if pairwise else ranker_config(k))
