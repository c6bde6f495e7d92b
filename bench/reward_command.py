"""The reward trainer as a user waits for it: `rankloop train-reward` from start to exit against a
script that trains TRL's RewardTrainer on the same pairs for the same number of epochs.

Both run as fresh processes (imports, model loading, tokenising, training, saving all counted),
one after the other, on 256 pairs of the simulated keyword task of bench/reward.py, LoRA r=16.
rankloop runs with its defaults (it holds out 10% of the prompts to pick its best epoch and may
stop early; `--epochs` is the most it runs); TRL with its defaults (gradient checkpointing,
lr 1e-4) and the same `--epochs`, saving its model at the end as a user's script would. Beside
the wall time, each reports its inner loop: rankloop's optimisation loop, TRL's train_runtime.

Usage:  flock /tmp/rankloop-cpu.lock .venv/bin/python bench/reward_command.py [--epochs 4]
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from reward import data

TRL_SCRIPT = """
import json, sys
sys.path.insert(0, sys.argv[4])
from reward import trl_trainer  # bench/reward.py: TRL's RewardTrainer, its defaults, LoRA r=16

pairs, epochs, out = json.load(open(sys.argv[1])), float(sys.argv[2]), sys.argv[3]
trainer, _ = trl_trainer(pairs, lora=True, epochs=epochs, base=sys.argv[5] or None)
metrics = trainer.train().metrics
trainer.save_model(out)
print("RESULT " + json.dumps({"train_runtime": metrics["train_runtime"],
                              "steps": trainer.state.global_step}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=256)
    ap.add_argument("--epochs", type=float, default=4.0)
    ap.add_argument(
        "--base", default=None, help="Another backbone for both (a small local one to smoke-test)."
    )
    ap.add_argument("--out", default=None, help="Write the results as JSON here.")
    args = ap.parse_args()
    from rankloop.app.project import Project
    from rankloop.data.records import Label

    train, _ = data(args.pairs, 0, seed=0)
    tmp = Path(tempfile.mkdtemp())
    project = Project.init(tmp / "proj", **({"reward_model": args.base} if args.base else {}))
    store = project.store
    ann = store.external_annotator("bench")
    labels = []
    for p, c, r in train:
        cid = store.add_comparison_texts(p, [c, r])
        labels.append(Label.pairwise(cid, ann.id, store.comparison(cid).response_ids, "A"))
    store.add_labels(labels)
    project.close()
    (tmp / "pairs.json").write_text(json.dumps(train))
    (tmp / "trl_script.py").write_text(TRL_SCRIPT)

    t0 = time.perf_counter()
    trl = subprocess.run(
        check=False,
        args=[
            sys.executable,
            str(tmp / "trl_script.py"),
            str(tmp / "pairs.json"),
            str(args.epochs),
            str(tmp / "trl-out"),
            str(Path(__file__).parent),
            args.base or "",
        ],
        capture_output=True,
        text=True,
    )
    trl_wall = time.perf_counter() - t0
    if trl.returncode:
        sys.exit(trl.stderr[-3000:])
    trl_res = json.loads(trl.stdout.split("RESULT ", 1)[1])
    rankloop = shutil.which("rankloop") or str(Path(sys.executable).with_name("rankloop"))
    t0 = time.perf_counter()
    rl = subprocess.run(
        check=False,
        args=[
            rankloop,
            "train-reward",
            "--project",
            str(tmp / "proj"),
            "--epochs",
            str(args.epochs),
        ],
        capture_output=True,
        text=True,
    )
    rl_wall = time.perf_counter() - t0
    if rl.returncode:
        sys.exit(rl.stdout[-3000:] + rl.stderr[-3000:])
    print(rl.stdout)
    steps, loop = (
        float(x) for x in re.search(r"(\d+) steps in \d+ s, loop (\d+) s", rl.stdout).groups()
    )
    res = {
        "pairs": args.pairs,
        "epochs": args.epochs,
        "trl": {"wall_s": trl_wall, "loop_s": trl_res["train_runtime"], "steps": trl_res["steps"]},
        "rankloop": {"wall_s": rl_wall, "loop_s": loop, "steps": steps},
        "speedup_wall": trl_wall / rl_wall,
    }
    print(json.dumps(res, indent=1))
    print(
        f"whole command: rankloop {rl_wall:.0f} s, TRL script {trl_wall:.0f} s: "
        f"{trl_wall / rl_wall:.2f}x; inner loops: rankloop {loop:.0f} s for {steps:.0f} steps "
        f"({steps * 8 / loop:.2f} pairs/s), TRL {trl_res['train_runtime']:.0f} s for "
        f"{trl_res['steps']} steps ({trl_res['steps'] * 8 / trl_res['train_runtime']:.2f} "
        f"pairs/s)"
    )
    shutil.rmtree(tmp, ignore_errors=True)
    if args.out:
        Path(args.out).write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
