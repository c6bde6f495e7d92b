"""GPU check: generate, train-reward and PPO on whatever accelerator this machine has.

One script, a few minutes, no editing needed: on a CUDA GPU it runs, for the embedded default
model (SmolLM2-135M-Instruct) and for a random-weight Llama of about 0.8B parameters built from
a config (the default model's tokenizer; no hub needed), and prints

  generate : new tokens/s of `lm.sampling.sample_many` (HF generate, batched, bf16), and of vLLM
             (`lm.vllm_engine.VLLMSampler`, the anchor) where vLLM is installed
  reward   : pairs/s of `reward.train.train_reward` (LoRA r=16, one epoch; the loop alone and
             the whole call), and of TRL's RewardTrainer on the same pairs (the anchor)
  ppo      : seconds per PPO step of `ppo.train.train_ppo` (LoRA policy, the default critic)

with the peak GPU memory of each (torch.cuda.max_memory_allocated). Then, for each shipped
configuration in docs/accelerate/ (DDP, FSDP, DeepSpeed ZeRO-2 and ZeRO-3; DeepSpeed where it is
installed), `accelerate launch` runs bench/gpu_dist_worker.py on the default model on every GPU
here: reward training, PPO with the reward model's critic, PPO resumed from its checkpoint, and
both saved models loaded back; it reports what ran and what broke. Results go to --out as JSON.
Without a GPU it says so and stops, unless --cpu (a smoke run with small sizes: what CI-less
developers can check here).

    python bench/gpu_check.py [--models default,0.8b] [--out bench/results/gpu_check.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from simulate import SimulatedTask, simulate_pairs

TASK = SimulatedTask(prompt_words=(22, 26), response_words=(32, 48))


def big_model(folder: Path, tokenizer_path: Path) -> Path:
    """A random-weight Llama of ~0.8B parameters with the default model's tokenizer."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(tokenizer_path)
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=2048,
        intermediate_size=5632,
        num_hidden_layers=16,
        num_attention_heads=32,
        num_key_value_heads=8,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg).to(torch.bfloat16)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def params(path: Path) -> int:
    from transformers import AutoConfig, AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(path))
    return sum(p.numel() for p in model.parameters())


class Peak:
    """Peak accelerator memory of a block, in GB."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.gb = float("nan")

    def __enter__(self):
        if self.cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        return self

    def __exit__(self, *exc):
        if self.cuda:
            self.gb = torch.cuda.max_memory_allocated() / 1e9


def chats(n: int) -> list[list[dict]]:
    from rankloop.data.io import bundled_prompts

    rows = [json.loads(line) for line in bundled_prompts().read_text().splitlines() if line]
    out = []
    for r in (rows * (n // len(rows) + 1))[:n]:
        p = r["prompt"]
        out.append([{"role": "user", "content": p}] if isinstance(p, str) else p)
    return out


def check_generate(path: Path, device, n: int, new_tokens: int, batch: int) -> dict:
    from rankloop.lm.device import use_bf16
    from rankloop.lm.loading import load_causal_lm, load_tokenizer
    from rankloop.lm.sampling import sample_many
    from rankloop.lm.vllm_engine import VLLMSampler, vllm_available

    tok = load_tokenizer(str(path))
    bf16 = use_bf16("auto", device)
    prompts = chats(n)
    out = {}
    with Peak(device) as peak:
        model = load_causal_lm(str(path), dtype=torch.bfloat16 if bf16 else None).to(device)
        got = []
        t0 = time.perf_counter()
        sample_many(
            model,
            tok,
            prompts,
            temperature=0.7,
            top_p=0.95,
            max_new_tokens=new_tokens,
            batch_size=batch,
            seed_for=lambda b: 1000 + b[0],
            bf16=bf16,
            on_batch=lambda b, s, seed: got.extend(s),
        )
        if device.type == "cuda":
            torch.cuda.synchronize()
        secs = time.perf_counter() - t0
    tokens = sum(len(s.token_ids) + s.finished for s in got)  # EOS counts as a token made
    out["hf"] = {"tokens_per_s": tokens / secs, "seconds": secs, "peak_gb": peak.gb}
    del model
    if vllm_available() and device.type == "cuda":
        torch.cuda.empty_cache()
        sampler = VLLMSampler(str(path), bf16=bf16, seed=0, gpu_memory_utilization=0.5)
        got = []
        t0 = time.perf_counter()
        sampler.sample_many(
            tok,
            prompts,
            temperature=0.7,
            top_p=0.95,
            max_new_tokens=new_tokens,
            batch_size=len(prompts),
            seed_for=lambda b: 1000 + b[0],
            on_batch=lambda b, s, seed: got.extend(s),
        )
        secs = time.perf_counter() - t0
        tokens = sum(len(s.token_ids) + s.finished for s in got)
        out["vllm"] = {"tokens_per_s": tokens / secs, "seconds": secs}
        del sampler
    else:
        out["vllm"] = "not installed" if not vllm_available() else "needs a CUDA GPU"
    return out


def pairs(n: int, seed: int = 0):
    rows = simulate_pairs(n, TASK, seed)
    return [(p, a, b) if a_wins else (p, b, a) for p, a, b, a_wins, _ in rows]


def check_reward(path: Path, device, n: int, batch: int) -> dict:
    from rankloop.reward.config import RewardConfig
    from rankloop.reward.pairs import pairwise_example
    from rankloop.reward.train import train_reward

    data = pairs(n)
    cfg = RewardConfig(
        lora=True,
        lora_r=16,
        lora_alpha=32,
        epochs=1,
        batch_size=batch,
        eval_fraction=0.1,
        compile="no",
        warm_start=True,
        select_best=False,
    )
    out_dir = Path(tempfile.mkdtemp()) / "rm"
    with Peak(device) as peak:
        t0 = time.perf_counter()
        res = train_reward(
            [pairwise_example(*p) for p in data], cfg, out_dir, base=str(path), progress=False
        )
        whole = time.perf_counter() - t0
    rankloop = {
        "pairs_per_s_loop": res.train_examples / res.loop_seconds,
        "pairs_per_s_whole": res.train_examples / whole,
        "seconds_whole": whole,
        "peak_gb": peak.gb,
        "accuracy": res.metrics.get("reward/accuracy"),
    }
    trl = check_trl(path, device, data[: res.train_examples], batch)
    return {
        "rankloop": rankloop,
        "trl": trl,
        "speedup_loop": rankloop["pairs_per_s_loop"] / trl["pairs_per_s"],
    }


def check_trl(path: Path, device, data, batch: int) -> dict:
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from trl import RewardConfig, RewardTrainer

    tok = AutoTokenizer.from_pretrained(path)
    ds = Dataset.from_list(
        [
            {
                "prompt": [{"role": "user", "content": p}],
                "chosen": [{"role": "assistant", "content": c}],
                "rejected": [{"role": "assistant", "content": r}],
            }
            for p, c, r in data
        ]
    )
    with Peak(device) as peak:
        model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1)
        model.config.pad_token_id = tok.pad_token_id
        args = RewardConfig(
            output_dir=tempfile.mkdtemp(),
            per_device_train_batch_size=batch,
            num_train_epochs=1,
            bf16=True,
            use_cpu=device.type == "cpu",
            report_to="none",
            save_strategy="no",
            logging_steps=1000,
            disable_tqdm=True,
        )
        lora = LoraConfig(
            r=16,
            lora_alpha=32,
            task_type="SEQ_CLS",
            target_modules=[
                "q_proj",
                "k_proj",
                "v_proj",
                "o_proj",
                "gate_proj",
                "up_proj",
                "down_proj",
            ],
        )
        trainer = RewardTrainer(
            model=model, args=args, train_dataset=ds, processing_class=tok, peft_config=lora
        )
        t0 = time.perf_counter()
        trainer.train()
        secs = time.perf_counter() - t0
    return {"pairs_per_s": len(data) / secs, "seconds": secs, "peak_gb": peak.gb}


def check_ppo(path: Path, device, steps: int, batch: int, new_tokens: int) -> dict:
    from rankloop.app.oracles import tidy
    from rankloop.data.records import Message, Prompt
    from rankloop.ppo.config import PPOConfig
    from rankloop.ppo.train import train_ppo

    prompts = [
        Prompt(messages=tuple(Message(m["role"], m["content"]) for m in c))
        for c in chats(4 * batch)
    ]
    cfg = PPOConfig(
        steps=steps,
        batch_size=batch,
        mini_batch_size=max(1, batch // 2),
        max_new_tokens=new_tokens,
        log_samples=0,
        eval_every=0,
    )
    with Peak(device) as peak:
        res = train_ppo(
            cfg,
            policy=str(path),
            prompts=prompts,
            reward_fn=lambda ps, rs: torch.tensor(tidy(ps, rs)),
            out_dir=Path(tempfile.mkdtemp()) / "policy",
            progress=False,
            log=None,
        )
    times = [h["time/step"] for h in res.history[1:]] or [res.history[0]["time/step"]]
    return {
        "seconds_per_step": statistics.median(times),
        "peak_gb": peak.gb,
        "steps": len(res.history),
    }


def check_config(name: str, model: Path, small: bool) -> dict:
    """`accelerate launch` the distributed worker under docs/accelerate/NAME.yaml."""
    import importlib.util
    import os
    import shutil
    import subprocess

    root = Path(__file__).resolve().parent.parent
    if name.startswith("deepspeed") and importlib.util.find_spec("deepspeed") is None:
        return {"ran": False, "why": "deepspeed is not installed (pip install deepspeed)"}
    n = 2 if small else max(1, torch.cuda.device_count())
    accelerate = shutil.which("accelerate", path=str(Path(sys.executable).parent)) or "accelerate"
    with tempfile.TemporaryDirectory() as out:
        config = root / "docs" / "accelerate" / f"{name}.yaml"
        cmd = [
            accelerate,
            "launch",
            "--config_file",
            str(config),
            "--num_processes",
            str(n),
            str(root / "bench" / "gpu_dist_worker.py"),
            str(model),
            out,
        ]
        t0 = time.perf_counter()
        try:
            proc = subprocess.run(
                cmd,
                check=False,
                capture_output=True,
                text=True,
                timeout=900,
                env=dict(os.environ, OMP_NUM_THREADS="1"),
            )
        except subprocess.TimeoutExpired:
            return {"ran": False, "why": "timed out after 900 s", "processes": n}
        res_file = Path(out) / "result.json"
        res = json.loads(res_file.read_text()) if res_file.exists() else {}
    return {
        "ran": True,
        "processes": n,
        "exit": proc.returncode,
        "seconds": round(time.perf_counter() - t0, 1),
        **res,
        **({} if res else {"log_tail": (proc.stdout + proc.stderr)[-3000:]}),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="default,0.8b")
    ap.add_argument("--cpu", action="store_true", help="smoke run without a GPU, small sizes")
    ap.add_argument(
        "--configs",
        default=None,
        help="docs/accelerate/ configurations to launch "
        "(default: ddp,fsdp,deepspeed-zero2,deepspeed-zero3; --cpu: cpu-ddp)",
    )
    ap.add_argument("--out", default="bench/results/gpu_check.json")
    args = ap.parse_args()
    from rankloop.lm.device import pick_device
    from rankloop.lm.loading import default_model_path

    device = pick_device("cpu" if args.cpu else "auto")
    if device.type != "cuda" and not args.cpu:
        sys.exit("no CUDA GPU here (torch.cuda.is_available() is False); --cpu for a smoke run")
    small = args.cpu
    n_gen, tokens, batch = (8, 16, 8) if small else (256, 128, 64)
    n_pairs, rbatch = (32, 8) if small else (1024, 16)
    steps, pbatch, ptokens = (2, 4, 8) if small else (6, 32, 64)
    card = torch.cuda.get_device_name(0) if device.type == "cuda" else platform.processor()
    results = {
        "device": card,
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d"),
        "models": {},
    }
    default = default_model_path()
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            if small and name != "default":
                continue  # a 0.8B model on 2 CPU cores is not a smoke run
            path = default if name == "default" else big_model(Path(tmp) / name, default)
            print(f"== {name}: {params(path) / 1e6:.0f}M parameters on {card}", flush=True)
            r = {
                "params": params(path),
                "generate": check_generate(path, device, n_gen, tokens, batch),
                "reward": check_reward(path, device, n_pairs, rbatch),
                "ppo": check_ppo(path, device, steps, pbatch, ptokens),
            }
            results["models"][name] = r
            print(json.dumps(r, indent=1), flush=True)
    configs = args.configs or ("cpu-ddp" if small else "ddp,fsdp,deepspeed-zero2,deepspeed-zero3")
    results["configs"] = {c: check_config(c, default, small) for c in configs.split(",") if c}
    print(json.dumps(results["configs"], indent=1), flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
