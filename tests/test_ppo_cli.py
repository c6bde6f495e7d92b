"""`rankloop ppo` and `rankloop train-dpo` on a tiny project, end to end through the CLI."""

from __future__ import annotations

import json
import sys
import textwrap

import pytest
from click.testing import CliRunner

from rankloop.app.cli import cli
from rankloop.app.project import Project
from rankloop.data.records import Label


def run(*args, ok=True):
    result = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
    if ok:
        assert result.exit_code == 0, result.output
    return result


@pytest.fixture
def project(tmp_path, tiny_lm_dir, monkeypatch):
    (tmp_path / "toy_rewards.py").write_text(
        textwrap.dedent("""
        def brevity(prompts, responses):
            return [-len(r) / 10.0 for r in responses]
    """)
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "prompts.jsonl").write_text(
        "".join(
            json.dumps({"prompt": p}) + "\n"
            for p in ("hello", "write a poem", "explain gears", "good or bad")
        )
    )
    root = tmp_path / "proj"
    run("init", root, "--policy", tiny_lm_dir, "--reward-model", tiny_lm_dir)
    run("import", tmp_path / "prompts.jsonl", "--project", root)
    yield root
    sys.modules.pop("toy_rewards", None)


SMALL = (
    "--batch-size",
    "4",
    "--mini-batch-size",
    "2",
    "--ppo-epochs",
    "1",
    "--max-new-tokens",
    "6",
)


def test_ppo_with_reward_fn_saves_policy_records_round_and_next_round_samples(project):
    out = run(
        "ppo",
        "--round",
        "0",
        "--steps",
        "2",
        "--reward-fn",
        "toy_rewards:brevity",
        *SMALL,
        "--project",
        project,
    ).output
    assert "Saved the policy to" in out
    policy = project / "rounds/0/policy"
    assert (policy / "adapter_config.json").exists()
    assert json.loads((policy / "adapter_config.json").read_text())["base_model_name_or_path"]
    p = Project.find(project)
    r0 = p.store.round(0)
    assert r0.policy == "rounds/0/policy"  # relative: the project folder can move
    assert r0.metrics["ppo/steps"] == 2.0
    assert set(r0.metrics) >= {"ppo/score_first", "ppo/score_last", "ppo/kl_last"}
    p.close()
    # the next round samples from the saved adapter
    run("generate", "--round", "1", "--n", "2", "--max-new-tokens", "4", "--project", project)
    p = Project.find(project)
    responses = p.store.responses(round=1)
    assert len(responses) == 8 and {r.policy for r in responses} == {"rounds/0/policy"}
    p.close()
    # --resume continues from the final checkpoint: asking for 3 steps runs one more
    run(
        "ppo",
        "--round",
        "0",
        "--steps",
        "3",
        "--reward-fn",
        "toy_rewards:brevity",
        *SMALL,
        "--resume",
        "--project",
        project,
    )
    history = json.loads((policy / "ppo_history.json").read_text())
    assert [h["step"] for h in history] == [1, 2, 3]


def test_user_errors_are_one_line(project):
    res = run("ppo", "--steps", "1", "--reward-fn", "nope_module:f", "--project", project, ok=False)
    assert res.exit_code == 1 and "cannot import 'nope_module'" in res.output
    assert "Traceback" not in res.output
    res = run(
        "ppo",
        "--steps",
        "1",
        "--reward-fn",
        "toy_rewards:brevity",
        "--rto",
        "--project",
        project,
        ok=False,
    )
    assert "run `rankloop train-dpo --round 0` first" in res.output
    res = run(
        "ppo",
        "--steps",
        "1",
        "--mini-batch-size",
        "3",
        "--reward-fn",
        "toy_rewards:brevity",
        "--project",
        project,
        ok=False,
    )
    assert "[ppo] mini_batch_size = 3: must divide batch_size" in res.output
    res = run("ppo", "--steps", "1", "--project", project, ok=False)
    assert "no round has a reward model yet" in res.output
    res = run("train-dpo", "--project", project, ok=False)
    assert "no untied preference pairs" in res.output


def test_train_dpo_then_ppo_with_rto(project):
    p = Project.find(project)
    prompts = p.store.prompts()
    annot, _ = p.store.add_annotator("ann")
    for prompt in prompts[:3]:
        cid = p.store.add_comparison_texts(prompt, ["good dog yes", "bad bad no"])
        comp = p.store.comparison(cid)
        p.store.add_label(Label.pairwise(cid, annot.id, comp.response_ids, "A"))
    p.close()
    run("train-dpo", "--round", "0", "--epochs", "2", "--batch-size", "2", "--project", project)
    assert (project / "rounds/0/dpo/adapter_config.json").exists()
    # --batch-size is [dpo] batch_size: 3 pairs in steps of 2, twice = 4 steps (default 4: 2)
    assert len(json.loads((project / "rounds/0/dpo/dpo_history.json").read_text())) == 4
    p = Project.find(project)
    assert p.store.round(0).metrics["dpo/pairs"] == 3.0
    p.close()
    run(
        "ppo",
        "--round",
        "0",
        "--steps",
        "1",
        "--rto",
        "--reward-fn",
        "toy_rewards:brevity",
        *SMALL,
        "--project",
        project,
    )
    history = json.loads((project / "rounds/0/policy/ppo_history.json").read_text())
    assert "objective/rto_reward" in history[0] and history[0]["objective/rto_reward"] != 0.0


def test_dpo_settings_are_their_own_section(project):
    toml = (project / "rankloop.toml").read_text()
    assert "\n[dpo]\n" in toml and "\ndpo_beta" not in toml  # [ppo] odpo_beta is another
    head, dpo = toml.split("\n[dpo]\n")

    def with_dpo(old: str, new: str) -> str:
        assert old in dpo
        return head + "\n[dpo]\n" + dpo.replace(old, new, 1)

    p = Project.find(project)
    assert (p.config.dpo.beta, p.config.dpo.batch_size, p.config.dpo.epochs) == (0.1, 4, 1)
    p.close()
    (project / "rankloop.toml").write_text(with_dpo("\nbeta = 0.1\n", "\nbeta = 0.3\n"))
    p = Project.find(project)
    assert p.config.dpo.beta == 0.3
    p.close()
    (project / "rankloop.toml").write_text(with_dpo("\nlr = 5e-05\n", "\nlr = -1.0\n"))
    res = run("train-dpo", "--project", project, ok=False)
    assert "[dpo] lr = -1.0: must be > 0" in res.output
    # a project written before [dpo] existed: one message saying where the setting went
    (project / "rankloop.toml").write_text(toml.replace("\n[ppo]\n", "\n[ppo]\ndpo_beta = 0.2\n"))
    res = run("train-dpo", "--project", project, ok=False)
    assert res.exit_code == 1 and "[ppo] dpo_beta is now [dpo] beta" in res.output
    assert "Traceback" not in res.output


def test_the_closing_line_says_what_stopped_the_run():
    from rankloop.app.commands.ppo import describe

    s = {
        "ppo/score_first": 0.1,
        "ppo/score_last": 0.5,
        "ppo/seconds_per_step": 2.0,
        "ppo/eval_score_start": 0.2,
        "ppo/eval_score_final": 0.4,
        "ppo/kept_step": 10.0,
        "ppo/kl_final": 3.0,
        "ppo/steps": 15.0,
        "ppo/stopped_early": 1.0,
        "ppo/over_kl_budget": 1.0,
    }
    head = (
        "training score 0.100 -> 0.500, 2.00 s/step; held-out score 0.200 -> 0.400; saved the "
        "policy of step 10 (KL 3.000), stopped "
    )
    assert describe(s) == head + "at the KL budget ([ppo] kl_budget) after 15 steps"
    assert describe({**s, "ppo/over_kl_budget": 0.0}) == head + "early after 15 steps"
