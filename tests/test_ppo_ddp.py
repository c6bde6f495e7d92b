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


@pytest.mark.slow
def test_two_processes_stay_in_sync(tiny_lm_dir, tmp_path):
    ranks = launch_two(tiny_lm_dir, tmp_path)
    assert [r["world"] for r in ranks] == [2, 2]
    # DDP averaged the gradients: both processes hold the same adapters and critic after
    # training on different prompts
    assert ranks[0]["params"].keys() == ranks[1]["params"].keys()
    for name, value in ranks[0]["params"].items():
        assert ranks[1]["params"][name] == pytest.approx(value, rel=1e-6, abs=1e-9), name
    # metrics are reduced over processes: both report the same numbers
    for a, b in zip(ranks[0]["history"], ranks[1]["history"]):
        assert a["objective/scores"] == pytest.approx(b["objective/scores"])
    assert (tmp_path / "adapter_config.json").exists()


@pytest.mark.slow
def test_best_of_n_processes_that_keep_different_counts_stay_in_sync(tiny_lm_dir, tmp_path):
    """Process 0 keeps no sample, process 1 keeps some: process 0 runs as many (masked)
    mini-batches, so DDP neither hangs nor lets the two adapters drift apart."""
    ranks = launch_two(tiny_lm_dir, tmp_path, "bon")
    for name, value in ranks[0]["params"].items():
        assert ranks[1]["params"][name] == pytest.approx(value, rel=1e-6, abs=1e-9), name
    # the kept fraction is the mean over processes: 0 on one, > 0 on the other
    kept = [h["policy/kept_fraction"] for h in ranks[0]["history"]]
    assert max(kept) <= 0.5 and kept == [h["policy/kept_fraction"] for h in ranks[1]["history"]]
    assert max(kept) > 0  # process 1 kept some, so both stepped on its gradients
    assert ranks[0]["history"][-1]["objective/kl"] > 0  # the adapters did move
