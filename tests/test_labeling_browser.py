"""The whole page in a real browser: Debian's chromium driven by Playwright.

One server and one browser for the module. Each test logs in its own annotator, and takes the
comparisons meant for other tests out of that annotator's queue (as skips written straight into
the database), so the tests do not depend on their order.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
import socket
import zipfile

import httpx
import pytest

from rankloop.app.config import LabelingConfig
from rankloop.app.labeling import build_app
from rankloop.data.records import Label
from rankloop.data.store import Store

pytestmark = pytest.mark.browser

HOSTILE = (
    'Look: <script>window.__pwned=1</script> and <img src=x onerror="window.__pwned=2"> '
    'and [a link](javascript:window.__pwned=3)\n\n```python\nprint("<b>code</b>")\n```\n'
)
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]


def chromium_or_skip() -> str:
    path = shutil.which("chromium")
    if path is None:
        reason = (
            "Debian's chromium is not installed (apt-get install -y chromium; `make test` "
            "does it when run as root)"
        )
        if os.environ.get("RANKLOOP_REQUIRE_BROWSER") == "1":
            pytest.fail(reason + " and RANKLOOP_REQUIRE_BROWSER=1", pytrace=False)
        pytest.skip(reason)
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serving(path, folder):
    """The app over the database at `path`, served on a free port; yields its URL."""
    app = build_app(path, LabelingConfig(), guidelines_path=folder / "guidelines.md")
    url = app.launch(port=free_port(), block=False)
    try:
        yield url
    finally:
        app.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    folder = tmp_path_factory.mktemp("labeling-app")
    path = folder / "rankloop.db"
    store = Store.open(path)
    ids = {
        "hostile": store.add_comparison_texts("Render this safely", ["A plain answer.", HOSTILE])
    }
    ids["pairs"] = [
        store.add_comparison_texts(f"Question {i}?", [f"Answer {i} one.", f"Answer {i} two."])
        for i in range(4)
    ]
    ids["kway"] = store.add_comparison_texts("Rank these three", ["first", "second", "third"])
    for name, role in (("ann", "annotator"), ("eve", "annotator"), ("root", "admin")):
        store.add_annotator(name, role=role, secret=f"{name}-secret")
    store.close()
    with serving(path, folder) as url:
        yield url, path, ids


@pytest.fixture(scope="module")
def browser():
    executable = chromium_or_skip()
    from playwright.sync_api import expect, sync_playwright

    # Every wait is on a condition; on a loaded machine (CI beside a training job) a condition
    # may take far longer than Playwright's 5 s default to come true, so give each 60 s.
    expect.set_options(timeout=60_000)
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        yield b
        b.close()


def skip_for(path, name: str, comparison_ids) -> None:
    store = Store.open(path)
    aid = store.db.execute("select id from annotators where name = ?", [name]).fetchone()[0]
    for cid in comparison_ids:
        store.db["skips"].insert(
            {
                "comparison_id": cid,
                "annotator_id": aid,
                "reason": "not this test's",
                "created_at": "2000-01-01",
            }
        )
    store.db.conn.commit()
    store.close()


def settled(page) -> None:
    """Wait until the page has rendered twice: Gradio (Svelte) applies a change to its state
    in a scheduled update, not at once, and two animation frames come after it however slow
    the machine is (a condition to wait on, not a guessed time)."""
    page.evaluate("() => new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))")


def type_into(locator, text: str) -> None:
    """Fill a text box and leave it, as a person would: Gradio syncs a box's value to the
    event inputs after the DOM changes, so a click right after `fill` could send the old value
    (seen once in 4 runs here): wait until the page has settled. Settled before the fill too: a
    box just shown (an accordion opened) can still take its value from the app's state after
    the first frame, over what was typed (seen once, on the guidelines editor)."""
    settled(locator.page)
    locator.fill(text)
    locator.blur()
    settled(locator.page)


def login(browser, url: str, name: str):
    page = browser.new_context(viewport={"width": 1280, "height": 900}).new_page()
    page.goto(url)
    page.fill("input[type=text]", name)
    page.fill("input[type=password]", f"{name}-secret")
    page.click("button:has-text('Login')")
    page.wait_for_selector("#rl-progress", timeout=30_000)
    return page


def test_a_session_with_mouse_and_keyboard_lands_exactly_in_the_db(browser, server):
    from playwright.sync_api import expect

    url, path, ids = server
    skip_for(path, "ann", [ids["hostile"]])
    page = login(browser, url, "ann")
    message = page.locator("#rl-message")
    expect(page.locator("#rl-prompt")).to_contain_text("Question 0?")
    expect(page.locator("#rl-progress")).to_contain_text("left in the queue: 5")

    # 1. Mouse: A better, much better, a rationale, Submit.
    page.get_by_label("A better").check()
    page.get_by_label("much better").check()
    type_into(page.locator("#rl-rationale textarea"), "A is complete")
    page.click("#rl-submit")
    expect(message).to_contain_text("Saved label #1.")
    expect(page.locator("#rl-prompt")).to_contain_text("Question 1?")

    # 2. Keyboard: B better, slightly, Enter.
    page.locator("body").click(position={"x": 5, "y": 5})  # focus out of any text box
    page.keyboard.press("2")
    page.keyboard.press("s")
    page.keyboard.press("Enter")
    expect(message).to_contain_text("Saved label #2.")
    expect(page.locator("#rl-prompt")).to_contain_text("Question 2?")

    # 3. Skip Question 2 with the key (reason: the dropdown's default).
    page.keyboard.press("k")
    expect(message).to_contain_text("Skipped.")
    expect(page.locator("#rl-prompt")).to_contain_text("Question 3?")

    # 4. Tie by key, submit, then undo it by key and change it to both bad with the mouse.
    page.keyboard.press("t")
    page.keyboard.press("Enter")
    expect(message).to_contain_text("Saved label #3.")
    page.keyboard.press("u")
    expect(message).to_contain_text("Label #3 taken back")
    expect(page.locator("#rl-prompt")).to_contain_text("Question 3?")
    expect(page.get_by_label("Tie")).to_be_checked()
    page.get_by_label("Both bad").check()
    page.click("#rl-submit")
    # A new id: 3 stays the undone label's (kept in label_revisions), never another label's.
    expect(message).to_contain_text("Saved label #4.")
    expect(page.locator("#rl-prompt")).to_contain_text("Rank these three")

    # 5. The 3-way comparison, ranked with the keys: C, tie, A, then B.
    expect(page.locator("#rl-prompt")).to_contain_text("Rank these three")
    page.locator("body").click(position={"x": 5, "y": 5})
    for key in ("3", "t", "1", "2"):
        page.keyboard.press(key)
    expect(page.locator("#rl-ranking textarea, #rl-ranking input")).to_have_value("C = A > B")
    page.keyboard.press("Enter")
    expect(message).to_contain_text("Saved label #5. Nothing left to label: thank you!")
    expect(page.locator("#rl-progress")).to_contain_text("in total: 4 · left in the queue: 0")

    store = Store.open(path)
    rows = [
        dict(r)
        for r in store.db.query(
            "select id, comparison_id, mode, choice, strength, margin, rationale, ranking, "
            "display_order, source from labels order by id"
        )
    ]
    for r in rows:
        r["display_order"] = json.loads(r["display_order"])
        r["ranking"] = json.loads(r["ranking"])
    o = [r["display_order"] for r in rows]
    p = ids["pairs"]
    assert [{k: v for k, v in r.items() if k != "display_order"} for r in rows] == [
        {
            "id": 1,
            "comparison_id": p[0],
            "mode": "pairwise",
            "choice": "A",
            "strength": "much",
            "margin": None,
            "rationale": "A is complete",
            "ranking": [[o[0][0]], [o[0][1]]],
            "source": "human",
        },
        {
            "id": 2,
            "comparison_id": p[1],
            "mode": "pairwise",
            "choice": "B",
            "strength": "slightly",
            "margin": None,
            "rationale": None,
            "ranking": [[o[1][1]], [o[1][0]]],
            "source": "human",
        },
        {
            "id": 4,
            "comparison_id": p[3],
            "mode": "pairwise",
            "choice": "both_bad",
            "strength": None,
            "margin": None,
            "rationale": None,
            "ranking": [o[2]],
            "source": "human",
        },
        {
            "id": 5,
            "comparison_id": ids["kway"],
            "mode": "ranking",
            "choice": None,
            "strength": None,
            "margin": None,
            "rationale": None,
            "ranking": [[o[3][2], o[3][0]], [o[3][1]]],
            "source": "human",
        },
    ]
    assert [
        (r["comparison_id"], r["reason"])
        for r in store.db.query(
            "select comparison_id, reason from skips s join annotators a on a.id = s.annotator_id "
            "where a.name = 'ann' and reason != 'not this test''s'"
        )
    ] == [(p[2], "I cannot judge this topic")]
    (rev,) = list(store.db["label_revisions"].rows)
    assert (rev["label_id"], rev["comparison_id"], json.loads(rev["label"])["choice"]) == (
        3,
        p[3],
        "tie",
    )
    assert json.loads(rev["label"])["request_id"] != store.db["labels"].get(4)["request_id"]
    store.close()


def test_markup_in_a_response_shows_as_text_and_runs_nothing(browser, server):
    from playwright.sync_api import expect

    url, path, ids = server
    skip_for(path, "eve", ids["pairs"] + [ids["kway"]])
    page = login(browser, url, "eve")
    responses = page.locator(".rl-response")
    expect(responses).to_have_count(2)
    hostile = responses.filter(has_text="Look:")
    expect(hostile).to_contain_text("<script>window.__pwned=1</script>")
    expect(hostile).to_contain_text('<img src=x onerror="window.__pwned=2">')
    expect(hostile.locator("pre code")).to_have_text('print("<b>code</b>")\n')
    assert hostile.locator("script, img, a[href^='javascript']").count() == 0
    settled(page)  # no such element exists (above), so nothing could fire after this
    assert page.evaluate("window.__pwned") is None
    # The Admin tab is not there for an annotator.
    assert page.get_by_role("tab", name="Admin").count() == 0
    # g opens the guidelines; f flags the task (as the kind selected: broken).
    page.locator("body").click(position={"x": 5, "y": 5})
    page.keyboard.press("g")
    expect(page.locator("#rl-guidelines-text")).to_contain_text("Labeling guidelines")
    expect(page.locator("#rl-guidelines-text")).to_be_visible()
    page.keyboard.press("f")
    expect(page.locator("#rl-message")).to_contain_text("Flagged as broken.")
    store = Store.open(path)
    assert [(r["comparison_id"], r["kind"]) for r in store.db["flags"].rows] == [
        (ids["hostile"], "broken")
    ]
    store.close()


def test_admin_sees_the_dashboard(browser, server):
    from playwright.sync_api import expect

    url, _, _ = server
    page = login(browser, url, "root")
    page.get_by_role("tab", name="Admin").click()
    expect(page.locator("#rl-summary")).to_contain_text("Krippendorff's alpha", timeout=30_000)
    expect(page.locator("#rl-stats")).to_contain_text("labels/hour")
    expect(page.locator("#rl-stats")).to_contain_text("root")


@pytest.fixture(scope="module")
def admin_server(tmp_path_factory):
    """A server of its own: the admin test writes gold, flags and prompts that would otherwise
    reach the annotators' queues in the tests above."""
    folder = tmp_path_factory.mktemp("admin-app")
    path = folder / "rankloop.db"
    store = Store.open(path)
    flagged = store.add_comparison_texts("Flag me", ["one", "two"])
    gold = store.add_comparison_texts("Gold me", ["right", "wrong"])
    for name, role in (("eve", "annotator"), ("root", "admin")):
        store.add_annotator(name, role=role, secret=f"{name}-secret")
    eve = store.db.execute("select id from annotators where name = 'eve'").fetchone()[0]
    flag_id = (
        store.db["flags"]
        .insert(
            {
                "comparison_id": flagged,
                "annotator_id": eve,
                "kind": "broken",
                "note": "garbled",
                "created_at": "2026-01-01",
            }
        )
        .last_pk
    )
    store.db.conn.commit()
    store.close()
    with serving(path, folder) as url:
        yield url, path, {"flagged": flagged, "gold": gold, "flag": flag_id}, folder


def test_every_admin_tool_works_in_the_page(browser, admin_server, tmp_path):
    """Each admin button clicked as an admin would, and the database checked after each."""
    from playwright.sync_api import expect

    url, path, ids, folder = admin_server
    page = login(browser, url, "root")
    page.get_by_role("tab", name="Admin").click()
    msg = page.locator("#rl-admin-msg")
    expect(page.locator("#rl-summary")).to_contain_text("1 open flags", timeout=30_000)
    expect(page.locator("#rl-summary")).to_contain_text("of 2 comparisons")

    def db():
        return Store.open(path)

    # Resolve flag.
    type_into(page.locator("#rl-flag-id input"), str(ids["flag"]))
    page.click("#rl-resolve")
    expect(msg).to_contain_text(f"Flag {ids['flag']} resolved")
    s = db()
    assert (
        s.db["flags"].get(ids["flag"])["resolved_by"]
        == s.db.execute("select id from annotators where name = 'root'").fetchone()[0]
    )
    s.close()
    # Refresh: the open flag is gone from the summary.
    page.click("#rl-refresh")
    expect(page.locator("#rl-summary")).to_contain_text("0 open flags")

    # Show comparison, then set it gold in response ids.
    s = db()
    right, wrong = s.comparison(ids["gold"]).response_ids
    s.close()
    type_into(page.locator("#rl-gold-cid input"), str(ids["gold"]))
    page.click("#rl-show")
    shown = page.locator("#rl-admin-comparison")
    expect(shown).to_contain_text(f"Response id {right}")
    expect(shown).to_contain_text("Gold me")
    type_into(page.locator("#rl-gold-rank input, #rl-gold-rank textarea"), f"{right} > {wrong}")
    page.click("#rl-set-gold")
    expect(msg).to_contain_text(f"Comparison {ids['gold']} is gold")
    s = db()
    assert json.loads(s.db["comparisons"].get(ids["gold"])["gold"]) == [[right], [wrong]]
    s.close()

    # Save guidelines.
    page.get_by_text("Guidelines", exact=True).last.click()
    editor = page.locator("#rl-guide-edit textarea")
    expect(editor).to_have_value(re.compile("^# Labeling guidelines"))  # the current ones
    type_into(editor, "# House rules\n\nBe kind.")
    expect(editor).to_have_value("# House rules\n\nBe kind.")
    page.click("#rl-guide-save")
    expect(msg).to_contain_text("Guidelines saved")
    assert (folder / "guidelines.md").read_text() == "# House rules\n\nBe kind."

    # Create account.
    page.get_by_text("Accounts", exact=True).click()
    type_into(page.locator("#rl-new-name input, #rl-new-name textarea"), "newbie")
    page.click("#rl-new-account")
    expect(msg).to_contain_text("Created annotator newbie")
    newbie_secret = msg.locator("code").inner_text()
    s = db()
    assert sorted((a.name, a.role) for a in s.annotators()) == [
        ("eve", "annotator"),
        ("newbie", "annotator"),
        ("root", "admin"),
    ]
    s.close()
    accounts = page.locator("#rl-accounts")
    expect(accounts).to_contain_text("newbie")

    # Disable, enable, reset the secret of and promote an account, by name.
    def account(button: str, expected: str):
        type_into(page.locator("#rl-account-name input, #rl-account-name textarea"), "eve")
        page.click(button)
        expect(msg).to_contain_text(expected)

    account("#rl-disable", "Disabled eve (logged out everywhere; its labels stay).")
    expect(accounts).to_contain_text("disabled")
    assert (
        httpx.post(
            f"{url}login", data={"username": "eve", "password": "eve-secret"}, timeout=30
        ).status_code
        == 400
    )
    account("#rl-enable", "Enabled eve: it can log in again.")
    assert (
        httpx.post(
            f"{url}login", data={"username": "eve", "password": "eve-secret"}, timeout=30
        ).status_code
        == 200
    )
    account("#rl-reset-secret", "New secret for eve (shown once; its sessions ended):")
    secret = msg.locator("code").inner_text()
    s = db()
    assert s.authenticate("eve", "eve-secret") is None and s.authenticate("eve", secret)
    s.close()
    page.locator("#rl-account-role input").click()
    page.get_by_role("option", name="admin").click()
    account("#rl-set-role", "eve is now an admin (logged out everywhere).")
    s = db()
    assert [(a.name, a.role, a.disabled) for a in s.annotators()] == [
        ("eve", "admin", False),
        ("root", "admin", False),
        ("newbie", "annotator", False),
    ]
    s.close()

    # Upload prompts.
    prompts = tmp_path / "more.jsonl"
    prompts.write_text('{"prompt": "Uploaded one?"}\n{"prompt": "Uploaded two?"}\n')
    page.get_by_text("Upload prompts / export", exact=True).click()
    page.locator("#rl-upload-file input[type=file]").set_input_files(str(prompts))
    # Gradio shows the name as stem and extension; their text may come with a space between
    expect(page.locator("#rl-upload-file")).to_contain_text(re.compile(r"more\s*\.jsonl"))
    page.click("#rl-upload")
    expect(msg).to_contain_text("Imported 2 rows: 2 new prompts")
    s = db()
    assert [p.text for p in s.prompts()][-2:] == ["Uploaded one?", "Uploaded two?"]
    s.close()

    # Export: refused while nothing is labeled, then one pair once eve's label is in.
    page.click("#rl-export")
    expect(msg).to_contain_text("Nothing exported: no labels to export")
    s = db()
    s.add_label(
        Label(
            comparison_id=ids["flagged"],
            annotator_id=s.db.execute("select id from annotators where name = 'eve'").fetchone()[0],
            ranking=(
                (s.comparison(ids["flagged"]).response_ids[0],),
                (s.comparison(ids["flagged"]).response_ids[1],),
            ),
        )
    )
    s.close()
    page.click("#rl-export")
    expect(msg).to_contain_text("Exported 1 preference pairs (jsonl)")
    expect(page.locator('#rl-export-file [aria-label="preferences.jsonl"]')).to_have_count(1)
    link = page.locator("#rl-export-file a[data-testid=download-link]")
    href = link.get_attribute("href")
    body = page.request.get(href).text()
    # Every label is in that file: an annotator who has its URL gets nothing (issue #13.9).
    newbie = httpx.Client(base_url=url, timeout=30)
    assert (
        newbie.post("login", data={"username": "newbie", "password": newbie_secret}).status_code
        == 200
    )
    assert newbie.get(href.removeprefix(url.rstrip("/"))).status_code == 403
    assert [
        (r["prompt"], r["chosen"], r["rejected"]) for r in map(json.loads, body.splitlines())
    ] == [("Flag me", "one", "two")]

    # Everything the team collected, zipped: one JSONL file per table.
    page.locator("#rl-export-format input").click()
    page.get_by_role("option", name="everything").click()
    page.click("#rl-export")
    expect(msg).to_contain_text(
        "Exported everything: 1 labels, 0 skips, 1 flags, 0 undone labels, 2 comparisons"
    )
    expect(page.locator('#rl-export-file [aria-label="rankloop-everything.zip"]')).to_have_count(1)
    href = page.locator("#rl-export-file a[data-testid=download-link]").get_attribute("href")
    with zipfile.ZipFile(io.BytesIO(page.request.get(href).body())) as z:
        (label,) = map(json.loads, z.read("labels.jsonl").decode().splitlines())
        assert (label["comparison_id"], label["annotator"]) == (ids["flagged"], "eve")
        assert "secret_hash" not in z.read("annotators.jsonl").decode()

    # The two formats of other tools, zipped folders: every comparison, eve's label with it.
    for fmt, unit, check in (
        ("label-studio", "tasks", "tasks.json"),
        ("argilla", "records", ".argilla/settings.json"),
    ):
        page.locator("#rl-export-format input").click()
        page.get_by_role("option", name=fmt, exact=True).click()
        page.click("#rl-export")
        expect(msg).to_contain_text(f"Exported 2 {unit} ({fmt}).")
        expect(page.locator(f'#rl-export-file [aria-label="{fmt}.zip"]')).to_have_count(1)
        href = page.locator("#rl-export-file a[data-testid=download-link]").get_attribute("href")
        with zipfile.ZipFile(io.BytesIO(page.request.get(href).body())) as z:
            assert check in z.namelist()
            if fmt == "label-studio":
                tasks = json.loads(z.read("tasks.json"))
                done = [t for t in tasks if t.get("annotations")]
                assert len(tasks) == 2 and len(done) == 1
                assert done[0]["data"]["rankloop_comparison_id"] == ids["flagged"]


@pytest.fixture(scope="module")
def controls_server(tmp_path_factory):
    folder = tmp_path_factory.mktemp("controls-app")
    path = folder / "rankloop.db"
    store = Store.open(path)
    ids = {
        "pairs": [
            store.add_comparison_texts(f"Pair {i}?", [f"P{i} one.", f"P{i} two."]) for i in range(4)
        ],
        "kway": store.add_comparison_texts("Rank three", ["x1", "x2", "x3"]),
        "flag": store.add_comparison_texts("Flag this", ["f1", "f2"]),
    }
    store.add_annotator("kim", secret="kim-secret")
    store.close()
    with serving(path, folder) as url:
        yield url, path, ids


def test_every_other_control_and_shortcut_of_the_label_tab(browser, controls_server):
    """The keys and buttons the first test does not use (a, b, x, m, c; the rank, tie, clear,
    skip, flag, idle-undo and log-out buttons), each followed by a look at the database."""
    from playwright.sync_api import expect

    url, path, ids = controls_server
    page = login(browser, url, "kim")
    message = page.locator("#rl-message")
    prompt = page.locator("#rl-prompt")
    ranking_box = page.locator("#rl-ranking textarea, #rl-ranking input")

    def rows(sql, params=()):
        s = Store.open(path)
        out = [dict(r) for r in s.db.query(sql, params)]
        s.close()
        return out

    def last_label():
        (r,) = rows("select * from labels order by id desc limit 1")
        return (
            r["comparison_id"],
            r["choice"],
            r["strength"],
            json.loads(r["ranking"]),
            json.loads(r["display_order"]),
        )

    def keys(*names):
        page.locator("body").click(position={"x": 5, "y": 5})  # out of any text box
        for k in names:
            page.keyboard.press(k)

    p = ids["pairs"]
    expect(prompt).to_contain_text("Pair 0?")
    keys("a", "m", "Enter")
    expect(message).to_contain_text("Saved label #1.")
    cid, choice, strength, ranking, o = last_label()
    assert (cid, choice, strength, ranking) == (p[0], "A", "much", [[o[0]], [o[1]]])

    expect(prompt).to_contain_text("Pair 1?")
    keys("b", "Enter")
    expect(message).to_contain_text("Saved label #2.")
    cid, choice, strength, ranking, o = last_label()
    assert (cid, choice, strength, ranking) == (p[1], "B", None, [[o[1]], [o[0]]])

    expect(prompt).to_contain_text("Pair 2?")
    keys("x", "Enter")
    expect(message).to_contain_text("Saved label #3.")
    cid, choice, strength, ranking, o = last_label()
    assert (cid, choice, ranking) == (p[2], "both_bad", [o])

    # Skip with the mouse, for a reason picked in the dropdown.
    expect(prompt).to_contain_text("Pair 3?")
    page.locator("#rl-skip-reason input").click()
    page.get_by_role("option", name="too long to judge now").click()
    page.click("#rl-skip")
    expect(message).to_contain_text("Skipped.")
    assert [(r["comparison_id"], r["reason"]) for r in rows("select * from skips")] == [
        (p[3], "too long to judge now")
    ]

    # The 3-way ranking with the mouse (rank, tie, clear buttons) and the c key.
    expect(prompt).to_contain_text("Rank three")
    page.click("#rl-rank-2")
    page.click("#rl-tie")
    page.click("#rl-rank-0")
    expect(ranking_box).to_have_value("C = A")
    page.click("#rl-clear")
    expect(ranking_box).to_have_value("")
    keys("3", "1")
    expect(ranking_box).to_have_value("C > A")
    keys("c")
    expect(ranking_box).to_have_value("")
    for i in (1, 0, 2):
        page.click(f"#rl-rank-{i}")
    expect(ranking_box).to_have_value("B > A > C")
    page.click("#rl-submit")
    expect(message).to_contain_text("Saved label #4.")
    cid, _, _, ranking, o = last_label()
    assert (cid, ranking) == (ids["kway"], [[o[1]], [o[0]], [o[2]]])

    # Flag with the mouse, as unsafe, with a note.
    expect(prompt).to_contain_text("Flag this")
    page.locator("#rl-flag-kind input").click()
    page.get_by_role("option", name="unsafe").click()
    type_into(page.locator("#rl-flag-note input, #rl-flag-note textarea"), "asks for harm")
    page.click("#rl-flag")
    expect(message).to_contain_text("Flagged as unsafe.")
    assert [(r["comparison_id"], r["kind"], r["note"]) for r in rows("select * from flags")] == [
        (ids["flag"], "unsafe", "asks for harm")
    ]

    # Nothing left: the idle page's undo button brings the last label back, prefilled.
    expect(page.locator("#rl-progress")).to_contain_text("left in the queue: 0")
    page.click("#rl-undo-idle")
    expect(message).to_contain_text("Label #4 taken back")
    expect(prompt).to_contain_text("Rank three")
    expect(ranking_box).to_have_value("B > A > C")
    assert [r["id"] for r in rows("select id from labels order by id")] == [1, 2, 3]
    assert [r["label_id"] for r in rows("select label_id from label_revisions")] == [4]
    page.click("#rl-submit")
    expect(message).to_contain_text("Saved label #5. Nothing left to label")
    assert [r["id"] for r in rows("select id from labels order by id")] == [1, 2, 3, 5]

    # Log out: back to the login form; the page's data is gone with the session.
    page.get_by_text("Log out", exact=True).click()
    expect(page.locator("input[type=password]")).to_be_visible()
