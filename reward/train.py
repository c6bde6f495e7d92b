"""Reward-model training: labels -> pairs -> a scalar reward model saved as a standard checkpoint.

Reads top to bottom (CleanRL style):
  1. data: the store's labels as examples (`pairs.py`), split by prompt into train / held-out;
  2. model: a sequence-classification backbone with one output, LoRA by default;
  3. loop: length-grouped batches; every response of a batch (chosen, rejected, all K of a
     ranking) goes through the model in ONE forward; the loss (`losses.py`) sees the rewards;
  4. evaluation on the held-out prompts (`metrics.py`), statistics of the reward over the
     training responses (for PPO's normalisation);
  5. save: a merged checkpoint that `AutoModelForSequenceClassification.from_pretrained` and
     `pipeline("text-classification")` load, its tokenizer, reward_stats.json.

Runs through `accelerate` (CPU, one GPU, or `accelerate launch` with several processes); bf16
autocast where the hardware does bf16 fast.
"""

from __future__ import annotations

import json
import math
import random
import shutil
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from rankloop.lm.device import use_bf16
from rankloop.lm.kernels import (
    compile_blocks,
    keep_adapter_inputs_in_autocast_dtype,
    release_freed_memory,
    use_compile,
    use_training_attention,
)

from . import losses, metrics
from .config import RewardConfig
from .model import add_lora, format_text, head_name, load_backbone, load_reward_tokenizer, tokenize
from .pairs import Example, RewardDataError, build_examples, check_trainable, split_by_prompt
from .scoring import STATS_FILE

CKPT_PREFIX = "step-"
STATE_FILE = "trainer_state.json"


@dataclass
class Encoded:
    """An example with its responses tokenized: token ids of (formatted prompt + response k)."""

    example: Example
    ids: list[list[int]]

    @property
    def tokens(self) -> int:
        """Tokens of the packed row: the shared prefix once, then each response's own tokens."""
        n = shared_prefix_len(self.ids)
        return n + sum(len(s) - n for s in self.ids)


def shared_prefix_len(seqs: list[list[int]]) -> int:
    """Length of the longest common prefix of the sequences, leaving each at least 1 token."""
    n = min(len(s) for s in seqs) - 1
    first = seqs[0]
    for i in range(max(n, 0)):
        if any(s[i] != first[i] for s in seqs[1:]):
            return i
    return max(n, 0)


@dataclass
class TrainResult:
    """What a training run produced."""

    path: Path
    metrics: dict[str, float]
    steps: int
    train_examples: int
    eval_examples: int
    seconds: float
    train_tokens: int = 0
    loop_seconds: float = 0.0  # the optimisation loop alone (no loading, evaluation, saving)
    history: list[dict] = field(default_factory=list)
    compiled: bool = False  # the transformer blocks ran through torch.compile


class RewardModule(torch.nn.Module):
    """The reward model and the tie model's learnable log-parameter, as one module so that
    accelerate (DDP) synchronises both.

    `forward` takes packed rows (see `collate`): each row holds one comparison's shared prefix
    (the formatted prompt) once, followed by each of its K responses; a block mask lets every
    response attend to the prefix and to itself only, and its positions continue from the
    prefix, so each response's reward is exactly what it gets alone, for about 30% fewer tokens
    than running chosen and rejected as two separate rows.
    """

    def __init__(self, model, log_tie: float):
        super().__init__()
        self.model = model
        self.log_tie = torch.nn.Parameter(torch.tensor(float(log_tie)))

    def forward(self, input_ids, position_ids, mask, ends):
        seq_model = self.model.get_base_model() if hasattr(self.model, "get_base_model") \
            else self.model
        backbone = getattr(seq_model, seq_model.base_model_prefix)
        hidden = backbone(input_ids=input_ids, attention_mask=mask, position_ids=position_ids,
                          use_cache=False).last_hidden_state  # (E, T, H)
        last = hidden.reshape(-1, hidden.shape[-1])[ends]  # (S, H): last token of each response
        return getattr(seq_model, head_name(seq_model))(last)[:, 0].float()  # (S,)


# ---------------------------------------------------------------------------------------------
# batching
# ---------------------------------------------------------------------------------------------

def length_grouped_batches(lengths: list[int], batch_size: int, seed: int,
                           group: int = 32) -> list[list[int]]:
    """Batches of indices with similar lengths, in a random order (deterministic given seed).

    Shuffle, cut into groups of `group` batches, sort each group by length and cut it into
    batches, then shuffle the batches: each batch holds sequences of similar length (little
    padding) while the order still mixes short and long ones (as transformers'
    LengthGroupedSampler does).
    """
    rng = random.Random(seed)
    idx = list(range(len(lengths)))
    rng.shuffle(idx)
    mega = batch_size * group
    batches = []
    for start in range(0, len(idx), mega):
        chunk = sorted(idx[start:start + mega], key=lambda i: lengths[i], reverse=True)
        batches += [chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    return batches


@dataclass
class Batch:
    """One batch of packed rows (one per comparison) and the pairs as indices into the
    flattened responses."""

    input_ids: torch.Tensor  # (E, T)
    position_ids: torch.Tensor  # (E, T)
    mask: torch.Tensor  # (E, 1, T, T) bool: query t may attend to key u
    ends: torch.Tensor  # (S,) long: flat index (row * T + t) of each response's last token
    better: torch.Tensor  # (P,) long: index into the S responses
    worse: torch.Tensor  # (P,) long
    tie: torch.Tensor  # (P,) bool
    margin: torch.Tensor  # (P,)
    weight: torch.Tensor  # (P,)
    slots: torch.Tensor  # (E, Kmax) long: response index of each response of each example, -1 pad
    tiers: torch.Tensor  # (E, Kmax) long: Plackett-Luce tiers, -1 pad
    tokens: int  # real (non-padding) tokens

    def to(self, device):
        for name in ("input_ids", "position_ids", "mask", "ends", "better", "worse", "tie",
                     "margin", "weight", "slots", "tiers"):
            setattr(self, name, getattr(self, name).to(device))
        return self


def pack(groups: list[list[list[int]]], pad_id: int, multiple: int = 1):
    """Pack each group of sequences into one row: shared prefix once, then each sequence's rest.

    Returns (input_ids (E, T), position_ids (E, T), mask (E, 1, T, T), ends (S,), tokens). In a
    row, a token of segment k attends causally to the prefix and to segment k; positions of
    every segment continue from the prefix, as if the sequence were alone. Padding attends to
    itself only (a query row with no key gives NaN in SDPA). T is the longest row rounded up to
    a multiple of `multiple` (see `RewardConfig.pad_to_multiple_of`).
    """
    rows, segs = [], []
    for seqs in groups:
        n = shared_prefix_len(seqs)
        row, pos, seg = list(seqs[0][:n]), list(range(n)), [0] * n
        for k, s in enumerate(seqs, 1):
            row += s[n:]
            pos += range(n, len(s))
            seg += [k] * (len(s) - n)
        rows.append((row, pos, seg))
    t = -(-max(len(r) for r, _, _ in rows) // multiple) * multiple
    e = len(rows)
    input_ids = torch.full((e, t), pad_id, dtype=torch.long)
    position_ids = torch.zeros((e, t), dtype=torch.long)
    seg_ids = torch.full((e, t), -1, dtype=torch.long)  # -1 = padding
    ends = []
    for i, (row, pos, seg) in enumerate(rows):
        input_ids[i, :len(row)] = torch.tensor(row)
        position_ids[i, :len(row)] = torch.tensor(pos)
        seg_ids[i, :len(row)] = torch.tensor(seg)
        for k in range(1, max(seg) + 1):
            ends.append(i * t + max(j for j, g in enumerate(seg) if g == k))
    q, kk = seg_ids[:, :, None], seg_ids[:, None, :]  # (E, T, 1), (E, 1, T)
    causal = torch.ones(t, t, dtype=torch.bool).tril()  # (T, T)
    mask = causal & (q >= 0) & ((kk == 0) | (kk == q))  # (E, T, T)
    mask |= torch.eye(t, dtype=torch.bool)  # padding rows see themselves
    return input_ids, position_ids, mask[:, None], torch.tensor(ends), int((seg_ids >= 0).sum())


def collate(items: list[Encoded], pad_id: int, multiple: int = 1) -> Batch:
    better, worse, tie, margin, weight = [], [], [], [], []
    kmax = max(len(it.ids) for it in items)
    slots = torch.full((len(items), kmax), -1, dtype=torch.long)
    tiers = torch.full((len(items), kmax), -1, dtype=torch.long)
    base = 0
    for e, it in enumerate(items):
        k = len(it.ids)
        slots[e, :k] = torch.arange(base, base + k)
        tiers[e, :k] = torch.tensor(it.example.tiers)
        for p in it.example.pairs:
            better.append(base + p.better)
            worse.append(base + p.worse)
            tie.append(p.tie)
            margin.append(p.margin)
            weight.append(p.weight)
        base += k
    input_ids, position_ids, mask, ends, tokens = pack([it.ids for it in items], pad_id, multiple)
    return Batch(input_ids, position_ids, mask, ends, torch.tensor(better), torch.tensor(worse),
                 torch.tensor(tie), torch.tensor(margin, dtype=torch.float32),
                 torch.tensor(weight, dtype=torch.float32), slots, tiers, tokens)


# ---------------------------------------------------------------------------------------------
# loss
# ---------------------------------------------------------------------------------------------

def batch_loss(cfg: RewardConfig, r: torch.Tensor, b: Batch,
               log_tie: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The configured loss on the rewards r (S,) of one batch; (loss, stats)."""
    r_b, r_w = r[b.better], r[b.worse]  # (P,) each
    if cfg.loss == "bt":
        # A tie is half a win each way (as a draw in Elo): both orientations with half the
        # weight and no margin; its optimum is r_a = r_b.
        t = b.tie
        rc = torch.cat([r_b[~t], r_b[t], r_w[t]])
        rr = torch.cat([r_w[~t], r_w[t], r_b[t]])
        m = torch.cat([b.margin[~t], b.margin[t] * 0, b.margin[t] * 0])
        w = torch.cat([b.weight[~t], b.weight[t] / 2, b.weight[t] / 2])
        loss, stats = losses.bradley_terry_loss(rc, rr, m, w)
    elif cfg.loss == "rao-kupper":
        loss, stats = losses.rao_kupper_loss(r_b, r_w, b.tie, log_tie, b.weight)
    elif cfg.loss == "davidson":
        loss, stats = losses.davidson_loss(r_b, r_w, b.tie, log_tie, b.weight)
    else:  # plackett-luce over each example's whole ranking
        real = b.slots >= 0
        rk = torch.where(real, r[b.slots.clamp(min=0)], torch.zeros_like(b.slots, dtype=r.dtype))
        loss, stats = losses.plackett_luce_loss(rk, b.tiers)  # (E, Kmax) in
    # accuracy over strict pairs, the same for every loss (the progress bar shows it)
    strict = ~b.tie
    stats["reward/accuracy"] = ((r_b > r_w) & strict).sum() / strict.sum().clamp(min=1)
    if cfg.center_coef > 0:
        c_loss, c_stats = losses.centering_loss(r_b, r_w, cfg.center_coef, b.weight)
        loss = loss + c_loss
        stats.update(c_stats)
    return loss, stats


INITIAL_LOG_TIE = math.log(0.5)
"""Start of the tie model's parameter: eps = 0.5 (Rao-Kupper), nu = 0.5 (Davidson)."""


# ---------------------------------------------------------------------------------------------
# evaluation
# ---------------------------------------------------------------------------------------------

@torch.no_grad()
def score_encoded(module, items: list[Encoded], batch_size: int, pad_id: int, device,
                  bf16: bool, multiple: int = 1) -> list[torch.Tensor]:
    """Rewards of every response of every item: a list of (K,) tensors, in item order."""
    module.eval()
    order = sorted(range(len(items)), key=lambda i: items[i].tokens)
    out: list[torch.Tensor] = [torch.empty(0)] * len(items)
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        ids, pos, mask, ends, _ = pack([items[i].ids for i in idx], pad_id, multiple)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            r = module(ids.to(device), pos.to(device), mask.to(device), ends.to(device))
        r = r.float().cpu()  # (S,)
        for i, chunk in zip(idx, r.split([len(items[i].ids) for i in idx])):
            out[i] = chunk
    module.train()
    return out


def pair_rewards(items: list[Encoded], scores: list[torch.Tensor]):
    """Per pair: (r_better, r_worse, tie, annotator) as numpy arrays / a list."""
    rb, rw, tie, ann = [], [], [], []
    for it, s in zip(items, scores):
        for p in it.example.pairs:
            rb.append(float(s[p.better]))
            rw.append(float(s[p.worse]))
            tie.append(p.tie)
            ann.append(it.example.annotator)
    return np.array(rb), np.array(rw), np.array(tie, dtype=bool), ann


def fit_tie_threshold(rb, rw, tie) -> float:
    """The |r_a - r_b| below which "tie" is predicted, chosen on the training pairs to maximise
    the tie-aware accuracy (0 when there are no ties: then a tie is never predicted)."""
    if not tie.any():
        return 0.0
    d = np.abs(rb - rw)
    candidates = np.concatenate([[0.0], np.sort(d)])
    accs = [metrics.tie_aware_accuracy(rb, rw, tie, float(c)) for c in candidates]
    return float(candidates[int(np.argmax(accs))])


def evaluate(items: list[Encoded], scores: list[torch.Tensor], tie_threshold: float,
             prefix: str = "reward/") -> dict[str, float]:
    """Held-out metrics with fixed names (see docs/reward.md)."""
    rb, rw, tie, ann = pair_rewards(items, scores)
    strict = ~tie
    d = rb - rw
    p = 1.0 / (1.0 + np.exp(-d[strict]))
    # Calibration of sigma(r_a - r_b) needs both outcomes: each strict pair is counted in both
    # orientations (p with outcome 1, 1 - p with outcome 0).
    ece = metrics.expected_calibration_error(np.concatenate([p, 1 - p]),
                                             np.concatenate([np.ones_like(p), np.zeros_like(p)]))
    out = {
        f"{prefix}accuracy": metrics.pairwise_accuracy(rb, rw, tie),
        f"{prefix}accuracy_tie_aware": metrics.tie_aware_accuracy(rb, rw, tie, tie_threshold),
        f"{prefix}margin": metrics.mean_margin(rb, rw, tie),
        f"{prefix}ece": ece,
        f"{prefix}eval_pairs": float(len(rb)),
        f"{prefix}eval_ties": float(tie.sum()),
    }
    by_ann = defaultdict(list)
    for i, a in enumerate(ann):
        by_ann[a].append(i)
    for a, idx in sorted(by_ann.items()):
        idx = np.array(idx)
        out[f"{prefix}accuracy/{a}"] = metrics.pairwise_accuracy(rb[idx], rw[idx], tie[idx])
    return out


# ---------------------------------------------------------------------------------------------
# checkpoints
# ---------------------------------------------------------------------------------------------

def latest_checkpoint(ckpt_dir: Path) -> Path | None:
    found = [p for p in ckpt_dir.glob(f"{CKPT_PREFIX}*") if (p / STATE_FILE).exists()]
    return max(found, key=lambda p: int(p.name[len(CKPT_PREFIX):]), default=None)


def save_checkpoint(accelerator, ckpt_dir: Path, step: int, history: list[dict]) -> None:
    out = ckpt_dir / f"{CKPT_PREFIX}{step}"
    accelerator.save_state(str(out))
    if accelerator.is_main_process:
        (out / STATE_FILE).write_text(json.dumps({"step": step, "history": history}))
        for old in ckpt_dir.glob(f"{CKPT_PREFIX}*"):  # keep the newest only
            if old != out:
                shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()


# ---------------------------------------------------------------------------------------------
# the trainer
# ---------------------------------------------------------------------------------------------

def train_reward(store, cfg: RewardConfig, out_dir: str | Path, *, base: str,
                 round: int | None = None, resume: bool = False, progress: bool = True,
                 log_dir: str | Path | None = None, accelerator=None,
                 max_steps: int | None = None,
                 on_step: Callable[[dict], None] | None = None) -> TrainResult:
    """Fit a reward model on the labels of comparisons up to `round` and save it to `out_dir`.

    Checkpoints go to `out_dir` + "-checkpoints" (every `cfg.checkpoint_every` steps);
    `resume=True` continues from the newest one. `max_steps` stops early (for tests and
    benchmarks); the learning-rate schedule still spans the whole run. `on_step(row)` is called
    with each optimizer step's statistics (the row `history` gets) once the step, its
    evaluation and its checkpoint are done.
    """
    from accelerate.utils import set_seed
    from transformers import get_scheduler

    from rankloop.lm.device import new_accelerator

    cfg.validate()
    t0 = time.perf_counter()
    out_dir = Path(out_dir)
    ckpt_dir = out_dir.with_name(out_dir.name + "-checkpoints")

    # 1. data ----------------------------------------------------------------------------------
    data = build_examples(store, round, both_bad=cfg.both_bad, aggregate=cfg.aggregate,
                          margin_slightly=cfg.margin_slightly, margin_much=cfg.margin_much)
    check_trainable(data, round)
    train_ex, eval_ex = split_by_prompt(data.examples, cfg.eval_fraction, cfg.seed)
    if not any(not p.tie for e in train_ex for p in e.pairs):
        raise RewardDataError(
            "the training split has only ties: label more comparisons, or lower eval_fraction")

    if accelerator is None:
        accelerator = new_accelerator(
            mixed_precision="no", gradient_accumulation_steps=cfg.grad_accum,
            log_with=cfg.log_with or None, project_dir=str(log_dir) if log_dir else None)
    device = accelerator.device
    bf16 = use_bf16(cfg.bf16, device)
    set_seed(cfg.seed)

    # 2. model ---------------------------------------------------------------------------------
    tokenizer = load_reward_tokenizer(base, cfg.max_length)
    # Full fine-tuning: fp32 weights (the optimizer's) and bf16 autocast. LoRA under bf16:
    # the frozen base weights in bf16 (half the memory, no cast at every forward) and the
    # adapters and head in fp32 for the optimizer.
    lora_bf16 = cfg.lora and bf16
    model = load_backbone(base, tokenizer, dtype=torch.bfloat16 if lora_bf16 else None)
    use_training_attention(model)  # fp32 attention for short rows on the CPU (lm/kernels.py)
    if cfg.gradient_checkpointing:
        model.activation_checkpointing_enable(
            activation_checkpointing_kwargs={"use_reentrant": False})
    if cfg.lora:
        if cfg.gradient_checkpointing:  # frozen embeddings: the checkpointed input needs a grad
            model.enable_input_require_grads()
        model = add_lora(model, cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout,
                         cfg.target_modules)
        if lora_bf16:
            for p in model.parameters():
                if p.requires_grad:
                    p.data = p.data.float()
            keep_adapter_inputs_in_autocast_dtype(model)
    model.config.use_cache = False
    module = RewardModule(model, INITIAL_LOG_TIE)
    module.log_tie.requires_grad_(cfg.loss in ("rao-kupper", "davidson"))

    def encode(examples):
        return [Encoded(e, tokenize(tokenizer, [format_text(tokenizer, e.prompt, r)
                                                for r in e.responses], cfg.max_length))
                for e in examples]

    train_items, eval_items = encode(train_ex), encode(eval_ex)

    # batches of every epoch, fixed by the seed, so a resumed run sees the same order
    per_epoch = length_grouped_batches([it.tokens for it in train_items], cfg.batch_size,
                                       cfg.seed)
    n_batches = max(1, math.ceil(len(per_epoch) * cfg.epochs))
    schedule = []
    epoch = 0
    while len(schedule) < n_batches:
        schedule += (per_epoch if epoch == 0 else length_grouped_batches(
            [it.tokens for it in train_items], cfg.batch_size, cfg.seed + epoch))
        epoch += 1
    schedule = schedule[:n_batches]
    world = accelerator.num_processes
    steps_total = max(1, len(schedule) // (world * cfg.grad_accum))
    schedule = schedule[:steps_total * world * cfg.grad_accum]  # equal work for every process
    compiled = use_compile(cfg.compile, steps_total, device.type)
    if compiled:  # marks the blocks; the compile itself happens in the first step
        compile_blocks(model)

    params = [p for p in module.parameters() if p.requires_grad]
    # fused: one kernel over all parameters (0.3 s instead of 0.45 s per step for 135M)
    optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay,
                                  fused=device.type in ("cpu", "cuda"))
    # stepped once per optimizer step by this loop (not prepared: accelerate would step it once
    # per process)
    scheduler = get_scheduler("linear", optimizer,
                              num_warmup_steps=int(cfg.warmup_ratio * steps_total),
                              num_training_steps=steps_total)
    module, optimizer = accelerator.prepare(module, optimizer)
    accelerator.register_for_checkpointing(scheduler)

    step, history = 0, []
    if resume:
        last = latest_checkpoint(ckpt_dir)
        if last is None:
            accelerator.print(f"no checkpoint in {ckpt_dir}: starting from the beginning")
        else:
            accelerator.load_state(str(last))
            state = json.loads((last / STATE_FILE).read_text())
            step, history = state["step"], state["history"]
    if cfg.log_with:
        accelerator.init_trackers("rankloop-reward", config=asdict(cfg))

    # 3. loop ----------------------------------------------------------------------------------
    stop = min(steps_total, max_steps) if max_steps else steps_total
    bar = tqdm(total=stop, initial=step, desc="reward model", unit="step",
               disable=not (progress and accelerator.is_local_main_process))
    module.train()
    pad = tokenizer.pad_token_id
    run_loss = run_acc = None
    train_tokens = 0
    t_loop = time.perf_counter()
    while step < stop:
        for micro in range(cfg.grad_accum):
            k = (step * cfg.grad_accum + micro) * world + accelerator.process_index
            batch = collate([train_items[i] for i in schedule[k]], pad,
                            cfg.pad_to_multiple_of).to(device)
            train_tokens += batch.tokens
            with accelerator.accumulate(module):
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                    r = module(batch.input_ids, batch.position_ids, batch.mask,
                               batch.ends)  # (S,)
                loss, stats = batch_loss(cfg, r.float(), batch,
                                         accelerator.unwrap_model(module).log_tie)
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    if cfg.max_grad_norm > 0:
                        accelerator.clip_grad_norm_(params, cfg.max_grad_norm)
                    optimizer.step()
                    scheduler.step()
                    optimizer.zero_grad(set_to_none=True)
        step += 1
        logged = {k: float(v) for k, v in stats.items()}
        logged["reward/lr"] = scheduler.get_last_lr()[0]
        history.append({"step": step, **logged})
        run_loss = logged["reward/loss"] if run_loss is None else 0.9 * run_loss + 0.1 * logged["reward/loss"]
        acc = logged["reward/accuracy"]
        run_acc = acc if run_acc is None else 0.9 * run_acc + 0.1 * acc
        bar.set_postfix(loss=f"{run_loss:.4f}", acc=f"{run_acc:.3f}")
        bar.update(1)
        if cfg.log_with:
            accelerator.log(logged, step=step)
        if cfg.eval_every and step % cfg.eval_every == 0 and eval_items and step < stop:
            scores = score_encoded(module, eval_items, 2 * cfg.batch_size, pad, device, bf16,
                                   cfg.pad_to_multiple_of)
            ev = evaluate(eval_items, scores, 0.0, prefix="eval/")
            history[-1].update(ev)
            if cfg.log_with:
                accelerator.log(ev, step=step)
        if cfg.checkpoint_every and step % cfg.checkpoint_every == 0 and step < stop:
            save_checkpoint(accelerator, ckpt_dir, step, history)
        if on_step is not None:
            on_step(history[-1])
    bar.close()
    loop_seconds = time.perf_counter() - t_loop
    train_seconds = time.perf_counter() - t0

    # 4. evaluation and reward statistics ------------------------------------------------------
    train_scores = score_encoded(module, train_items, 2 * cfg.batch_size, pad, device, bf16,
                                   cfg.pad_to_multiple_of)
    flat = torch.cat(train_scores)
    threshold = fit_tie_threshold(*pair_rewards(train_items, train_scores)[:3])
    result_metrics = {
        "reward/train_pairs": float(sum(len(it.example.pairs) for it in train_items)),
        "reward/train_accuracy": metrics.pairwise_accuracy(
            *pair_rewards(train_items, train_scores)[:3]),
        "reward/disagreement": data.disagreement,
        "reward/tie_threshold": threshold,
        "reward/mean": float(flat.mean()),
        "reward/std": float(flat.std()) if flat.numel() > 1 else 1.0,
    }
    if cfg.loss in ("rao-kupper", "davidson"):
        name = "reward/epsilon" if cfg.loss == "rao-kupper" else "reward/nu"
        result_metrics[name] = float(accelerator.unwrap_model(module).log_tie.detach().exp())
    if eval_items:
        scores = score_encoded(module, eval_items, 2 * cfg.batch_size, pad, device, bf16,
                                   cfg.pad_to_multiple_of)
        result_metrics.update(evaluate(eval_items, scores, threshold))
    if cfg.log_with:
        accelerator.log(result_metrics, step=step)
        accelerator.end_training()

    # 5. save ----------------------------------------------------------------------------------
    accelerator.wait_for_everyone()
    # the one malloc_trim of the run (see lm/kernels.py): training and scoring are done,
    # and the merge below needs room for an fp32 copy of the model
    release_freed_memory()
    if accelerator.is_main_process:
        save_model(accelerator.unwrap_model(module).model, tokenizer, out_dir, cfg,
                   {"mean": result_metrics["reward/mean"], "std": result_metrics["reward/std"],
                    "n": int(flat.numel())})
        if ckpt_dir.exists() and step >= steps_total:
            shutil.rmtree(ckpt_dir, ignore_errors=True)  # finished: the checkpoints are spent
    accelerator.wait_for_everyone()
    return TrainResult(path=out_dir, metrics=result_metrics, steps=step,
                       train_examples=len(train_items), eval_examples=len(eval_items),
                       seconds=train_seconds, train_tokens=train_tokens,
                       loop_seconds=loop_seconds, history=history, compiled=compiled)


def save_model(model, tokenizer, out_dir: Path, cfg: RewardConfig, stats: dict) -> None:
    """A standard checkpoint (merged LoRA by default), its tokenizer and reward_stats.json.

    Written to a temporary folder first and moved in place, so a killed save never leaves a
    half-written model where a finished one is expected.
    """
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    if cfg.lora and cfg.merge_lora:
        # merged in fp32 (the base may have trained in bf16): W + BA rounded to bf16 would
        # score ~0.3% off the adapter it came from
        model = model.float().merge_and_unload()
    model.config.use_cache = True
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    (tmp / STATS_FILE).write_text(json.dumps(stats))
    (tmp / "rankloop_reward.json").write_text(json.dumps(
        {"config": asdict(cfg), "head": head_name(model)}, indent=1))
    if out_dir.exists():
        shutil.rmtree(out_dir)
    tmp.replace(out_dir)
