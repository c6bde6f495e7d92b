"""Label Studio and Argilla in and out: the fixtures (written by hand from each tool's documented
export format, cited in their headers) import with exact rows, round trips keep every label,
tie, annotator and skip, malformed exports are refused whole with one message, and imported
labels train the reward model exactly as the same labels entered natively."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from rankloop.app.cli import cli
from rankloop.data.interop import argilla, labelstudio
from rankloop.data.interop.common import InteropError, read_items, write_items
from rankloop.data.io import EXPORT_FORMATS, export_preferences
from rankloop.data.records import Label
from rankloop.data.store import Store

from simulate import simulate_labels

FIX = Path(__file__).parent / "fixtures" / "interop"
ROOT = Path(__file__).resolve().parents[1]


def import_ls(store, export: Path, config: Path):
    cfg = labelstudio.parse_config(config.read_text())
    return write_items(store, labelstudio.parse_export(export, cfg), "label-studio", "Label Studio")


def import_argilla(store, path: Path, **kw):
    return write_items(store, argilla.parse_dataset(path, **kw), "argilla", "Argilla")


def judged(store, keep_both_bad=True, keep_seconds=True):
    """Every label and skip as texts and names (ids differ between stores)."""
    names = {a.id: a.name for a in store.annotators()}
    labels, skips = set(), set()
    for lab in store.labels():
        comp = store.comparison(lab.comparison_id)
        text = {r.id: r.text for r in store.responses(ids=list(comp.response_ids))}
        labels.add(
            (
                store.prompt(comp.prompt_id).text,
                names[lab.annotator_id],
                tuple(frozenset(text[r] for r in tier) for tier in lab.ranking),
                lab.both_bad if keep_both_bad else None,
                lab.seconds_spent if keep_seconds else None,
            )
        )
    for cid, aid in store.db.execute("select comparison_id, annotator_id from skips").fetchall():
        comp = store.comparison(cid)
        skips.add((store.prompt(comp.prompt_id).text, names[aid]))
    return labels, skips


# -- the documented formats, imported -------------------------------------------------------


def test_label_studio_pairwise_export_imports_exact_rows(fresh_store):
    report = import_ls(fresh_store, FIX / "ls_pairwise_export.json", FIX / "ls_pairwise.xml")
    assert (report.items, report.prompts_added, report.responses_added) == (2, 2, 4)
    assert (report.comparisons_added, report.labels_added, report.skips_added) == (2, 2, 1)
    s = fresh_store
    assert [(a.name, a.role) for a in s.annotators()] == [
        ("alice@example.org", "external"),
        ("bob@example.org", "external"),
        ("label-studio:7", "external"),
    ]
    assert [(p.text, p.source) for p in s.prompts()] == [
        ("Name a planet with rings.", "label-studio"),
        ("Say hello politely.", "label-studio"),
    ]
    assert [(r.id, r.prompt_id, r.text) for r in s.responses()] == [
        (1, 1, "Saturn has bright rings."),
        (2, 1, "The Moon."),
        (3, 2, "hey"),
        (4, 2, "Hello, nice to meet you."),
    ]
    assert [(c.id, c.response_ids) for c in s.comparisons()] == [(1, (1, 2)), (2, (3, 4))]
    assert s.labels() == [
        Label(
            comparison_id=1,
            annotator_id=1,
            ranking=((1,), (2,)),
            mode="pairwise",
            choice="A",
            display_order=(1, 2),
            seconds_spent=12.5,
            source="external",
            created_at="2026-11-30T10:01:00.000000Z",
            id=1,
        ),
        Label(
            comparison_id=2,
            annotator_id=3,
            ranking=((4,), (3,)),
            mode="pairwise",
            choice="B",
            display_order=(3, 4),
            seconds_spent=4.25,
            source="external",
            created_at="2026-11-30T10:03:00.000000Z",
            id=2,
        ),
    ]
    assert s.db.execute("select comparison_id, annotator_id, reason from skips").fetchall() == [
        (1, 2, "skipped in Label Studio")
    ]


def test_label_studio_ranker_with_buckets_imports_ties(fresh_store):
    import_ls(fresh_store, FIX / "ls_ranker_export.json", FIX / "ls_ranker.xml")
    assert fresh_store.prompts()[0].text == "Explain rain in one line."
    assert [
        (lab.annotator_id, lab.ranking, lab.mode, lab.seconds_spent) for lab in fresh_store.labels()
    ] == [
        (1, ((1, 2), (3,)), "ranking", 30.0),  # a and b in the "best" bucket: a tie
        (2, ((2,), (1,), (3,)), "ranking", 21.5),
    ]
    prefs = [(p.chosen, p.rejected, p.tie) for p in fresh_store.preferences()][:3]
    assert prefs == [
        ("Water vapour condenses and falls.", "Clouds get heavy with droplets.", True),
        ("Water vapour condenses and falls.", "The sky is sad.", False),
        ("Clouds get heavy with droplets.", "The sky is sad.", False),
    ]


def test_argilla_ranking_dataset_imports_ranks_ties_discards(fresh_store):
    report = import_argilla(fresh_store, FIX / "argilla-ranking", prompt_field="instruction")
    assert (report.items, report.labels_added, report.skips_added) == (3, 3, 1)
    u1 = "argilla:9a1f6c2e-0000-4000-8000-000000000001"
    u2 = "argilla:9a1f6c2e-0000-4000-8000-000000000002"
    assert [a.name for a in fresh_store.annotators()] == [u1, u2]
    assert [(c.id, c.response_ids) for c in fresh_store.comparisons()] == [
        (1, (1, 2, 3)),
        (2, (4, 5, 6)),
        (3, (7, 8)),  # reply-3 is empty there: a comparison of the two replies it has
    ]
    assert [(lab.comparison_id, lab.annotator_id, lab.ranking) for lab in fresh_store.labels()] == [
        (1, 1, ((3,), (1,), (2,))),
        (1, 2, ((1,), (3,), (2,))),
        (2, 1, ((4, 5), (6,))),  # the {value, rank} form: equal ranks tie
    ]
    # the discarded response is a skip; the draft is no judgment yet
    assert fresh_store.db.execute("select comparison_id, annotator_id from skips").fetchall() == [
        (3, 2)
    ]


def test_importing_twice_adds_nothing(fresh_store):
    import_ls(fresh_store, FIX / "ls_pairwise_export.json", FIX / "ls_pairwise.xml")
    again = import_ls(fresh_store, FIX / "ls_pairwise_export.json", FIX / "ls_pairwise.xml")
    assert (
        again.prompts_added,
        again.comparisons_added,
        again.labels_added,
        again.skips_added,
    ) == (
        0,
        0,
        0,
        0,
    )


# -- round trips ----------------------------------------------------------------------------


def people_store(k: int) -> Store:
    """Two people's labels on k-response comparisons: a preference each way, a tie, both bad
    (k = 2) or a ranking with a tie, and a skip."""
    s = Store.memory()
    ann, _ = s.add_annotator("ann")
    ben, _ = s.add_annotator("ben")
    texts = [f"answer {i} of {{}}" for i in range(k)]
    c = [
        s.add_comparison_texts(p, [t.format(p) for t in texts])
        for p in ("Say hi", "Count to two", "Name a colour")
    ]
    rid = [s.comparison(x).response_ids for x in c]
    if k == 2:
        s.add_labels(
            [
                Label.pairwise(c[0], ann.id, rid[0], "A", seconds_spent=3.5),
                Label.pairwise(c[0], ben.id, rid[0][::-1], "A", seconds_spent=7.0),  # shown B, A
                Label.pairwise(c[1], ann.id, rid[1], "tie"),
                Label.pairwise(c[1], ben.id, rid[1], "both_bad"),
            ]
        )
    else:
        a, b, cc = rid[0]
        s.add_labels(
            [
                Label(c[0], ann.id, ((a,), (b, cc)), display_order=rid[0], seconds_spent=9.0),
                Label(c[0], ben.id, ((cc,), (a,), (b,)), display_order=rid[0]),
                Label(c[1], ann.id, ((rid[1][1],), (rid[1][0],), (rid[1][2],))),
            ]
        )
    s.db.execute(
        "insert into skips (comparison_id, annotator_id, reason, created_at) values (?, ?, ?, ?)",
        [c[2], ann.id, "unsure", "2026-12-01T00:00:00"],
    )
    return s


@pytest.mark.parametrize("k", [2, 3])
def test_label_studio_round_trip_keeps_labels_ties_annotators_skips(tmp_path, k):
    native = people_store(k)
    assert export_preferences(native, tmp_path / "ls", "label-studio") == 3
    back = Store.memory()
    report = import_ls(back, tmp_path / "ls" / "tasks.json", tmp_path / "ls" / "labeling.xml")
    assert report.annotators == ("ann", "ben")
    assert judged(back) == judged(native)
    assert len(judged(back)[0]) == (4 if k == 2 else 3) and len(judged(back)[1]) == 1


@pytest.mark.parametrize("k", [2, 3])
def test_argilla_round_trip_keeps_labels_ties_annotators_skips(tmp_path, k):
    """Argilla has no 'both bad' and no time spent: both bad comes back as the tie it ranks
    as, and the seconds are not kept; everything else is."""
    native = people_store(k)
    assert export_preferences(native, tmp_path / "ag", "argilla") == 3
    back = Store.memory()
    import_argilla(back, tmp_path / "ag")
    assert judged(back, False, False) == judged(native, False, False)
    assert (
        json.loads((tmp_path / "ag" / ".argilla" / "settings.json").read_text())["questions"][0][
            "settings"
        ]["type"]
        == "ranking"
    )


def test_labels_made_in_label_studio_land_on_the_exported_comparisons(tmp_path):
    """rankloop -> Label Studio -> label there -> back: the new label joins the comparison it
    was exported from; nothing else is added."""
    store = people_store(2)
    export_preferences(store, tmp_path / "ls", "label-studio")
    tasks = json.loads((tmp_path / "ls" / "tasks.json").read_text())
    tasks[2]["annotations"].append(
        {
            "completed_by": {"id": 9, "email": "zoe@example.org"},
            "result": [
                {"type": "pairwise", "from_name": "comparison", "value": {"selected": "right"}}
            ],
            "was_cancelled": False,
            "lead_time": 2.0,
        }
    )
    (tmp_path / "ls" / "tasks.json").write_text(json.dumps(tasks))
    report = import_ls(store, tmp_path / "ls" / "tasks.json", tmp_path / "ls" / "labeling.xml")
    assert (report.prompts_added, report.responses_added, report.comparisons_added) == (0, 0, 0)
    assert (report.labels_added, report.skips_added) == (1, 0)
    new = store.labels()[-1]
    c3 = store.comparisons()[2]
    assert (new.comparison_id, new.ranking, new.source) == (
        c3.id,
        ((c3.response_ids[1],), (c3.response_ids[0],)),
        "external",
    )


# -- malformed exports: one message naming the record and the field, nothing written ---------


def write_ls(tmp_path, edit) -> Path:
    tasks = json.loads((FIX / "ls_pairwise_export.json").read_text())
    edit(tasks)
    f = tmp_path / "export.json"
    f.write_text(json.dumps(tasks))
    return f


def refused(store, fn, *args, **kw) -> str:
    with pytest.raises(InteropError) as e:
        fn(store, *args, **kw)
    assert store.prompts() == [] and store.labels() == [] and store.annotators() == []
    return str(e.value)


def test_truncated_label_studio_export_is_refused(tmp_path, fresh_store):
    f = tmp_path / "export.json"
    f.write_text((FIX / "ls_pairwise_export.json").read_text()[:700])
    msg = refused(fresh_store, import_ls, f, FIX / "ls_pairwise.xml")
    assert msg.startswith(f"{f}: not valid JSON at line ") and "a truncated export?" in msg


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            lambda t: t[0]["annotations"][0].update(lead_time="12s"),
            "task 101, annotation 5001: field 'lead_time' must be seconds (a number), got '12s'",
        ),
        (
            lambda t: t[1]["annotations"][0]["result"][0]["value"].update(selected="up"),
            (
                "task 102, annotation 5003: field 'result[0].value.selected' is 'up'; expected "
                "'left' or 'right'"
            ),
        ),
        (
            lambda t: t[1]["data"].update(answer2=5),
            "task 102: field 'data.answer2' must be non-empty text, got 5",
        ),
        (
            lambda t: t[1]["data"].pop("prompt"),
            "task 102: field 'data.prompt' is missing (fields here: answer1, answer2)",
        ),
        (
            lambda t: t[1]["annotations"][0].update(completed_by="someone"),
            (
                "task 102, annotation 5003: field 'completed_by' must be a user id or an object "
                "with 'email' or 'id', got 'someone'"
            ),
        ),
    ],
)
def test_bad_label_studio_record_names_task_and_field(tmp_path, fresh_store, edit, message):
    f = write_ls(tmp_path, edit)
    assert refused(fresh_store, import_ls, f, FIX / "ls_pairwise.xml") == f"{f}: {message}"


def test_unknown_ranker_item_and_bucket_are_refused(tmp_path, fresh_store):
    tasks = json.loads((FIX / "ls_ranker_export.json").read_text())
    tasks[0]["annotations"][1]["result"][0]["value"]["ranker"]["worst"] = ["z"]
    f = tmp_path / "r.json"
    f.write_text(json.dumps(tasks))
    assert refused(fresh_store, import_ls, f, FIX / "ls_ranker.xml") == (
        f"{f}: task 7, annotation 901: field 'result[0].value.ranker' names item 'z', which "
        f"the task does not have (items: ['a', 'b', 'c'])"
    )


def copy_argilla(tmp_path, edit_line) -> Path:
    d = tmp_path / "ag"
    shutil.copytree(FIX / "argilla-ranking", d)
    lines = (d / "records.jsonl").read_text().splitlines()
    lines = edit_line(lines)
    (d / "records.jsonl").write_text("\n".join(lines) + "\n")
    return d


def _edit_row(n, fn):
    def edit(lines):
        row = json.loads(lines[n])
        fn(row)
        lines[n] = json.dumps(row)
        return lines

    return edit


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            _edit_row(0, lambda r: r["preference.responses"][0].__setitem__(0, "reply-9")),
            (
                "records.jsonl: line 1 (id r1): field 'preference.responses'[0]: unknown option "
                "'reply-9' (options with a response here: ['reply-1', 'reply-2', 'reply-3'])"
            ),
        ),
        (
            _edit_row(0, lambda r: r.__setitem__("preference.responses.users", "u1")),
            (
                "records.jsonl: line 1 (id r1): field 'preference.responses.users' must be a list "
                "with one entry per response (2)"
            ),
        ),
        (
            _edit_row(2, lambda r: r["preference.responses.status"].__setitem__(1, "accepted")),
            (
                "records.jsonl: line 3 (id r3): field 'preference.responses'[1]: status 'accepted' "
                "is not one of submitted, discarded, draft"
            ),
        ),
        (
            _edit_row(1, lambda r: r["preference.responses"][0][2].pop("rank")),
            (
                "records.jsonl: line 2 (id r2): field 'preference.responses'[0]: each ranked option "
                "needs a rank (1 = best), got [1, 1, None]"
            ),
        ),
    ],
)
def test_bad_argilla_record_names_record_and_field(tmp_path, fresh_store, edit, message):
    d = copy_argilla(tmp_path, edit)
    msg = refused(fresh_store, import_argilla, d, prompt_field="instruction")
    assert msg == f"{d}: {message}"


def test_truncated_argilla_file_is_refused(tmp_path, fresh_store):
    d = copy_argilla(tmp_path, lambda lines: [lines[0], lines[1][:80]])
    msg = refused(fresh_store, import_argilla, d, prompt_field="instruction")
    assert msg.startswith(f"{d / 'records.jsonl'}: line 2: not valid JSON (")
    assert msg.endswith("a truncated file?")


# -- the export registry and the command line -----------------------------------------------


def run(*args, ok=True):
    result = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
    if ok:
        assert result.exit_code == 0, result.output
    return result


def test_every_export_format_is_a_cli_choice_and_documented():
    # click wraps the help at spaces and after hyphens ("label-\n studio")
    help_text = " ".join(re.sub(r"-\n\s*", "-", run("export", "--help").output).split())
    docs = (ROOT / "docs" / "cli.md").read_text() + (ROOT / "docs" / "interop.md").read_text()
    assert list(EXPORT_FORMATS) == ["trl", "jsonl", "parquet", "label-studio", "argilla"]
    for f in EXPORT_FORMATS.values():
        assert f"{f.name}: {' '.join(f.help.split())}" in help_text
        assert f"--format {f.name}" in docs


def test_cli_imports_label_studio_and_refuses_in_one_line(tmp_path, tiny_lm_dir):
    run("init", tmp_path / "p", "--policy", tiny_lm_dir)
    p = tmp_path / "p"
    bad = write_ls(tmp_path, lambda t: t[0]["annotations"][0].update(lead_time="12s"))
    out = run(
        "import",
        bad,
        "--from",
        "label-studio",
        "--ls-config",
        FIX / "ls_pairwise.xml",
        "--project",
        p,
        ok=False,
    )
    assert out.exit_code == 1 and out.output.strip() == (
        f"Error: {bad}: task 101, annotation 5001: field 'lead_time' must be seconds (a "
        f"number), got '12s'"
    )
    out = run(
        "import",
        FIX / "ls_pairwise_export.json",
        "--from",
        "label-studio",
        "--project",
        p,
        ok=False,
    )
    assert "--ls-config labeling.xml" in out.output
    out = run(
        "import",
        FIX / "ls_pairwise_export.json",
        "--from",
        "label-studio",
        "--responses-column",
        "answer1,answer2",
        "--project",
        p,
    ).output
    assert out.strip() == (
        "Imported ls_pairwise_export.json: 2 tasks -> 2 new prompts, 4 responses, 2 "
        "comparisons, 2 labels, 1 skips by 3 annotators"
    )
    out = run(
        "import",
        FIX / "argilla-ranking",
        "--from",
        "argilla",
        "--prompt-column",
        "instruction",
        "--project",
        p,
    ).output
    assert "3 tasks -> 3 new prompts, 8 responses, 3 comparisons, 3 labels, 1 skips" in out
    out = run("export", tmp_path / "ls", "--format", "label-studio", "--project", p).output
    assert out.strip() == f"Wrote 5 tasks to {tmp_path / 'ls'} (label-studio)"
    assert (tmp_path / "ls" / "labeling.xml").read_text().count("<Bucket") == 3


# -- imported labels train like native ones ---------------------------------------------------


def projection(examples):
    return [(e.prompt.messages, e.responses, e.tiers, e.pairs, e.annotator) for e in examples]


def test_imported_label_studio_export_trains_like_native_labels(tmp_path, tiny_lm_dir):
    """The same judgments, entered natively or exported to Label Studio and imported back,
    give the reward trainer the same examples, so the same seed trains the same model."""
    from huggingface_hub import ModelCard

    from rankloop.reward.config import RewardConfig
    from rankloop.reward.pairs import build_examples
    from rankloop.reward.train import train_reward

    native = Store.memory()
    simulate_labels(native, 60, seed=3, annotator="sim@example.org")
    export_preferences(native, tmp_path / "ls", "label-studio")
    imported = Store.memory()
    import_ls(imported, tmp_path / "ls" / "tasks.json", tmp_path / "ls" / "labeling.xml")
    ex_native = build_examples(native).examples
    ex_imported = build_examples(imported).examples
    assert len(ex_native) == 60 and projection(ex_imported) == projection(ex_native)

    cfg = RewardConfig(
        lora=False,
        lr=3e-3,
        epochs=1,
        batch_size=16,
        warmup_ratio=0.0,
        eval_fraction=0.25,
        bf16="no",
        compile="no",
    )
    a = train_reward(ex_native, cfg, tmp_path / "a", base=str(tiny_lm_dir), progress=False)
    b = train_reward(ex_imported, cfg, tmp_path / "b", base=str(tiny_lm_dir), progress=False)
    assert a.metrics["reward/accuracy"] == b.metrics["reward/accuracy"]
    assert a.metrics["reward/mean"] == pytest.approx(b.metrics["reward/mean"], abs=1e-6)
    card = ModelCard.load(tmp_path / "b" / "README.md")
    assert card.data.library_name == "transformers" and "reward-model" in card.data.tags
    assert card.data.rankloop["metrics"]["reward/accuracy"] == b.metrics["reward/accuracy"]
    assert (
        card.data.rankloop["metrics"]["reward/probe_accuracy"] == b.metrics["reward/probe_accuracy"]
    )
    assert card.data.rankloop["trained_on"]["training examples (judged comparisons)"] == (
        b.train_examples
    )


def test_read_items_orders_pairwise_choice_by_the_comparison(tmp_path):
    """A pairwise label shown as (B, A) exports its choice relative to the comparison's order,
    so 'A' on a reversed display is 'B' in the task."""
    s = people_store(2)
    item = read_items(s)[0]
    assert [(j.annotator, j.choice, j.tiers) for j in item.judgments] == [
        ("ann", "A", ((0,), (1,))),
        ("ben", "B", ((1,), (0,))),
    ]


def test_admin_tab_exports_every_registered_format(fresh_store, tmp_path):
    """The admin tab's formats are the registry's (plus everything); a folder comes zipped."""
    import zipfile

    from rankloop.app.config import LabelingConfig
    from rankloop.app.labeling import admin, build_app

    fresh_store.add_comparison_texts("q", ["a", "b"])
    fresh_store.add_annotator("root", role="admin", secret="pw")
    app = build_app(fresh_store, LabelingConfig())
    assert admin.ADMIN_EXPORTS == (*EXPORT_FORMATS, "everything")
    path, msg = admin.export(app.ctx, "root", "label-studio", tmp_path / "out")
    assert msg == "Exported 1 tasks (label-studio)." and path.name == "label-studio.zip"
    assert sorted(zipfile.ZipFile(path).namelist()) == ["labeling.xml", "tasks.json"]
    path, msg = admin.export(app.ctx, "root", "argilla", tmp_path / "out")
    assert msg == "Exported 1 records (argilla)."
    assert sorted(zipfile.ZipFile(path).namelist()) == [
        ".argilla/",
        ".argilla/dataset.json",
        ".argilla/settings.json",
        "data/",
        "data/train-00000-of-00001.parquet",
    ]
    app.close()


def test_cli_import_reads_a_folder_rankloop_exported(tmp_path, tiny_lm_dir):
    native = people_store(3)
    export_preferences(native, tmp_path / "ls", "label-studio")
    run("init", tmp_path / "p", "--policy", tiny_lm_dir)
    out = run("import", tmp_path / "ls", "--from", "label-studio", "--project", tmp_path / "p")
    assert "3 tasks -> 3 new prompts, 9 responses, 3 comparisons, 3 labels, 1 skips" in out.output
    bundled = run("import", "--bundled", "--from", "argilla", "--project", tmp_path / "p", ok=False)
    assert bundled.exit_code == 2 and "--bundled imports rankloop's own prompts" in bundled.output


def test_argilla_to_disk_records_json_reads_like_the_flat_rows(tmp_path):
    """`Dataset.to_disk` writes nested records (fields, metadata, responses per question);
    the same records as `to_datasets` rows import the same labels and skips."""
    d = tmp_path / "disk"
    shutil.copytree(FIX / "argilla-ranking" / ".argilla", d / ".argilla")
    nested = []
    for line in (FIX / "argilla-ranking" / "records.jsonl").read_text().splitlines():
        row = json.loads(line)
        q = "preference"
        nested.append(
            {
                "id": row["id"],
                "status": row["status"],
                "fields": {k: row[k] for k in ("instruction", "reply-1", "reply-2", "reply-3")},
                "metadata": {},
                "responses": {
                    q: [
                        {"value": v, "user_id": u, "status": st}
                        for v, u, st in zip(
                            row[f"{q}.responses"],
                            row[f"{q}.responses.users"],
                            row[f"{q}.responses.status"],
                            strict=True,
                        )
                    ]
                },
                "suggestions": {},
                "vectors": {},
            }
        )
    (d / "records.json").write_text(json.dumps(nested))
    flat, disk = Store.memory(), Store.memory()
    import_argilla(flat, FIX / "argilla-ranking", prompt_field="instruction")
    import_argilla(disk, d, prompt_field="instruction")
    assert judged(disk) == judged(flat) and len(judged(disk)[0]) == 3
