"""The reward trainer as a user waits for it: `rankloop train-reward` from start to exit against a
script that trains TRL's RewardTrainer on the same pairs for the same number of epochs.

Both run as fresh processes (imports, model loading, tokenising, training, saving all counted),
alternating A B A B (`--repeats` pairs) so that a drift in the machine's pace hits both alike,
on 256 pairs of the simulated keyword task of bench/reward.py, LoRA r=16 on every linear layer,
batch 8. rankloop runs with its defaults (10% of the prompts held out for the accuracy and the
probe baseline, the probe's warm start, `stats_sample` comparisons scored for the statistics);
TRL with its defaults (lr 1e-4) plus bf16 and gradient checkpointing, and the same `--epochs`,
saving its model at the end as a user's script would. Beside the wall time, each reports its
inner loop (rankloop's optimisation loop, TRL's train_runtime), and rankloop its phases.

Usage:  flock /tmp/rankloop-cpu.lock .venv/bin/python bench/reward_command.py [--epochs 1] [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import math
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
    ap.add_argument("--repeats", type=int, default=2, help="A-B pairs (TRL, then rankloop).")
    ap.add_argument(
        "--rankloop-args", default="", help="More options for `rankloop train-reward` (one string)."
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
    trl_args = [
        sys.executable,
        str(tmp / "trl_script.py"),
        str(tmp / "pairs.json"),
        str(args.epochs),
        str(tmp / "trl-out"),
        str(Path(__file__).parent),
        args.base or "",
    ]
    rankloop = shutil.which("rankloop") or str(Path(sys.executable).with_name("rankloop"))
    rows = []
    for rep in range(args.repeats):  # A B A B: a drift in the machine's pace hits both alike
        trl_wall, out = timed(trl_args)
        trl_res = json.loads(out.split("RESULT ", 1)[1])
        proj = tmp / f"proj-{rep}"  # a fresh copy: the command finds no earlier model
        shutil.copytree(tmp / "proj", proj)
        rl_wall, out = timed(
            [rankloop, "train-reward", "--project", str(proj), "--epochs", str(args.epochs)]
            + args.rankloop_args.split()
        )
        print(out.strip().splitlines()[-5:], flush=True)
        steps, loop = (
            float(x) for x in re.search(r"(\d+) steps in \d+ s, loop (\d+) s", out).groups()
        )
        phases = {k: float(v) for k, v in re.findall(r"(\w+) ([\d.]+) s", out.split("time: ")[-1])}
        rows.append(
            {
                "trl": {
                    "wall_s": trl_wall,
                    "loop_s": trl_res["train_runtime"],
                    "steps": trl_res["steps"],
                },
                "rankloop": {"wall_s": rl_wall, "loop_s": loop, "steps": steps, "phases": phases},
                "speedup_wall": trl_wall / rl_wall,
            }
        )
        print(
            f"pair {rep + 1}: whole command rankloop {rl_wall:.0f} s, TRL script {trl_wall:.0f} s: "
            f"{trl_wall / rl_wall:.2f}x; inner loops: rankloop {loop:.0f} s for {steps:.0f} "
            f"steps ({steps * 8 / loop:.2f} pairs/s), TRL {trl_res['train_runtime']:.0f} s for "
            f"{trl_res['steps']} steps ({trl_res['steps'] * 8 / trl_res['train_runtime']:.2f} "
            f"pairs/s); rankloop's phases {phases}",
            flush=True,
        )
    ratios = [r["speedup_wall"] for r in rows]
    res = {
        "pairs": args.pairs,
        "epochs": args.epochs,
        "rankloop_args": args.rankloop_args,
        "runs": rows,
        "speedup_wall": ratios,
    }
    print(
        f"whole command, {len(ratios)} A-B pairs: "
        + ", ".join(f"{x:.2f}x" for x in ratios)
        + f" (geometric mean {math.exp(sum(map(math.log, ratios)) / len(ratios)):.2f}x)"
    )
    shutil.rmtree(tmp, ignore_errors=True)
    if args.out:
        Path(args.out).write_text(json.dumps(res, indent=1))


def timed(cmd: list[str]) -> tuple[float, str]:
    """(seconds from start to exit, stdout) of a fresh process; its stderr if it fails."""
    t0 = time.perf_counter()
    run = subprocess.run(cmd, check=False, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if run.returncode:
        sys.exit(run.stdout[-3000:] + run.stderr[-3000:])
    return wall, run.stdout


if __name__ == "__main__":
    main()
