"""A project folder moved or copied to another place keeps working (issue 20, point 2): every
model path the store keeps is relative to the project."""

from __future__ import annotations

import shutil

from click.testing import CliRunner
from test_rounds import labeled_round_0, letters

from rankloop.app import rounds
from rankloop.app.cli import cli
from rankloop.app.project import Project
from rankloop.app.simulate import simulate


def test_a_copied_project_with_two_rounds_runs_status_leaderboard_and_round(tmp_path, tiny_lm_dir):
    quiet = {"log": lambda m: None, "progress": False}
    p = labeled_round_0(tmp_path / "here", tiny_lm_dir)
    for _ in range(2):
        rounds.run_round(p, rounds.RoundSettings.of(p), **quiet)
        simulate(p.store, letters, p.config.labeling, annotators=2, noise=0.1, progress=False)
    assert p.store.current_round() == 2
    kept = {r.number: (r.policy, r.reward_model) for r in p.store.rounds()}
    assert kept[0] == ("rounds/0/policy", "rounds/0/reward")
    assert kept[1] == ("rounds/1/policy", "rounds/1/reward")
    policies = {r.policy for r in p.store.responses()}
    assert policies == {str(tiny_lm_dir), "rounds/0/policy", "rounds/1/policy"}
    p.close()

    there = tmp_path / "elsewhere" / "copy"
    shutil.copytree(tmp_path / "here", there)
    shutil.rmtree(tmp_path / "here")  # nothing may still point into the old folder
    run = CliRunner()
    for args in (["status"], ["leaderboard"], ["round"]):
        res = run.invoke(cli, [*args, "--project", str(there)])
        assert res.exit_code == 0, (args, res.output)
    q = Project.find(there)
    assert q.store.current_round() == 3
    assert q.store.round(2).policy == "rounds/2/policy" and (there / "rounds/2/policy").is_dir()
    # round 3's candidates were sampled from round 2's policy, recorded by its project path
    assert {r.policy for r in q.store.responses() if r.round == 3} == {"rounds/2/policy"}
    q.close()


def test_an_old_absolute_round_path_is_found_under_the_moved_project(tmp_path, tiny_lm_dir):
    p = Project.init(tmp_path / "new", policy=str(tiny_lm_dir))
    (p.root / "rounds/0/policy").mkdir(parents=True)
    gone = "/somewhere/that/was/the/project/rounds/0/policy"
    assert p.resolve(gone) == str(p.root / "rounds/0/policy")
    assert p.resolve("rounds/0/policy") == str(p.root / "rounds/0/policy")
    assert p.resolve("HuggingFaceTB/SmolLM2-135M-Instruct") == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert p.stored(p.root / "rounds/0/policy") == "rounds/0/policy"
    assert p.stored(tiny_lm_dir) == str(tiny_lm_dir)
    p.close()
