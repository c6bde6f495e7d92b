"""`rankloop round` on tiny models: the stages, resuming after a kill in each stage, the checks
that stop a round before it writes anything, the dry run, the current round's rules."""

from __future__ import annotations

import json
import re
import sqlite3
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from rankloop.app import rounds
from rankloop.app.cli import cli
from rankloop.app.commands.rounds import oracle_cell, reward_by_oracle_table
from rankloop.app.generate import make_cross_round_comparisons
from rankloop.app.project import Project
from rankloop.app.simulate import simulate
from rankloop.data.records import Prompt, Response, RoundStage
from rankloop.settings import ConfigError


def letters(prompts, responses):
    """A toy oracle: the share of ASCII letters in a response."""
    return [sum(c.isascii() and c.isalpha() for c in r) / max(1, len(r)) for r in responses]


def tiny_project(root, tiny_lm_dir, prompts: int = 16) -> Project:
    p = Project.init(root, policy=str(tiny_lm_dir), reward_model=str(tiny_lm_dir))
    c = p.config
    for k, v in {"n": 2, "max_new_tokens": 4, "bf16": "no", "batch_size": 8}.items():
        setattr(c.generate, k, v)
    for k, v in {"bf16": "no", "compile": "no", "batch_size": 4, "eval_fraction": 0.25}.items():
        setattr(c.reward, k, v)
    for k, v in {
        "steps": 2,
        "batch_size": 4,
        "mini_batch_size": 2,
        "ppo_epochs": 1,
        "max_new_tokens": 4,
        "bf16": "no",
        "eval_every": 0,
    }.items():
        setattr(c.ppo, k, v)
    c.rounds.eval_fraction = 0.25
    p.save_config()
    p = Project.find(root)
    p.store.add_prompts(
        [Prompt.from_text(f"write about the sea, number {i}") for i in range(prompts)]
    )
    return p


def labeled_round_0(root, tiny_lm_dir) -> Project:
    p = tiny_project(root, tiny_lm_dir)
    rounds.sample_candidates(p, 0, p.config.generate, progress=False)
    simulate(p.store, letters, p.config.labeling, annotators=2, noise=0.1, progress=False)
    return p


def rows(p: Project) -> dict:
    """The store's rows that a round writes, in a form two projects can be compared in
    (response texts and seeds depend on the folder the policy lives in)."""

    def rel(path):
        return str(path).replace(str(p.root), "<root>") if path else path

    resp = {r.id: r for r in p.store.responses()}
    return {
        "responses": sorted(
            (r.prompt_id, r.round, r.sample_index, r.source, rel(r.policy)) for r in resp.values()
        ),
        "comparisons": sorted(
            (
                c.prompt_id,
                c.round,
                tuple(sorted((resp[i].round, resp[i].sample_index) for i in c.response_ids)),
            )
            for c in p.store.comparisons()
        ),
        "labels": len(p.store.labels()),
        "rounds": [
            (r.number, rel(r.policy), r.reward_model, r.finished_at is not None)
            for r in p.store.rounds()
        ],
        "stages": sorted((s.round, s.stage) for s in p.store.stages()),
        "current": p.store.current_round(),
        "policy files": sorted(f.name for f in (p.root / "rounds/0/policy").iterdir()),
        "folders": sorted(f.name for f in (p.root / "rounds/0").iterdir()),
        "scored": p.store.db.execute("select count(*) from response_scores").fetchone()[0],
        "curve points": p.store.db.execute("select count(*) from round_curves").fetchone()[0],
    }


class Killed(Exception):
    """Stands in for a kill: raised from inside a stage, nothing after it runs."""


def kill_at(stage: str, nth: int = 1):
    seen = {"n": 0}

    def on_event(name, info):
        if name == stage and not info.get("done"):
            seen["n"] += 1
            if seen["n"] == nth:
                raise Killed(stage)

    return on_event


def test_a_round_killed_in_each_stage_finishes_with_the_rows_of_an_uninterrupted_one(
    tmp_path, tiny_lm_dir
):
    quiet = {"log": lambda m: None, "progress": False}
    whole = labeled_round_0(tmp_path / "whole", tiny_lm_dir)
    summary = rounds.run_round(whole, rounds.RoundSettings.of(whole), **quiet)
    assert summary.round == 0 and whole.store.current_round() == 1
    assert list(summary.seconds) == list(rounds.STAGES)
    assert summary.labels == {"simulated": 16}
    assert summary.metrics["generate/responses"] == 32.0
    held = rounds.split_prompts(whole.store.prompts(), 0.25)[1]
    assert summary.metrics["compare/cross_round"] == len(held) > 0
    expected = rows(whole)
    # the new round: 16 prompts x 2 samples, grouped in pairs, plus one pair per held-out prompt
    assert len([r for r in expected["responses"] if r[1] == 1]) == 32
    assert len([c for c in expected["comparisons"] if c[1] == 1]) == 16 + len(held)
    assert expected["policy files"][:2] == ["README.md", "adapter_config.json"]
    assert expected["curve points"] > 0  # PPO's steps, for the Rounds view and the report

    killed = labeled_round_0(tmp_path / "killed", tiny_lm_dir)
    s = rounds.RoundSettings.of(killed)
    for stage, nth in (("reward", 1), ("ppo", 1), ("generate", 2), ("compare", 1)):
        with pytest.raises(Killed):
            rounds.run_round(killed, s, on_event=kill_at(stage, nth), **quiet)
        done = {st.stage for st in killed.store.stages(0)}
        assert stage not in done  # the killed stage is not recorded as finished
        assert killed.store.current_round() == 0
        if stage == "ppo":  # no policy folder until PPO finished
            assert not (killed.root / "rounds/0/policy").exists()
    rounds.run_round(killed, s, **quiet)
    assert rows(killed) == expected
    assert not (killed.root / "rounds/0/policy.partial").exists()


def test_errors_stop_the_round_before_it_writes_anything(tmp_path, tiny_lm_dir):
    p = tiny_project(tmp_path / "p", tiny_lm_dir)
    rounds.sample_candidates(p, 0, p.config.generate, progress=False)
    db = p.root / "rankloop.db"

    def dump():
        con = sqlite3.connect(db)
        out = list(con.iterdump())
        con.close()
        return out

    before = dump()
    runner = CliRunner()
    res = runner.invoke(cli, ["round", "--project", str(p.root)])  # no labels yet
    assert res.exit_code == 1 and res.output.startswith("Error:") and "label" in res.output
    assert len(res.output.strip().splitlines()) == 1 and "Traceback" not in res.output
    assert dump() == before
    # a policy that cannot be loaded (with --reward-fn no labels are needed)
    p.config.models.policy = str(tmp_path / "no-such-model")
    p.save_config()
    res = runner.invoke(
        cli, ["round", "--reward-fn", "test_rounds:letters", "--project", str(p.root)]
    )
    assert (
        res.exit_code == 1 and "cannot load policy" in res.output and "no-such-model" in res.output
    )
    assert dump() == before
    p.close()


def test_weak_reward_model_stops_the_round_before_ppo(tmp_path, tiny_lm_dir):
    p = labeled_round_0(tmp_path / "p", tiny_lm_dir)
    p.config.rounds.weak_reward = "stop"
    # an accuracy at or below its baseline is weak; the check is one function
    assert rounds.reward_verdict({"reward/accuracy": 0.75, "reward/probe_accuracy": 0.5}) is None
    assert (
        "does not beat its baseline (chance: 0.500) on 8 held-out pairs"
        in rounds.reward_verdict({"reward/accuracy": 0.5, "reward/eval_pairs": 8.0})
    )
    assert "probe" in rounds.reward_verdict({"reward/accuracy": 0.6, "reward/probe_accuracy": 0.7})

    def stop_after_reward(name, info):
        if name == "reward" and info.get("done"):
            raise Killed(name)

    with pytest.raises(Killed):
        rounds.run_round(
            p,
            rounds.RoundSettings.of(p),
            on_event=stop_after_reward,
            log=lambda m: None,
            progress=False,
        )
    # as if the reward model had come out weak
    p.store.finish_stage(
        RoundStage(0, "reward", 1.0, {"reward/accuracy": 0.4, "reward/eval_pairs": 5.0})
    )
    with pytest.raises(rounds.RoundStopped, match="--redo reward"):
        rounds.run_round(p, rounds.RoundSettings.of(p), log=lambda m: None, progress=False)
    assert [s.stage for s in p.store.stages(0)] == ["reward"]  # PPO did not run
    assert rounds.redo(p, "reward") == ["reward"] and p.store.stages(0) == []
    p.close()


def stop_after(stage):
    """An on_event that kills the round once `stage` is done."""

    def event(name, info):
        if name == stage and info.get("done"):
            raise Killed(name)

    return event


def test_a_round_whose_model_lost_to_its_probe_optimises_the_probe_under_probe(
    tmp_path, tiny_lm_dir
):
    """[rounds] weak_reward = 'probe': a reward model that lost to its frozen-feature probe by
    more than the standard error does not stop the round; its policy stage optimises the probe
    saved with it (probe.json), says so, and records it; the report's optimizer column too."""
    from rankloop.app.report import snapshot

    p = labeled_round_0(tmp_path / "p", tiny_lm_dir)
    p.config.rounds.weak_reward = "probe"
    p.save_config()

    with pytest.raises(Killed):
        rounds.run_round(
            p,
            rounds.RoundSettings.of(p),
            on_event=stop_after("reward"),
            log=lambda m: None,
            progress=False,
        )
    assert (rounds.reward_model_of(p, 0) / "probe.json").exists()
    assert not rounds.optimises_probe(p, 0)  # as trained: no verdict of "lost" yet
    lost = {"reward/accuracy": 0.2, "reward/probe_accuracy": 0.9, "reward/eval_pairs": 40.0}
    p.store.finish_stage(RoundStage(0, "reward", 1.0, lost))  # as if it had lost
    assert rounds.optimises_probe(p, 0)
    rm = rounds.reward_model_of(p, 0)
    saved = json.loads((rm / "probe.json").read_text())
    # as if the probe ranked the training labels well above chance: 0.7 - 1.645 * 0.05 > 0.5
    (rm / "probe.json").write_text(json.dumps({**saved, "cv_accuracy": 0.7, "cv_se": 0.05}))
    said = []
    with pytest.raises(Killed):
        rounds.run_round(
            p,
            rounds.RoundSettings.of(p),
            on_event=stop_after("ppo"),
            log=said.append,
            progress=False,
        )
    assert any(f"reward probe:{rm}," in m for m in said)
    assert any(
        m.startswith("Warning: the reward model's held-out accuracy 0.200 loses to its baseline")
        and m.endswith(
            "the policy stage optimises its probe instead ([rounds] weak_reward = 'probe')"
        )
        for m in said
    )
    # a probe at chance itself (0.546 - 1.645 * 0.036 = 0.487): the warning says so
    (rm / "probe.json").write_text(json.dumps({**saved, "cv_accuracy": 0.546, "cv_se": 0.036}))
    assert rounds.probe_doubt(rm / "probe.json") == (
        ", though the probe too ranks the training labels at 0.546 +- 0.036, cross-validated, "
        "not above chance: neither has learned the labels yet; label more"
    )
    assert rounds.probe_doubt(rm / "missing.json") == (
        ", though the probe too has no cross-validated accuracy saved: neither has learned the "
        "labels yet; label more"
    )
    ppo = next(st for st in p.store.stages(0) if st.stage == "ppo")
    assert ppo.metrics["ppo/optimised_probe"] == 1.0
    assert snapshot(p.store).rounds[0].optimised_probe
    # a model without its probe (an older rankloop's) stops the round with what to do
    (rm / "probe.json").unlink()
    with pytest.raises(rounds.RoundStopped, match="no saved probe"):
        rounds.reward_gate(lost, "probe", 0, has_probe=False)
    p.close()


def test_reward_model_plus_probe_optimises_the_mean_of_the_two_normalised_scores(
    tmp_path, tiny_lm_dir
):
    """[rounds] reward = 'model+probe': the policy stage's reward is 0.5 * (the model's
    normalised score + the probe's), each by its own training statistics and clip; the stage
    says so and the record and the report carry it. A bad value is refused by name."""
    from rankloop.app.report import snapshot
    from rankloop.reward.scoring import ProbeScorer, RewardScorer

    p = labeled_round_0(tmp_path / "p", tiny_lm_dir)
    p.config.rounds.reward = "model+probe"
    p.save_config()

    with pytest.raises(Killed):
        rounds.run_round(
            p, rounds.RoundSettings.of(p), on_event=stop_after("reward"), log=lambda m: None,
            progress=False,
        )  # fmt: skip
    rm = rounds.reward_model_of(p, 0)
    cfg = p.config.ppo
    source, _ = rounds.ppo_reward(p, 0, cfg, mix=True)
    prompts, responses = ["say hi", "say hi", "a poem"], ["hi there", "no", "roses are red"]
    model = RewardScorer.from_pretrained(rm, bf16=cfg.bf16)  # as the stage loads it
    probe = ProbeScorer.from_pretrained(rm)

    def z(scorer):
        raw = scorer.score(prompts, responses)
        return ((raw - scorer.mean) / scorer.std).clamp(-cfg.score_clip, cfg.score_clip)

    assert torch.allclose(source(prompts, responses), 0.5 * (z(model) + z(probe)), atol=1e-5)
    said = []
    with pytest.raises(Killed):
        rounds.run_round(
            p, rounds.RoundSettings.of(p), on_event=stop_after("ppo"), log=said.append,
            progress=False,
        )  # fmt: skip
    assert any(f"reward model+probe:{rm}," in m for m in said)
    ppo = next(st for st in p.store.stages(0) if st.stage == "ppo")
    assert ppo.metrics["ppo/optimised_mix"] == 1.0 and "ppo/optimised_probe" not in ppo.metrics
    assert snapshot(p.store).rounds[0].optimised_mix
    # 'auto': the probe joins when its cross-validated accuracy (probe.json) clears chance
    # and the held-out split does not put the model clearly ahead of it
    p.config.rounds.reward = "auto"
    f = Path(rm) / "probe.json"
    spec = json.loads(f.read_text())
    reward = next(st for st in p.store.stages(0) if st.stage == "reward")
    assert spec["model_accuracy"] == reward.metrics["reward/accuracy"]
    assert spec["eval_pairs"] == reward.metrics["reward/eval_pairs"]
    assert "cv_accuracy" in spec and "cv_se" in spec
    gaps = spec.pop("held_out_gaps")  # the paired test's input; the cases below decide without
    assert len(gaps["model"]) == len(gaps["probe"]) > 0
    held = {"model_accuracy": 0.7, "accuracy": 0.6, "eval_pairs": 30}
    for acc, se, more, mixed in (
        (0.9, 0.05, held, True),
        (0.55, 0.05, held, False),
        (None, None, held, False),
        (0.9, 0.05, {"model_accuracy": 0.9, "accuracy": 0.5, "eval_pairs": 30}, False),
    ):
        f.write_text(json.dumps({**spec, "cv_accuracy": acc, "cv_se": se, **more}))
        heard = []
        assert rounds.mixes_probe(p, 0, log=heard.append) is mixed
        assert ("the model and its probe" in heard[0]) is mixed
    assert heard == [
        (
            "reward: the model alone ([rounds] reward = 'auto': the probe ranks the training "
            "labels at 0.900 +- 0.050, cross-validated, above chance, but 0.500 on 30 held-out "
            "pairs against the model's 0.900: clearly behind (sign test p = 0.004))"
        )
    ]
    p.config.rounds.reward = "model"
    assert not rounds.mixes_probe(p, 0)
    p.config.rounds.reward = "probe+model"
    with pytest.raises(ConfigError, match=r"\[rounds\] reward = 'probe\+model'"):
        p.config.rounds.validate()
    p.close()


def test_a_reward_model_that_lost_to_its_probe_stops_the_round_unless_told_to_run():
    """Issue 23 item 5: 0.333 against a probe's 0.528 on 36 held-out pairs is 0.195 below it,
    more than the standard error sqrt(0.4305 * 0.5695 / 36) = 0.0825: the round stops even
    under 'warn'; 'run' optimises it anyway. Within one standard error it only warns."""
    lost = {"reward/accuracy": 0.333, "reward/probe_accuracy": 0.528, "reward/eval_pairs": 36.0}
    with pytest.raises(rounds.RoundStopped) as e:
        rounds.reward_gate(lost, "warn", 2)
    assert str(e.value) == (
        "the reward model's held-out accuracy 0.333 loses to its baseline (a linear probe on "
        "frozen features: 0.528) on 36 held-out pairs, by more than the standard error 0.083. "
        "Round 2 stops before its policy stage: label more comparisons, then run `rankloop "
        "round --redo reward`; or set [rounds] weak_reward = 'run' in rankloop.toml to optimise "
        "it anyway"
    )
    v = rounds.reward_gate(lost, "run", 2)
    assert v.level == "lost" and v.standard_error == pytest.approx(0.08253, abs=1e-5)
    assert rounds.reward_gate(lost, "probe", 2).level == "lost"  # its probe is optimised
    chance = {"reward/accuracy": 0.2, "reward/eval_pairs": 40.0}  # no probe: nothing to optimise
    with pytest.raises(rounds.RoundStopped, match="weak_reward = 'run'"):
        rounds.reward_gate(chance, "probe", 2)
    close = {**lost, "reward/accuracy": 0.46}  # 0.068 below: within one standard error
    v = rounds.reward_gate(close, "warn", 2)
    assert v.level == "weak" and "does not beat its baseline" in v.message
    with pytest.raises(rounds.RoundStopped, match="weak_reward = 'stop'"):
        rounds.reward_gate(close, "stop", 2)
    ceiling = {"reward/accuracy": 1.0, "reward/probe_accuracy": 1.0, "reward/eval_pairs": 20.0}
    assert rounds.reward_gate(ceiling, "stop", 2).level == "ok"  # a tie at 1.000 is fine
    # 0.25 against 0.75 on 4 pairs is 2 standard errors (0.25) below, but 4 pairs decide nothing
    few = {"reward/accuracy": 0.25, "reward/probe_accuracy": 0.75, "reward/eval_pairs": 4.0}
    assert rounds.reward_gate(few, "warn", 2).level == "weak"
    with pytest.raises(rounds.RoundStopped, match="on 30 held-out pairs"):
        rounds.reward_gate({**few, "reward/eval_pairs": 30.0}, "warn", 2)


def test_at_the_ceiling_a_tie_neither_warns_nor_stops_and_one_pair_never_stops():
    """Issue 23: model and probe both at 1.000 on the held-out pairs is no reason to warn, under
    any [rounds] weak_reward, on 400 pairs as on 30, with an ensemble's keys too; 399 of 400
    against 400 of 400 does not beat the probe (a warning) but one pair does not stop the round,
    although it is 0.0025 below, more than SE sqrt(0.99875 * 0.00125 / 400) = 0.00177; four
    pairs below (0.990) do."""
    from rankloop.app.commands.reward import heldout_summary

    top = {"reward/accuracy": 1.0, "reward/probe_accuracy": 1.0, "reward/eval_pairs": 400.0}
    ens = {**top, "reward/members": 4.0, "reward/member_accuracy_min": 0.9975}
    ens["reward/member_accuracy_max"] = 1.0
    for m in (top, {**top, "reward/eval_pairs": 30.0}, {**ens, "reward/spread": 0.05}):
        for weak in ("warn", "stop", "run"):
            v = rounds.reward_gate(m, weak, 3)
            assert (v.level, v.message, v.baseline) == ("ok", None, 1.0)
        assert rounds.reward_verdict(m) is None and "warning" not in heldout_summary(m)
    one_below = {**top, "reward/accuracy": 399 / 400}
    v = rounds.reward_gate(one_below, "warn", 3)
    assert v.level == "weak" and v.standard_error == pytest.approx(0.001767, abs=1e-6)
    assert v.message == (
        "the reward model's held-out accuracy 0.998 does not beat its baseline (a linear probe "
        "on frozen features: 1.000) on 400 held-out pairs"
    )
    with pytest.raises(rounds.RoundStopped, match="weak_reward = 'stop'"):
        rounds.reward_gate(one_below, "stop", 3)
    with pytest.raises(rounds.RoundStopped, match="loses to its baseline"):
        rounds.reward_gate({**top, "reward/accuracy": 396 / 400}, "warn", 3)


def test_dry_run_plans_with_estimates_and_changes_nothing(tmp_path, tiny_lm_dir):
    p = labeled_round_0(tmp_path / "p", tiny_lm_dir)
    s = rounds.RoundSettings.of(p, ["test_rounds:letters"])
    plan = rounds.plan_round(p, s)
    assert [st.stage for st in plan.stages] == list(rounds.STAGES)
    assert not any(st.done for st in plan.stages) and plan.estimate is None  # no timing yet
    assert (
        "skipped: the policy stage optimises --reward-fn test_rounds:letters" in plan.stages[0].what
    )
    rounds.run_round(p, s, log=lambda m: None, progress=False)
    simulate(p.store, letters, p.config.labeling, annotators=1, noise=0.1, progress=False)
    before = (rows(p), p.store.db.execute("select count(*) from round_stages").fetchone())
    res = CliRunner().invoke(
        cli,
        [
            "round",
            "--dry-run",
            "--reward-fn",
            "test_rounds:letters",
            "--ppo-steps",
            "4",
            "--project",
            str(p.root),
        ],
    )
    assert res.exit_code == 0, res.output
    assert "round 1: plan" in res.output and "4 PPO steps" in res.output
    assert re.search(r"Estimated time: \d+ s", res.output)
    # the policy stage's estimate: the last round's seconds per step, times 4 steps
    plan = rounds.plan_round(
        p,
        rounds.RoundSettings(
            p.config.reward,
            p.config.ppo.__class__(**{**p.config.ppo.__dict__, "steps": 4}),
            p.config.generate,
            ("test_rounds:letters",),
        ),
    )
    last = {st.stage: st for st in p.store.stages(0)}
    ppo = next(st for st in plan.stages if st.stage == "ppo")
    assert ppo.estimate == pytest.approx(last["ppo"].seconds * 4 / 2)
    assert (rows(p), p.store.db.execute("select count(*) from round_stages").fetchone()) == before
    p.close()


def test_every_round_option_defaults_to_the_current_round(tmp_path, tiny_lm_dir):
    p = tiny_project(tmp_path / "p", tiny_lm_dir)
    assert rounds.resolve_round(p) == 0 and rounds.resolve_round(p, 3) == 3
    assert "rankloop generate" in rounds.next_step(p)
    p.store.set_current_round(2)
    assert rounds.resolve_round(p) == 2
    assert rounds.next_step(p).startswith("rankloop generate --round 2")
    res = CliRunner().invoke(cli, ["status", "--project", str(p.root)])
    assert re.search(r"current round\s+│\s+2", res.output)
    assert "Next: rankloop generate --round 2" in res.output
    p.close()


def test_status_shows_a_per_step_metric_list_by_its_ends_not_whole(tmp_path, tiny_lm_dir):
    from rankloop.data.records import Round

    p = tiny_project(tmp_path / "p", tiny_lm_dir)
    kl = [0.01 * i for i in range(40)]
    p.store.save_round(Round(0, metrics={"ppo/kl_per_step": kl, "ppo/kl_last": 0.39}))
    res = CliRunner(env={"COLUMNS": "400"}).invoke(cli, ["status", "--project", str(p.root)])
    assert res.exit_code == 0, res.output
    assert "ppo/kl_per_step=[40 steps: 0 .. 0.39]" in res.output
    assert "0.21" not in res.output and "ppo/kl_last=0.39" in res.output
    p.close()


def test_eval_prompts_are_held_out_from_ppo_by_a_stable_hash():
    prompts = [Prompt.from_text(f"prompt {i}") for i in range(400)]
    train, held = rounds.split_prompts(prompts, 0.2)
    assert len(train) + len(held) == 400 and 60 < len(held) < 100
    # adding prompts never moves one from a side to the other
    more = [Prompt.from_text(f"another {i}") for i in range(50)]
    train2, held2 = rounds.split_prompts(more + prompts, 0.2)
    assert {p.text for p in held} <= {p.text for p in held2}
    assert {p.text for p in train} <= {p.text for p in train2}
    assert rounds.split_prompts(prompts, 0.0) == (prompts, [])


def test_cross_round_comparisons_pair_new_responses_with_rounds_r_and_0(fresh_store):
    s = fresh_store
    p1, p2, p3 = s.add_prompts([Prompt.from_text(t) for t in ("a", "b", "c")])

    def add(pid, rnd, i):
        return s.add_responses(
            [Response(pid, f"{pid}-{rnd}-{i}", round=rnd, policy=f"pol{rnd}", sample_index=i)]
        )[0]

    r = {(pid, rnd, i): add(pid, rnd, i) for pid in (p1, p2) for rnd in (0, 1, 2) for i in range(2)}
    add(p3, 2, 0)  # p3 has no earlier round: nothing to compare it with
    n = make_cross_round_comparisons(s, 2, (1, 0), [p1, p3], per_prompt=1, seed=0)
    got = sorted((c.prompt_id, tuple(sorted(c.response_ids))) for c in s.comparisons(round=2))
    assert n == 2 and got == sorted(
        [
            (p1, tuple(sorted((r[p1, 2, 0], r[p1, 1, 0])))),
            (p1, tuple(sorted((r[p1, 2, 1], r[p1, 0, 0])))),
        ]
    )
    # the same call again makes nothing new; more per prompt makes the next pairs
    assert make_cross_round_comparisons(s, 2, (1, 0), [p1, p3], per_prompt=1, seed=0) == 0
    # two of each: new 0 vs round 1's 0 (there), new 1 vs round 1's 1, new 0 vs round 0's 0,
    # new 1 vs round 0's 1 (the earlier new 1 vs round 0's 0 stays)
    assert make_cross_round_comparisons(s, 2, (1, 0), [p1], per_prompt=2, seed=0) == 3
    # round 1 against (0, 0): one opponent, not two
    assert make_cross_round_comparisons(s, 1, (0, 0), [p2], per_prompt=1, seed=0) == 1
    # the order of each pair is shuffled (seeded), so the new response is not always first
    firsts = {s.responses(ids=[c.response_ids[0]])[0].round for c in s.comparisons(round=2)}
    assert firsts == {0, 1, 2} or len(firsts) > 1


def test_generate_command_adds_cross_round_comparisons_and_makes_the_round_current(
    tmp_path, tiny_lm_dir
):
    p = labeled_round_0(tmp_path / "p", tiny_lm_dir)
    rounds.run_round(
        p, rounds.RoundSettings.of(p, ["test_rounds:letters"]), log=lambda m: None, progress=False
    )
    assert p.store.current_round() == 1
    p.close()
    res = CliRunner().invoke(cli, ["generate", "--n", "3", "--project", str(tmp_path / "p")])
    assert res.exit_code == 0, res.output
    assert "16 new responses for 16 prompts (32 already there" in res.output  # round 1: 3rd
    p = Project.find(tmp_path / "p")
    assert p.store.current_round() == 1
    assert json.loads(json.dumps(rows(p)["current"])) == 1
    p.close()


def test_round_config_is_validated(tmp_path, tiny_lm_dir):
    p = tiny_project(tmp_path / "p", tiny_lm_dir)
    text = (p.root / "rankloop.toml").read_text()
    assert "[rounds]" in text and "eval_fraction = 0.25" in text
    (p.root / "rankloop.toml").write_text(
        text.replace('weak_reward = "probe"', 'weak_reward = "maybe"')
    )
    with pytest.raises(
        ConfigError, match=r"\[rounds\] weak_reward must be 'warn', 'stop', 'run' or 'probe'"
    ):
        Project.find(p.root)
    p.close()


def test_simulated_labels_train_the_reward_model_unless_told_not_to(tmp_path, tiny_lm_dir):
    from rankloop.reward.pairs import RewardDataError

    p = labeled_round_0(tmp_path / "p", tiny_lm_dir)
    assert rounds.label_counts(p, 0) == {"simulated": 16}
    rounds.check_labels(p, 0, p.config.reward)  # enough to train on
    p.config.rounds.simulated_labels = False
    assert rounds.label_counts(p, 0) == {} and "simulated" not in rounds.label_sources(p)
    with pytest.raises(RewardDataError, match="no labels up to round 0"):
        rounds.check_labels(p, 0, p.config.reward)
    p.close()


def test_demo_runs_whole_rounds_and_ends_with_the_leaderboard_and_a_report(
    tmp_path, tiny_lm_dir, monkeypatch
):
    from rankloop.app.commands import rounds as commands

    tiny = {
        "generate": {"n": 2, "max_new_tokens": 4, "bf16": "no"},
        "reward": {"bf16": "no", "compile": "no", "batch_size": 8},
        "ppo": {
            "steps": 1,
            "batch_size": 4,
            "mini_batch_size": 2,
            "ppo_epochs": 1,
            "max_new_tokens": 4,
            "bf16": "no",
            "eval_every": 0,
        },
        "rounds": {"eval_fraction": 0.25, "eval_comparisons": 2},
    }
    monkeypatch.setattr(commands, "DEMO_SETTINGS", tiny)
    out = tmp_path / "demo"
    res = CliRunner().invoke(
        cli, ["demo", "--rounds", "1", "--dir", str(out), "--policy", str(tiny_lm_dir)]
    )
    assert res.exit_code == 0, res.output
    p = Project.find(out)
    assert p.store.current_round() == 1 and len(p.store.prompts()) == 84
    held = rounds.split_prompts(p.store.prompts(), 0.25)[1]
    # round 1's candidates are labeled too, cross-round ones included: 2 per held-out prompt
    assert len(p.store.cross_round_outcomes()) == 2 * len(held)
    assert not queue_open(p)
    # the demo's annotators are asked for people's agreement, and say what they reached
    assert "Round 0: simulated " in res.output and "(asked 70%, " in res.output
    for title in (
        "the oracle's mean score of each round's samples",
        "by the oracle",
        "each round's reward model on its held-out pairs, by the oracle",
        "Leaderboard",
        "Win-rates",
        "Demo finished in",
    ):
        assert title in res.output
    assert (out / "report.html").exists()
    p.close()


def test_the_oracle_judges_each_round_against_the_base_on_the_evaluation_prompts(tmp_path):
    """`oracle_win_rates`: every pair of a round's and the base's responses to one evaluation
    prompt, the longer winning under a length oracle; training prompts do not count."""
    p = Project.init(tmp_path / "p")
    p.store.add_prompts([Prompt.from_text(f"prompt {i}") for i in range(20)])
    train, held = rounds.split_prompts(p.store.prompts(), p.config.rounds.eval_fraction)
    a, b, t = held[0].id, held[1].id, train[0].id
    texts = {0: [(a, "aa"), (a, "aaaa"), (b, "bbb"), (t, "t")], 1: [(a, "aaa"), (b, "bbb")]}
    texts[1] += [(b, "bbbbb"), (t, "tttttttt")]
    texts[2] = [(t, "tt")]  # no evaluation prompt: no win-rate
    p.store.add_responses(
        Response(pid, x, round=r, sample_index=i)
        for r, rows in texts.items()
        for i, (pid, x) in enumerate(rows)
    )

    def length(prompts, responses):
        return [len(x) for x in responses]

    wins = rounds.oracle_win_rates(p, length, n_boot=200)
    assert list(wins) == [1]
    w = wins[1]
    # prompt a: "aaa" beats "aa", loses to "aaaa"; prompt b: "bbb" ties "bbb", "bbbbb" wins
    assert (w.wins, w.ties, w.losses, w.n, w.prompts) == (2, 1, 1, 4, 2)
    assert w.rate == 2.5 / 4 and w.low < w.rate < w.high
    low, high = round(100 * w.low), round(100 * w.high)
    assert oracle_cell(w) == f"62% ({low}-{high}%, 2 prompts: 2 won, 1 tied, 1 lost)"
    assert rounds.oracle_means(p, length)[1] == ((3 + 3 + 5 + 8) / 4, (3 + 3 + 5) / 3, 4)
    p.close()


def queue_open(p: Project) -> list:
    from rankloop.data import queue

    return queue.open_comparisons(p.store, p.config.labeling.labels_per_comparison)


def test_round_messages_print_setting_names_as_they_are(capsys):
    from rankloop.app.commands.rounds import plain, print_summary

    plain("the policy stage runs anyway ([rounds] weak_reward = 'warn')")
    print_summary(
        rounds.RoundSummary(
            0,
            {"simulated": 3},
            {"reward": 1.0},
            {},
            ["the reward model is weak ([rounds] weak_reward)"],
        )
    )
    out = capsys.readouterr().out
    assert "([rounds] weak_reward = 'warn')" in out  # rich markup would have eaten [rounds]
    assert "Warning: the reward model is weak ([rounds] weak_reward)" in out


def test_round_summary_shows_an_ensembles_members_and_spread(capsys, monkeypatch):
    from rankloop.app.commands.common import console
    from rankloop.app.commands.rounds import print_summary

    monkeypatch.setattr(console, "width", 200)  # one line per row: no wrapped cells

    m = {"reward/accuracy": 0.8, "reward/eval_pairs": 30.0, "reward/probe_accuracy": 0.65}
    print_summary(rounds.RoundSummary(1, {"human": 6}, {"reward": 1.0}, m, []))
    single = capsys.readouterr().out
    assert "0.800 on 30 pairs (frozen-feature probe 0.650)" in single and "ensemble" not in single
    ens = {**m, "reward/members": 4.0, "reward/spread": 0.125}
    print_summary(rounds.RoundSummary(1, {"human": 6}, {"reward": 1.0}, ens, []))
    out = capsys.readouterr().out
    assert "0.800 on 30 pairs (frozen-feature probe 0.650); ensemble of 4, spread 0.125" in out


def test_oracle_reward_accuracy_orders_the_trainers_held_out_pairs_by_the_oracle(
    tmp_path, tiny_lm_dir, monkeypatch
):
    """The diagnostic only a simulation has: on the reward trainer's own held-out comparisons,
    the share of oracle-untied response pairs that the model, its probe and the labels order as
    the oracle does. Scorers that score by the oracle (and against it) and labels drawn at T = 0
    give 1, 0 and 1 exactly; an oracle that ties everything leaves no pair to count."""
    from rankloop.data.records import Round
    from rankloop.reward import scoring
    from rankloop.reward.pairs import build_examples, split_by_prompt

    def length(prompts, responses):
        return [float(len(r)) for r in responses]

    class ByOracle:
        sign = 1.0

        @classmethod
        def from_pretrained(cls, path):
            return cls()

        def score(self, prompts, texts):
            return [self.sign * len(t) for t in texts]

    class AgainstOracle(ByOracle):
        sign = -1.0

    p = tiny_project(tmp_path / "p", tiny_lm_dir)
    rounds.sample_candidates(p, 0, p.config.generate, progress=False)
    simulate(p.store, length, p.config.labeling, annotators=1, noise=0.0, progress=False)
    (tmp_path / "p/rm").mkdir()
    p.store.save_round(Round(0, reward_model=p.stored(tmp_path / "p/rm")))
    monkeypatch.setattr(scoring, "RewardScorer", ByOracle)
    monkeypatch.setattr(scoring, "ProbeScorer", AgainstOracle)

    cfg = p.config.reward
    data = build_examples(p.store, 0, sources=rounds.label_sources(p))
    held = split_by_prompt(data.examples, cfg.eval_fraction, cfg.seed)[1]
    lengths = [[len(t) for t in e.responses] for e in held]  # 2 candidates: one pair each
    untied = sum(a != b for a, b in lengths)
    assert len(held) == 4 and untied > 0
    assert rounds.oracle_reward_accuracy(p, length) == [
        {"round": 0, "pairs": 4, "untied": untied, "model": 1.0, "probe": 0.0, "labels": 1.0}
    ]
    flat = rounds.oracle_reward_accuracy(p, lambda prompts, responses: [1.0] * len(responses))
    assert flat == [
        {"round": 0, "pairs": 4, "untied": 0, "model": None, "probe": None, "labels": None}
    ]
    # as the demo prints them
    table = reward_by_oracle_table(rounds.oracle_reward_accuracy(p, length) + flat)
    assert [list(c._cells) for c in table.columns] == [
        ["round 0", "round 0"],
        ["4", "4"],
        [str(untied), "0"],
        ["1.00", "-"],
        ["0.00", "-"],
        ["1.00", "-"],
    ]
    p.close()
