import csv
import json

import datasets
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rankloop.data.io import (
    Columns,
    ImportFileError,
    bundled_prompts,
    export_preferences,
    import_file,
    preference_dataset,
)
from rankloop.data.records import Label, Message, Prompt, Round
from rankloop.data.store import Store, StoreError


def write_jsonl(path, rows):
    path.write_text(
        "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8"
    )
    return path


def table_counts(store):
    return {t: store.db[t].count for t in ("prompts", "responses", "comparisons", "labels")}


# -- good files -------------------------------------------------------------------------------


def test_bundled_prompts_are_diverse_and_valid(fresh_store):
    report = import_file(fresh_store, bundled_prompts())
    assert report.prompts_added == report.rows >= 60
    cats = {p.metadata.get("category") for p in fresh_store.prompts()} - {None}
    prompts = fresh_store.prompts()
    assert sum(p.is_conversation for p in prompts) >= 3
    rows = [json.loads(line) for line in bundled_prompts().read_text().splitlines()]
    assert {r["category"] for r in rows} >= {
        "advice",
        "explanation",
        "writing",
        "coding",
        "reasoning",
        "multi-turn",
    }
    assert cats == {r["category"] for r in rows}  # unused columns are kept as metadata


def test_jsonl_prompts_with_responses_and_conversations(tmp_path, fresh_store):
    f = write_jsonl(
        tmp_path / "p.jsonl",
        [
            {"prompt": "Say hi", "responses": ["Hi", "Hello"]},
            {
                "prompt": [
                    {"role": "user", "content": "2+2?"},
                    {"role": "assistant", "content": "4"},
                    {"role": "user", "content": "and 3+3?"},
                ],
                "response": "6",
            },
            {"prompt": "Say hi", "response": "Hey"},
        ],
    )
    r = import_file(fresh_store, f)
    assert (r.rows, r.prompts_added, r.responses_added, r.comparisons_added, r.labels_added) == (
        3,
        2,
        4,
        1,
        0,
    )
    assert [resp.text for resp in fresh_store.responses(prompt_id=1)] == ["Hi", "Hello", "Hey"]
    assert fresh_store.prompt(2).as_chat()[-1] == {"role": "user", "content": "and 3+3?"}
    assert [c.response_ids for c in fresh_store.comparisons()] == [(1, 2)]
    again = import_file(fresh_store, f)
    assert (again.prompts_added, again.responses_added, again.comparisons_added) == (0, 0, 0)


def test_csv_with_custom_column_and_conversation_cell(tmp_path, fresh_store):
    f = tmp_path / "q.csv"
    with f.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["question", "note"])
        w.writerow(["Line one\nline two, with a comma", "x"])
        w.writerow([json.dumps([{"role": "user", "content": "hi"}]), "y"])
    r = import_file(fresh_store, f, Columns(prompt="question"))
    assert r.prompts_added == 2
    assert fresh_store.prompt(1).text == "Line one\nline two, with a comma"
    assert fresh_store.prompt(2).as_chat() == [{"role": "user", "content": "hi"}]


def test_parquet_and_saved_dataset(tmp_path, fresh_store):
    ds = datasets.Dataset.from_list(
        [
            {"prompt": "a", "chosen": "good", "rejected": "bad", "margin": 1.5},
            {"prompt": "b", "chosen": "fine", "rejected": "meh", "margin": None},
        ]
    )
    ds.to_parquet(str(tmp_path / "p.parquet"))
    ds.save_to_disk(str(tmp_path / "saved"))
    r1 = import_file(fresh_store, tmp_path / "p.parquet", source="hh")
    assert (r1.prompts_added, r1.comparisons_added, r1.labels_added) == (2, 2, 2)
    r2 = import_file(Store.memory(), tmp_path / "saved")
    assert r2.labels_added == 2


def test_preference_rows_become_external_labels(tmp_path, fresh_store):
    f = write_jsonl(
        tmp_path / "prefs.jsonl",
        [
            {"prompt": "Q", "chosen": "A good answer", "rejected": "A bad one", "margin": 2},
            {"prompt": "Q", "chosen": "same", "rejected": "equal", "tie": True},
            {
                "prompt": [{"role": "user", "content": "conv?"}],
                "chosen": [{"role": "assistant", "content": "yes"}],
                "rejected": [{"role": "assistant", "content": "no"}],
            },
        ],
    )
    r = import_file(fresh_store, f)
    assert (r.prompts_added, r.responses_added, r.comparisons_added, r.labels_added) == (2, 6, 3, 3)
    got = [
        (p.chosen, p.rejected, p.tie, p.margin, p.annotator, p.source)
        for p in fresh_store.preferences()
    ]
    assert got == [
        ("A good answer", "A bad one", False, 2.0, "import:prefs.jsonl", "external"),
        ("same", "equal", True, None, "import:prefs.jsonl", "external"),
        ("yes", "no", False, None, "import:prefs.jsonl", "external"),
    ]
    assert fresh_store.status().annotators == 0  # the external source is not a person
    assert import_file(fresh_store, f).labels_added == 0


# -- bad files --------------------------------------------------------------------------------

BAD_JSONL = [
    ('{"prompt": "ok"}\n{"prompt": "broken"\n', "line 2: not valid JSON"),
    ('{"prompt": "ok"}\n{"text": "no prompt"}\n', "line 2: missing column 'prompt'"),
    ('{"prompt": "ok"}\n\n{"prompt": "   "}\n', "line 3: empty prompt"),
    (
        '{"prompt": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}\n',
        "line 1: the conversation in 'prompt' must end with a user turn",
    ),
    ('{"prompt": [{"role": "wizard", "content": "hi"}]}\n', "line 1: message role must be"),
    ('{"prompt": "q", "chosen": "a"}\n', "line 1: missing column 'rejected'"),
    ('{"prompt": "q", "chosen": "a", "rejected": "a"}\n', "line 1: 'chosen' and 'rejected' are"),
    (
        '{"prompt": "q", "chosen": "a", "rejected": "b", "margin": "lots"}\n',
        "line 1: column 'margin' must be a number",
    ),
    (
        '{"prompt": "q", "chosen": "a", "rejected": "b", "tie": "perhaps"}\n',
        "line 1: column 'tie' must be true/false",
    ),
    ('["a list"]\n', "line 1: expected a JSON object"),
    ("", "no rows to import"),
    (
        '{"prompt": "ok"}\n{"prompt": "cut',
        ("line 2: not valid JSON (Unterminated string starting at column 12)"),
    ),
    (
        '{"prompt": "ok"}\n{"prompt": "cut\n',
        ("line 2: not valid JSON (Invalid control character at column 16)"),
    ),
    (
        '{"prompt": "one", "prompt": "two"}\n',
        ("line 1: the key 'prompt' appears twice in one object; keep one"),
    ),
    (
        '{"prompt": "q", "responses": ' + json.dumps([f"r{j}" for j in range(12)]) + "}\n",
        (
            "line 1: 12 responses in one comparison; the labeling page shows at most 9 (one per number "
            "key): split them into comparisons of 2 to 9 (each row with 2 or more responses is one "
            "comparison: give the prompt several rows)"
        ),
    ),
    (
        '{"prompt": "fine \\ud83d\\ude42 \\ud800"}\n',
        ("line 1: a \\u escape names half of a surrogate pair"),
    ),
    (
        '{"prompt": "q", "meta": ' + "[" * 100_000 + "]" * 100_000 + "}\n",
        "line 1: JSON nested too deeply to read",
    ),
]


@pytest.mark.parametrize("text,message", BAD_JSONL)
def test_bad_jsonl_names_file_and_line_and_imports_nothing(tmp_path, fresh_store, text, message):
    import_file(fresh_store, write_jsonl(tmp_path / "seed.jsonl", [{"prompt": "existing"}]))
    before = table_counts(fresh_store)
    f = tmp_path / "bad.jsonl"
    f.write_text(text, encoding="utf-8")
    with pytest.raises(ImportFileError) as e:
        import_file(fresh_store, f)
    assert str(e.value).startswith(f"{f}: ")
    assert message in str(e.value)
    assert table_counts(fresh_store) == before


def test_invalid_utf8_names_the_line(tmp_path, fresh_store):
    f = tmp_path / "latin1.jsonl"
    f.write_bytes(b'{"prompt": "fine"}\n{"prompt": "caf\xe9"}\n')
    with pytest.raises(ImportFileError, match=r"latin1.jsonl: line 2: invalid UTF-8"):
        import_file(fresh_store, f)
    assert fresh_store.prompts() == []


def test_a_utf8_byte_order_mark_is_skipped_in_jsonl_and_csv(tmp_path, fresh_store):
    bom = b"\xef\xbb\xbf"
    (tmp_path / "p.jsonl").write_bytes(bom + b'{"prompt": "from Notepad"}\n')
    (tmp_path / "p.csv").write_bytes(bom + b"prompt,note\r\nfrom Excel,x\r\n")
    assert import_file(fresh_store, tmp_path / "p.jsonl").prompts_added == 1
    assert import_file(fresh_store, tmp_path / "p.csv").prompts_added == 1
    assert [(p.text, p.metadata) for p in fresh_store.prompts()] == [
        ("from Notepad", {}),
        ("from Excel", {"note": "x"}),
    ]


def test_a_csv_header_naming_a_column_twice_is_refused(tmp_path, fresh_store):
    f = tmp_path / "twice.csv"
    f.write_text("prompt,response,prompt\nq,a,other q\n", encoding="utf-8")
    with pytest.raises(
        ImportFileError,
        match=r"twice.csv: line 1: the column 'prompt' appears "
        r"twice in the header",
    ):
        import_file(fresh_store, f)
    assert fresh_store.prompts() == []


def test_csv_with_extra_fields_and_unknown_type(tmp_path, fresh_store):
    f = tmp_path / "x.csv"
    f.write_text('prompt\n"ok"\n"a","b"\n', encoding="utf-8")
    with pytest.raises(ImportFileError, match=r"x.csv: line 3: more fields"):
        import_file(fresh_store, f)
    g = tmp_path / "x.txt"
    g.write_text("hello")
    with pytest.raises(ImportFileError, match="unknown file type '.txt'"):
        import_file(fresh_store, g)
    with pytest.raises(ImportFileError, match="no such file"):
        import_file(fresh_store, tmp_path / "missing.jsonl")
    assert fresh_store.prompts() == []


# -- imports beside other writers -------------------------------------------------------------


def test_two_imports_and_a_trainer_writing_metrics_at_once_all_finish(tmp_path):
    """Issue #13.2: the second of two `rankloop import` runs died with 'database is locked'
    (a deferred transaction whose snapshot went stale). Each writer is its own connection."""
    import threading

    path = tmp_path / "rankloop.db"
    Store.open(path).close()
    files = [
        write_jsonl(
            tmp_path / f"f{k}.jsonl",
            [{"prompt": f"file {k} prompt {i}", "responses": ["yes", "no"]} for i in range(1500)],
        )
        for k in range(2)
    ]
    results, errors = {}, []

    def run(name, fn):
        store = Store.open(path)
        try:
            results[name] = fn(store)
        except BaseException as e:  # noqa: BLE001 - surfaced below
            errors.append(e)
        finally:
            store.close()

    def trainer(store):
        for step in range(40):  # a read then a write in one transaction, as save_round does
            store.save_round(Round(number=1, metrics={"reward/loss": 1.0 / (step + 1)}))
        return step

    threads = [
        threading.Thread(
            target=run,
            args=(
                f"import {k}",
                lambda s, f=f: import_file(s, f, chunk_seconds=0.02, pause_seconds=0.005),
            ),
        )
        for k, f in enumerate(files)
    ]
    threads.append(threading.Thread(target=run, args=("trainer", trainer)))
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert errors == []
    assert [
        (r.rows, r.prompts_added, r.comparisons_added)
        for k, r in sorted(results.items())
        if k.startswith("import")
    ] == [(1500, 1500, 1500)] * 2
    store = Store.open(path)
    assert table_counts(store) == {
        "prompts": 3000,
        "responses": 6000,
        "comparisons": 3000,
        "labels": 0,
    }
    assert store.round(1).metrics == {"reward/loss": 1 / 40}
    store.close()


def test_a_big_import_lets_other_writers_in_between_short_transactions(tmp_path, monkeypatch):
    """Issue #13.3: a 200k-row import was one 110 s transaction; annotators waited for all of
    it. Now the lock is free between transactions of about chunk_seconds: another connection
    writes there at once (no waiting allowed), and a refused file still writes nothing."""
    import sqlite3

    import rankloop.data.io as io_module

    path = tmp_path / "rankloop.db"
    store = Store.open(path)
    rows = [{"prompt": f"prompt {i}", "responses": ["a", "b"]} for i in range(40)]
    f = write_jsonl(tmp_path / "big.jsonl", rows)
    clock = [0.0]

    def monotonic():  # each reading advances it 0.05 s: 4 rows fit in a chunk of 0.25 s
        clock[0] += 0.05
        return clock[0]

    other = sqlite3.connect(path, timeout=0)  # must get the write lock without waiting
    pauses = []

    def pause(seconds):
        other.execute("insert into rounds (number, metrics) values (?, '{}')", [len(pauses)])
        other.commit()
        pauses.append(seconds)

    monkeypatch.setattr(io_module.time, "monotonic", monotonic)
    monkeypatch.setattr(io_module.time, "sleep", pause)
    report = import_file(store, f, chunk_seconds=0.25, pause_seconds=0.12)
    assert report.prompts_added == 40 and table_counts(store)["comparisons"] == 40
    assert len(pauses) == 9 and set(pauses) == {0.12}  # 10 transactions of 4 rows each
    assert store.db["rounds"].count == 9

    bad = write_jsonl(tmp_path / "bad.jsonl", rows + [{"prompt": " "}])  # 41 rows, bad last
    before = table_counts(store)
    with pytest.raises(ImportFileError, match="line 41: empty prompt"):
        import_file(store, bad, chunk_seconds=0.25)
    assert table_counts(store) == before
    other.close()
    store.close()


# Hostile files: whatever the bytes, an import ends in a report or one ImportFileError, and a
# refused file leaves the store as it was.
COLUMNS = st.sampled_from(
    [
        "prompt",
        "response",
        "responses",
        "chosen",
        "rejected",
        "tie",
        "margin",
        "role",
        "content",
        "meta",
    ]
)
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=8)
    | st.sampled_from(["\ud800", "half \udfff", "\U0001f642"]),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(COLUMNS | st.text(max_size=3), inner, max_size=5)
    ),
    max_leaves=16,
)
lines = st.one_of(
    json_values.map(lambda v: json.dumps(v).encode()),
    st.dictionaries(COLUMNS, json_values, min_size=1).map(  # raw surrogates: invalid UTF-8
        lambda v: json.dumps(v, ensure_ascii=False).encode("utf-8", "surrogatepass")
    ),
    st.binary(max_size=40),
)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(body=st.lists(lines, max_size=5), suffix=st.sampled_from([".jsonl", ".csv"]))
def test_any_file_is_imported_whole_or_refused_with_one_message(tmp_path_factory, body, suffix):
    store = Store.memory()
    store.add_comparison_texts("already there", ["x", "y"])
    before = table_counts(store)
    f = tmp_path_factory.mktemp("hostile") / f"in{suffix}"
    f.write_bytes(b"\n".join(body))
    try:
        import_file(store, f)
    except ImportFileError as e:
        assert str(e).startswith(f"{f}: ")
        assert table_counts(store) == before
    else:
        assert import_file(store, f).prompts_added == 0  # idempotent


# -- round trips ------------------------------------------------------------------------------

# Any unicode text (no surrogates: they are not valid UTF-8), with newlines, HTML and long runs.
texts = st.one_of(
    st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=200),
    st.sampled_from(
        [
            "<script>alert('x')</script>",
            "<img src=x onerror=alert(1)>",
            "line1\r\nline2\n\nline3",
            "x" * 20000,
            'tab\there "quotes" \\ back',
            "emoji 🙂 日本語 Ünïcødé",
        ]
    ),
).filter(lambda s: s.strip() != "" and s == s.strip())


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(prompt=texts, chosen=texts, rejected=texts)
def test_import_export_round_trip(tmp_path_factory, prompt, chosen, rejected):
    if chosen == rejected:
        return
    d = tmp_path_factory.mktemp("rt")
    store = Store.memory()
    rows = [{"prompt": prompt, "chosen": chosen, "rejected": rejected}]
    import_file(store, write_jsonl(d / "in.jsonl", rows))
    assert store.prompt(1).text == prompt
    out = export_preferences(store, d / "out.jsonl", "jsonl")
    assert out == 1
    # bytes.splitlines: str.splitlines would also split at U+0085 / U+2028 inside a string
    back = [json.loads(line) for line in (d / "out.jsonl").read_bytes().splitlines()]
    assert [(r["prompt"], r["chosen"], r["rejected"]) for r in back] == [(prompt, chosen, rejected)]
    # CSV carries the same text through quoting
    with (d / "in.csv").open("w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, ["prompt", "chosen", "rejected"])
        w.writeheader()
        w.writerows(rows)
    store2 = Store.memory()
    import_file(store2, d / "in.csv")
    (p,) = store2.preferences()
    assert (p.prompt.text, p.chosen, p.rejected) == (prompt, chosen, rejected)


# -- export -----------------------------------------------------------------------------------


def labeled_store():
    store = Store.memory()
    ann, _ = store.add_annotator("ann")
    c1 = store.add_comparison_texts("Name a color", ["Blue.", "I refuse.", "Red"])
    c2 = store.add_comparison_texts("Say hi", ["Hi!", "hello"])
    store.add_labels(
        [
            Label(c1, ann.id, ranking=((1,), (3,), (2,))),
            Label.pairwise(c2, ann.id, (5, 4), "B", strength="much"),
        ]
    )
    return store


def test_export_columns_and_rows(tmp_path):
    ds = preference_dataset(labeled_store())
    assert ds.column_names == [
        "prompt",
        "chosen",
        "rejected",
        "tie",
        "both_bad",
        "strength",
        "margin",
        "annotator",
        "round",
        "source",
        "simulated",
        "label_id",
        "comparison_id",
        "pairs_in_label",
    ]
    assert [
        (r["prompt"], r["chosen"], r["rejected"], r["strength"], r["pairs_in_label"]) for r in ds
    ] == [
        ("Name a color", "Blue.", "Red", None, 3),
        ("Name a color", "Blue.", "I refuse.", None, 3),
        ("Name a color", "Red", "I refuse.", None, 3),
        ("Say hi", "Hi!", "hello", "much", 1),
    ]
    for fmt, name in [("trl", "ds"), ("jsonl", "p.jsonl"), ("parquet", "p.parquet")]:
        assert export_preferences(labeled_store(), tmp_path / name, fmt) == 4
    assert datasets.load_from_disk(str(tmp_path / "ds"))["chosen"] == ds["chosen"]
    assert (
        datasets.load_dataset("parquet", data_files=str(tmp_path / "p.parquet"), split="train")[
            "rejected"
        ]
        == ds["rejected"]
    )


def test_export_conversational_when_a_prompt_is():
    store = labeled_store()
    conv = Prompt(
        messages=(Message("user", "hi"), Message("assistant", "hello"), Message("user", "bye?"))
    )
    cid = store.add_comparison_texts(conv, ["bye!", "no"])
    store.add_label(Label.pairwise(cid, 1, (6, 7), "A"))
    ds = preference_dataset(store)
    assert ds[0]["prompt"] == [{"role": "user", "content": "Name a color"}]
    assert ds[0]["chosen"] == [{"role": "assistant", "content": "Blue."}]
    assert ds[4]["prompt"] == list(conv.as_chat())
    assert ds[4]["rejected"] == [{"role": "assistant", "content": "no"}]


def test_export_drop_ties_and_empty_store(tmp_path, fresh_store):
    store = labeled_store()
    ann, _ = store.add_annotator("tie-lover")
    store.add_label(Label.pairwise(2, ann.id, (5, 4), "tie"))
    assert preference_dataset(store).filter(lambda r: r["tie"]).num_rows == 1
    assert preference_dataset(store, drop_ties=True).num_rows == 4
    with pytest.raises(StoreError, match="no labels to export"):
        export_preferences(fresh_store, tmp_path / "x", "trl")


def test_trl_reward_and_dpo_trainers_load_the_export(tmp_path, tiny_lm_dir):
    """TRL's own data preparation must accept the export unchanged (tokenise, collate, 1 step)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForSequenceClassification
    from trl import DPOConfig, DPOTrainer, RewardConfig, RewardTrainer

    export_preferences(labeled_store(), tmp_path / "prefs", "trl")
    ds = datasets.load_from_disk(str(tmp_path / "prefs"))
    tok = AutoTokenizer.from_pretrained(tiny_lm_dir)
    lm = AutoModelForCausalLM.from_pretrained(tiny_lm_dir)
    cfg = lm.config
    cfg.num_labels = 1
    torch.manual_seed(0)
    rm = LlamaForSequenceClassification(cfg)
    common = {
        "output_dir": str(tmp_path / "out"),
        "report_to": [],
        "max_steps": 1,
        "per_device_train_batch_size": 2,
        "use_cpu": True,
        "save_strategy": "no",
        "logging_strategy": "no",
        "dataloader_num_workers": 0,
    }
    rt = RewardTrainer(
        model=rm, args=RewardConfig(**common), train_dataset=ds, processing_class=tok
    )
    assert {"chosen_ids", "rejected_ids", "margin"} <= set(rt.train_dataset.column_names)
    assert rt.train().training_loss > 0
    dt = DPOTrainer(model=lm, args=DPOConfig(**common), train_dataset=ds, processing_class=tok)
    assert len(dt.train_dataset) == 4
    assert dt.train().training_loss > 0
