"""Import prompts, responses and preference data; export the labels in every format of one
registry, `EXPORT_FORMATS` (TRL's preference format as a `datasets` dataset, JSONL, Parquet,
Label Studio tasks, an Argilla dataset).

Import reads JSONL, CSV, Parquet or a Hugging Face dataset saved with `save_to_disk`. Every row
is checked before anything is written: a bad file imports nothing, and its error names the file,
the line (or row) and the problem. The checked rows are then written in transactions of a
quarter of a second, each followed by a pause, so an import of any size never keeps the
labeling app (or another import, or a trainer) waiting longer than about one of them. Importing
the same rows twice adds nothing (prompts, responses and comparisons are keyed by content hash):
an import cut short (killed, the disk full) is finished by running it again.

Rows are one of:
- a prompt, optionally with responses a team already has (`response`: a string, or `responses`:
  a list of strings); two or more responses to a prompt become a comparison to label;
- a preference in TRL's format (`prompt`, `chosen`, `rejected`, optional `tie` and `margin`),
  stored as a comparison plus a label from an external source, so a reward model can be trained
  before the team's own annotators have labeled anything.
A prompt is a string or a conversation: a list of `{"role", "content"}` turns ending with a user
turn. In CSV a conversation is written as that list in JSON. Columns rankloop does not use (an id, a
category) are kept as the prompt's metadata.
"""

from __future__ import annotations

import codecs
import collections
import contextlib
import csv
import io
import json
import math
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from .rankings import DEFAULT_MARGINS
from .records import MAX_RESPONSES, Comparison, Label, Message, Prompt, Response
from .store import Store, StoreError, too_many_responses


class ImportFileError(ValueError):
    """A file that cannot be imported; the message names the file, the line and the problem."""


@dataclass(frozen=True)
class Columns:
    """Column names in the imported file."""

    prompt: str = "prompt"
    response: str = "response"
    responses: str = "responses"
    chosen: str = "chosen"
    rejected: str = "rejected"
    tie: str = "tie"
    margin: str = "margin"


@dataclass(frozen=True)
class ImportReport:
    rows: int
    prompts_added: int
    responses_added: int
    comparisons_added: int
    labels_added: int


def bundled_prompts() -> Path:
    """The prompt set shipped with rankloop (`data/prompts/default.jsonl`)."""
    return Path(str(resources.files("rankloop.data").joinpath("prompts/default.jsonl")))


def detect_format(path: Path) -> str:
    if path.is_dir():
        if (
            (path / "dataset_info.json").exists()
            or (path / "state.json").exists()
            or (path / "dataset_dict.json").exists()
        ):
            return "dataset"
        raise ImportFileError(f"{path}: a folder, but not a dataset saved with save_to_disk")
    suffix = path.suffix.lower()
    formats = {
        ".jsonl": "jsonl",
        ".json": "jsonl",
        ".ndjson": "jsonl",
        ".csv": "csv",
        ".parquet": "parquet",
    }
    if suffix not in formats:
        raise ImportFileError(
            f"{path}: unknown file type {suffix!r}; use .jsonl, .csv, "
            f".parquet or a folder written by datasets' save_to_disk"
        )
    return formats[suffix]


def read_rows(path: Path) -> Iterator[tuple[str, dict]]:
    """Yield (where, row) for each row: where is 'line N' (text files) or 'row N'."""
    fmt = detect_format(path)
    if fmt == "jsonl":
        yield from read_jsonl(path)
    elif fmt == "csv":
        yield from _read_csv(path)
    elif fmt == "parquet":
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(path)
        except Exception as e:
            raise ImportFileError(f"{path}: not a readable Parquet file: {e}") from e
        for i, row in enumerate(table.to_pylist(), start=1):
            yield f"row {i}", row
    else:
        import datasets

        ds = datasets.load_from_disk(str(path))
        if isinstance(ds, datasets.DatasetDict):
            if len(ds) != 1:
                raise ImportFileError(
                    f"{path}: a dataset with splits {list(ds)}; save one "
                    f"split (e.g. ds['train'].save_to_disk(...))"
                )
            ds = next(iter(ds.values()))
        for i, row in enumerate(ds, start=1):
            yield f"row {i}", row


def _decode_lines(path: Path) -> Iterator[tuple[int, str]]:
    """The file's lines as text: UTF-8, a byte order mark at its start skipped (Excel and
    Notepad write one), split at \n (and \r\n) only, never inside a JSON string at U+2028."""
    data = path.read_bytes().removeprefix(codecs.BOM_UTF8)
    for n, raw in enumerate(data.splitlines(keepends=True), start=1):
        try:
            yield n, raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise ImportFileError(
                f"{path}: line {n}: invalid UTF-8 (byte {e.start + 1}); save the file as UTF-8"
            ) from e


_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


class _DuplicateKey(ValueError):
    pass


def _unique_keys(pairs: list[tuple[str, object]]) -> dict:
    """json.loads' object hook: a key given twice in one object is refused, never silently
    resolved to its last value (which of two prompts did the file mean?)."""
    out = {}
    for k, v in pairs:
        if k in out:
            raise _DuplicateKey(k)
        out[k] = v
    return out


def read_jsonl(path: Path) -> Iterator[tuple[str, dict]]:
    """(where, row) for each JSON object of a JSONL file; blank lines are skipped. A line that
    is not one JSON object, repeats a key or nests deeper than Python can parse is refused with
    the file, the line and the problem."""
    for n, line in _decode_lines(path):
        if not line.strip():
            continue
        try:
            row = json.loads(line, object_pairs_hook=_unique_keys)
        except json.JSONDecodeError as e:
            # e.msg may end in "at" ("Unterminated string starting at"): say the column once.
            raise ImportFileError(
                f"{path}: line {n}: not valid JSON "
                f"({e.msg.removesuffix(' at')} at column {e.colno})"
            ) from e
        except _DuplicateKey as e:
            raise ImportFileError(
                f"{path}: line {n}: the key {e.args[0]!r} appears twice in one object; keep one"
            ) from None
        except RecursionError:
            raise ImportFileError(
                f"{path}: line {n}: JSON nested too deeply to read; a row "
                f"holds a prompt, responses and flat metadata"
            ) from None
        if not isinstance(row, dict):
            raise ImportFileError(
                f"{path}: line {n}: expected a JSON object, got {type(row).__name__}"
            )
        # A \uD800-\uDFFF escape that is not half of a pair decodes to a lone surrogate, which
        # no UTF-8 text (nor SQLite) can hold; the fast test skips the full one on most lines.
        if _SURROGATE_ESCAPE.search(line):
            try:
                json.dumps(row, ensure_ascii=False).encode("utf-8")
            except UnicodeEncodeError:
                raise ImportFileError(
                    f"{path}: line {n}: a \\u escape names half of a "
                    f"surrogate pair (not a character); fix the text"
                ) from None
        yield f"line {n}", row


def _read_csv(path: Path) -> Iterator[tuple[str, dict]]:
    text = "".join(line for _, line in _decode_lines(path))
    reader = csv.DictReader(io.StringIO(text, newline=""))
    try:
        header = reader.fieldnames or []
        twice = sorted({c for c in header if header.count(c) > 1})
        if twice:
            raise ImportFileError(
                f"{path}: line 1: the column {twice[0]!r} appears twice in the "
                f"header; rename or remove one"
            )
        for row in reader:
            if None in row:
                raise ImportFileError(
                    f"{path}: line {reader.line_num}: more fields than the header has columns"
                )
            yield f"line {reader.line_num}", row
    except csv.Error as e:
        raise ImportFileError(f"{path}: line {reader.line_num}: malformed CSV ({e})") from e


def _parse_prompt(value, column: str) -> Prompt:
    if isinstance(value, str) and value.lstrip().startswith("[{"):
        try:  # a conversation written as JSON inside a CSV cell
            value = json.loads(value)
        except json.JSONDecodeError:
            pass
    if isinstance(value, str):
        if not value.strip():
            raise ValueError(f"empty prompt in column '{column}'")
        return Prompt.from_text(value)
    if isinstance(value, (list, tuple)):
        if not value:
            raise ValueError(f"empty conversation in column '{column}'")
        msgs = []
        for i, m in enumerate(value):
            if not isinstance(m, dict) or "role" not in m or "content" not in m:
                raise ValueError(
                    f"turn {i + 1} of the conversation in '{column}' must be an "
                    f"object with 'role' and 'content'"
                )
            if not isinstance(m["content"], str) or not m["content"].strip():
                raise ValueError(f"turn {i + 1} of the conversation in '{column}' is empty")
            msgs.append(Message(m["role"], m["content"]))
        if msgs[-1].role != "user":
            raise ValueError(f"the conversation in '{column}' must end with a user turn")
        return Prompt(messages=tuple(msgs))
    raise ValueError(
        f"column '{column}' must be a string or a list of {{role, content}} turns, "
        f"got {type(value).__name__}"
    )


def _parse_completion(value, column: str) -> str:
    """A response: a string, or TRL's conversational form [{role: assistant, content}]."""
    if isinstance(value, (list, tuple)) and value and isinstance(value[-1], dict):
        value = value[-1].get("content")
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"column '{column}' is empty or not text")
    return value


def _parse_bool(value, column: str) -> bool:
    if value is None or value == "":
        return False
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ("true", "false", "1", "0", "yes", "no"):
        return value.strip().lower() in ("true", "1", "yes")
    raise ValueError(f"column '{column}' must be true/false, got {value!r}")


def _parse_margin(value, column: str) -> float | None:
    if value is None or value == "":
        return None
    try:
        m = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"column '{column}' must be a number, got {value!r}") from None
    if not math.isfinite(m):
        raise ValueError(f"column '{column}' must be a finite number, got {value!r}")
    return m


@dataclass
class _Row:
    prompt: Prompt
    responses: list[str]
    preference: tuple[str, str, bool, float | None] | None = None


def _metadata(row: dict, cols: Columns) -> dict:
    """Columns rankloop does not use (an id, a category...), kept with the prompt."""
    used = set(vars(cols).values())
    out = {}
    for k, v in row.items():
        if k not in used and v is not None and v != "":
            try:
                json.dumps(v)
            except (TypeError, ValueError):
                v = str(v)
            out[str(k)] = v
    return out


def _parse_row(row: dict, cols: Columns) -> _Row:
    if cols.prompt not in row:
        raise ValueError(
            f"missing column '{cols.prompt}' (columns here: "
            f"{', '.join(map(str, row)) or 'none'}); name the prompt column with "
            f"--prompt-column"
        )
    p = _parse_prompt(row[cols.prompt], cols.prompt)
    prompt = Prompt(messages=p.messages, metadata=_metadata(row, cols))
    has_chosen, has_rejected = cols.chosen in row, cols.rejected in row
    if has_chosen or has_rejected:
        if not (has_chosen and has_rejected):
            missing = cols.rejected if has_chosen else cols.chosen
            raise ValueError(
                f"missing column '{missing}' (a preference row needs both "
                f"'{cols.chosen}' and '{cols.rejected}')"
            )
        chosen = _parse_completion(row[cols.chosen], cols.chosen)
        rejected = _parse_completion(row[cols.rejected], cols.rejected)
        if chosen == rejected:
            raise ValueError(f"'{cols.chosen}' and '{cols.rejected}' are the same text")
        tie = _parse_bool(row.get(cols.tie), cols.tie)
        margin = _parse_margin(row.get(cols.margin), cols.margin)
        return _Row(prompt, [chosen, rejected], (chosen, rejected, tie, margin))
    responses: list[str] = []
    if row.get(cols.responses) not in (None, ""):
        value = row[cols.responses]
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except json.JSONDecodeError:
                raise ValueError(f"column '{cols.responses}' must be a list of strings") from None
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"column '{cols.responses}' must be a list of strings")
        responses = [_parse_completion(v, cols.responses) for v in value]
    if row.get(cols.response) not in (None, ""):
        responses.append(_parse_completion(row[cols.response], cols.response))
    if len(set(responses)) > MAX_RESPONSES:  # refused here, before anything is written
        raise ValueError(
            f"{too_many_responses(len(set(responses)))} (each row with 2 or more "
            f"responses is one comparison: give the prompt several rows)"
        )
    return _Row(prompt, responses)


#: An import writes in transactions of about this long, each followed by a pause: a labeling
#: app on the same database waits for at most about one of them (docs/reliability.md).
CHUNK_SECONDS = 0.25
#: Longer than SQLite's longest busy-handler sleep (100 ms), so every writer waiting for the
#: lock (an annotator's label, another import, a trainer) gets it between two chunks.
PAUSE_SECONDS = 0.12

StoreAccess = Store | Callable[[], contextlib.AbstractContextManager[Store]]


def import_file(
    target: StoreAccess,
    path: str | Path,
    columns: Columns = Columns(),
    source: str | None = None,
    *,
    chunk_seconds: float = CHUNK_SECONDS,
    pause_seconds: float = PAUSE_SECONDS,
) -> ImportReport:
    """Import every row of `path` (see the module docstring): the whole file is read and
    checked first, so a refused file writes nothing; then the rows are written in short
    transactions with a pause after each, so other writers never wait long.

    `target` is a Store, or a function giving one in a `with` block (e.g. the labeling app's
    `StorePool`), entered once per transaction: a lock it holds is held only that long.
    """
    path = Path(path)
    if not path.exists():
        raise ImportFileError(f"{path}: no such file")
    source = source or f"import:{path.name}"
    parsed: list[_Row] = []
    for where, row in read_rows(path):
        try:
            parsed.append(_parse_row(row, columns))
        except ValueError as e:
            raise ImportFileError(f"{path}: {where}: {e}") from None
    if not parsed:
        raise ImportFileError(f"{path}: no rows to import")

    access = (lambda: contextlib.nullcontext(target)) if isinstance(target, Store) else target
    writer = _Writer(source)
    added: collections.Counter[str] = collections.Counter()
    done = 0
    try:
        while done < len(parsed):
            with access() as store:
                before = store.inserted.copy()
                with store.transaction():
                    start = time.monotonic()
                    while done < len(parsed) and time.monotonic() - start < chunk_seconds:
                        writer.write(store, parsed[done])
                        done += 1
                added.update(store.inserted - before)
            if done < len(parsed):
                time.sleep(pause_seconds)
    except StoreError as e:  # the rows were checked: only a store that changed meanwhile
        raise ImportFileError(
            f"{path}: {e} (the first {done} rows were imported; importing "
            f"the file again adds only the rest)"
        ) from e
    return ImportReport(
        rows=len(parsed),
        prompts_added=added["prompts"],
        responses_added=added["responses"],
        comparisons_added=added["comparisons"],
        labels_added=added["labels"],
    )


class _Writer:
    """Writes checked rows, one at a time, in whatever transaction is open."""

    def __init__(self, source: str):
        self.source = source
        self.annotator: int | None = None  # the external source's account, once it has one
        # Responses are numbered per prompt across the whole file, so several rows that
        # bring responses to one prompt keep them apart.
        self.next_index: dict[int, int] = {}

    def write(self, store: Store, r: _Row) -> None:
        pid = store._add_prompt(_with_source(r.prompt, self.source))
        rids = []
        for text in r.responses:
            i = self.next_index.get(pid, 0)
            self.next_index[pid] = i + 1
            rids.append(
                store._add_response(
                    Response(prompt_id=pid, text=text, round=0, source=self.source, sample_index=i)
                )
            )
        if r.preference is None:
            if len(set(rids)) >= 2:
                store._add_comparison(Comparison(pid, tuple(dict.fromkeys(rids)), 0))
            return
        chosen_id, rejected_id = rids
        cid = store._add_comparison(Comparison(pid, (chosen_id, rejected_id), 0))
        if self.annotator is None:
            self.annotator = store.external_annotator(self.source).id
        if store.db.execute(
            "select 1 from labels where comparison_id = ? and annotator_id = ?",
            [cid, self.annotator],
        ).fetchone():
            return  # already imported from this source
        _, _, tie, margin = r.preference
        store._add_label(
            Label.pairwise(
                cid,
                self.annotator,
                (chosen_id, rejected_id),
                "tie" if tie else "A",
                margin=margin,
                source="external",
            )
        )


def _with_source(p: Prompt, source: str) -> Prompt:
    """The parsed prompt, labelled with where it came from."""
    return Prompt(messages=p.messages, source=source, metadata=p.metadata)


# -- export -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ExportOptions:
    """What every export format is given besides the store and the target path."""

    round: int | None = None  # only comparisons (and their labels) of rounds <= this
    drop_ties: bool = False  # leave out tied pairs (preference formats only)
    # ([reward] margin_slightly, margin_much): a strength's margin as the trainer reads it
    margins: tuple[float, float] = DEFAULT_MARGINS


@dataclass(frozen=True)
class ExportFormat:
    """One way out of the store: the CLI's `--format` choices, the admin tab, the docs and
    the tests all read `EXPORT_FORMATS`, so a format is added here and nowhere else."""

    name: str
    write: Callable[[Store, Path, ExportOptions], int]  # writes; returns the rows written
    default_name: str  # the file or folder name the admin tab writes
    help: str  # one line for `rankloop export --help` and docs/cli.md
    unit: str = "preference pairs"  # what the count counts


def preference_dataset(
    store: Store,
    round: int | None = None,
    drop_ties: bool = False,
    margins: tuple[float, float] = DEFAULT_MARGINS,
):
    """The labels as a `datasets.Dataset` in TRL's preference format, with metadata columns.

    Columns: `prompt`, `chosen`, `rejected` (conversational, i.e. lists of {role, content},
    when any prompt is a conversation), then `tie`, `both_bad`, `strength`, `margin`,
    `annotator`, `round`, `source`, `simulated`, `label_id`, `comparison_id`, `pairs_in_label`.
    `margin` is the pair's margin as the reward trainer reads it (`rankings.label_margin`: an
    imported number, else the strength through `margins` = ([reward] margin_slightly,
    margin_much), their defaults unless a project's are given), 0.0 when it has none (TRL's RewardTrainer subtracts it inside the
    Bradley-Terry loss, and 0.0 leaves that loss plain); the strength stays in `strength`. A tied pair has an arbitrary chosen/rejected order: trainers that do not model ties should
    filter `tie == False` (or export with `drop_ties`).
    """
    import datasets

    prefs = [
        p for p in store.preferences(round=round, margins=margins) if not (drop_ties and p.tie)
    ]
    if not prefs:
        where = f" up to round {round}" if round is not None else ""
        raise StoreError(
            f"no labels to export{where}: label some comparisons first "
            f"(`rankloop serve`), or import preference data"
        )
    conversational = any(p.prompt.is_conversation for p in prefs)
    msg = datasets.List({"role": datasets.Value("string"), "content": datasets.Value("string")})
    text = msg if conversational else datasets.Value("string")
    features = datasets.Features(
        {
            "prompt": text,
            "chosen": text,
            "rejected": text,
            "tie": datasets.Value("bool"),
            "both_bad": datasets.Value("bool"),
            "strength": datasets.Value("string"),
            "margin": datasets.Value("float64"),
            "annotator": datasets.Value("string"),
            "round": datasets.Value("int64"),
            "source": datasets.Value("string"),
            "simulated": datasets.Value("bool"),
            "label_id": datasets.Value("int64"),
            "comparison_id": datasets.Value("int64"),
            "pairs_in_label": datasets.Value("int64"),
        }
    )

    def completion(t: str):
        return [{"role": "assistant", "content": t}] if conversational else t

    rows = [
        {
            "prompt": p.prompt.as_chat() if conversational else p.prompt.text,
            "chosen": completion(p.chosen),
            "rejected": completion(p.rejected),
            "tie": p.tie,
            "both_bad": p.both_bad,
            "strength": p.strength,
            "margin": p.margin if p.margin is not None else 0.0,
            "annotator": p.annotator,
            "round": p.round,
            "source": p.source,
            "simulated": p.source == "simulated",
            "label_id": p.label_id,
            "comparison_id": p.comparison_id,
            "pairs_in_label": p.pairs_in_label,
        }
        for p in prefs
    ]
    return datasets.Dataset.from_list(rows, features=features)


def _trl(store: Store, out: Path, o: ExportOptions) -> int:
    ds = preference_dataset(store, round=o.round, drop_ties=o.drop_ties, margins=o.margins)
    ds.save_to_disk(str(out))
    from .cards import write_dataset_card

    write_dataset_card(store, out, round=o.round)
    return len(ds)


def _jsonl(store: Store, out: Path, o: ExportOptions) -> int:
    ds = preference_dataset(store, round=o.round, drop_ties=o.drop_ties, margins=o.margins)
    ds.to_json(str(out), lines=True, force_ascii=False)
    return len(ds)


def _parquet(store: Store, out: Path, o: ExportOptions) -> int:
    ds = preference_dataset(store, round=o.round, drop_ties=o.drop_ties, margins=o.margins)
    ds.to_parquet(str(out))
    return len(ds)


def _interop_items(store: Store, o: ExportOptions):
    from .interop.common import read_items

    items = read_items(store, round=o.round)
    if not items:
        where = f" up to round {o.round}" if o.round is not None else ""
        raise StoreError(f"no comparisons to export{where}: import or generate some first")
    return items


def _label_studio(store: Store, out: Path, o: ExportOptions) -> int:
    from .interop import labelstudio

    return labelstudio.write_export(_interop_items(store, o), out)


def _argilla(store: Store, out: Path, o: ExportOptions) -> int:
    from .interop import argilla

    return argilla.write_export(_interop_items(store, o), out)


EXPORT_FORMATS: dict[str, ExportFormat] = {
    f.name: f
    for f in (
        ExportFormat(
            "trl",
            _trl,
            "preferences",
            "TRL's preference format as a datasets folder (load_from_disk), with a dataset card",
        ),
        ExportFormat("jsonl", _jsonl, "preferences.jsonl", "the same rows as one JSONL file"),
        ExportFormat("parquet", _parquet, "preferences.parquet", "the same rows as Parquet"),
        ExportFormat(
            "label-studio",
            _label_studio,
            "label-studio",
            "every comparison as Label Studio tasks (labels and skips as annotations) in "
            "a folder, with labeling.xml beside",
            unit="tasks",
        ),
        ExportFormat(
            "argilla",
            _argilla,
            "argilla",
            "every comparison as an Argilla v2 dataset folder with a RankingQuestion "
            "(Hub layout: data/*.parquet, .argilla/settings.json)",
            unit="records",
        ),
    )
}


def export_preferences(
    store: Store,
    out: str | Path,
    fmt: str = "trl",
    round: int | None = None,
    drop_ties: bool = False,
    margins: tuple[float, float] = DEFAULT_MARGINS,
) -> int:
    """Write the store's labels to `out` in format `fmt` (a name in `EXPORT_FORMATS`);
    returns the count of what it wrote (the format's `unit`)."""
    if fmt not in EXPORT_FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; use one of {', '.join(EXPORT_FORMATS)}")
    return EXPORT_FORMATS[fmt].write(store, Path(out), ExportOptions(round, drop_ties, margins))
