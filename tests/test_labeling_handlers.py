"""The labeling app's handlers as plain functions over an in-memory store (no browser)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rankloop.app.config import LabelingConfig
from rankloop.app.labeling import admin, handlers, render
from rankloop.app.labeling.handlers import AccessDenied, Ctx
from rankloop.app.labeling.store_pool import StorePool
from rankloop.data.records import Message, Prompt
from rankloop.data.store import StoreError

HOSTILE = (
    '<script>window.__pwned=1</script> <img src=x onerror="window.__pwned=2"> '
    "[click](javascript:alert(1)) ![pixel](https://tracker.example/p.png)\n\n"
    '```python\nif a < b:\n    print("<b>")\n```\n'
)


class Clock:
    def __init__(self, t=1000.0):
        self.t = t

    def __call__(self):
        return self.t


@pytest.fixture
def app(fresh_store, tmp_path):
    """3 pairwise comparisons (the first holding hostile markup), a 3-way one, two annotators
    and an admin."""
    s = fresh_store
    cids = [
        s.add_comparison_texts(f"question {i}", [f"answer {i}a", f"answer {i}b"]) for i in range(3)
    ]
    s.add_responses([])  # no-op, keeps the store warm
    hostile = s.add_comparison_texts("Show HTML " + HOSTILE, ["plain", HOSTILE])
    kway = s.add_comparison_texts("rank three", ["one", "two", "three"])
    for name, role in (("ann", "annotator"), ("bob", "annotator"), ("root", "admin")):
        s.add_annotator(name, role=role, secret="pw")
    clock = Clock()
    ctx = Ctx(
        stores=StorePool.shared(s),
        config=LabelingConfig(),
        clock=clock,
        rng=random.Random(0),
        guidelines_path=tmp_path / "guidelines.md",
    )
    return ctx, s, clock, {"pairs": cids, "hostile": hostile, "kway": kway}


def test_untrusted_markdown_is_escaped_and_code_still_renders():
    out = render.markdown_html(HOSTILE)
    assert "&lt;script&gt;window.__pwned=1&lt;/script&gt;" in out
    assert "&lt;img src=x onerror=&quot;window.__pwned=2&quot;&gt;" in out
    assert "<script" not in out and "<img" not in out and 'onerror="' not in out
    assert "javascript:" not in out.replace("[click](javascript:alert(1))", "")
    assert 'href="javascript' not in out
    # The javascript: link stays text; the image is off (a plain link, nothing is fetched).
    assert out.count("<a ") == 1 and '<a href="https://tracker.example/p.png"' in out
    assert (
        '<pre><code class="language-python">if a &lt; b:\n    print(&quot;&lt;b&gt;&quot;)'
    ) in out
    link = render.markdown_html("[docs](https://example.org)")
    assert (
        '<a href="https://example.org" target="_blank" rel="noopener noreferrer nofollow">docs</a>'
    ) in link


def test_a_conversation_renders_every_turn_with_its_role():
    p = Prompt(
        messages=(
            Message("system", "Be brief."),
            Message("user", "Hi <b>there</b>"),
            Message("assistant", "Hello."),
            Message("user", "Bye?"),
        )
    )
    out = render.conversation_html(p.messages)
    assert [out.count(f'class="rl-turn rl-{r}"') for r in ("system", "user", "assistant")] == [
        1,
        2,
        1,
    ]
    assert out.index("Be brief.") < out.index("Hi &lt;b&gt;there&lt;/b&gt;") < out.index("Bye?")
    assert "<b>there" not in out


def test_every_handler_needs_a_logged_in_account(app):
    ctx, s, _, _ = app
    for name in (None, "", "mallory"):
        with pytest.raises(AccessDenied):
            handlers.load(ctx, name)
        with pytest.raises(AccessDenied):
            handlers.submit(ctx, name, None, "A", "", "", "")
        with pytest.raises(AccessDenied):
            handlers.api_next(ctx, name)
    with pytest.raises(AccessDenied, match="only an admin"):
        admin.dashboard(ctx, "ann")
    assert s.db["labels"].count == 0 and s.db["leases"].count == 0


def test_load_shows_a_pairwise_task_and_the_progress(app):
    ctx, _s, _, c = app
    page = handlers.load(ctx, "ann")
    assert page.mode == "pairwise" and page.state["comparison_id"] == c["pairs"][0]
    assert page.state["k"] == 2 and len(page.responses_html) == 2
    assert "question 0" in page.prompt_html and "Response A" in page.responses_html[0]
    shown = {t for t in ("answer 0a", "answer 0b") if t in page.responses_html[0]}
    assert len(shown) == 1
    assert page.progress == ("Labeled today: **0** · in total: **0** · left in the queue: **5**")
    # A reload shows the same task (same lease), not a new one.
    assert handlers.load(ctx, "ann").state["request_id"] == page.state["request_id"]


def test_submit_records_exactly_what_was_chosen_then_moves_on(app):
    ctx, s, clock, c = app
    page = handlers.load(ctx, "ann")
    refused = handlers.submit(ctx, "ann", page.state, None, "much", "", "because")
    assert refused.message == "Not saved: choose A better, B better, tie or both bad first"
    assert refused.state == page.state and refused.prefill.rationale == "because"
    assert s.db["labels"].count == 0
    clock.t += 7.25
    nxt = handlers.submit(ctx, "ann", page.state, "B", "much", "", " B is right ")
    assert nxt.message == "Saved label #1." and nxt.state["comparison_id"] == c["pairs"][1]
    order = json.loads(s.db["leases"].get((c["pairs"][1], 1))["display_order"])
    assert len(order) == 2
    row = s.db["labels"].get(1)
    shown = json.loads(row["display_order"])
    assert {
        k: row[k]
        for k in (
            "annotator_id",
            "comparison_id",
            "choice",
            "strength",
            "margin",
            "rationale",
            "seconds_spent",
            "mode",
            "source",
        )
    } == {
        "annotator_id": 1,
        "comparison_id": c["pairs"][0],
        "choice": "B",
        "strength": "much",
        "margin": None,  # strength kept; [reward] margin_much maps it
        "rationale": "B is right",
        "seconds_spent": 7.25,
        "mode": "pairwise",
        "source": "human",
    }
    assert json.loads(row["ranking"]) == [[shown[1]], [shown[0]]]
    # A double click re-sends the old state: recorded once.
    again = handlers.submit(ctx, "ann", page.state, "B", "much", "", "")
    assert again.message == "Saved label #1." and s.db["labels"].count == 1
    assert nxt.progress.startswith("Labeled today: **1** · in total: **1**")


def test_an_annotator_cannot_submit_on_another_annotators_task(app):
    ctx, s, _, _ = app
    ann = handlers.load(ctx, "ann")
    stolen = handlers.submit(ctx, "bob", ann.state, "A", "", "", "")
    assert stolen.message.startswith("Not saved: comparison 1 is not assigned to you")
    assert s.db["labels"].count == 0
    assert stolen.state["comparison_id"] != ann.state["comparison_id"]  # bob's own task


def test_k_wise_ranking_from_the_ranking_box(app):
    ctx, s, _, c = app
    for cid in c["pairs"] + [c["hostile"]]:
        s.db.execute(
            "insert into skips (comparison_id, annotator_id, reason, created_at) "
            "values (?, 1, 'other', 'x')",
            [cid],
        )
    page = handlers.load(ctx, "ann")
    assert page.mode == "ranking" and len(page.responses_html) == 3
    text = "C > A = B"
    bad = handlers.submit(ctx, "ann", page.state, None, "", "C > A", "")
    assert bad.message == "Not saved: rank every response exactly once: missing B"
    handlers.submit(ctx, "ann", page.state, None, "", text, "")
    order = json.loads(s.db["labels"].get(1)["display_order"])
    assert json.loads(s.db["labels"].get(1)["ranking"]) == [[order[2]], [order[0], order[1]]]


@pytest.mark.parametrize(
    "text,k,expected",
    [
        ("B > A", 2, [[1], [0]]),
        ("a=b", 2, [[0, 1]]),
        ("c > a = b > d", 4, [[2], [0, 1], [3]]),
        (" C>A  =B ", 3, [[2], [0, 1]]),
    ],
)
def test_parse_ranking(text, k, expected):
    assert handlers.parse_ranking(text, k) == expected


@pytest.mark.parametrize(
    "text,k,error",
    [
        ("", 2, "rank the responses"),
        ("A > Z", 2, "unknown response 'Z'"),
        ("A > > B", 2, "empty place"),
        ("A > A = B", 2, "A appear(s) twice"),
        # Spaces and commas are not ties (they were: "C B A" and "C, A, B" became one tier).
        (
            "C B A",
            3,
            ("put '>' (better) or '=' (tie) between two responses, not 'B': e.g. 'A > B > C'"),
        ),
        ("C, A, B", 3, "not ','"),
        ("AB > C", 3, "unknown response 'AB'"),
        ("C > A =", 3, "the ranking ends with '=': name a response after it"),
        ("A\ud800", 2, "half of a surrogate pair"),
        ("A > B" * 100, 2, "the limit is 200"),
    ],
)
def test_parse_ranking_errors(text, k, error):
    with pytest.raises(StoreError, match=error.replace("(", r"\(").replace(")", r"\)")):
        handlers.parse_ranking(text, k)


def test_skip_flag_and_undo(app):
    ctx, s, _, c = app
    p1 = handlers.load(ctx, "ann")
    assert (
        handlers.skip(ctx, "ann", p1.state, "").message == "Not skipped: say why you skip "
        "(pick a reason)"
    )
    p2 = handlers.skip(ctx, "ann", p1.state, "too long to judge now")
    assert p2.message == "Skipped." and p2.state["comparison_id"] == c["pairs"][1]
    p3 = handlers.flag(ctx, "ann", p2.state, "broken", "cut off")
    assert p3.message == "Flagged as broken." and p3.state["comparison_id"] == c["pairs"][2]
    assert [(r["annotator_id"], r["comparison_id"], r["reason"]) for r in s.db["skips"].rows] == [
        (1, c["pairs"][0], "too long to judge now")
    ]
    assert [(r["comparison_id"], r["kind"], r["note"]) for r in s.db["flags"].rows] == [
        (c["pairs"][1], "broken", "cut off")
    ]
    p4 = handlers.submit(ctx, "ann", p3.state, "A", "slightly", "", "ok")
    assert s.db["labels"].get(1)["strength"] == "slightly"
    assert handlers.undo(ctx, "bob", None).message == "Nothing to undo."
    p5 = handlers.undo(ctx, "ann", p4.state)
    assert p5.message == "Label #1 taken back: change it and submit again."
    assert p5.state["comparison_id"] == c["pairs"][2]
    assert (p5.prefill.choice, p5.prefill.strength, p5.prefill.rationale) == ("A", "slightly", "ok")
    assert s.db["labels"].count == 0 and s.db["label_revisions"].count == 1
    handlers.submit(ctx, "ann", p5.state, "tie", "", "", "")
    assert [r["choice"] for r in s.db["labels"].rows] == ["tie"]


def test_idle_pages_say_why(app):
    ctx, s, _, _ = app
    s.db.execute("delete from comparison_responses where comparison_id > 1")
    s.db.execute("delete from comparisons where id > 1")  # no labels or leases reference them
    handlers.load(ctx, "ann")
    held = handlers.load(ctx, "bob")
    assert held.mode == "idle" and held.state is None
    assert held.message == (
        "The 1 comparison(s) left are being labeled by others right now; try again in a minute."
    )
    p = handlers.load(ctx, "ann")
    done = handlers.submit(ctx, "ann", p.state, "A", "", "", "")
    assert done.message == "Saved label #1. Nothing left to label: thank you!"


def test_api_next_and_label(app):
    ctx, s, _, c = app
    t = handlers.api_next(ctx, "ann")
    assert (t["comparison_id"], t["mode"], t["left"]) == (c["pairs"][0], "pairwise", 5)
    assert t["prompt"] == [{"role": "user", "content": "question 0"}]
    got = handlers.api_label(ctx, "ann", t["comparison_id"], t["request_id"], choice="A")
    assert got == handlers.api_label(ctx, "ann", t["comparison_id"], t["request_id"], choice="A")
    assert got["label_id"] == 1 and got["next"]["comparison_id"] == c["pairs"][1]
    row = s.db["labels"].get(1)
    assert json.loads(row["ranking"])[0] == [
        s.responses(prompt_id=1)[
            [r.text for r in s.responses(prompt_id=1)].index(t["responses"][0])
        ].id
    ]


def test_guidelines_are_kept_in_the_project_and_edited_by_an_admin(app):
    ctx, _, _, _ = app
    assert "Labeling guidelines" in handlers.guidelines_html(ctx)
    with pytest.raises(AccessDenied):
        admin.save_guidelines(ctx, "ann", "# Mine")
    assert (
        admin.save_guidelines(ctx, "root", "# Ours\n<script>x</script>")
        == "Guidelines saved to guidelines.md."
    )
    assert ctx.guidelines_path.read_text() == "# Ours\n<script>x</script>"
    assert handlers.guidelines_html(ctx) == "<h1>Ours</h1>\n<p>&lt;script&gt;x&lt;/script&gt;</p>\n"


def test_admin_dashboard_flags_gold_accounts(app):
    ctx, s, _, c = app
    for name in ("ann", "bob"):
        p = handlers.load(ctx, name)
        handlers.submit(ctx, name, p.state, "A", "", "", "")
    p = handlers.load(ctx, "ann")
    handlers.flag(ctx, "ann", p.state, "unsafe", "")
    d = admin.dashboard(ctx, "root")
    assert list(d.annotators["annotator"]) == ["ann", "bob", "root"]
    assert list(d.annotators["labels"]) == [1, 1, 0] and list(d.annotators["flags"]) == [1, 0, 0]
    assert list(d.flags["kind"]) == ["unsafe"] and d.alpha is None
    assert list(d.per_day["labels"]) == [1, 1]
    fid = int(d.flags["id"][0])
    assert admin.resolve_flag(ctx, "root", fid) == (
        f"Flag {fid} resolved: its comparison is back in the queue."
    )
    assert admin.resolve_flag(ctx, "root", fid) == f"Not resolved: no open flag with id {fid}"
    r1, r2 = s.comparison(c["pairs"][2]).response_ids
    shown = admin.comparison_html(ctx, "root", c["hostile"])
    assert "Comparison 4, round 0, 0 label(s), gold: not gold" in shown
    assert "<script" not in shown and "&lt;script&gt;" in shown
    assert f"Response id {s.comparison(c['hostile']).response_ids[1]}</div>" in shown
    assert admin.comparison_html(ctx, "root", 99) == "<p>no comparison with id 99</p>"
    msg = admin.set_gold(ctx, "root", c["pairs"][2], f"{r2} > {r1}")
    assert msg == f"Comparison {c['pairs'][2]} is gold: {r2} > {r1}."
    assert s.comparison(c["pairs"][2]).gold == ((r2,), (r1,))
    assert f"gold: {r2} &gt; {r1}" in admin.comparison_html(ctx, "root", c["pairs"][2])
    assert admin.set_gold(ctx, "root", c["pairs"][2], "1 > 2").startswith("Not set:")
    msg = admin.add_account(ctx, "root", "carol", "annotator")
    secret = msg.split("`")[1]
    assert s.authenticate("carol", secret).role == "annotator"
    assert admin.add_account(ctx, "root", "carol", "admin").startswith("Not created:")


def test_admin_upload_and_export(app, tmp_path):
    ctx, s, _, _ = app
    good = tmp_path / "new.jsonl"
    good.write_text('{"prompt": "brand new"}\n{"prompt": "another", "responses": ["x", "y"]}\n')
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "fine"}\n{"question": "no prompt"}\n')
    before = s.db["prompts"].count
    assert admin.upload(ctx, "root", str(bad)).startswith(f"Nothing imported: {bad}: line 2")
    assert s.db["prompts"].count == before
    assert admin.upload(ctx, "root", str(good)) == (
        "Imported 2 rows: 2 new prompts, 2 responses, 1 comparisons, 0 labels."
    )
    p = handlers.load(ctx, "ann")
    handlers.submit(ctx, "ann", p.state, "tie", "", "", "")
    path, msg = admin.export(ctx, "root", "jsonl", tmp_path / "out")
    assert msg == "Exported 1 preference pairs (jsonl)."
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert [(r["tie"], r["annotator"]) for r in rows] == [(True, "ann")]
    with pytest.raises(AccessDenied):
        admin.export(ctx, "bob", "jsonl", tmp_path / "out")


def test_build_app_returns_the_page_and_its_context_and_close_removes_the_exports(
    fresh_store, tmp_path, monkeypatch
):
    import tempfile

    from rankloop.app.labeling import LabelingApp, build_app

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where the app makes its folders
    fresh_store.add_comparison_texts("q", ["a", "b"])
    fresh_store.add_annotator("root", role="admin", secret="pw")
    app = build_app(fresh_store, LabelingConfig(labels_per_comparison=2))
    assert isinstance(app, LabelingApp) and app.ctx.config.labels_per_comparison == 2
    t = handlers.api_next(app.ctx, "root")
    handlers.api_label(app.ctx, "root", t["comparison_id"], t["request_id"], choice="A")
    out = Path(tempfile.mkdtemp(dir=app.export_dir.name))
    path, msg = admin.export(app.ctx, "root", "jsonl", out)
    assert msg == "Exported 1 preference pairs (jsonl)." and path.exists()
    assert [p.name for p in tmp_path.iterdir()] == [Path(app.export_dir.name).name]
    app.close()
    assert list(tmp_path.iterdir()) == []


def test_admin_disables_enables_resets_and_changes_roles_ending_sessions(app):
    ctx, s, _, _ = app
    tokens = {"t1": "ann", "t2": "bob", "t3": "ann"}
    ctx.sessions.attach(tokens)
    with pytest.raises(AccessDenied, match="only an admin"):
        admin.disable_account(ctx, "ann", "bob")
    assert admin.disable_account(ctx, "root", " ann ") == (
        "Disabled **ann** (logged out everywhere; its labels stay)."
    )
    assert tokens == {"t2": "bob"}
    with pytest.raises(AccessDenied, match="the account 'ann' is disabled; ask an admin"):
        handlers.load(ctx, "ann")
    with pytest.raises(AccessDenied, match="disabled"):
        handlers.api_next(ctx, "ann")
    assert admin.accounts(ctx, "root").values.tolist() == [
        ["ann", "annotator", "disabled"],
        ["bob", "annotator", "active"],
        ["root", "admin", "active"],
    ]
    assert admin.enable_account(ctx, "root", "ann") == "Enabled **ann**: it can log in again."
    assert handlers.load(ctx, "ann").mode == "pairwise"

    msg = admin.reset_secret(ctx, "root", "bob")
    secret = msg.split("`")[1]
    assert msg == f"New secret for **bob** (shown once; its sessions ended): `{secret}`"
    assert tokens == {} and s.authenticate("bob", "pw") is None
    assert s.authenticate("bob", secret).name == "bob"

    assert admin.set_role(ctx, "root", "bob", "admin") == (
        "**bob** is now an admin (logged out everywhere)."
    )
    assert admin.dashboard(ctx, "bob").summary.startswith("**0** labels")
    assert admin.set_role(ctx, "root", "root", "annotator") == (
        "**root** is now an annotator (logged out everywhere)."
    )
    with pytest.raises(AccessDenied, match="only an admin"):
        admin.dashboard(ctx, "root")
    assert admin.disable_account(ctx, "bob", "bob") == (
        "Not changed: 'bob' is the only enabled admin: make another account admin first"
    )
    assert admin.set_role(ctx, "bob", "ghost", "admin") == (
        "Not changed: no account named 'ghost' (see `rankloop annotator list`)"
    )
    assert admin.enable_account(ctx, "bob", "") == "Give the name of the account."


def held_task(ctx, s, k=2):
    """ann's leased task: a pairwise one, or the 3-way one (k=3)."""
    if k == 3:
        for cid in range(1, 5):
            s.db.execute(
                "insert into skips (comparison_id, annotator_id, reason, created_at) "
                "values (?, 1, 'other', 'x')",
                [cid],
            )
    return handlers.api_next(ctx, "ann")


def label_state(s):
    return (
        s.db["labels"].count,
        [
            tuple(r)
            for r in s.db.execute(
                "select comparison_id, annotator_id, request_id from leases"
            ).fetchall()
        ],
    )


@pytest.mark.parametrize(
    "k,fields,error",
    [
        (2, {"seconds_spent": -5}, "seconds_spent is a number of seconds from 0 to 86,400; got -5"),
        (2, {"seconds_spent": 1e308}, "got 1e+308"),
        (2, {"seconds_spent": float("inf")}, "got inf"),
        (2, {"seconds_spent": float("nan")}, "got nan"),
        (2, {"seconds_spent": "abc"}, "got 'abc'"),
        (2, {"seconds_spent": True}, "got True"),
        (
            2,
            {"rationale": "x" * 10_000_000},
            ("the rationale is 10,000,000 characters long; the limit is 10,000"),
        ),
        (2, {"rationale": "why \ud800"}, "the rationale holds half of a surrogate pair"),
        (2, {"rationale": ["not", "text"]}, "the rationale must be text, got list"),
        (2, {"choice": "C"}, "a choice is one of A, B, tie, both_bad; got 'C'"),
        (2, {"choice": 1}, "choice must be text, got int"),
        (2, {"choice": "A", "strength": "hugely"}, "a strength is one of slightly, much"),
        (2, {"choice": "tie", "strength": "much"}, "strength applies to 'A better' or 'B better'"),
        (
            2,
            {"choice": "A", "ranking": "A > B"},
            "give a choice (2 responses) or a ranking, not both",
        ),
        (2, {"comparison_id": "abc"}, "comparison_id must be a whole number; got 'abc'"),
        (2, {"comparison_id": 1.5}, "got 1.5"),
        (2, {"comparison_id": None}, "got None"),
        (2, {"comparison_id": 2**70}, "comparison_id must be a whole number"),
        (2, {"comparison_id": 999}, "no comparison with id 999"),
        (2, {"request_id": 5}, "the request id must be text, got int"),
        (2, {"request_id": "x" * 65}, "the request id is 65 characters long; the limit is 64"),
        (2, {"request_id": "forged"}, "is not assigned to you (or was already answered)"),
        (3, {"ranking": "C B A"}, "put '>' (better) or '=' (tie) between two responses, not 'B'"),
        (3, {"ranking": "C, A, B"}, "not ','"),
        (
            3,
            {"ranking": "C > A > B", "strength": "much"},
            ("strength applies to 'A better' or 'B better' only"),
        ),
        (
            3,
            {"choice": "A", "ranking": ""},
            ("A / B / tie / both bad is for a comparison of 2 responses"),
        ),
    ],
)
def test_the_label_api_refuses_every_bad_field_and_writes_nothing(app, k, fields, error):
    """Issue #13.6: each of these was stored (or crashed with a traceback) before."""
    ctx, s, _, _ = app
    t = held_task(ctx, s, k)
    before = label_state(s)
    args = {
        "comparison_id": t["comparison_id"],
        "request_id": t["request_id"],
        "choice": "A" if k == 2 else "",
        "ranking": "" if k == 2 else "A > B > C",
        **fields,
    }
    with pytest.raises(StoreError) as e:
        handlers.api_label(ctx, "ann", **args)
    assert error in str(e.value)
    assert label_state(s) == before
    # The same task, labeled properly, is still there to label.
    good = {**args, "comparison_id": t["comparison_id"], "request_id": t["request_id"]}
    good.update(
        {"seconds_spent": 12.5, "rationale": "ok", "strength": ""}
        if k == 2
        else {
            "seconds_spent": 12.5,
            "rationale": "ok",
            "strength": "",
            "choice": "",
            "ranking": "C > A = B",
        }
    )
    if k == 2:
        good.update(choice="A", ranking="")
    assert handlers.api_label(ctx, "ann", **good)["label_id"] == 1
    assert [tuple(r) for r in s.db.execute("select seconds_spent, rationale from labels")] == [
        (12.5, "ok")
    ]


api_values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(),
    st.text(max_size=12),
    st.sampled_from(
        ["A", "B", "tie", "both_bad", "much", "slightly", "A > B", "B = A", "\ud800", "x" * 20_000]
    ),
    st.lists(st.integers(), max_size=2),
)


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_any_label_api_call_is_a_label_or_one_refusal(data, fresh_store):
    """Whatever a script sends, /label records a sane label or refuses with a StoreError, and
    a refusal writes nothing."""
    s = fresh_store
    if not s.annotators():
        s.add_comparison_texts("q", ["a", "b"])
        s.add_annotator("ann", secret="pw")
    s.db.execute("delete from labels")
    s.db.execute("delete from leases")
    ctx = Ctx(
        stores=StorePool.shared(s), config=LabelingConfig(), clock=Clock(), rng=random.Random(0)
    )
    t = handlers.api_next(ctx, "ann")
    fields = {
        name: data.draw(api_values, label=name)
        for name in ("choice", "ranking", "strength", "rationale", "seconds_spent")
    }
    cid = data.draw(st.sampled_from([t["comparison_id"], "1", 2.0, -1, 7]), label="id")
    try:
        got = handlers.api_label(ctx, "ann", cid, t["request_id"], **fields)
    except StoreError:
        assert s.db["labels"].count == 0 and s.db["leases"].count == 1
        return
    row = s.db["labels"].get(got["label_id"])
    assert row["choice"] in ("A", "B", "tie", "both_bad", None)
    assert row["seconds_spent"] is None or 0 <= row["seconds_spent"] <= 86_400
    assert row["rationale"] is None or len(row["rationale"]) <= 10_000
