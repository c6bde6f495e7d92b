"""The multi-process path: `accelerate launch --cpu --num_processes 2` (gloo) on a tiny model."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


@pytest.mark.slow
def test_two_processes_stay_in_sync(tiny_lm_dir, tmp_path):
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
        ],
        check=True,
        env=env,
        timeout=300,
        cwd=HERE,
    )
    ranks = [json.loads((tmp_path / f"rank-{r}.json").read_text()) for r in (0, 1)]
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
