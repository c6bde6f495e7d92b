"""The whole page in a real browser: Debian's chromium driven by Playwright.

One server and one browser for the module. Each test logs in its own annotator, and takes the
comparisons meant for other tests out of that annotator's queue (as skips written straight into
the database), so the tests do not depend on their order.
"""

from __future__ import annotations

import json
import os
import shutil
import socket

import pytest

from rankloop.app.config import LabelingConfig
from rankloop.app.labeling import build_app, launch
from rankloop.data.store import Store

pytestmark = pytest.mark.browser

HOSTILE = ('Look: <script>window.__pwned=1</script> and <img src=x onerror="window.__pwned=2"> '
           'and [a link](javascript:window.__pwned=3)\n\n```python\nprint("<b>code</b>")\n```\n')
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]


def chromium_or_skip() -> str:
    path = shutil.which("chromium")
    if path is None:
        reason = ("Debian's chromium is not installed (apt-get install -y chromium; `make test` "
                  "does it when run as root)")
        if os.environ.get("RANKLOOP_REQUIRE_BROWSER") == "1":
            pytest.fail(reason + " and RANKLOOP_REQUIRE_BROWSER=1", pytrace=False)
        pytest.skip(reason)
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    folder = tmp_path_factory.mktemp("labeling-app")
    path = folder / "rankloop.db"
    store = Store.open(path)
    ids = {"hostile": store.add_comparison_texts("Render this safely", ["A plain answer.",
                                                                        HOSTILE])}
    ids["pairs"] = [store.add_comparison_texts(f"Question {i}?", [f"Answer {i} one.",
                                                                  f"Answer {i} two."])
                    for i in range(4)]
    ids["kway"] = store.add_comparison_texts("Rank these three", ["first", "second", "third"])
    for name, role in (("ann", "annotator"), ("eve", "annotator"), ("root", "admin")):
        store.add_annotator(name, role=role, secret=f"{name}-secret")
    store.close()
    demo = build_app(path, LabelingConfig(), guidelines_path=folder / "guidelines.md")
    url = launch(demo, port=free_port(), block=False)
    yield url, path, ids
    demo.close()
    demo.rankloop_ctx.stores.close()


@pytest.fixture(scope="module")
def browser():
    executable = chromium_or_skip()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        yield b
        b.close()


def skip_for(path, name: str, comparison_ids) -> None:
    store = Store.open(path)
    aid = store.db.execute("select id from annotators where name = ?", [name]).fetchone()[0]
    for cid in comparison_ids:
        store.db["skips"].insert({"comparison_id": cid, "annotator_id": aid,
                                  "reason": "not this test's", "created_at": "2000-01-01"})
    store.db.conn.commit()
    store.close()


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
    page.locator("#rl-rationale textarea").fill("A is complete")
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
    # SQLite gives the new row the freed id 3 (no AUTOINCREMENT); the revision keeps the old one.
    expect(message).to_contain_text("Saved label #3.")
    expect(page.locator("#rl-prompt")).to_contain_text("Rank these three")

    # 5. The 3-way comparison, ranked with the keys: C, tie, A, then B.
    expect(page.locator("#rl-prompt")).to_contain_text("Rank these three")
    page.locator("body").click(position={"x": 5, "y": 5})
    for key in ("3", "t", "1", "2"):
        page.keyboard.press(key)
    expect(page.locator("#rl-ranking textarea, #rl-ranking input")).to_have_value("C = A > B")
    page.keyboard.press("Enter")
    expect(message).to_contain_text("Saved label #4. Nothing left to label: thank you!")
    expect(page.locator("#rl-progress")).to_contain_text("in total: 4 · left in the queue: 0")

    store = Store.open(path)
    rows = [dict(r) for r in store.db.query(
        "select id, comparison_id, mode, choice, strength, margin, rationale, ranking, "
        "display_order, source from labels order by id")]
    for r in rows:
        r["display_order"] = json.loads(r["display_order"])
        r["ranking"] = json.loads(r["ranking"])
    o = [r["display_order"] for r in rows]
    p = ids["pairs"]
    assert [{k: v for k, v in r.items() if k != "display_order"} for r in rows] == [
        {"id": 1, "comparison_id": p[0], "mode": "pairwise", "choice": "A", "strength": "much",
         "margin": 1.0, "rationale": "A is complete", "ranking": [[o[0][0]], [o[0][1]]],
         "source": "human"},
        {"id": 2, "comparison_id": p[1], "mode": "pairwise", "choice": "B",
         "strength": "slightly", "margin": 0.33, "rationale": None,
         "ranking": [[o[1][1]], [o[1][0]]], "source": "human"},
        {"id": 3, "comparison_id": p[3], "mode": "pairwise", "choice": "both_bad",
         "strength": None, "margin": None, "rationale": None, "ranking": [o[2]],
         "source": "human"},
        {"id": 4, "comparison_id": ids["kway"], "mode": "ranking", "choice": None,
         "strength": None, "margin": None, "rationale": None,
         "ranking": [[o[3][2], o[3][0]], [o[3][1]]], "source": "human"},
    ]
    assert [(r["comparison_id"], r["reason"]) for r in store.db.query(
        "select comparison_id, reason from skips s join annotators a on a.id = s.annotator_id "
        "where a.name = 'ann' and reason != 'not this test''s'")] == [
        (p[2], "I cannot judge this topic")]
    (rev,) = list(store.db["label_revisions"].rows)
    assert (rev["label_id"], rev["comparison_id"], json.loads(rev["label"])["choice"]) == (
        3, p[3], "tie")
    assert json.loads(rev["label"])["request_id"] != store.db["labels"].get(3)["request_id"]
    store.close()


def test_markup_in_a_response_shows_as_text_and_runs_nothing(browser, server):
    from playwright.sync_api import expect

    url, path, ids = server
    skip_for(path, "eve", ids["pairs"] + [ids["kway"]])
    page = login(browser, url, "eve")
    responses = page.locator(".rl-response")
    expect(responses).to_have_count(2)
    hostile = responses.filter(has_text="Look:")
    expect(hostile).to_contain_text('<script>window.__pwned=1</script>')
    expect(hostile).to_contain_text('<img src=x onerror="window.__pwned=2">')
    expect(hostile.locator("pre code")).to_have_text('print("<b>code</b>")\n')
    assert hostile.locator("script, img, a[href^='javascript']").count() == 0
    page.wait_for_timeout(300)  # an onerror would have fired by now
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
        (ids["hostile"], "broken")]
    store.close()


def test_admin_sees_the_dashboard(browser, server):
    from playwright.sync_api import expect

    url, _, _ = server
    page = login(browser, url, "root")
    page.get_by_role("tab", name="Admin").click()
    expect(page.locator("#rl-summary")).to_contain_text("Krippendorff's alpha", timeout=30_000)
    expect(page.locator("#rl-stats")).to_contain_text("labels/hour")
    expect(page.locator("#rl-stats")).to_contain_text("root")
