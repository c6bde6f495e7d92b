"""The multi-process path: `accelerate launch --cpu --num_processes 2` (gloo) on a tiny model."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


def launch_two(tiny_lm_dir, tmp_path, *args) -> list[dict]:
    """Run tests/ppo_ddp_worker.py in two processes; each one's parameters and history."""
    accelerate = shutil.which("accelerate", path=str(Path(sys.executable).parent))
    assert accelerate, "accelerate's launcher is installed with the package"
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    # the shipped config: two processes, DDP over gloo (no GPU here)
    config = HERE.parent / "docs" / "accelerate" / "cpu-ddp.yaml"
    subprocess.run(
        [
            accelerate,
            "launch",
            "--config_file",
            str(config),
            str(HERE / "ppo_ddp_worker.py"),
            str(tiny_lm_dir),
            str(tmp_path),
            *args,
        ],
        check=True,
        env=env,
        timeout=300,
        cwd=HERE,
    )
    return [json.loads((tmp_path / f"rank-{r}.json").read_text()) for r in (0, 1)]


def assert_same_params(ranks: list[dict]) -> None:
    assert ranks[0]["params"].keys() == ranks[1]["params"].keys()
    for name, value in ranks[0]["params"].items():
        assert ranks[1]["params"][name] == pytest.approx(value, rel=1e-6, abs=1e-9), name


@pytest.mark.slow
def test_two_processes_stay_in_sync(tiny_lm_dir, tmp_path):
    ranks = launch_two(tiny_lm_dir, tmp_path)
    assert [r["world"] for r in ranks] == [2, 2]
    # DDP averaged the gradients: both processes hold the same adapters and critic after
    # training on different prompts
    assert_same_params(ranks)
    # metrics are reduced over processes: both report the same numbers
    for a, b in zip(ranks[0]["history"], ranks[1]["history"]):
        assert a["objective/scores"] == pytest.approx(b["objective/scores"])
    assert (tmp_path / "adapter_config.json").exists()


@pytest.mark.slow
def test_best_of_n_processes_that_keep_different_counts_stay_in_sync(tiny_lm_dir, tmp_path):
    """Process 0 keeps no sample, process 1 keeps some: process 0 runs as many (masked)
    mini-batches, so DDP neither hangs nor lets the two adapters drift apart."""
    ranks = launch_two(tiny_lm_dir, tmp_path, "bon")
    assert_same_params(ranks)
    # the kept fraction is the mean over processes: 0 on one, > 0 on the other
    kept = [h["policy/kept_fraction"] for h in ranks[0]["history"]]
    assert max(kept) <= 0.5 and kept == [h["policy/kept_fraction"] for h in ranks[1]["history"]]
    assert max(kept) > 0  # process 1 kept some, so both stepped on its gradients
    assert ranks[0]["history"][-1]["objective/kl"] > 0  # the adapters did move


@pytest.mark.slow
def test_rloo_processes_stay_in_sync_without_a_critic(tiny_lm_dir, tmp_path):
    ranks = launch_two(tiny_lm_dir, tmp_path, "rloo")
    assert_same_params(ranks)
    assert not any("critic" in name or "v_head" in name for name in ranks[0]["params"])
    for a, b in zip(ranks[0]["history"], ranks[1]["history"]):
        assert a["objective/scores"] == pytest.approx(b["objective/scores"])
    assert ranks[0]["history"][-1]["objective/kl"] > 0  # the adapters did move


@pytest.mark.slow
def test_online_dpo_processes_with_different_pair_counts_stay_in_sync(tiny_lm_dir, tmp_path):
    """Process 0's samples all tie (no reward-model pair), process 1's do not; both take one
    labelled pair a step. The mini-batches run alike on both, so DDP neither hangs nor lets
    the adapters drift apart, and the logged counts are the means over the processes."""
    ranks = launch_two(tiny_lm_dir, tmp_path, "odpo")
    assert_same_params(ranks)
    h0, h1 = ranks[0]["history"], ranks[1]["history"]
    assert [h["policy/pairs_kept"] for h in h0] == [h["policy/pairs_kept"] for h in h1]
    kept = [h["policy/pairs_kept"] for h in h0]
    assert max(kept) <= 0.5 and max(kept) > 0  # none on process 0, some on process 1
    assert [h["policy/label_pairs"] for h in h0] == [1.0, 1.0]
    assert h0[-1]["objective/kl"] > 0
