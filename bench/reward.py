"""Reward-trainer throughput: rankloop vs TRL's RewardTrainer, side by side in one run.

Setting (issue 4): SmolLM2-135M backbone, 256 simulated preference pairs (prompt ~30 tokens,
responses ~40-60 tokens), batch 8 pairs, one epoch, bf16 autocast; the same data for every
system. Systems, each in its own subprocess so peak RSS is its own:
  trl-full   : trl.RewardTrainer, its defaults (gradient checkpointing on, lr 1e-4, bf16)
  trl-lora   : the same with peft LoraConfig(r=16) on the attention and MLP projections
  rankloop-full / rankloop-lora : rankloop.reward.train.train_reward (LoRA r=16, same modules),
                  its defaults otherwise: `compile = "auto"` compiles this 32-step run where
                  torch.compile works (`--set compile=no` for the eager figures)
  rankloop-*-gc : the same with gradient checkpointing on (as TRL's default)

The full fine-tuning systems run together in lockstep (bench/lockstep.py: all processes started
at once, the driver lets one of them run one optimizer step at a time, in turn), then the LoRA
systems the same way, so the machine's drift hits the systems of one group alike.

Reported per system: pairs/s over the timed steps (every step but the first, whose turn also
loads the model and tokenises the data; the same for both), peak RSS of the process, held-out
accuracy on 128 further pairs from the same simulated task (scored by the same function for every system), and model-FLOPs
utilisation against the bf16 matmul peak (820 GFLOP/s here): model FLOPs = 6 N per real
(non-padding) token for full fine-tuning, 4 N for LoRA (frozen weights need no weight
gradient), N = non-embedding parameters; recomputation and padding are not counted.

Usage:  flock /tmp/rankloop-cpu.lock python bench/reward.py [--pairs 256] [--systems ...]
                                                       [--set gradient_checkpointing=true ...]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import sys
import tempfile
from pathlib import Path

import torch

from rankloop.lm.loading import DEFAULT_MODEL, default_model_path

from lockstep import Turns, run_lockstep

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from simulate import SimulatedTask, simulate_pairs

SYSTEMS = (
    "trl-full",
    "trl-lora",
    "rankloop-full",
    "rankloop-lora",
    "rankloop-full-gc",
    "rankloop-lora-gc",
)
PEAK_GFLOPS = 820.0
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
# ~30-token prompts and ~40-60-token responses with SmolLM2's tokenizer (about 1.2 tokens/word)
TASK = SimulatedTask(prompt_words=(22, 26), response_words=(32, 48))


def data(n_train: int, n_eval: int, seed: int):
    """(train, held-out) lists of (prompt, chosen, rejected) from the simulated keyword task."""
    rows = simulate_pairs(n_train + n_eval, TASK, seed)
    pairs = [(p, a, b) if a_wins else (p, b, a) for p, a, b, a_wins, _ in rows]
    held = [(p, a, b) for p, a, b, _, d in rows[n_train:]]  # held-out: truth = higher true reward
    held = [
        (p, a, b) if TASK.true_reward(a) > TASK.true_reward(b) else (p, b, a) for p, a, b in held
    ]
    return pairs[:n_train], held


@torch.no_grad()
def heldout_accuracy(model, tokenizer, held) -> float:
    """Fraction of held-out pairs whose truly better response gets the higher reward."""
    from rankloop.reward.model import format_text, rewards, right_pad, tokenize

    model.eval()
    tokenizer.padding_side = "right"
    texts = [format_text(tokenizer, p, r) for p, a, b in held for r in (a, b)]
    ids = tokenize(tokenizer, texts, 512)
    out = []
    for i in range(0, len(ids), 32):
        x, m = right_pad(ids[i : i + 32], tokenizer.pad_token_id)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out.append(rewards(model, x, m))
    r = torch.cat(out).view(-1, 2)  # (n, 2): better, worse
    return float((r[:, 0] > r[:, 1]).float().mean())


def non_embedding_params(model) -> int:
    return sum(
        p.numel() for n, p in model.named_parameters() if "embed" not in n and "lora_" not in n
    )


def trl_trainer(
    train,
    *,
    lora: bool,
    batch: int = 8,
    epochs: float = 1.0,
    seed: int = 0,
    callbacks=(),
    base: str | None = None,
):
    """(TRL RewardTrainer, its output folder) on (prompt, chosen, rejected) triples: TRL's
    defaults (gradient checkpointing, lr 1e-4, bf16), LoRA r=16 on LORA_TARGETS if `lora`."""
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from trl import RewardConfig, RewardTrainer

    path = base or str(default_model_path())
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1)
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tok.pad_token_id
    ds = Dataset.from_list(
        [
            {
                "prompt": [{"role": "user", "content": p}],
                "chosen": [{"role": "assistant", "content": c}],
                "rejected": [{"role": "assistant", "content": r}],
            }
            for p, c, r in train
        ]
    )
    out = tempfile.mkdtemp()
    args = RewardConfig(
        output_dir=out,
        per_device_train_batch_size=batch,
        num_train_epochs=epochs,
        bf16=True,
        use_cpu=True,
        report_to="none",
        save_strategy="no",
        logging_steps=1000,
        dataloader_num_workers=0,
        seed=seed,
        disable_tqdm=True,
    )
    peft_config = (
        LoraConfig(r=16, lora_alpha=32, target_modules=LORA_TARGETS, task_type="SEQ_CLS")
        if lora
        else None
    )
    return RewardTrainer(
        model=model,
        args=args,
        train_dataset=ds,
        processing_class=tok,
        peft_config=peft_config,
        callbacks=list(callbacks),
    ), out


def run_trl(system: str, train, held, batch: int, turns: Turns) -> dict:
    from transformers import TrainerCallback

    class Pace(TrainerCallback):
        def on_step_end(self, *_args, **_kwargs):
            turns.step()

    trainer, out = trl_trainer(train, lora=system == "trl-lora", batch=batch, callbacks=[Pace()])
    args, tok = trainer.args, trainer.processing_class
    trainer.train()
    tokens = int(trainer._total_train_tokens)
    res = {
        "tokens": tokens,
        "peak_rss_gb": peak_rss_gb(),
        "heldout_accuracy": heldout_accuracy(trainer.model, tok, held),
        "n_params": non_embedding_params(trainer.model),
        "gradient_checkpointing": bool(args.gradient_checkpointing),
        "lr": args.learning_rate,
    }
    shutil.rmtree(out, ignore_errors=True)
    return res


def peak_rss_gb() -> float:
    """Peak RSS of this process so far: measured right after training, before the held-out
    evaluation loads or runs anything (the same point for every system)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6


def run_rankloop(system: str, train, held, batch: int, overrides: dict, turns: Turns) -> dict:
    from rankloop.reward.config import RewardConfig
    from rankloop.reward.pairs import pairwise_example
    from rankloop.reward.scoring import RewardScorer
    from rankloop.reward.train import train_reward

    examples = [pairwise_example(p, c, r) for p, c, r in train]
    lora = "lora" in system
    if system.endswith("-gc"):
        overrides = {**overrides, "gradient_checkpointing": True}
    cfg = RewardConfig(
        lora=lora,
        lora_r=16,
        lora_alpha=32,
        batch_size=batch,
        epochs=1,
        eval_fraction=0.0,
        lr=1e-4,
        **overrides,
    )
    out = Path(tempfile.mkdtemp()) / "reward"
    result = train_reward(
        examples, cfg, out, base=DEFAULT_MODEL, progress=False, on_step=turns.step
    )
    rss = peak_rss_gb()  # training, final scoring and saving included
    scorer = RewardScorer.from_pretrained(out)
    res = {
        "tokens": result.train_tokens,
        "peak_rss_gb": rss,
        "heldout_accuracy": heldout_accuracy(scorer.model, scorer.tokenizer, held),
        "n_params": non_embedding_params(scorer.model),
        "gradient_checkpointing": cfg.gradient_checkpointing,
        "lr": cfg.learning_rate,
        "compiled": result.compiled,
    }
    shutil.rmtree(out.parent, ignore_errors=True)  # the saved model: 0.5 GB per system and run
    return res


def child(system: str, n_pairs: int, batch: int, overrides: dict, out: str) -> None:
    turns = Turns()
    turns.wait()  # the first turn: data, model loading and the first step
    torch.manual_seed(0)
    train, held = data(n_pairs, 128, seed=0)
    if system.startswith("trl"):
        res = run_trl(system, train, held, batch, turns)
    else:
        res = run_rankloop(system, train, held, batch, overrides, turns)
    timed = turns.seconds[1:]  # the steps after the first
    steps = len(turns.seconds)
    res["seconds"] = sum(timed) / len(timed) * steps  # the loop's time at the timed steps' pace
    lora = "lora" in system
    flops = (4 if lora else 6) * res["n_params"] * res["tokens"]
    res.update(
        system=system,
        pairs=n_pairs,
        steps=steps,
        step_seconds=turns.seconds,
        pairs_per_s=n_pairs / res["seconds"],
        process_peak_rss_gb=peak_rss_gb(),
        mfu=flops / res["seconds"] / (PEAK_GFLOPS * 1e9),
    )
    Path(out).write_text(json.dumps(res))


def parse_value(text: str):
    """'3' -> 3, 'true' -> True, 'off' -> 'off' (JSON when it parses, else the string)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--systems", default=",".join(SYSTEMS))
    ap.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="Override a [reward] setting for the rankloop systems "
        "(e.g. --set gradient_checkpointing=true); repeatable.",
    )
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--child-out", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--out", default=None, help="Write the results as JSON here.")
    args = ap.parse_args()
    overrides = {k: parse_value(v) for k, v in (kv.split("=", 1) for kv in args.set)}
    if args.child:
        return child(args.child, args.pairs, args.batch_size, overrides, args.child_out)

    train, _ = data(args.pairs, 128, seed=0)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(default_model_path())
    lens = lambda xs: [len(tok(x)["input_ids"]) for x in xs]
    p_len, r_len = lens([p for p, _, _ in train]), lens([x for _, c, r in train for x in (c, r)])
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads"
    )
    print(
        f"data: {args.pairs} pairs; prompt tokens mean {sum(p_len) / len(p_len):.1f}, "
        f"response tokens {min(r_len)}-{max(r_len)} (mean {sum(r_len) / len(r_len):.1f}); "
        f"batch {args.batch_size} pairs, 1 epoch"
    )
    if overrides:
        print(f"rankloop settings: {overrides}")
    systems = args.systems.split(",")
    groups = [[x for x in systems if "lora" not in x], [x for x in systems if "lora" in x]]
    tmp = Path(tempfile.mkdtemp())
    results = []
    for group in filter(None, groups):  # one lockstep group at a time: full, then LoRA
        print(f"lockstep: {', '.join(group)}", flush=True)
        cmds = [
            [
                sys.executable,
                __file__,
                "--child",
                system,
                "--child-out",
                str(tmp / system),
                "--pairs",
                str(args.pairs),
                "--batch-size",
                str(args.batch_size),
                *(f"--set={kv}" for kv in args.set),
            ]
            for system in group
        ]
        run_lockstep(cmds, dict(os.environ))
        for system in group:
            res = json.loads((tmp / system).read_text())
            results.append(res)
            print(
                f"{system:16s} {res['pairs_per_s']:6.2f} pairs/s  {res['seconds']:6.1f} s  "
                f"(first step {res['step_seconds'][0]:.1f} s, all steps "
                f"{sum(res['step_seconds']):.1f} s)  "
                f"RSS {res['peak_rss_gb']:.2f} GB  held-out acc "
                f"{res['heldout_accuracy']:.3f}  MFU {100 * res['mfu']:.1f}%  "
                f"({res['tokens']} tokens)",
                flush=True,
            )
    by = {r["system"]: r for r in results}
    for kind in ("full", "lora", "full-gc", "lora-gc"):
        a, b = by.get(f"trl-{kind.removesuffix('-gc')}"), by.get(f"rankloop-{kind}")
        if a and b:
            print(
                f"{kind}: rankloop / TRL = {b['pairs_per_s'] / a['pairs_per_s']:.2f}x pairs/s, "
                f"RSS {b['peak_rss_gb']:.2f} vs {a['peak_rss_gb']:.2f} GB, accuracy "
                f"{b['heldout_accuracy']:.3f} vs {a['heldout_accuracy']:.3f}"
            )
    shutil.rmtree(tmp, ignore_errors=True)
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
