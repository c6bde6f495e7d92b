"""Reward training in 2 processes (`accelerate launch`, DDP over gloo) follows the loss
trajectory of 1 process with twice the batch."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


@pytest.mark.slow
def test_two_processes_follow_one_process_with_twice_the_batch(tiny_lm_dir, tmp_path):
    env = dict(
        os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", PYTHONPATH=str(HERE)
    )
    worker = str(HERE / "reward_ddp_worker.py")
    accelerate = shutil.which("accelerate", path=str(Path(sys.executable).parent))
    config = HERE.parent / "docs" / "accelerate" / "cpu-ddp.yaml"
    two, one = tmp_path / "two", tmp_path / "one"
    subprocess.run(
        [
            accelerate,
            "launch",
            "--config_file",
            str(config),
            worker,
            str(tiny_lm_dir),
            str(two),
            "1",
        ],
        check=True,
        env=env,
        timeout=600,
    )
    subprocess.run(
        [sys.executable, worker, str(tiny_lm_dir), str(one), "2"], check=True, env=env, timeout=600
    )
    r0, r1 = (json.loads((two / f"rank-{r}.json").read_text()) for r in (0, 1))
    single = json.loads((one / "rank-0.json").read_text())
    assert (r0["world"], single["world"]) == (2, 1)
    assert r0["steps"] == single["steps"] >= 8
    # Step s of the 2-process run: rank 0 takes batch 2s, rank 1 batch 2s+1, and DDP averages
    # their gradients; the single process accumulates the same two batches (its logged loss is
    # the second one's). Same weights before every step, so the same losses: float32 sums
    # in another order differ by ~1e-6; 1e-4 is the stated tolerance.
    assert r1["losses"] == pytest.approx(single["losses"], rel=1e-4, abs=1e-4)
    assert r0["losses"] != pytest.approx(r1["losses"], rel=1e-3)  # a different batch
    assert r0["scores"] == pytest.approx(single["scores"], rel=1e-4, abs=1e-4)
    assert r0["accuracy"] == r1["accuracy"] == single["accuracy"]
    # it learned the task: keyword texts above the others
    s = r0["scores"]
    assert min(s[0], s[2]) > max(s[1], s[3])
