"""The rounds in a real browser: two annotators label cross-round comparisons (blind, like any
other), the admin's Rounds view shows the new win-rates (and flags a policy that never lost),
and the static report opens offline.

The screenshots in docs/rounds.md come from here: `RANKLOOP_SCREENSHOTS=docs/img .venv/bin/python
-m pytest tests/test_rounds_browser.py` writes them there (otherwise to a temporary folder).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from report_fixture import HOSTILE, two_round_store
from test_labeling_browser import browser, login, serving  # noqa: F401 (browser: a fixture)

from rankloop.app import report
from rankloop.data.records import Prompt, Response
from rankloop.data.store import Store

pytestmark = pytest.mark.browser

# Two new evaluation prompts: (round 1's answer, round 2's answer).
ANSWERS = {
    "Name three primary colours.": (
        "Colours are nice. Colours are nice. Colours are nice. Colours are",
        "Red, yellow and blue in painting; red, green and blue for light.",
    ),
    "What is the boiling point of water at sea level?": (
        "Water is a liquid that boils when it is heated, and the point at which",
        "100 °C (212 °F) at standard sea-level pressure.",
    ),
}
NEWER = {new for _, new in ANSWERS.values()}


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    folder = os.environ.get("RANKLOOP_SCREENSHOTS")
    return Path(folder) if folder else tmp_path_factory.mktemp("screenshots")


@pytest.fixture(scope="module")
def project_db(tmp_path_factory):
    """The two-round store, plus two new evaluation prompts with an unlabeled round 2 vs
    round 1 comparison each, an admin and two more annotators."""
    folder = tmp_path_factory.mktemp("rounds-app")
    path = folder / "rankloop.db"
    store = Store.open(path)
    two_round_store(store)
    for question, (old, new) in ANSWERS.items():
        (pid,) = store.add_prompts([Prompt.from_text(question)])
        ids = store.add_responses(
            [
                Response(pid, old, round=1, policy="policy-1"),
                Response(pid, new, round=2, policy="policy-2"),
            ]
        )
        store.add_comparison(pid, ids, round=2)
    for name, role in (("cy", "annotator"), ("dee", "annotator"), ("lead", "admin")):
        store.add_annotator(name, role=role, secret=f"{name}-secret")
    store.close()
    return path, folder


def test_two_annotators_label_and_the_rounds_view_shows_it(browser, project_db, shots):  # noqa: F811
    from playwright.sync_api import expect

    path, folder = project_db
    with serving(path, folder) as url:
        # both log in first: each is handed one of the two new comparisons
        pages = {name: login(browser, url, name) for name in ("cy", "dee")}
        for name, page in pages.items():
            expect(page.locator("#rl-response-1")).to_be_visible(timeout=30_000)
            # blind: nothing on the page says which round wrote which response
            assert "round" not in page.locator("body").inner_text().lower()
            first = page.locator("#rl-response-0").inner_text()
            if name == "cy":
                page.screenshot(path=shots / "rounds-label.png")
            page.get_by_label("A better" if any(t in first for t in NEWER) else "B better").check()
            page.click("#rl-submit")
            expect(page.locator("#rl-message")).to_contain_text("Saved", timeout=30_000)
            page.context.close()

        page = login(browser, url, "lead")
        page.get_by_role("tab", name="Admin").click()
        page.locator("#rl-rounds").get_by_text("Rounds: did each round help?").click()
        view = page.locator("#rl-rounds-view .rl-report")
        expect(view).to_contain_text("round 2 beats round 1 88% of the time", timeout=60_000)
        text = view.inner_text()
        assert "n = 8 on 8 prompts" in text  # ann's 6 matches, cy's and dee's 2 new ones
        assert re.search(r"round 2 vs round 1\s+all\s+88%", text)
        assert view.locator("svg.rl-plot").count() == 5
        # round 1's reward model is an ensemble: its members and mean spread in its row
        assert re.search(r"\n1\t6 / 0\t[^\n]*\t4 members, spread 0\.125\t", text)
        # sim-1 always chose round 2: that row (per source) alone is flagged, its interval exact
        assert re.findall(r"\n([^\n]*)\t⚠ never lost", text) == [
            "round 2 vs round 0 (base)\tsimulated\t100%\t54%–100%\t6\t6\t6 / 0 / 0"
        ]
        view.screenshot(path=shots / "rounds-view.png")

        # counting simulated labels only: round 2 vs round 0 by sim-1, who always chose round 2
        page.locator("#rl-rounds-source input").click()
        page.get_by_role("option", name="simulated labels").click()
        expect(view).to_contain_text("labels from simulated", timeout=30_000)
        rates = view.locator("table.rl-winrates").inner_text()
        assert "round 2 vs round 1" not in rates
        assert re.search(
            r"round 2 vs round 0 \(base\)\s+all\s+100%\s+54%–100%.*⚠ never lost", rates
        )
        board = view.locator("table.rl-leaderboard").inner_text()
        assert re.search(r"round 2\s+≥ 1028\s+1028–∞\s+6\s+100%\s+⚠ unbounded: never lost", board)
        expect(view.locator(".rl-flagged")).to_be_visible()
        view.screenshot(path=shots / "rounds-view-flagged.png")
        page.context.close()


def test_the_report_opens_offline_with_its_plots_and_no_script_runs(
    browser,  # noqa: F811 - the fixture imported above
    project_db,
    shots,
    tmp_path,
):
    path, _ = project_db
    store = Store.open(path)
    out = report.write_report(
        report.collect(store, n_boot=300, title="rankloop report: demo"), tmp_path / "report.html"
    )
    store.close()
    context = browser.new_context(offline=True, viewport={"width": 1200, "height": 900})
    page = context.new_page()
    fetched = []
    page.on("request", lambda r: fetched.append(r.url))
    page.goto(out.as_uri())
    assert page.title() == "rankloop report: demo"
    assert fetched == [out.as_uri()]  # the page itself, nothing else
    assert page.evaluate("window.__pwned === undefined")
    # the hostile prompt and answer show as text
    assert page.get_by_text("window.__pwned=1", exact=False).count() >= 1
    assert page.locator("img").count() == 0 and page.locator("script").count() == 0
    plots = page.locator("svg.rl-plot")
    assert plots.count() == 5
    for k in range(5):
        box = plots.nth(k).bounding_box()
        assert box["width"] > 300 and box["height"] > 50
    board = page.locator("table.rl-leaderboard").inner_text()
    assert re.search(r"1\s+round 2\s+\d{4}", board) and "round 0 (base)\t1000" in board
    assert "Win-rate of round R over round R'" in page.locator("svg.rl-plot").first.inner_html()
    assert HOSTILE not in page.content()  # never as markup
    page.screenshot(path=shots / "report.png", full_page=True)
    context.close()
