"""The policy stage as one function: `rankloop ppo`, `rloo`, `bon` and `rankloop round` wire it
the same way (`rounds.policy_stage`), the round's optimiser is chosen by config and recorded
(migration 0021), and the models of round R have one rule (`start_policy`, `trained_policy`)."""

from __future__ import annotations

import dataclasses
import json
import re
import textwrap

import pytest
import sqlite_utils
from click.testing import CliRunner

from rankloop.app import report, rounds
from rankloop.app.cli import cli
from rankloop.app.project import Project, ProjectError
from rankloop.data.migrations import migrate
from rankloop.data.records import Prompt, Round
from rankloop.data.store import Store
from rankloop.ppo.train import PPOResult
from rankloop.settings import ConfigError

PROMPTS = ("hello", "write a poem", "explain gears", "good or bad", "yes no", "the fox")


def run(*args, ok=True):
    result = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
    if ok:
        assert result.exit_code == 0, result.output
    return result


@pytest.fixture
def project(tmp_path, tiny_lm_dir):
    (tmp_path / "toy_rewards.py").write_text(
        textwrap.dedent("""
        def brevity(prompts, responses):
            return [-len(r) / 10.0 for r in responses]
    """)
    )
    p = Project.init(tmp_path / "proj", policy=str(tiny_lm_dir), reward_model=str(tiny_lm_dir))
    p.store.add_prompts([Prompt.from_text(t) for t in PROMPTS])
    p.close()
    return tmp_path / "proj"


class Recorded(Exception):
    pass


def record_trainer(monkeypatch, calls: list):
    """Replace the trainer with one that records its arguments and saves nothing real."""

    def fake(config, **kw):
        calls.append((config, kw))
        kw["out_dir"].mkdir(parents=True, exist_ok=True)
        summary = {
            "ppo/score_first": 0.0,
            "ppo/score_last": 1.0,
            "ppo/seconds_per_step": 0.1,
            "ppo/kept_step": 1.0,
            "ppo/kl_final": 0.1,
            "ppo/stopped_early": 0.0,
            "ppo/steps": 1.0,
        }
        return PPOResult(kw["out_dir"], [{"step": 1, "objective/kl": 0.1}], summary)

    monkeypatch.setattr("rankloop.ppo.train.train_policy", fake)


def comparable(config, kw: dict) -> dict:
    """What decides the stage's result: everything but the callbacks and the printing."""
    out = {k: v for k, v in kw.items() if k not in ("log", "progress", "on_step")}
    out["reward_fn"] = kw["reward_fn"].name
    out["prompts"] = [p.text for p in kw["prompts"]]
    return {"config": dataclasses.asdict(config), **out}


@pytest.mark.parametrize("optimizer", ["ppo", "rloo", "bon"])
def test_the_command_and_the_round_wire_the_policy_stage_the_same_way(
    project, tmp_path, monkeypatch, optimizer
):
    """`rankloop ppo`/`rloo` and `rankloop round` (with the same optimiser from [rounds]
    optimizer) call the trainer with the same arguments: start policy, prompts (evaluation
    ones held out), reward, output folder (the partial one, renamed when done), config."""
    spec = f"{tmp_path / 'toy_rewards.py'}:brevity"
    calls: list = []
    record_trainer(monkeypatch, calls)
    run(optimizer, "--round", "0", "--reward-fn", spec, "--project", project)
    p = Project.find(project)
    assert p.store.round(0).optimizer == optimizer
    assert (project / "rounds/0/policy").is_dir()
    assert not (project / "rounds/0/policy.partial").exists()
    p.store.save_round(Round(0, policy=None))  # as if the command had not run
    p.store.db.execute("update rounds set policy = null, optimizer = null")
    p.config.rounds.optimizer = optimizer
    p.save_config()

    def stop_after_ppo(stage, info):
        if stage == "ppo" and info.get("done"):
            raise Recorded

    with pytest.raises(Recorded):
        rounds.run_round(
            p,
            rounds.RoundSettings.of(p, reward_fns=(spec,)),
            log=lambda m: None,
            progress=False,
            on_event=stop_after_ppo,
        )
    assert p.store.round(0).optimizer == optimizer
    p.close()
    (cmd_config, cmd_kw), (round_config, round_kw) = calls
    assert cmd_kw["optimizer"] == optimizer
    assert cmd_kw["out_dir"] == project / "rounds/0/policy.partial"
    assert comparable(cmd_config, cmd_kw) == comparable(round_config, round_kw)
    held = rounds.split_prompts([Prompt.from_text(t) for t in PROMPTS], 0.2)[1]
    assert set(comparable(cmd_config, cmd_kw)["prompts"]) == set(PROMPTS) - {p.text for p in held}


def test_round_optimizer_flag_overrides_the_setting_and_dry_run_says_it(project, tmp_path):
    spec = f"{tmp_path / 'toy_rewards.py'}:brevity"
    p = Project.find(project)
    rounds.sample_candidates(p, 0, p.config.generate, progress=False)
    p.close()
    out = run("round", "--dry-run", "--reward-fn", spec, "--project", project).output
    assert "100 PPO steps of 8 prompts (of" in out  # the default, auto: PPO on a reward fn
    out = run(
        "round", "--dry-run", "--optimizer", "rloo", "--reward-fn", spec, "--project", project
    ).output
    assert "100 RLOO steps of 8 prompts x 4 samples (of" in out
    out = run(
        "round", "--dry-run", "--optimizer", "odpo", "--reward-fn", spec, "--project", project
    ).output
    assert "100 ODPO steps of 8 prompts x 4 samples (of" in out
    out = run(
        "round", "--dry-run", "--optimizer", "bon", "--reward-fn", spec, "--project", project
    ).output
    assert "100 BON steps of 8 prompts x 4 samples (of" in out
    res = run("round", "--optimizer", "sgd", "--project", project, ok=False)
    assert res.exit_code == 2 and "'sgd' is not one of 'auto', 'ppo', 'rloo', 'bon', 'odpo'" in (
        res.output
    )


def test_bon_command_passes_its_own_settings(project, tmp_path, monkeypatch):
    """`rankloop bon --bon-n --bon-margin` reach the trainer's config, beside the shared ones."""
    calls: list = []
    record_trainer(monkeypatch, calls)
    spec = f"{tmp_path / 'toy_rewards.py'}:brevity"
    run("bon", "--bon-n", "3", "--bon-margin", "1.5", "--steps", "7", "--reward-fn", spec,
        "--project", project)  # fmt: skip
    ((config, kw),) = calls
    assert (config.bon_n, config.bon_margin, config.steps) == (3, 1.5, 7)
    assert kw["optimizer"] == "bon"


def test_auto_picks_ppo_for_a_reward_function_and_best_of_n_for_a_reward_model(project):
    p = Project.find(project)
    assert p.config.rounds.optimizer == "auto"
    assert rounds.round_optimizer(p) == "bon"
    assert rounds.round_optimizer(p, None, ["toy_rewards.py:brevity"]) == "ppo"
    assert rounds.round_optimizer(p, "auto", ["toy_rewards.py:brevity"]) == "ppo"
    assert rounds.round_optimizer(p, "rloo", ["toy_rewards.py:brevity"]) == "rloo"  # given wins
    p.config.rounds.optimizer = "odpo"
    assert rounds.round_optimizer(p, None, ["toy_rewards.py:brevity"]) == "odpo"
    p.close()


def test_a_bad_optimizer_setting_is_one_clear_error(project):
    p = Project.find(project)
    p.config.rounds.optimizer = "sgd"
    with pytest.raises(
        ConfigError, match="optimizer 'sgd': expected 'auto' or one of ppo, rloo, bon, odpo"
    ):
        rounds.round_optimizer(p)
    with pytest.raises(ConfigError, match=r"\[rounds\] optimizer = 'sgd'"):
        p.config.rounds.validate()
    p.close()


def test_rloo_command_trains_records_and_status_shows_it(project, tmp_path):
    """A real (tiny) RLOO run through the command: the policy, its optimiser in the store and
    in `rankloop status`, and the next round samples from it."""
    spec = f"{tmp_path / 'toy_rewards.py'}:brevity"
    out = run(
        "rloo",
        "--round",
        "0",
        "--steps",
        "2",
        "--batch-size",
        "2",
        "--mini-batch-size",
        "2",
        "--rloo-k",
        "2",
        "--ppo-epochs",
        "1",
        "--max-new-tokens",
        "6",
        "--eval-every",
        "0",
        "--checkpoint-every",
        "1",
        "--reward-fn",
        spec,
        "--project",
        project,
    ).output
    assert "RLOO round 0" in out and "Saved the policy to" in out
    policy = project / "rounds/0/policy"
    assert (policy / "adapter_config.json").exists() and not (policy / "critic.pt").exists()
    history = json.loads((policy / "ppo_history.json").read_text())
    assert [h["step"] for h in history] == [1, 2]
    assert "policy/baseline_mean" in history[0] and "val/mean" not in history[0]
    p = Project.find(project)
    r0 = p.store.round(0)
    assert (r0.policy, r0.optimizer, r0.metrics["ppo/steps"]) == (
        "rounds/0/policy",
        "rloo",
        2.0,
    )  # relative
    assert rounds.trained_policy(p, 0) == rounds.start_policy(p, 1) == str(policy)
    # the report's rounds table (and so the admin Rounds view) names the optimiser
    snap = report.snapshot(p.store)
    assert [(r.number, r.optimizer) for r in snap.rounds] == [(0, "rloo")]
    text = re.sub(r"(<[^>]+>)+", "|", report.render_html(report.with_statistics(snap, n_boot=10)))
    assert "|minutes|optimizer|" in text and "|RLOO|" in text
    p.close()
    status = run("status", "--project", project).output
    assert "optimizer" in status and "rloo" in status
    # PPO cannot resume RLOO's checkpoints: one clear line, the policy left as it was
    res = run(
        "ppo", "--round", "0", "--steps", "3", "--reward-fn", spec, "--resume",
        "--project", project, ok=False,
    )  # fmt: skip
    assert res.exit_code == 1 and "was written by rloo, not ppo" in res.output
    assert (policy / "adapter_config.json").exists()


def test_leaderboard_names_the_optimiser_that_trained_each_policy():
    """Round R's responses come from the policy round R - 1 trained."""
    from rankloop.data.leaderboard import trained_by

    got = trained_by([Round(0, optimizer="ppo"), Round(1, optimizer="rloo"), Round(2)])
    assert got == {1: "ppo", 2: "rloo"}


def test_start_and_trained_policy_of_a_round(project):
    p = Project.find(project)
    base = p.config.models.policy
    assert rounds.start_policy(p, 0) == base and rounds.trained_policy(p, 0) is None
    with pytest.raises(ProjectError, match="round 0 has no trained policy yet"):
        rounds.start_policy(p, 1)
    p.store.save_round(Round(0, policy="rounds/0/policy", optimizer="ppo"))
    # the store keeps it relative to the project; the rule hands back a path to load
    assert (
        rounds.start_policy(p, 1) == rounds.trained_policy(p, 0) == str(p.root / "rounds/0/policy")
    )
    assert rounds.optimizer_of(p, 0) == "ppo" and rounds.optimizer_of(p, 1) is None
    p.close()


def test_migration_0021_records_ppo_for_the_older_rounds_with_a_policy(tmp_path):
    db = sqlite_utils.Database(tmp_path / "old.db")
    migrate(db, upto="0020_round_curves")
    db["rounds"].insert_all(
        [
            {"number": 0, "policy": "rounds/0/policy", "metrics": "{}"},
            {"number": 1, "policy": None, "reward_model": "rounds/1/reward", "metrics": "{}"},
        ]
    )
    assert migrate(db, upto="0021_round_optimizer") == ["0021_round_optimizer"]
    store = Store(db)
    assert [(r.number, r.policy, r.optimizer) for r in store.rounds()] == [
        (0, "rounds/0/policy", "ppo"),
        (1, None, None),
    ]
    store.save_round(Round(1, policy="rounds/1/policy", optimizer="rloo"))
    store.save_round(Round(1, metrics={"x": 1.0}))  # a later update keeps the optimiser
    assert store.round(1).optimizer == "rloo" and store.round(1).metrics == {"x": 1.0}


def test_online_dpo_gets_the_rounds_own_labelled_pairs(project, tmp_path, monkeypatch):
    """`round_label_pairs`: round 0's untied pairs whose two responses round 0's policy
    sampled, on training prompts; ties, imported and older responses, later rounds and the
    evaluation prompts are left out. `rankloop odpo` hands exactly those to the trainer,
    `rankloop rloo` none."""
    from rankloop.data.records import Label, Response

    p = Project.find(project)
    store = p.store
    store.add_prompts([Prompt.from_text(f"more {i}") for i in range(20)])  # some held out
    train, held = rounds.split_prompts(store.prompts(), p.config.rounds.eval_fraction)
    ann, _ = store.add_annotator("ann")

    def responses(prompt, rnd, texts, source="generated"):
        return store.add_responses(
            Response(prompt.id, t, round=rnd, source=source, sample_index=i)
            for i, t in enumerate(texts)
        )

    def label(prompt, rnd, ids, ranking, source="human"):
        cid = store.add_comparison(prompt.id, ids, round=rnd)
        store.add_label(Label(cid, ann.id, ranking, source=source))

    a, b, c = responses(train[0], 0, ["a", "b", "c"])
    label(train[0], 0, [a, b, c], ((b,), (a, c)))  # b > a, b > c, a = c (a tie)
    d, e = responses(train[1], 0, ["d", "e"])
    (imported,) = responses(train[1], 0, ["x"], source="upload")
    label(train[1], 0, [d, e, imported], ((e,), (imported,), (d,)))  # only e > d is own
    f, g = responses(held[0], 0, ["f", "g"])
    label(held[0], 0, [f, g], ((f,), (g,)))  # an evaluation prompt: held out
    h, i = responses(train[2], 1, ["h", "i"])
    label(train[2], 1, [h, i], ((h,), (i,)))  # round 1's: not round 0's pairs
    pairs = rounds.round_label_pairs(p, 0, train)
    assert [(x.chosen, x.rejected) for x in pairs] == [("b", "a"), ("b", "c"), ("e", "d")]
    assert len(rounds.round_label_pairs(p, 1, train)) == 1
    p.close()

    spec = f"{tmp_path / 'toy_rewards.py'}:brevity"
    calls: list = []
    record_trainer(monkeypatch, calls)
    out = run("odpo", "--round", "0", "--reward-fn", spec, "--project", project).output
    assert "ODPO round 0" in out and "3 labelled pairs of round 0's candidates" in out
    run("rloo", "--round", "0", "--reward-fn", spec, "--project", project)
    (_, odpo_kw), (_, rloo_kw) = calls
    assert odpo_kw["optimizer"] == "odpo" and rloo_kw["preferences"] == []
    assert [(x.chosen, x.rejected) for x in odpo_kw["preferences"]] == [
        ("b", "a"),
        ("b", "c"),
        ("e", "d"),
    ]
    p = Project.find(project)
    assert p.store.round(0).optimizer == "rloo"
    p.close()
