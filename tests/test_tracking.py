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
    with pytest.raises(ConfigError, match=r"\[reward\] log_with = 'mlflow': 'mlflow' is not one "
                                          r"of tensorboard, trackio, wandb"):
        tracking.parse_trackers("mlflow", "reward")


def test_a_missing_tracker_package_says_how_to_install_it(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "trackio" else real(name, *a))
    tracking.check_installed(["tensorboard"])
    with pytest.raises(ConfigError, match=r"needs the trackio package: pip install "
                                          r"'rankloop\[trackio\]'"):
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
