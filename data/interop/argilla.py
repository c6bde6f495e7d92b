"""Argilla v2: a dataset with a `RankingQuestion` in, an Argilla-ready dataset out.

Formats, as Argilla v2 writes them:
- `dataset.records.to_datasets()` (and `to_hub`, whose data files hold the same rows): one row
  per record, the fields and metadata as columns, and per question `<q>.responses` (one value
  per user), `<q>.responses.users` (their user ids) and `<q>.responses.status` ("submitted",
  "discarded" or "draft"); a ranking response's value is the option values in order, best first
  (`argilla/records/_io/_generic.py` and `argilla/responses.py` in argilla-io/argilla);
- Argilla's server keeps a rank per option, `[{"value": ..., "rank": 1}, ...]`, where equal
  ranks are ties; rows in that form are read too;
- `Dataset.to_disk(path)`: `path/.argilla/settings.json` (fields and questions),
  `path/.argilla/dataset.json` and `path/records.json` (records with `fields`, `metadata` and
  `responses: {question: [{value, user_id, status}]}`); a Hub repository holds the same
  `.argilla/` folder beside its data files (`argilla/datasets/_io/_disk.py`, `_hub.py`).

Mapping: the prompt is the field `--prompt-column` (default `prompt`); the responses are the
fields the ranking question's options name (option value = field name, as Argilla's
preference examples do), or `--responses-column a,b,...` in the options' order. "submitted" is
a label, "discarded" a skip, a draft is not yet a judgment and is left out. An annotator is
`argilla:<user id>`, unless the row carries `<q>.responses.usernames` (rankloop's exports do).

rankloop's export keeps ties in `<q>.responses.ranks` (one rank per value, 1 = best) because the
SDK's list-of-values form drops them; Argilla ignores the extra column.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

from ..records import Message, Prompt
from .common import (
    ExternalItem,
    InteropError,
    Judgment,
    ranks_from_tiers,
    tiers_from_ranks,
)

TOOL = "Argilla"
QUESTION = "ranking"
SETTINGS = Path(".argilla") / "settings.json"
DATA_FILE = Path("data") / "train-00000-of-00001.parquet"
STATUSES = ("submitted", "discarded", "draft")
#: Argilla user ids for rankloop's accounts: stable, so a re-export names the same users.
USER_NAMESPACE = uuid.UUID("6f1c9a4e-8d2b-4a57-9a0e-2b9f1d7c3e10")


def read_settings(path: Path) -> dict | None:
    """`.argilla/settings.json` of a `to_disk` folder or Hub snapshot, or None."""
    f = path / SETTINGS if path.is_dir() else None
    if f is None or not f.exists():
        return None
    try:
        return json.loads(f.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InteropError(f"{f}: not valid JSON ({e})") from None


def ranking_question(
    settings: dict | None, question: str | None, responses: tuple[str, ...] | None, where: str
) -> tuple[str, tuple[str, ...], tuple[str, ...]]:
    """(question name, its option values, the field each option names)."""
    if settings is None:
        if not question or not responses:
            raise InteropError(
                f"{where}: no .argilla/settings.json here: name the ranking question "
                f"(--question) and the response fields (--responses-column a,b,...)"
            )
        return question, responses, responses
    questions = [
        q
        for q in settings.get("questions", [])
        if isinstance(q, dict) and (q.get("settings") or {}).get("type") == "ranking"
    ]
    if question:
        questions = [q for q in questions if q.get("name") == question]
    if len(questions) != 1:
        names = [q.get("name") for q in questions]
        raise InteropError(
            f"{where}: expected one ranking question{f' named {question!r}' if question else ''}"
            f" in .argilla/settings.json, found {names or 'none'}; name it with --question"
        )
    q = questions[0]
    options = tuple(str(o.get("value")) for o in q["settings"].get("options", []))
    fields = responses or options
    if len(fields) != len(options):
        raise InteropError(
            f"{where}: --responses-column names {len(fields)} fields for the "
            f"{len(options)} options of {q['name']!r}"
        )
    return q["name"], options, tuple(fields)


def read_rows(path: Path) -> list[tuple[str, dict]]:
    """(where, flattened row) for each record of a `to_datasets` dataset (saved with
    `save_to_disk`, or as Parquet/JSONL files, e.g. a Hub snapshot's `data/`), or of a
    `to_disk` folder's `records.json`."""
    if path.is_dir() and (path / "records.json").exists():
        return _nested(path / "records.json")
    if path.is_dir() and ((path / "dataset_info.json").exists() or (path / "state.json").exists()):
        import datasets

        ds = datasets.load_from_disk(str(path))
        if isinstance(ds, datasets.DatasetDict):
            ds = next(iter(ds.values()))
        return [(f"row {i}", r) for i, r in enumerate(ds, start=1)]
    files = (
        sorted(p for p in path.rglob("*") if p.suffix in (".parquet", ".jsonl"))
        if path.is_dir()
        else [path]
    )
    if not files:
        raise InteropError(
            f"{path}: no Argilla records here (a save_to_disk folder, records.json, or "
            f"Parquet/JSONL files)"
        )
    rows = []
    for f in files:
        rows += _file_rows(f)
    return rows


def _file_rows(f: Path) -> list[tuple[str, dict]]:
    if f.suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(f)
        except Exception as e:
            raise InteropError(f"{f}: not a readable Parquet file ({e})") from e
        return [(f"{f.name}: row {i}", r) for i, r in enumerate(table.to_pylist(), start=1)]
    if f.suffix not in (".jsonl", ".json"):
        raise InteropError(f"{f}: unknown file type {f.suffix!r}; use .parquet or .jsonl")
    out = []
    for i, line in enumerate(f.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise InteropError(
                f"{f}: line {i}: not valid JSON ({e.msg} at column {e.colno}); a truncated file?"
            ) from None
        if not isinstance(row, dict):
            raise InteropError(f"{f}: line {i}: a record must be a JSON object")
        out.append((f"{f.name}: line {i}", row))
    return out


def _nested(f: Path) -> list[tuple[str, dict]]:
    try:
        records = json.loads(f.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise InteropError(
            f"{f}: not valid JSON at line {e.lineno}, column {e.colno}; a truncated file?"
        ) from None
    out = []
    for i, rec in enumerate(records if isinstance(records, list) else [records], start=1):
        if not isinstance(rec, dict):
            raise InteropError(f"{f}: record {i} must be an object")
        row = {**(rec.get("fields") or {}), **(rec.get("metadata") or {}), "id": rec.get("id")}
        for q, resps in (rec.get("responses") or {}).items():
            resps = resps if isinstance(resps, list) else []
            row[f"{q}.responses"] = [r.get("value") for r in resps]
            row[f"{q}.responses.users"] = [r.get("user_id") for r in resps]
            row[f"{q}.responses.status"] = [r.get("status") for r in resps]
        out.append((f"{f.name}: record {i}", row))
    return out


def parse_dataset(
    path: Path,
    *,
    prompt_field: str = "prompt",
    question: str | None = None,
    responses: tuple[str, ...] | None = None,
) -> list[ExternalItem]:
    """Every record of an Argilla v2 export as an item; refuses the whole export (one
    `InteropError` naming the record and the field) on the first bad record."""
    if not path.exists():
        raise InteropError(f"{path}: no such file or folder")
    q, options, fields = ranking_question(read_settings(path), question, responses, str(path))
    items = []
    for where, row in read_rows(path):
        rid = row.get("id")
        items.append(
            _item(
                row,
                f"{path}: {where}" + (f" (id {rid})" if rid else ""),
                prompt_field,
                q,
                options,
                fields,
            )
        )
    if not items:
        raise InteropError(f"{path}: no records to import")
    return items


def _item(row: dict, where: str, prompt_field: str, q: str, options, fields) -> ExternalItem:
    prompt = _prompt(row, prompt_field, where)
    present = [(o, f) for o, f in zip(options, fields) if row.get(f) not in (None, "")]
    for o, f in present:
        if not isinstance(row[f], str):
            raise InteropError(f"{where}: field {f!r} must be text, got {type(row[f]).__name__}")
    if len(present) < 2:
        raise InteropError(
            f"{where}: needs 2 or more of the response fields {list(fields)}, found "
            f"{[f for _, f in present]}"
        )
    index = {o: i for i, (o, _) in enumerate(present)}
    cols = {
        k: row.get(f"{q}.responses{k}") for k in ("", ".users", ".status", ".usernames", ".ranks")
    }
    values = cols[""] or []
    for k, col in cols.items():
        if col is not None and (not isinstance(col, list) or len(col) != len(values)):
            raise InteropError(
                f"{where}: field '{q}.responses{k}' must be a list with one entry per response "
                f"({len(values)})"
            )
    if cols[".users"] is None and values:
        raise InteropError(f"{where}: field '{q}.responses.users' is missing")
    judgments = []
    for n, value in enumerate(values):
        at = f"{where}: field '{q}.responses'[{n}]"
        status = (cols[".status"] or ["submitted"] * len(values))[n]
        if status not in STATUSES:
            raise InteropError(f"{at}: status {status!r} is not one of {', '.join(STATUSES)}")
        if status == "draft":
            continue
        name = (cols[".usernames"] or [None] * len(values))[n] or f"argilla:{cols['.users'][n]}"
        if status == "discarded":
            judgments.append(Judgment(str(name), None))
            continue
        ranks = (cols[".ranks"] or [None] * len(values))[n]
        judgments.append(Judgment(str(name), _tiers(value, ranks, index, at)))
    cid = row.get("rankloop_comparison_id")
    return ExternalItem(
        prompt,
        tuple(row[f] for _, f in present),
        tuple(judgments),
        comparison_id=cid if isinstance(cid, int) else None,
    )


def _prompt(row: dict, field: str, where: str) -> Prompt:
    messages = row.get("rankloop_messages")  # a conversation rankloop exported, as JSON
    if isinstance(messages, str) and messages:
        try:
            return Prompt(
                messages=tuple(Message(m["role"], m["content"]) for m in json.loads(messages))
            )
        except (KeyError, TypeError, ValueError) as e:
            raise InteropError(f"{where}: field 'rankloop_messages' is malformed ({e})") from None
    value = row.get(field)
    if not isinstance(value, str) or not value.strip():
        raise InteropError(
            f"{where}: field {field!r} (the prompt) is missing or not text; name the prompt "
            f"field with --prompt-column"
        )
    return Prompt.from_text(value)


def _tiers(value, ranks, index: dict[str, int], at: str):
    """Tiers from a ranking value: option values in order (ranks from `ranks`, else strict),
    or `[{"value", "rank"}]` items (equal ranks tie)."""
    if not isinstance(value, list) or not value:
        raise InteropError(f"{at}: a ranking must be a non-empty list, got {value!r}")
    if all(isinstance(v, dict) for v in value):
        names = [v.get("value") for v in value]
        ranks = [v.get("rank") for v in value]
    elif all(isinstance(v, str) for v in value):
        names = value
        ranks = ranks if ranks is not None else list(range(1, len(value) + 1))
    else:
        raise InteropError(
            f"{at}: a ranking is option values or {{value, rank}} items, got {value!r}"
        )
    if len(ranks) != len(names) or not all(
        isinstance(r, int) and not isinstance(r, bool) and r >= 1 for r in ranks
    ):
        raise InteropError(f"{at}: each ranked option needs a rank (1 = best), got {ranks!r}")
    unknown = [v for v in names if v not in index]
    if unknown:
        raise InteropError(
            f"{at}: unknown option {unknown[0]!r} (options with a response here: {list(index)})"
        )
    if sorted(names) != sorted(index):
        raise InteropError(
            f"{at}: the ranking must place each of {list(index)} exactly once, got {names}"
        )
    ordered = [0] * len(index)
    for v, r in zip(names, ranks):
        ordered[index[v]] = r
    return tiers_from_ranks(ordered)


# -- export -----------------------------------------------------------------------------------


def settings(k: int) -> dict:
    """Argilla v2 settings (`Settings.to_json`'s shape): a prompt, k response fields and one
    ranking question over them."""
    return {
        "guidelines": "Rank the responses to the prompt, best first; tie responses that are "
        "equally good.",
        "allow_extra_metadata": True,
        "distribution": {"strategy": "overlap", "min_submitted": 1},
        "fields": [
            {
                "name": "prompt",
                "title": "Prompt",
                "required": True,
                "settings": {"type": "text", "use_markdown": False},
            }
        ]
        + [
            {
                "name": f"response-{i}",
                "title": f"Response {i}",
                "required": i <= 2,
                "settings": {"type": "text", "use_markdown": False},
            }
            for i in range(1, k + 1)
        ],
        "questions": [
            {
                "name": QUESTION,
                "title": "Rank the responses, best first",
                "description": None,
                "required": True,
                "settings": {
                    "type": "ranking",
                    "options": [
                        {"value": f"response-{i}", "text": f"Response {i}", "description": None}
                        for i in range(1, k + 1)
                    ],
                },
            }
        ],
        "metadata": [
            {
                "name": "rankloop_comparison_id",
                "title": "rankloop comparison",
                "settings": {"type": "integer", "min": None, "max": None},
                "visible_for_annotators": False,
            }
        ],
        "vectors": [],
        "mapping": None,
    }


def write_export(items: list[ExternalItem], out: Path) -> int:
    """Write an Argilla-ready dataset to the folder `out`, laid out as Argilla's `to_hub`
    lays out a repository: `data/train-00000-of-00001.parquet` (the `to_datasets` rows) and
    `.argilla/settings.json` + `.argilla/dataset.json`. Returns the record count."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    k = max(len(it.responses) for it in items)
    rows = [_row(it, k) for it in items]
    (out / DATA_FILE).parent.mkdir(parents=True, exist_ok=True)
    (out / SETTINGS).parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=_schema(k)), out / DATA_FILE)
    (out / SETTINGS).write_text(json.dumps(settings(k), indent=1) + "\n")
    (out / SETTINGS.parent / "dataset.json").write_text(
        json.dumps({"name": out.name, "guidelines": settings(k)["guidelines"]}, indent=1) + "\n"
    )
    return len(rows)


def _schema(k: int):
    import pyarrow as pa

    strings = pa.list_(pa.string())
    return pa.schema(
        [("id", pa.string()), ("status", pa.string()), ("prompt", pa.string())]
        + [(f"response-{i}", pa.string()) for i in range(1, k + 1)]
        + [
            ("rankloop_comparison_id", pa.int64()),
            ("rankloop_messages", pa.string()),
            (f"{QUESTION}.responses", pa.list_(strings)),
            (f"{QUESTION}.responses.users", strings),
            (f"{QUESTION}.responses.status", strings),
            (f"{QUESTION}.responses.usernames", strings),
            (f"{QUESTION}.responses.ranks", pa.list_(pa.list_(pa.int64()))),
        ]
    )


def _row(it: ExternalItem, k: int) -> dict:
    opts = [f"response-{i + 1}" for i in range(len(it.responses))]
    row = {
        "id": f"rankloop-{it.comparison_id}" if it.comparison_id is not None else None,
        "status": "completed" if any(not j.skipped for j in it.judgments) else "pending",
        "prompt": it.prompt.text,
        **{
            f"response-{i + 1}": (it.responses[i] if i < len(it.responses) else None)
            for i in range(k)
        },
        "rankloop_comparison_id": it.comparison_id,
        "rankloop_messages": json.dumps(it.prompt.as_chat()) if it.prompt.is_conversation else None,
    }
    values, users, status, names, ranks = [], [], [], [], []
    for j in it.judgments:
        if j.skipped:
            values.append([]), ranks.append([])
        else:
            r = ranks_from_tiers(j.tiers, len(opts))
            order = sorted(range(len(opts)), key=lambda i: (r[i], i))  # best first
            values.append([opts[i] for i in order]), ranks.append([r[i] for i in order])
        users.append(str(uuid.uuid5(USER_NAMESPACE, j.annotator)))
        status.append("discarded" if j.skipped else "submitted")
        names.append(j.annotator)
    row[f"{QUESTION}.responses"] = values
    row[f"{QUESTION}.responses.users"] = users
    row[f"{QUESTION}.responses.status"] = status
    row[f"{QUESTION}.responses.usernames"] = names
    row[f"{QUESTION}.responses.ranks"] = ranks
    return row
