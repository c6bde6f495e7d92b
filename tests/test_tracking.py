"""lm/tracking.py: tracker names, missing packages, and files kept under the log folder."""

from __future__ import annotations

import importlib.util
import os
import time
from pathlib import Path

import pytest
from trackers import tensorboard_scalars, trackio_scalars, wandb_scalars

from rankloop.lm import tracking
from rankloop.lm.device import new_accelerator
from rankloop.settings import ConfigError


def test_tracker_names_are_checked_with_the_setting_named():
    assert tracking.parse_trackers(" tensorboard, wandb ", "ppo") == ["tensorboard", "wandb"]
    assert tracking.parse_trackers("", "reward") == []
    with pytest.raises(
        ConfigError,
        match=r"\[reward\] log_with = 'mlflow': 'mlflow' is not one "
        r"of tensorboard, trackio, wandb",
    ):
        tracking.parse_trackers("mlflow", "reward")


def test_a_missing_tracker_package_says_how_to_install_it(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "trackio" else real(name, *a)
    )
    tracking.check_installed(["tensorboard"])
    with pytest.raises(
        ConfigError,
        match=r"needs the trackio package: pip install "
        r"'rankloop\[trackio\]'",
    ):
        tracking.check_installed(["tensorboard", "trackio"])


def wait_for(read, key, n, timeout=30.0):
    """W&B's service writes the offline run file shortly after `finish` returns."""
    deadline = time.monotonic() + timeout
    while True:
        got = read().get(key, [])
        if len(got) >= n or time.monotonic() > deadline:
            return got
        time.sleep(0.2)


def test_all_three_trackers_write_under_the_log_folder(tmp_path):
    log_dir = tmp_path / "logs"
    trackers = tracking.parse_trackers("tensorboard,trackio,wandb", "ppo")
    kwargs = tracking.init_kwargs(trackers, log_dir)
    acc = new_accelerator(log_with=trackers, project_dir=str(log_dir))
    acc.init_trackers("rankloop-tracking-test", config={"lr": 0.5}, init_kwargs=kwargs)
    for step in (1, 2, 3):
        acc.log({"objective/kl": 0.25 * step}, step=step)
    acc.end_training()
    want = [(1, 0.25), (2, 0.5), (3, 0.75)]
    assert tensorboard_scalars(log_dir)["objective/kl"] == want
    assert wait_for(lambda: wandb_scalars(log_dir / "wandb"), "objective/kl", 3) == want
    trackio_dir = Path(os.environ["TRACKIO_DIR"])
    assert trackio_scalars(trackio_dir, "rankloop-tracking-test")["objective/kl"] == want


ALL = "tensorboard,trackio,wandb"


def curves(history, keys):
    return {
        k: [(h["step"], pytest.approx(h[k], rel=1e-5, abs=1e-6)) for h in history if k in h]
        for k in keys
    }


def read_all(log_dir: Path, project: str, keys, n):
    """Every tracker's scalars for `keys` (the last `n` points of each: trackio's folder is
    shared by the whole test session)."""
    tb = tensorboard_scalars(log_dir)
    wb = {k: wait_for(lambda: wandb_scalars(log_dir / "wandb"), k, n) for k in keys}
    tr = trackio_scalars(Path(os.environ["TRACKIO_DIR"]), project)
    return {
        name: {k: got.get(k, [])[-n:] for k in keys}
        for name, got in (("tensorboard", tb), ("wandb", wb), ("trackio", tr))
    }


def test_ppo_runs_write_the_documented_metrics_to_every_tracker(tmp_path, tiny_lm_dir):
    import torch

    from rankloop.data.records import Prompt
    from rankloop.ppo.config import PPOConfig
    from rankloop.ppo.train import train_ppo

    cfg = PPOConfig(
        steps=2,
        batch_size=4,
        mini_batch_size=2,
        ppo_epochs=1,
        max_new_tokens=4,
        log_samples=0,
        bf16="no",
        kl_target=0.0,
        eval_every=0,
        log_with=ALL,
    )
    prompts = [Prompt.from_text(t) for t in ("hello", "a poem", "gears", "yes")]
    log_dir = tmp_path / "logs"
    result = train_ppo(
        cfg,
        policy=str(tiny_lm_dir),
        prompts=prompts,
        reward_fn=lambda ps, rs: torch.tensor([len(r) / 10 for r in rs]),
        out_dir=tmp_path / "policy",
        progress=False,
        log=None,
        log_dir=log_dir,
    )
    keys = ("objective/scores", "objective/kl", "policy/clipfrac", "val/var_explained")
    want = curves(result.history, keys)
    assert all(len(v) == 2 for v in want.values())
    for tracker, got in read_all(log_dir, "rankloop-ppo", keys, 2).items():
        assert got == want, tracker
    assert not (tmp_path / "policy" / "logs").exists()  # the project's logs/, not the policy's


def test_reward_runs_write_their_steps_to_every_tracker(tmp_path, tiny_lm_dir):
    from rankloop.reward.config import RewardConfig
    from rankloop.reward.pairs import pairwise_example
    from rankloop.reward.train import train_reward

    from simulate import simulate_pairs

    pairs = [
        pairwise_example(p, a, b) if win else pairwise_example(p, b, a)
        for p, a, b, win, _ in simulate_pairs(24, seed=3)
    ]
    cfg = RewardConfig(
        lora=False,
        epochs=1,
        batch_size=8,
        eval_fraction=0.25,
        bf16="no",
        compile="no",
        warmup_ratio=0.0,
        log_with=ALL,
    )
    log_dir = tmp_path / "logs"
    result = train_reward(
        pairs, cfg, tmp_path / "rm", base=str(tiny_lm_dir), progress=False, log_dir=log_dir
    )
    keys = ("reward/loss", "reward/lr")
    want = curves(result.history, keys)
    n = len(result.history)
    assert n >= 2 and all(len(v) == n for v in want.values())
    for tracker, got in read_all(log_dir, "rankloop-reward", keys, n).items():
        assert got == want, tracker
    # the run ends with its held-out metrics at the last step
    final = read_all(log_dir, "rankloop-reward", ("reward/accuracy",), 1)
    assert {t: g["reward/accuracy"] for t, g in final.items()} == {
        t: [(n, pytest.approx(result.metrics["reward/accuracy"]))] for t in final
    }
