"""Did each round help? The rounds' numbers as one static HTML page (`rankloop report`), also
shown in the admin tab's Rounds view.

`collect(store)` gathers everything into a typed `RoundsReport`: per round its labels by source,
the annotators' agreement, the reward model's held-out accuracy and calibration, PPO's per-step
curves; the win-rates of each round over the previous one and over the base, and the leaderboard
(data/leaderboard.py). `render_html` writes it as one page with inline SVG plots: no script, no
external file, so it opens offline and can be mailed around. Every text from the store (prompts,
responses, policy names) is HTML-escaped: model output is untrusted.
"""

from __future__ import annotations

import dataclasses
import html
import math
import os
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from rankloop.data import agreement, curves, leaderboard
from rankloop.data.curves import PPO_CURVES, Curve
from rankloop.data.leaderboard import Leaderboard, WinRate, policy_name
from rankloop.data.records import Match, Prompt
from rankloop.data.store import Store

# ---- what the page shows ---------------------------------------------------------------------


@dataclass(frozen=True)
class RoundRow:
    """One round: what it was trained on, how well, and (win-rates) what it produced.

    Round R trains its reward model on the labels of rounds <= R and, by PPO from round R's
    policy, the policy that samples round R+1's candidates."""

    number: int
    labels: dict[str, int]  # labels on the round's comparisons, by source
    alpha: dict[str, float | None]  # Krippendorff's alpha among 'human' / 'simulated' labels
    reward_accuracy: float | None  # held-out pairwise accuracy of round R's reward model
    reward_baseline: float | None  # the frozen-feature probe's accuracy on the same split
    reward_ece: float | None  # expected calibration error of σ(r_a − r_b) on held-out pairs
    reward_eval_pairs: int | None
    ppo_steps: int | None
    ppo_kept_step: int | None  # the step whose policy was saved (the last unless it fell)
    ppo_score_first: float | None  # mean reward-model score of the first PPO batch
    ppo_score_last: float | None  # ... of the last log_every steps
    ppo_kl: float | None  # KL of the saved policy to its reference (nats per response)
    ppo_length: float | None  # mean response length (tokens) at the end of PPO
    seconds: float | None  # the round's recorded stages, in all
    optimizer: str | None = None  # the optimiser of its policy stage ('ppo', 'rloo', 'bon', 'odpo')
    reward_members: int | None = None  # an ensemble's members (None: a single model)
    reward_spread: float | None = None  # their mean std of the score gap on held-out pairs
    optimised_probe: bool = False  # the policy stage optimised the reward model's probe
    optimised_mix: bool = False  # ... the mean of the model's and its probe's scores
    over_kl_budget: bool = False  # the policy stage stopped at [ppo] kl_budget


@dataclass(frozen=True)
class Example:
    """One evaluation prompt answered by two rounds' policies, with the verdicts on it."""

    prompt: Prompt
    newer: int
    older: int
    newer_text: str
    older_text: str
    wins: int  # labels preferring the newer round's response
    ties: int
    losses: int


@dataclass(frozen=True)
class RoundsReport:
    """Everything the report and the Rounds view show."""

    title: str
    generated_at: str
    current_round: int
    sources: tuple[str, ...] | None  # the label sources counted (None: all)
    rounds: list[RoundRow]
    win_rates: list[WinRate]
    leaderboard: Leaderboard
    match_sources: dict[str, int]  # cross-round matches by label source
    curves: list[Curve]
    examples: list[Example] = field(default_factory=list)
    matches: list[Match] = field(default_factory=list, repr=False)  # what the statistics count


def _num(metrics: dict, *keys: str) -> float | None:
    """The first of `keys` that `metrics` holds as a finite number."""
    for k in keys:
        v = metrics.get(k)
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
            return float(v)
    return None


def _int(x: float | None) -> int | None:
    return None if x is None else int(x)


def collect(
    store: Store,
    *,
    sources: Sequence[str] | None = None,
    n_boot: int = leaderboard.N_BOOT,
    seed: int = 0,
    examples: int = 3,
    title: str = "rankloop rounds",
) -> RoundsReport:
    """Gather the report from the store (labels of `sources` only in the win-rates, the
    leaderboard and the examples, when given): `snapshot`, then `with_statistics`."""
    return with_statistics(
        snapshot(store, sources=sources, examples=examples, title=title), n_boot=n_boot, seed=seed
    )


def snapshot(
    store: Store,
    *,
    sources: Sequence[str] | None = None,
    examples: int = 3,
    title: str = "rankloop rounds",
) -> RoundsReport:
    """Everything the report reads from the store, without the bootstrap statistics (the
    Rounds view reads this while it holds the store, and computes the rest after)."""
    ms = store.cross_round_outcomes(sources)
    labels: dict[int, dict[str, int]] = defaultdict(dict, store.label_counts_by_round())
    round_of = store.comparison_rounds()
    by_round = defaultdict(list)
    for lab in store.labels():
        by_round[round_of[lab.comparison_id]].append(lab)
    rounds = {r.number: r for r in store.rounds()}
    stages = defaultdict(list)
    for st in store.stages():
        stages[st.round].append(st)
    rows = []
    for n in sorted(set(rounds) | set(labels) | set(stages)):
        metrics = dict(rounds[n].metrics) if n in rounds else {}
        for st in stages[n]:
            metrics.update(st.metrics)
        rows.append(
            RoundRow(
                number=n,
                labels=dict(sorted(labels[n].items())),
                alpha={
                    s: agreement.alpha_of_labels([lab for lab in by_round[n] if lab.source == s])
                    for s in ("human", "simulated")
                },
                reward_accuracy=_num(metrics, "reward/accuracy"),
                reward_baseline=_num(metrics, "reward/probe_accuracy"),
                reward_ece=_num(metrics, "reward/ece"),
                reward_eval_pairs=_int(_num(metrics, "reward/eval_pairs")),
                ppo_steps=_int(_num(metrics, "ppo/steps")),
                ppo_kept_step=_int(_num(metrics, "ppo/kept_step")),
                over_kl_budget=_num(metrics, "ppo/over_kl_budget") == 1.0,
                ppo_score_first=_num(metrics, "ppo/score_first"),
                ppo_score_last=_num(metrics, "ppo/score_last"),
                ppo_kl=_num(metrics, "ppo/kl_final", "ppo/kl_last"),
                ppo_length=_num(metrics, "ppo/response_length_last"),
                seconds=sum(st.seconds for st in stages[n]) if stages[n] else None,
                optimizer=rounds[n].optimizer if n in rounds else None,
                reward_members=_int(_num(metrics, "reward/members")),
                reward_spread=_num(metrics, "reward/spread"),
                optimised_probe=bool(_num(metrics, "ppo/optimised_probe")),
                optimised_mix=bool(_num(metrics, "ppo/optimised_mix")),
            )
        )
    match_sources: dict[str, int] = defaultdict(int)
    for m in ms:
        match_sources[m.source] += 1
    return RoundsReport(
        title=title,
        generated_at=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        current_round=store.current_round(),
        sources=tuple(sources) if sources else None,
        rounds=rows,
        win_rates=[],
        leaderboard=Leaderboard([], anchor=0, matches=0, prompts=0),
        match_sources=dict(sorted(match_sources.items())),
        curves=curves.curves(store, "ppo", list(PPO_CURVES)),
        examples=pick_examples(store, ms, examples),
        matches=ms,
    )


def with_statistics(
    report: RoundsReport, *, n_boot: int = leaderboard.N_BOOT, seed: int = 0
) -> RoundsReport:
    """The report with its win-rates and leaderboard computed from its matches."""
    return dataclasses.replace(
        report,
        win_rates=leaderboard.round_win_rates(report.matches, n_boot=n_boot, seed=seed),
        leaderboard=leaderboard.leaderboard(report.matches, n_boot=n_boot, seed=seed),
    )


def pick_examples(store: Store, ms: Sequence[Match], n: int) -> list[Example]:
    """Up to `n` prompts where the newest round met the round before it (newest comparisons
    first), with the labels' verdicts from the newer round's side."""
    if not ms or n <= 0:
        return []
    newest = max(m.model_a for m in ms)
    older = max(m.model_b for m in ms if m.model_a == newest)
    verdicts: dict[tuple[int, int], list[float]] = defaultdict(list)
    for m in ms:
        if (m.model_a, m.model_b) == (newest, older):
            verdicts[(m.response_a, m.response_b)].append(m.outcome)
    chosen, seen = [], set()
    for m in sorted(ms, key=lambda m: (-m.comparison_id, m.response_a, m.response_b)):
        key = (m.response_a, m.response_b)
        if key not in verdicts or m.prompt_id in seen:
            continue
        seen.add(m.prompt_id)
        a, b = store.responses(ids=list(key))
        out = verdicts[key]
        chosen.append(
            Example(
                store.prompt(m.prompt_id),
                newest,
                older,
                a.text,
                b.text,
                wins=out.count(1.0),
                ties=out.count(0.5),
                losses=out.count(0.0),
            )
        )
        if len(chosen) == n:
            break
    return chosen


# ---- inline SVG plots ------------------------------------------------------------------------

# Okabe & Ito's colour-blind-safe palette.
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#000000", "#F0E442")
_E = html.escape


def nice_ticks(lo: float, hi: float, n: int = 5, *, integer: bool = False) -> list[float]:
    """About n round-numbered ticks covering [lo, hi] (1, 2, 2.5 or 5 times a power of ten;
    whole numbers only with `integer`)."""
    if not hi > lo:  # one value: a band around it
        pad = 1 if integer else abs(lo) / 10 or 0.5
        lo, hi = lo - pad, hi + pad
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    if integer:
        step = max(1, round(step))
    first, last = math.floor(lo / step), math.ceil(hi / step)
    return [round(k * step, 10) for k in range(first, last + 1)]


def _fmt(v: float) -> str:
    return f"{v:.4g}"


def _scale(ticks: Sequence[float], start: float, end: float):
    """The map from data to pixels that puts the first tick at `start`, the last at `end`."""
    return lambda v: start + (v - ticks[0]) / (ticks[-1] - ticks[0]) * (end - start)


def _frame(title: str, width: int, height: int, body: list[str]) -> str:
    return (
        f'<svg class="rl-plot" xmlns="http://www.w3.org/2000/svg" role="img" '
        f'width="{width}" height="{height}" viewBox="0 0 {width} {height}">'
        f"<title>{_E(title)}</title>"
        f'<text x="{width / 2}" y="16" text-anchor="middle" class="rl-plot-title">'
        f"{_E(title)}</text>{''.join(body)}</svg>"
    )


def line_chart(
    title: str,
    series: Sequence[tuple[str, Sequence[float], Sequence[float]]],
    *,
    x_label: str = "",
    width: int = 380,
    height: int = 240,
) -> str:
    """Lines (name, xs, ys) on shared axes, one colour each, with a legend."""
    series = [(name, xs, ys) for name, xs, ys in series if len(xs)]
    if not series:
        return _frame(title, width, 60, ['<text x="10" y="42">no data</text>'])
    left, right, top, bottom = 52, 12, 26 + 14 * math.ceil(len(series) / 3), 36
    xs_all = [x for _, xs, _ in series for x in xs]
    ys_all = [y for _, _, ys in series for y in ys]
    xt = nice_ticks(min(xs_all), max(xs_all), integer=all(float(x).is_integer() for x in xs_all))
    yt = nice_ticks(min(ys_all), max(ys_all))
    px, py = _scale(xt, left, width - right), _scale(yt, height - bottom, top)
    y0 = height - bottom
    body = [
        f'<line x1="{left}" y1="{y0}" x2="{width - right}" y2="{y0}" class="rl-axis"/>',
        f'<line x1="{left}" y1="{top}" x2="{left}" y2="{y0}" class="rl-axis"/>',
    ]
    for t in xt:
        body.append(
            f'<text x="{px(t):.1f}" y="{height - bottom + 14}" text-anchor="middle">'
            f"{_fmt(t)}</text>"
        )
    for t in yt:
        body.append(
            f'<line x1="{left}" y1="{py(t):.1f}" x2="{width - right}" y2="{py(t):.1f}" '
            f'class="rl-grid"/><text x="{left - 4}" y="{py(t) + 4:.1f}" '
            f'text-anchor="end">{_fmt(t)}</text>'
        )
    if x_label:
        body.append(
            f'<text x="{(left + width - right) / 2}" y="{height - 4}" '
            f'text-anchor="middle">{_E(x_label)}</text>'
        )
    for k, (name, xs, ys) in enumerate(series):
        color = PALETTE[k % len(PALETTE)]
        pts = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in zip(xs, ys))
        body.append(
            f'<polyline points="{pts}" fill="none" stroke="{color}" stroke-width="1.8">'
            f"<title>{_E(name)}</title></polyline>"
        )
        if len(xs) <= 40:
            body += [
                f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="2.2" fill="{color}"/>'
                for x, y in zip(xs, ys)
            ]
        lx, ly = left + (k % 3) * ((width - left) / 3), 30 + 14 * (k // 3)
        body.append(
            f'<rect x="{lx:.1f}" y="{ly - 8}" width="10" height="10" fill="{color}"/>'
            f'<text x="{lx + 14:.1f}" y="{ly + 1}">{_E(name)}</text>'
        )
    return _frame(title, width, height, body)


def interval_chart(
    title: str,
    rows: Sequence[tuple[str, float, float, float]],
    *,
    reference: float | None = None,
    x_label: str = "",
    width: int = 560,
    row_height: int = 24,
) -> str:
    """One row per (label, estimate, low, high): the interval as a bar, the estimate as a dot,
    an optional dashed reference line (50% for win-rates, 1000 for Elo)."""
    if not rows:
        return _frame(title, width, 60, ['<text x="10" y="42">no data</text>'])
    # room for the longest label at ~6.5 px per character of the 11 px font
    left, right, top, bottom = 12 + int(6.5 * max(len(r[0]) for r in rows)), 16, 26, 36
    width = max(width, left + 240)
    height = top + bottom + row_height * len(rows)
    vals = [v for _, est, lo, hi in rows for v in (est, lo, hi) if math.isfinite(v)]
    if reference is not None:
        vals.append(reference)
    span = max(vals) - min(vals) or 1.0
    if any(hi == math.inf for *_, hi in rows):  # room to show where an open interval runs
        vals.append(max(vals) + span / 4)
    if any(lo == -math.inf for *_, lo, _ in rows):
        vals.append(min(vals) - span / 4)
    xt = nice_ticks(min(vals), max(vals))
    px = _scale(xt, left, width - right)
    y0 = height - bottom
    body = [f'<line x1="{left}" y1="{y0}" x2="{width - right}" y2="{y0}" class="rl-axis"/>']
    for t in xt:
        body.append(
            f'<line x1="{px(t):.1f}" y1="{top}" x2="{px(t):.1f}" y2="{height - bottom}" '
            f'class="rl-grid"/><text x="{px(t):.1f}" y="{height - bottom + 14}" '
            f'text-anchor="middle">{_fmt(t)}</text>'
        )
    if reference is not None:
        body.append(
            f'<line x1="{px(reference):.1f}" y1="{top}" x2="{px(reference):.1f}" '
            f'y2="{height - bottom}" class="rl-ref"/>'
        )
    if x_label:
        body.append(
            f'<text x="{(left + width - right) / 2}" y="{height - 4}" '
            f'text-anchor="middle">{_E(x_label)}</text>'
        )
    for k, (label, est, lo, hi) in enumerate(rows):
        y = top + row_height * k + row_height / 2
        body.append(f'<text x="{left - 8}" y="{y + 4}" text-anchor="end">{_E(label)}</text>')
        if not (math.isnan(lo) or math.isnan(hi)):  # an unbounded end runs to the axis's end
            x1, x2 = (px(min(max(v, xt[0]), xt[-1])) for v in (lo, hi))
            body.append(
                f'<line x1="{x1:.1f}" y1="{y}" x2="{x2:.1f}" y2="{y}" '
                f'stroke="{PALETTE[0]}" stroke-width="4" stroke-linecap="round"/>'
            )
        if math.isfinite(est):  # an unbounded Elo has no estimate, only its bound
            body.append(
                f'<circle cx="{px(est):.1f}" cy="{y}" r="4.5" fill="{PALETTE[5]}">'
                f"<title>{_E(label)}: {_fmt(est)} [{_fmt(lo)}, {_fmt(hi)}]</title>"
                f"</circle>"
            )
    return _frame(title, width, height, body)


# ---- the page --------------------------------------------------------------------------------

CSS = """
.rl-report { font-family: system-ui, sans-serif; color: #222; max-width: 1100px; }
.rl-report h1 { font-size: 1.5em; } .rl-report h2 { font-size: 1.2em; margin-top: 1.6em; }
.rl-report table { border-collapse: collapse; margin: .5em 0; font-size: .9em; }
.rl-report th, .rl-report td { border: 1px solid #ccc; padding: .25em .5em; text-align: right; }
.rl-report th:first-child, .rl-report td:first-child { text-align: left; }
.rl-report .rl-note { color: #555; font-size: .9em; max-width: 80ch; }
.rl-report .rl-headline { font-size: 1.1em; background: #f3f6fa; padding: .6em .8em; }
.rl-report .rl-plots { display: flex; flex-wrap: wrap; gap: 1em; }
.rl-report .rl-plot text { font-size: 11px; fill: #333; }
.rl-report .rl-plot .rl-plot-title { font-size: 13px; font-weight: 600; }
.rl-report .rl-axis { stroke: #333; } .rl-report .rl-grid { stroke: #e4e4e4; }
.rl-report .rl-ref { stroke: #888; stroke-dasharray: 4 3; }
.rl-report .rl-example { display: grid; grid-template-columns: 1fr 1fr; gap: .8em; }
.rl-report pre { white-space: pre-wrap; background: #f7f7f7; padding: .5em; margin: .2em 0;
                 font-size: .85em; max-height: 18em; overflow: auto; }
"""


def _pct(x: float | None) -> str:
    return "–" if x is None or not math.isfinite(x) else f"{100 * x:.0f}%"


def _f(x: float | None, digits: int = 3) -> str:
    return "–" if x is None or not math.isfinite(x) else f"{x:.{digits}f}"


def _steps(r: RoundRow) -> str:
    """PPO's steps, and the step it kept when that was an earlier one (and why, when the KL
    budget stopped it)."""
    if r.ppo_steps is None:
        return "–"
    if r.ppo_kept_step is not None and r.ppo_kept_step != r.ppo_steps:
        why = "KL budget, " if r.over_kl_budget else ""
        return f"{r.ppo_steps} ({why}kept {r.ppo_kept_step})"
    return str(r.ppo_steps)


def _ensemble(r: RoundRow) -> str:
    """An ensemble reward model's members and mean spread; '–' for a single model."""
    if r.reward_members is None:
        return "–"
    return f"{r.reward_members} members, spread {_f(r.reward_spread)}"


def _table(head: Sequence[str], rows: Sequence[Sequence[str]], cls: str) -> str:
    th = "".join(f"<th>{_E(h)}</th>" for h in head)
    trs = "".join("<tr>" + "".join(f"<td>{_E(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f'<table class="{cls}"><thead><tr>{th}</tr></thead><tbody>{trs}</tbody></table>'


def _flag(flags: Sequence[str]) -> str:
    return f"⚠ {leaderboard.flag_notes(flags)}" if flags else ""


def _vs(w: WinRate) -> str:
    return f"{policy_name(w.model)} vs {policy_name(w.opponent)}"


def headline(report: RoundsReport) -> str:
    """One sentence on the newest round's win-rates (all label sources)."""
    rates = [w for w in report.win_rates if w.source == "all"]
    if not rates:
        return (
            "No cross-round comparison has a label yet. When round R+1's candidates are "
            "sampled, each evaluation prompt also gets a new response against a round-R "
            "and a round-0 response; label those (or simulate labels) to see win-rates."
        )
    newest = max(w.model for w in rates)
    parts = [
        f"{policy_name(w.model)} beats {policy_name(w.opponent)} {_pct(w.rate)} of the "
        f"time (95% interval {_pct(w.low)}–{_pct(w.high)}, n = {w.n} on {w.prompts} "
        f"prompts{'; ' + _flag(w.flags) if w.flags else ''})"
        for w in rates
        if w.model == newest
    ]
    return "; ".join(parts) + "."


def render_body(report: RoundsReport) -> str:
    """The report's sections (no <html> around them): the Rounds view shows exactly these."""
    out = [
        f'<div class="rl-report"><style>{CSS}</style>',
        f'<p class="rl-headline">{_E(headline(report))}</p>',
    ]
    src = (
        "all label sources"
        if report.sources is None
        else "labels from " + ", ".join(report.sources)
    )
    counts = ", ".join(f"{n} {s}" for s, n in report.match_sources.items()) or "none"
    out.append(
        f'<p class="rl-note">Current round: {report.current_round}. Win-rates and '
        f"leaderboard count {_E(src)} on the cross-round comparisons of the evaluation "
        f"prompts (held out from PPO): {_E(counts)} matches. Ties and 'both bad' count "
        f"half; intervals are 95% bootstrap intervals that resample prompts, widened to "
        f"contain the exact (Clopper–Pearson) interval.</p>"
    )

    # win-rates
    out.append("<h2>Win-rates</h2>")
    rows = [
        [
            _vs(w),
            w.source,
            _pct(w.rate),
            f"{_pct(w.low)}–{_pct(w.high)}",
            str(w.n),
            str(w.prompts),
            f"{w.wins} / {w.ties} / {w.losses}",
            _flag(w.flags),
        ]
        for w in report.win_rates
    ]
    out.append(
        _table(
            [
                "policy",
                "labels",
                "win-rate",
                "95% interval",
                "n",
                "prompts",
                "wins / ties / losses",
                "flag",
            ],
            rows,
            "rl-winrates",
        )
    )
    out.append(
        interval_chart(
            "Win-rate of round R over round R', with 95% interval",
            [
                (f"{w.model} vs {w.opponent} ({w.source})", w.rate, w.low, w.high)
                for w in report.win_rates
            ],
            reference=0.5,
            x_label="share of matches won (ties half)",
        )
    )

    # leaderboard
    board = report.leaderboard
    out.append("<h2>Leaderboard</h2>")
    rows = [
        [
            str(k),
            policy_name(r.model),
            *leaderboard.elo_cells(r),
            str(r.matches),
            _pct(r.score),
            _flag(r.flags),
        ]
        for k, r in enumerate(board.ratings, 1)
    ]
    out.append(
        _table(
            ["rank", "policy", "Elo", "95% interval", "matches", "score", "flag"],
            rows,
            "rl-leaderboard",
        )
    )
    out.append(
        f'<p class="rl-note">Bradley–Terry fit on every cross-round match ({board.matches}'
        f" matches on {board.prompts} prompts), as Chatbot Arena computes its "
        f"leaderboard: 400 Elo points are 10:1 odds, {_E(policy_name(board.anchor))} is "
        f"anchored at {leaderboard.ANCHOR_ELO:.0f}. Score: the share of its matches a "
        f"policy won, ties half.</p>"
    )
    if any(r.flags for r in board.ratings) or any(w.flags for w in report.win_rates):
        out.append(
            '<p class="rl-note rl-flagged">⚠ Flagged rows: the data show no spread there '
            "(every outcome alike, or one prompt), so the interval is the exact "
            "(Clopper–Pearson) one; a policy that never lost (or never won) has no finite "
            "Elo, only the one-sided exact bound shown. See docs/rounds.md (When the data say "
            "nothing).</p>"
        )
    if board.unconnected:
        out.append(
            '<p class="rl-note">Not rated (no chain of matches to the anchor): '
            f"{_E(', '.join(policy_name(r) for r in board.unconnected))}.</p>"
        )
    out.append(
        interval_chart(
            "Elo with 95% interval",
            [(policy_name(r.model), r.elo, r.low, r.high) for r in board.ratings],
            reference=leaderboard.ANCHOR_ELO,
            x_label="Elo",
        )
    )

    # per round
    out.append("<h2>Rounds</h2>")
    wr = {(w.model, w.opponent): w for w in report.win_rates if w.source == "all"}

    def result(r: int, opp: int) -> str:
        w = wr.get((r + 1, opp))
        if w is None:
            return "–"
        return f"{_pct(w.rate)} ({_pct(w.low)}–{_pct(w.high)})" + (" ⚠" if w.flags else "")

    rows = []
    for r in report.rounds:
        labs = " / ".join(str(r.labels.get(s, 0)) for s in ("human", "simulated"))
        ext = r.labels.get("external", 0)
        rows.append(
            [
                str(r.number),
                labs + (f" (+{ext} external)" if ext else ""),
                _f(r.alpha["human"]),
                _f(r.alpha["simulated"]),
                _f(r.reward_accuracy),
                _f(r.reward_baseline),
                _ensemble(r),
                _f(r.reward_ece),
                _steps(r),
                "–"
                if r.ppo_score_first is None
                else f"{_f(r.ppo_score_first)} → {_f(r.ppo_score_last)}",
                _f(r.ppo_kl, 2),
                _f(r.ppo_length, 1),
                result(r.number, r.number),
                result(r.number, 0) if r.number > 0 else "–",
                "–" if r.seconds is None else f"{r.seconds / 60:.1f}",
                (r.optimizer or "–").upper()
                + (" · probe" if r.optimised_probe else "")
                + (" · model+probe" if r.optimised_mix else ""),
            ]
        )
    out.append(
        _table(
            [
                "round",
                "labels human / simulated",
                "α human",
                "α simulated",
                "reward acc.",
                "probe acc.",
                "ensemble",
                "reward ECE",
                "policy steps",
                "policy score",
                "KL",
                "length",
                "R+1 vs R",
                "R+1 vs 0",
                "minutes",
                "optimizer",
            ],
            rows,
            "rl-rounds",
        )
    )
    out.append(
        '<p class="rl-note">Round R trains its reward model on the labels of rounds ≤ R '
        "and, by its optimizer, the policy that samples round R+1's candidates; its last two "
        "columns are that policy's win-rates. α: Krippendorff's alpha (ordinal) among "
        "the round's human, or simulated, labels. Reward acc.: pairwise accuracy on "
        "held-out prompts (probe: a linear probe on frozen features, the baseline to "
        "beat); ensemble: an ensemble reward model's members and their mean spread (std of "
        "the score gap r_m(a) − r_m(b) over members) on the held-out pairs, – for a single "
        "model; ECE: expected calibration error of σ(r_a − r_b). Optimizer: the policy "
        "stage's (PPO, RLOO, BON: best-of-n fine-tuning, or ODPO: online DPO; · probe: it "
        "optimised the probe, the reward model having lost to it). Policy steps: those run "
        "(and the step whose policy was kept, when early stopping kept an earlier one). "
        "Policy score: the reward model's mean score of the first and the last "
        "batches; KL: the kept policy's KL to the reference, nats per response; "
        "length: tokens per response.</p>"
    )

    # PPO curves
    out.append('<h2>PPO, step by step</h2><div class="rl-plots">')
    by = defaultdict(list)
    for c in report.curves:
        by[c.metric].append(c)
    for metric, name in PPO_CURVES.items():
        out.append(
            line_chart(
                name,
                [(f"round {c.round}", c.steps, c.values) for c in by.get(metric, [])],
                x_label="PPO step",
            )
        )
    out.append("</div>")

    # examples
    if report.examples:
        ex = report.examples[0]
        out.append(f"<h2>Examples: {_E(policy_name(ex.newer))} vs {_E(policy_name(ex.older))}</h2>")
        for ex in report.examples:
            turns = "\n\n".join(f"{m.role}: {m.content}" for m in ex.prompt.messages)
            out.append(
                f'<div class="rl-example-block"><p><b>Prompt</b> (labels: {ex.wins} '
                f"prefer {_E(policy_name(ex.newer))}, {ex.ties} tie, {ex.losses} prefer "
                f"{_E(policy_name(ex.older))})</p><pre>{_E(turns)}</pre>"
                f'<div class="rl-example"><div><b>{_E(policy_name(ex.newer))}</b>'
                f"<pre>{_E(ex.newer_text)}</pre></div><div><b>"
                f"{_E(policy_name(ex.older))}</b><pre>{_E(ex.older_text)}</pre></div>"
                f"</div></div>"
            )
    out.append("</div>")
    return "".join(out)


def render_html(report: RoundsReport) -> str:
    """The whole page: one file, no script, nothing fetched."""
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_E(report.title)}</title></head><body>"
        f'<h1 class="rl-title">{_E(report.title)}</h1>'
        f'<p class="rl-note">Generated {_E(report.generated_at)} by rankloop report.</p>'
        f"{render_body(report)}</body></html>\n"
    )


def write_report(report: RoundsReport, path: Path) -> Path:
    """Write the page to `path` whole or not at all (a temporary file renamed over it), with the
    permissions of any new file (mkstemp's would be owner-only: a report is there to share)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(render_html(report))
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path
