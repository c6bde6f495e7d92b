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
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from rankloop.lm import tracking
from rankloop.lm.blocks import SkipLowerBlocks, decoder_layers, first_adapted_block
from rankloop.lm.checkpoints import checkpoint_dir
from rankloop.lm.device import autocast, use_bf16, weights_dtype
from rankloop.lm.kernels import (
    compile_blocks,
    keep_adapter_inputs_in_autocast_dtype,
    release_freed_memory,
    use_compile,
    use_training_attention,
)
from rankloop.lm.seeds import seed_everything

from . import ensemble, losses, metrics, probe
from .config import RewardConfig
from .model import (
    add_lora,
    format_text,
    head_name,
    load_backbone,
    load_reward_tokenizer,
    tokenize,
    top_blocks,
)
from .pairs import Example, RewardDataError, split_by_prompt
from .scoring import PROBE_FILE, STATS_FILE

CKPT_PREFIX = "step-"
STATE_FILE = "trainer_state.json"
BEST_FILE = "best.pt"


@dataclass
class Encoded:
    """An example with its responses tokenized: token ids of (formatted prompt + response k)."""

    example: Example
    ids: list[list[int]]
    # with [reward] lora_layers: the frozen blocks' output for the packed row (tokens, H), kept
    # from the frozen-feature pass so that each step runs the adapted blocks only
    lower: torch.Tensor | None = field(default=None, repr=False)

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


def encode(tokenizer, examples: Sequence[Example], max_length: int) -> list[Encoded]:
    """Each example's responses formatted with its prompt (the chat template) and tokenized."""
    return [
        Encoded(
            e,
            tokenize(
                tokenizer, [format_text(tokenizer, e.prompt, r) for r in e.responses], max_length
            ),
        )
        for e in examples
    ]


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
    phases: dict[str, float] = field(default_factory=dict)
    """Seconds per phase: load, probe (the frozen features and the probes), ensemble (the
    members' warm starts; an ensemble only), loop, scoring (training-set statistics and the
    held-out evaluation), saving."""


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

    def _seq_model(self):
        return self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model

    def _hidden(self, input_ids, position_ids, mask, lower=None):
        """The last hidden states (E, T, H); from block `first_adapted_block` on, given the
        frozen blocks' output `lower` (E, T, H)."""
        seq_model = self._seq_model()
        backbone = getattr(seq_model, seq_model.base_model_prefix)
        layers = decoder_layers(backbone)
        split = first_adapted_block(layers) if lower is not None else 0
        with SkipLowerBlocks(layers, split, lower):
            return backbone(
                input_ids=input_ids, attention_mask=mask, position_ids=position_ids, use_cache=False
            ).last_hidden_state  # (E, T, H)

    def forward(self, input_ids, position_ids, mask, ends, lower=None):
        """Each response's reward from every member: (S, M), M = 1 for a single model."""
        hidden = self._hidden(input_ids, position_ids, mask, lower)  # (E, T, H)
        last = hidden.reshape(-1, hidden.shape[-1])[ends]  # (S, H): last token of each response
        seq_model = self._seq_model()
        return getattr(seq_model, head_name(seq_model))(last).float()  # (S, M)

    def features(self, input_ids, position_ids, mask, ends, lower=None):
        """(last, mean), each (S, H) float: each response's last-token hidden state (what the
        head reads) and the mean over the tokens it attends to (its prefix and itself)."""
        hidden = self._hidden(input_ids, position_ids, mask, lower).float()  # (E, T, H)
        t = hidden.shape[1]
        rows, cols = ends // t, ends % t  # (S,) each
        last = hidden[rows, cols]  # (S, H)
        seen = mask[rows, 0, cols].to(hidden.dtype)  # (S, T): the keys each response's end sees
        mean = torch.einsum("st,sth->sh", seen, hidden[rows]) / seen.sum(1, keepdim=True)
        return last, mean


# ---------------------------------------------------------------------------------------------
# batching
# ---------------------------------------------------------------------------------------------


def length_grouped_batches(
    lengths: list[int], batch_size: int, seed: int, group: int = 32
) -> list[list[int]]:
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
        chunk = sorted(idx[start : start + mega], key=lambda i: lengths[i], reverse=True)
        batches += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
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
    example: torch.Tensor  # (P,) long: the batch row (comparison) each pair comes from

    def to(self, device):
        for name in (
            "input_ids",
            "position_ids",
            "mask",
            "ends",
            "better",
            "worse",
            "tie",
            "margin",
            "weight",
            "slots",
            "tiers",
            "example",
        ):
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
    rows = []
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
        input_ids[i, : len(row)] = torch.tensor(row)
        position_ids[i, : len(row)] = torch.tensor(pos)
        seg_ids[i, : len(row)] = torch.tensor(seg)
        for k in range(1, max(seg) + 1):
            ends.append(i * t + max(j for j, g in enumerate(seg) if g == k))
    q, kk = seg_ids[:, :, None], seg_ids[:, None, :]  # (E, T, 1), (E, 1, T)
    causal = torch.ones(t, t, dtype=torch.bool).tril()  # (T, T)
    mask = causal & (q >= 0) & ((kk == 0) | (kk == q))  # (E, T, T)
    mask |= torch.eye(t, dtype=torch.bool)  # padding rows see themselves
    return input_ids, position_ids, mask[:, None], torch.tensor(ends), int((seg_ids >= 0).sum())


def collate(items: list[Encoded], pad_id: int, multiple: int = 1) -> Batch:
    better, worse, tie, margin, weight, example = [], [], [], [], [], []
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
            example.append(e)
        base += k
    input_ids, position_ids, mask, ends, tokens = pack([it.ids for it in items], pad_id, multiple)
    return Batch(
        input_ids,
        position_ids,
        mask,
        ends,
        torch.tensor(better),
        torch.tensor(worse),
        torch.tensor(tie),
        torch.tensor(margin, dtype=torch.float32),
        torch.tensor(weight, dtype=torch.float32),
        slots,
        tiers,
        tokens,
        torch.tensor(example, dtype=torch.long),
    )


# ---------------------------------------------------------------------------------------------
# loss
# ---------------------------------------------------------------------------------------------


def batch_loss(
    cfg: RewardConfig, r: torch.Tensor, b: Batch, log_tie: torch.Tensor
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
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


def ensemble_loss(
    cfg: RewardConfig,
    r: torch.Tensor,
    b: Batch,
    log_tie: torch.Tensor,
    boot: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The mean over members of `batch_loss`, member m's pairs weighted by its bootstrap counts
    `boot[m]` (M, E) for the batch's comparisons (None: no resampling). r: (S, M). One member
    without resampling is exactly `batch_loss`. Plackett-Luce takes no pair weights: there the
        members differ only by their warm starts. Members whose resample has none of the batch's
    comparisons sit the batch out. Stats are the members' means."""
    parts = []
    for j in range(r.shape[1]):
        bj = b
        if boot is not None:
            w = b.weight * boot[j, b.example]  # (P,)
            if not bool(w.sum() > 0):  # the resample drew none of this batch's comparisons
                continue
            bj = Batch(**{**b.__dict__, "weight": w})
        parts.append(batch_loss(cfg, r[:, j], bj, log_tie))
    if not parts:  # no member drew any of them (vanishingly rare): a step that changes nothing
        return r.sum() * 0.0, {"reward/loss": r.new_zeros(()), "reward/accuracy": r.new_zeros(())}
    loss = sum(p[0] for p in parts) / len(parts)
    stats = {k: sum(p[1][k].detach() for p in parts) / len(parts) for k in parts[0][1]}
    return loss, stats


INITIAL_LOG_TIE = math.log(0.5)
"""Start of the tie model's parameter: eps = 0.5 (Rao-Kupper), nu = 0.5 (Davidson)."""


# ---------------------------------------------------------------------------------------------
# evaluation
# ---------------------------------------------------------------------------------------------


def stack_lower(items: list[Encoded], t: int, device) -> torch.Tensor | None:
    """The items' kept frozen-block outputs as one right-padded batch (E, t, H), or None if
    any item has none (then the forward runs every block)."""
    if not items or any(it.lower is None for it in items):
        return None
    first = items[0].lower
    out = first.new_zeros((len(items), t, first.shape[-1]))  # padding: zeros, seen by no token
    for i, it in enumerate(items):
        out[i, : it.lower.shape[0]] = it.lower
    return out.to(device)


@torch.no_grad()
def run_batches(
    module,
    fn,
    items: list[Encoded],
    batch_size: int,
    pad_id: int,
    device,
    bf16: bool,
    multiple: int = 1,
    keep_lower: int = 0,
) -> list:
    """`fn(input_ids, position_ids, mask, ends, lower)` (the module's forward or `features`)
    over packed batches of the items, shortest first (little padding), in eval mode. Returns,
    in item order, each item's rows of fn's output (a tensor, or a tuple of them), on the CPU.
    `keep_lower` > 0: also keep each item's input to that block (`Encoded.lower`)."""
    was_training = module.training
    module.eval()
    order = sorted(range(len(items)), key=lambda i: items[i].tokens)
    out: list = [None] * len(items)
    layers = decoder_layers(module.model) if keep_lower else None
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        ids, pos, mask, ends, _ = pack([items[i].ids for i in idx], pad_id, multiple)
        lower = stack_lower([items[i] for i in idx], ids.shape[1], device)
        with autocast(device, bf16), SkipLowerBlocks(layers, keep_lower, keep=True) as kept:
            got = fn(ids.to(device), pos.to(device), mask.to(device), ends.to(device), lower)
        if keep_lower:
            for j, i in enumerate(idx):
                items[i].lower = kept.kept[j, : items[i].tokens].to("cpu", copy=True)
        sizes = [len(items[i].ids) for i in idx]
        if isinstance(got, tuple):
            parts = zip(*(g.float().cpu().split(sizes) for g in got))
        else:
            parts = got.float().cpu().split(sizes)
        for i, part in zip(idx, parts):
            out[i] = part
    module.train(was_training)
    return out


def score_encoded(
    module,
    items: list[Encoded],
    batch_size: int,
    pad_id: int,
    device,
    bf16: bool,
    multiple: int = 1,
) -> list[torch.Tensor]:
    """Rewards of every response of every item from every member: a list of (K, M) tensors,
    in item order (M = 1 for a single model)."""
    return run_batches(module, module, items, batch_size, pad_id, device, bf16, multiple)


def pair_rewards(items: list[Encoded], scores: list[torch.Tensor]):
    """Per pair: (r_better, r_worse, tie, annotator) as numpy arrays / a list. `scores`: (K,)
    per item, or (K, M) members' scores (then r is their mean, the saved model's score)."""
    scores = [s.mean(-1) if s.ndim == 2 else s for s in scores]
    rb, rw, tie, ann = [], [], [], []
    for it, s in zip(items, scores):
        for p in it.example.pairs:
            rb.append(float(s[p.better]))
            rw.append(float(s[p.worse]))
            tie.append(p.tie)
            ann.append(it.example.annotator)
    return np.array(rb), np.array(rw), np.array(tie, dtype=bool), ann


def strict_gaps(rb, rw, tie) -> list[float]:
    """r_better - r_worse of each strict pair, in pair order, for probe.json: the
    per-pair record that lets two scorers be compared on the same held-out pairs
    (`probe.paired_sign_test`). Six significant digits: a small gap keeps its sign."""
    return [float(f"{g:.6g}") for g in (rb - rw)[~tie]]


def fit_tie_threshold(rb, rw, tie) -> float:
    """The |r_a - r_b| below which "tie" is predicted, chosen on the training pairs to maximise
    the tie-aware accuracy (0 when there are no ties: then a tie is never predicted)."""
    if not tie.any():
        return 0.0
    d = np.abs(rb - rw)
    candidates = np.concatenate([[0.0], np.sort(d)])
    accs = [metrics.tie_aware_accuracy(rb, rw, tie, float(c)) for c in candidates]
    return float(candidates[int(np.argmax(accs))])


def evaluate(
    items: list[Encoded], scores: list[torch.Tensor], tie_threshold: float, prefix: str = "reward/"
) -> dict[str, float]:
    """Held-out metrics with fixed names (see docs/reward.md)."""
    rb, rw, tie, ann = pair_rewards(items, scores)
    strict = ~tie
    d = rb - rw
    p = 1.0 / (1.0 + np.exp(-d[strict]))
    # Calibration of sigma(r_a - r_b) needs both outcomes: each strict pair is counted in both
    # orientations (p with outcome 1, 1 - p with outcome 0).
    ece = metrics.expected_calibration_error(
        np.concatenate([p, 1 - p]), np.concatenate([np.ones_like(p), np.zeros_like(p)])
    )
    out = {
        f"{prefix}accuracy": metrics.pairwise_accuracy(rb, rw, tie),
        f"{prefix}accuracy_tie_aware": metrics.tie_aware_accuracy(rb, rw, tie, tie_threshold),
        f"{prefix}margin": metrics.mean_margin(rb, rw, tie),
        f"{prefix}ece": ece,
        # Bradley-Terry loss of the strict pairs: what early stopping breaks accuracy ties with
        f"{prefix}nll": float(np.mean(np.logaddexp(0.0, -d[strict])))
        if strict.any()
        else float("nan"),
        f"{prefix}eval_pairs": float(len(rb)),
        f"{prefix}eval_ties": float(tie.sum()),
    }
    out.update(member_metrics(items, scores, prefix))
    by_ann = defaultdict(list)
    for i, a in enumerate(ann):
        by_ann[a].append(i)
    for a, idx in sorted(by_ann.items()):
        idx = np.array(idx)
        out[f"{prefix}accuracy/{a}"] = metrics.pairwise_accuracy(rb[idx], rw[idx], tie[idx])
    return out


def member_metrics(items: list[Encoded], scores: list[torch.Tensor], prefix: str) -> dict:
    """An ensemble's members on the held-out pairs (nothing for a single model):
    `members` (how many), `member_accuracy_min` / `_max` (the worst and best member's accuracy)
    and `spread` (the mean over strict pairs of the members' std of the score gap,
    `ensemble.gap_spread`)."""
    if not scores or scores[0].ndim != 2 or scores[0].shape[1] < 2:
        return {}
    accs = []
    for m in range(scores[0].shape[1]):
        rb, rw, tie, _ = pair_rewards(items, [s[:, m] for s in scores])
        accs.append(metrics.pairwise_accuracy(rb, rw, tie))
    spreads = [
        ensemble.gap_spread(s[p.better], s[p.worse])
        for it, s in zip(items, scores)
        for p in it.example.pairs
        if not p.tie
    ]
    return {
        f"{prefix}members": float(len(accs)),
        f"{prefix}member_accuracy_min": float(np.min(accs)),
        f"{prefix}member_accuracy_max": float(np.max(accs)),
        f"{prefix}spread": float(np.mean(spreads)) if spreads else float("nan"),
    }


# ---------------------------------------------------------------------------------------------
# checkpoints
# ---------------------------------------------------------------------------------------------


def latest_checkpoint(ckpt_dir: Path) -> Path | None:
    found = [p for p in ckpt_dir.glob(f"{CKPT_PREFIX}*") if (p / STATE_FILE).exists()]
    return max(found, key=lambda p: int(p.name[len(CKPT_PREFIX) :]), default=None)


def save_checkpoint(
    accelerator, ckpt_dir: Path, step: int, history: list[dict], best: Best
) -> None:
    out = ckpt_dir / f"{CKPT_PREFIX}{step}"
    accelerator.save_state(str(out))
    if accelerator.is_main_process:
        if best.state is not None:  # the weights early stopping would return
            torch.save(
                {"step": best.step, "key": best.key, "stale": best.stale, "state": best.state},
                out / BEST_FILE,
            )
        (out / STATE_FILE).write_text(json.dumps({"step": step, "history": history}))
        for old in ckpt_dir.glob(f"{CKPT_PREFIX}*"):  # keep the newest only
            if old != out:
                shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()


def load_checkpoint(accelerator, ckpt_dir: Path) -> tuple[int, list[dict], Best]:
    """(step, history, best) of the newest checkpoint; (0, [], Best()) when there is none."""
    last = latest_checkpoint(ckpt_dir)
    if last is None:
        accelerator.print(f"no checkpoint in {ckpt_dir}: starting from the beginning")
        return 0, [], Best()
    accelerator.load_state(str(last))
    state = json.loads((last / STATE_FILE).read_text())
    best = Best()
    if (last / BEST_FILE).exists():
        saved = torch.load(last / BEST_FILE)
        best = Best(saved["step"], tuple(saved["key"]), saved["state"], saved["stale"])
    return state["step"], state["history"], best


# ---------------------------------------------------------------------------------------------
# the trainer, phase by phase
# ---------------------------------------------------------------------------------------------


def split_examples(
    examples: Sequence[Example], held_out: Sequence[Example] | None, cfg: RewardConfig
) -> tuple[tuple[Example, ...], tuple[Example, ...]]:
    """1. data: (train, held-out); held-out by prompt (`cfg.eval_fraction`) unless given."""
    if not examples:
        raise RewardDataError("no training examples: label comparisons first")
    if held_out is None:
        train, held_out = split_by_prompt(examples, cfg.eval_fraction, cfg.seed)
    else:
        train, held_out = tuple(examples), tuple(held_out)
    if not any(not p.tie for e in train for p in e.pairs):
        raise RewardDataError(
            "the training split has no strict preference (none, or only ties): label more "
            "comparisons, or lower eval_fraction"
        )
    return train, held_out


def load_model(cfg: RewardConfig, base: str, bf16: bool):
    """2. model: (tokenizer, sequence-classification model) with the speed kernels on and no
    adapter yet (the frozen features for the probes come from the plain backbone)."""
    tokenizer = load_reward_tokenizer(base, cfg.max_length)
    # Full fine-tuning: fp32 weights (the optimizer's) and bf16 autocast. LoRA under bf16:
    # the frozen base weights in bf16 (half the memory, no cast at every forward) and the
    # adapters and head in fp32 for the optimizer.
    model = load_backbone(base, tokenizer, dtype=weights_dtype(cfg.lora and bf16))
    use_training_attention(model)  # fp32 attention for short rows on the CPU (lm/kernels.py)
    if cfg.gradient_checkpointing:
        model.activation_checkpointing_enable(
            activation_checkpointing_kwargs={"use_reentrant": False}
        )
    model.config.use_cache = False
    return tokenizer, model


def add_adapter(model, cfg: RewardConfig, bf16: bool):
    """2b. LoRA on the projections (the head trained in full), or the model as it is."""
    if not cfg.lora:
        return model
    if cfg.gradient_checkpointing:  # frozen embeddings: the checkpointed input needs a grad
        model.enable_input_require_grads()
    model = add_lora(
        model, cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout, cfg.target_modules, cfg.lora_layers
    )
    if bf16:
        for p in model.parameters():
            if p.requires_grad:
                p.data = p.data.float()
        keep_adapter_inputs_in_autocast_dtype(model)
    return model


LOWER_CACHE_BYTES = 2 << 30
"""The most memory the kept outputs of the frozen blocks may take ([reward] lora_layers); past it
each step runs the frozen blocks again (still without their backward)."""


def lower_split(model, cfg: RewardConfig, items: list[Encoded]) -> int:
    """The first adapted block when the frozen blocks' outputs for `items` are to be kept
    (LoRA on the top `lora_layers` blocks, and they fit LOWER_CACHE_BYTES); else 0."""
    if not (cfg.lora and cfg.lora_layers):
        return 0
    split = top_blocks(model, cfg.lora_layers)[0]
    size = next(model.parameters()).element_size() * model.config.hidden_size
    return split if sum(it.tokens for it in items) * size <= LOWER_CACHE_BYTES else 0


@dataclass
class Probes:
    """Frozen-feature probes fitted on the training split (see probe.py)."""

    last: np.ndarray  # (M, H) weights on last-token features: each member's warm start
    metrics: dict[str, float]  # held-out accuracy of each probe
    member_seconds: float = 0.0  # of it, fitting the ensemble members' warm starts
    reward: dict | None = None
    """The mean-pooling probe as a reward (saved as probe.json, `scoring.ProbeScorer`): its
    weights `w` and its score's mean and std over the training responses."""


@torch.no_grad()
def fit_probes(
    module: RewardModule,
    train_items: list[Encoded],
    eval_items: list[Encoded],
    cfg: RewardConfig,
    pad_id: int,
    device,
    bf16: bool,
    keep_lower: int = 0,
) -> Probes:
    """2c. Frozen features of every response (one forward, no gradient), a probe on each
    pooling, and their held-out accuracy: `reward/probe_accuracy` (mean pooling, the baseline
    `rankloop train-reward` reports) and `reward/probe_last_accuracy`. With an ensemble, each
    member's warm start is the last-token probe refitted on its bootstrap resample (the same
    features: no second pass). `keep_lower` > 0: the same pass keeps each item's input to that
    block (`Encoded.lower`, see `lower_split`)."""
    feats = {"last": ([], []), "mean": ([], [])}
    for items, side in ((train_items, 0), (eval_items, 1)):
        for f_last, f_mean in run_batches(
            module,
            module.features,
            items,
            2 * cfg.batch_size,
            pad_id,
            device,
            bf16,
            cfg.pad_to_multiple_of,
            keep_lower,
        ):
            feats["last"][side].append(f_last.numpy())
            feats["mean"][side].append(f_mean.numpy())
    pairs = [it.example.pairs for it in train_items]
    rows = [i for i, ps in enumerate(pairs) for p in ps if not p.tie]  # each row's comparison
    weights, diffs, out, eval_gaps = {}, {}, {}, None
    for pooling, (train_f, eval_f) in feats.items():
        diffs[pooling] = x, w = probe.pair_differences(train_f, pairs)
        weights[pooling] = probe.fit_probe(x, w, cfg.seed)
        if eval_items:
            scores = [torch.from_numpy(f @ weights[pooling]) for f in eval_f]
            name = "reward/probe_accuracy" if pooling == "mean" else "reward/probe_last_accuracy"
            rb, rw, tie, _ = pair_rewards(eval_items, scores)
            out[name] = metrics.pairwise_accuracy(rb, rw, tie)
            if pooling == "mean":
                eval_gaps = strict_gaps(rb, rw, tie)
    train_scores = np.concatenate([f @ weights["mean"] for f in feats["mean"][0]])  # (S,)
    # how well the mean-pooling probe ranks labels it was not fitted on: whether it is worth
    # mixing into the round's reward ([rounds] reward = "auto", probe.informative)
    x, w = diffs["mean"]
    cv = dict(zip(("cv_accuracy", "cv_se"), probe.cross_validated_accuracy(x, w, rows, cfg.seed)))
    cv = {k: v for k, v in cv.items() if not np.isnan(v)}  # nan: too few comparisons to tell
    out.update({f"reward/probe_{k}": v for k, v in cv.items()})
    reward = {
        "w": weights["mean"].tolist(),
        "mean": float(train_scores.mean()),
        "std": float(train_scores.std()) or 1.0,
        **cv,
    }
    if eval_gaps is not None:  # the model's beside them after training: probe.mix_decision
        reward["held_out_gaps"] = {"probe": eval_gaps}
    last = weights["last"][None]  # (1, H)
    t0 = time.perf_counter()
    if cfg.ensemble > 1 and cfg.warm_start:
        boot = ensemble.bootstrap_weights(len(train_items), cfg.ensemble, cfg.seed)  # (M, n)
        x, w = diffs["last"]
        fits = []
        for m in range(cfg.ensemble):
            keep = boot[m, rows] > 0
            if keep.sum() < 2:  # a resample too small to fit: start from the full-data probe
                fits.append(weights["last"])
                continue
            fits.append(probe.fit_probe(x[keep], (w * boot[m, rows])[keep], cfg.seed + m))
        last = np.stack(fits)  # (M, H)
    return Probes(last=last, metrics=out, member_seconds=time.perf_counter() - t0, reward=reward)


def warm_start_head(model, w: np.ndarray) -> None:
    """LP-FT: the scalar head starts as the last-token probe, r = w . h_last; `w` (M, H) gives
    an M-output head, one row per ensemble member."""
    head = getattr(model, head_name(model))
    if w.shape[0] > 1:
        bias = None if head.bias is None else torch.zeros(w.shape[0])
        ensemble.set_head(model, torch.as_tensor(w, dtype=torch.float32), bias)  # (M, H)
        return
    with torch.no_grad():
        head.weight.copy_(torch.as_tensor(w, dtype=head.weight.dtype))
        if getattr(head, "bias", None) is not None:
            head.bias.zero_()


def widen_head(model, members: int, seed: int) -> None:
    """An M-output head for an ensemble without a warm start (or resumed from a checkpoint, which
    then overwrites it): the members start from different random heads."""
    head = getattr(model, head_name(model))
    if head.weight.shape[0] == members:
        return
    g = torch.Generator().manual_seed(seed)
    std = getattr(model.config, "initializer_range", 0.02)
    weight = torch.randn(members, head.weight.shape[1], generator=g) * std  # (M, H)
    ensemble.set_head(model, weight, None if head.bias is None else torch.zeros(members))


def batch_schedule(
    train_items: list[Encoded], cfg: RewardConfig, world: int
) -> tuple[list[list[int]], int, int]:
    """(batches of every epoch in order, optimizer steps, steps per epoch): fixed by the seed,
    so a resumed run sees the same order; equal work for every process."""
    lengths = [it.tokens for it in train_items]
    per_epoch = length_grouped_batches(lengths, cfg.batch_size, cfg.seed)
    n_batches = max(1, math.ceil(len(per_epoch) * cfg.epochs))
    schedule, epoch = [], 0
    while len(schedule) < n_batches:
        schedule += (
            per_epoch
            if epoch == 0
            else length_grouped_batches(lengths, cfg.batch_size, cfg.seed + epoch)
        )
        epoch += 1
    per_step = world * cfg.grad_accum
    steps_total = max(1, n_batches // per_step)
    steps_per_epoch = max(1, len(per_epoch) // per_step)
    return schedule[: steps_total * per_step], steps_total, steps_per_epoch


@dataclass
class Best:
    """The held-out evaluation that selects the model (early stopping): the best one so far,
    the trainable weights it had, and how many evaluations since it."""

    step: int = -1
    key: tuple = ()
    state: dict | None = None
    stale: int = 0

    def offer(self, step: int, ev: dict, module) -> bool:
        """Keep `module`'s trainable weights if `ev` beats the best: higher held-out accuracy,
        then lower held-out loss. Returns whether it did."""
        key = (ev["eval/accuracy"], -ev["eval/nll"])
        if any(math.isnan(k) for k in key):
            return False
        if self.state is not None and key <= self.key:
            self.stale += 1
            return False
        self.step, self.key, self.stale = step, key, 0
        self.state = {
            n: p.detach().to("cpu", copy=True)
            for n, p in module.named_parameters()
            if p.requires_grad
        }
        return True

    def restore(self, module) -> None:
        params = dict(module.named_parameters())
        with torch.no_grad():
            for n, v in self.state.items():
                params[n].copy_(v)


@dataclass
class Loop:
    """What the optimisation loop works with (built once, used by `run_loop`)."""

    accelerator: object
    module: RewardModule
    optimizer: torch.optim.Optimizer
    scheduler: object
    params: list
    schedule: list[list[int]]
    steps_total: int
    steps_per_epoch: int
    train_items: list[Encoded]
    eval_items: list[Encoded]
    pad_id: int
    bf16: bool
    compiled: bool  # the transformer blocks run through torch.compile
    boot: torch.Tensor | None = None  # (M, train items) bootstrap counts; None: one member


def make_loop(
    module: RewardModule,
    cfg: RewardConfig,
    accelerator,
    train_items,
    eval_items,
    pad_id: int,
    bf16: bool,
) -> Loop:
    """3a. the batch schedule, AdamW, the linear schedule, accelerate's wrapping."""
    from transformers import get_scheduler

    device = accelerator.device
    schedule, steps_total, steps_per_epoch = batch_schedule(
        train_items, cfg, accelerator.num_processes
    )
    compiled = use_compile(cfg.compile, steps_total, device.type)
    if compiled:  # marks the blocks; the compile itself happens in the first step
        compile_blocks(module.model)
    params = [p for p in module.parameters() if p.requires_grad]
    # fused: one kernel over all parameters (faster steps for full fine-tuning)
    optimizer = torch.optim.AdamW(
        params,
        lr=cfg.learning_rate,
        weight_decay=cfg.weight_decay,
        fused=device.type in ("cpu", "cuda"),
    )
    # stepped once per optimizer step by the loop (accelerate would step it once per process)
    scheduler = get_scheduler(
        "linear",
        optimizer,
        num_warmup_steps=int(cfg.warmup_ratio * steps_total),
        num_training_steps=steps_total,
    )
    module, optimizer = accelerator.prepare(module, optimizer)
    accelerator.register_for_checkpointing(scheduler)
    return Loop(
        accelerator,
        module,
        optimizer,
        scheduler,
        params,
        schedule,
        steps_total,
        steps_per_epoch,
        train_items,
        eval_items,
        pad_id,
        bf16,
        compiled,
        boot_counts(cfg, len(train_items)),
    )


def boot_counts(cfg: RewardConfig, n: int) -> torch.Tensor | None:
    """Each member's bootstrap counts of the n training comparisons (M, n); None for one member
    (then training is exactly the single model's)."""
    if cfg.ensemble == 1:
        return None
    return torch.as_tensor(
        ensemble.bootstrap_weights(n, cfg.ensemble, cfg.seed), dtype=torch.float32
    )


def train_step(loop: Loop, cfg: RewardConfig, step: int) -> tuple[dict[str, float], int]:
    """3b. one optimizer step (grad_accum micro-batches): (its statistics, tokens seen)."""
    acc, world = loop.accelerator, loop.accelerator.num_processes
    device, tokens = acc.device, 0
    for micro in range(cfg.grad_accum):
        k = (step * cfg.grad_accum + micro) * world + acc.process_index
        items = [loop.train_items[i] for i in loop.schedule[k]]
        batch = collate(items, loop.pad_id, cfg.pad_to_multiple_of).to(device)
        lower = stack_lower(items, batch.input_ids.shape[1], device)  # None: every block runs
        boot = None if loop.boot is None else loop.boot[:, loop.schedule[k]].to(device)  # (M, E)
        tokens += batch.tokens
        with acc.accumulate(loop.module):
            with autocast(device, loop.bf16):
                r = loop.module(batch.input_ids, batch.position_ids, batch.mask, batch.ends, lower)
            log_tie = acc.unwrap_model(loop.module).log_tie
            loss, stats = ensemble_loss(cfg, r.float(), batch, log_tie, boot)  # r: (S, M)
            acc.backward(loss)
            if acc.sync_gradients:
                if cfg.max_grad_norm > 0:
                    acc.clip_grad_norm_(loop.params, cfg.max_grad_norm)
                loop.optimizer.step()
                loop.scheduler.step()
                loop.optimizer.zero_grad(set_to_none=True)
    logged = {k: float(v) for k, v in stats.items()}
    logged["reward/lr"] = loop.scheduler.get_last_lr()[0]
    return logged, tokens


def evaluate_now(loop: Loop, cfg: RewardConfig) -> dict[str, float]:
    """Held-out metrics of the model as it is now, named eval/..."""
    scores = score_encoded(
        loop.module,
        loop.eval_items,
        2 * cfg.batch_size,
        loop.pad_id,
        loop.accelerator.device,
        loop.bf16,
        cfg.pad_to_multiple_of,
    )
    return evaluate(loop.eval_items, scores, 0.0, prefix="eval/")


def run_loop(
    loop: Loop,
    cfg: RewardConfig,
    *,
    step: int,
    history: list[dict],
    best: Best,
    stop: int,
    ckpt_dir: Path,
    progress: bool,
    on_step: Callable[[dict], None] | None,
) -> tuple[int, int]:
    """3c. the optimisation loop, from `step` to `stop`: (last step, tokens seen).

    With `select_best`, the held-out split is evaluated at every epoch's end (and every
    `eval_every` steps); the best weights are kept (`best`) and the loop stops once `patience`
    evaluations in a row did not beat them."""
    acc = loop.accelerator
    bar = tqdm(
        total=stop,
        initial=step,
        desc="reward model",
        unit="step",
        disable=not (progress and acc.is_local_main_process),
    )
    loop.module.train()
    run_loss = run_acc = None
    tokens = 0
    select = cfg.select_best and bool(loop.eval_items)
    while step < stop:
        logged, n = train_step(loop, cfg, step)
        tokens += n
        step += 1
        history.append({"step": step, **logged})
        # exponential moving averages keep the progress bar readable
        run_loss = (
            logged["reward/loss"]
            if run_loss is None
            else 0.9 * run_loss + 0.1 * logged["reward/loss"]
        )
        run_acc = (
            logged["reward/accuracy"]
            if run_acc is None
            else 0.9 * run_acc + 0.1 * logged["reward/accuracy"]
        )
        bar.set_postfix(loss=f"{run_loss:.4f}", acc=f"{run_acc:.3f}")
        bar.update(1)
        if cfg.log_with:
            acc.log(logged, step=step)
        epoch_end = step % loop.steps_per_epoch == 0 or step == loop.steps_total
        if loop.eval_items and (
            (select and epoch_end) or (cfg.eval_every and step % cfg.eval_every == 0)
        ):
            ev = evaluate_now(loop, cfg)
            history[-1].update(ev)
            if cfg.log_with:
                acc.log(ev, step=step)
            if select:
                best.offer(step, ev, acc.unwrap_model(loop.module))
        if cfg.checkpoint_every and step % cfg.checkpoint_every == 0 and step < stop:
            save_checkpoint(acc, ckpt_dir, step, history, best)
        if on_step is not None:
            on_step(history[-1])
        if select and cfg.patience and best.stale >= cfg.patience:
            break  # early stopping: the held-out split stopped improving
    bar.close()
    return step, tokens


def stats_sample(items: list[Encoded], k: int, seed: int) -> list[Encoded]:
    """The training items scored after the loop for the statistics: all of them, or `k` drawn
    at random (the same `k` for the same seed), in their own order."""
    if not k or len(items) <= k:
        return items
    return [items[i] for i in sorted(random.Random(seed).sample(range(len(items)), k))]


def final_metrics(loop: Loop, cfg: RewardConfig) -> tuple[dict[str, float], dict, list]:
    """4. (metrics, reward statistics, held-out gaps): training-set statistics (the reward's
    mean and std for PPO, the tie threshold) on `stats_sample` training comparisons, the
    held-out metrics (docs/reward.md) and the model's score gap on each strict held-out pair
    (`strict_gaps`)."""
    acc = loop.accelerator
    train_items = stats_sample(loop.train_items, cfg.stats_sample, cfg.seed)
    train_scores = score_encoded(
        loop.module,
        train_items,
        2 * cfg.batch_size,
        loop.pad_id,
        acc.device,
        loop.bf16,
        cfg.pad_to_multiple_of,
    )
    # the statistics PPO normalises with are those of what the scorer returns: the aggregate
    flat = ensemble.aggregate_scores(
        torch.cat(train_scores), cfg.ensemble_aggregate, cfg.ensemble_k
    )  # (N,)
    rb, rw, tie, _ = pair_rewards(train_items, train_scores)
    threshold = fit_tie_threshold(rb, rw, tie)
    out = {
        "reward/train_pairs": float(len(rb)),
        "reward/train_accuracy": metrics.pairwise_accuracy(rb, rw, tie),
        "reward/tie_threshold": threshold,
        "reward/mean": float(flat.mean()),
        "reward/std": float(flat.std()) if flat.numel() > 1 else 1.0,
    }
    if cfg.loss in ("rao-kupper", "davidson"):
        name = "reward/epsilon" if cfg.loss == "rao-kupper" else "reward/nu"
        out[name] = float(acc.unwrap_model(loop.module).log_tie.detach().exp())
    if loop.eval_items:
        scores = score_encoded(
            loop.module,
            loop.eval_items,
            2 * cfg.batch_size,
            loop.pad_id,
            acc.device,
            loop.bf16,
            cfg.pad_to_multiple_of,
        )
        out.update(evaluate(loop.eval_items, scores, threshold))
        gaps = strict_gaps(*pair_rewards(loop.eval_items, scores)[:3])
    else:
        gaps = []
    stats = {"mean": out["reward/mean"], "std": out["reward/std"], "n": int(flat.numel())}
    return out, stats, gaps


def train_reward(
    examples: Sequence[Example],
    cfg: RewardConfig,
    out_dir: str | Path,
    *,
    base: str,
    held_out: Sequence[Example] | None = None,
    resume: bool = False,
    progress: bool = True,
    log_dir: str | Path | None = None,
    accelerator=None,
    max_steps: int | None = None,
    on_step: Callable[[dict], None] | None = None,
) -> TrainResult:
    """Fit a reward model on `examples` (see pairs.py: from a store with `build_examples`, or
    from plain data with `pairwise_example` / `ranking_example`) and save it to `out_dir`.

    `held_out` examples are the evaluation split; None splits `examples` by prompt
    (`cfg.eval_fraction`). Checkpoints go to `checkpoint_dir(out_dir)`, `out_dir/checkpoints` (every
    `cfg.checkpoint_every` steps); `resume=True` continues from the newest one. `max_steps`
    stops early (for tests and benchmarks); the learning-rate schedule still spans the whole
    run. `on_step(row)` is called with each optimizer step's statistics (the row `history`
    gets) once the step, its evaluation and its checkpoint are done.
    """

    from rankloop.lm.device import new_accelerator

    cfg.validate()
    t0 = time.perf_counter()
    out_dir = Path(out_dir)
    ckpt_dir = checkpoint_dir(out_dir)

    # 1. data ----------------------------------------------------------------------------------
    train_ex, eval_ex = split_examples(examples, held_out, cfg)
    trackers = tracking.parse_trackers(cfg.log_with, "reward")
    tracking.check_installed(trackers)
    log_dir = Path(log_dir) if log_dir else out_dir.with_name(out_dir.name + "-logs")
    if accelerator is None:
        accelerator = new_accelerator(
            mixed_precision="no",
            gradient_accumulation_steps=cfg.grad_accum,
            log_with=trackers or None,
            project_dir=str(log_dir),
        )
    device = accelerator.device
    bf16 = use_bf16(cfg.bf16, device)
    seed_everything(cfg.seed)

    # 2. model, frozen-feature probes, the head's warm start -----------------------------------
    tokenizer, model = load_model(cfg, base, bf16)
    train_items = encode(tokenizer, train_ex, cfg.max_length)
    eval_items = encode(tokenizer, eval_ex, cfg.max_length)
    pad = tokenizer.pad_token_id
    phases = {"load": time.perf_counter() - t0}
    t_phase = time.perf_counter()
    probe_metrics, member_seconds, probe_reward = {}, 0.0, None
    keep_lower = lower_split(model, cfg, train_items + eval_items)
    frozen = RewardModule(model, 0.0).to(device)
    if (cfg.warm_start or eval_items) and not resume:
        probes = fit_probes(
            frozen, train_items, eval_items, cfg, pad, device, bf16, keep_lower=keep_lower
        )
        probe_metrics, member_seconds = probes.metrics, probes.member_seconds
        probe_reward = {
            "base": base,
            "pooling": "mean",
            "bf16": bf16,
            "accuracy": probes.metrics.get("reward/probe_accuracy"),
            **probes.reward,
        }
        if cfg.warm_start:
            warm_start_head(model, probes.last)
    elif keep_lower:  # no probes (resuming, or nothing needs them): the frozen pass alone
        for items in (train_items, eval_items):
            run_batches(
                frozen,
                frozen.features,
                items,
                2 * cfg.batch_size,
                pad,
                device,
                bf16,
                cfg.pad_to_multiple_of,
                keep_lower,
            )
    if cfg.ensemble > 1:  # no warm start, or resuming: the checkpoint's heads replace these
        widen_head(model, cfg.ensemble, cfg.seed)
    phases["probe"] = time.perf_counter() - t_phase - member_seconds
    if cfg.ensemble > 1:
        phases["ensemble"] = member_seconds
    model = add_adapter(model, cfg, bf16)
    module = RewardModule(model, INITIAL_LOG_TIE)
    module.log_tie.requires_grad_(cfg.loss in ("rao-kupper", "davidson"))

    # 3. loop ----------------------------------------------------------------------------------
    loop = make_loop(module, cfg, accelerator, train_items, eval_items, pad, bf16)
    step, history, best = 0, [], Best()
    if resume:
        step, history, best = load_checkpoint(accelerator, ckpt_dir)
    elif cfg.select_best and eval_items:  # step 0 (the warm start alone) is a candidate too
        best.offer(0, evaluate_now(loop, cfg), accelerator.unwrap_model(loop.module))
    if trackers:
        accelerator.init_trackers(
            "rankloop-reward",
            config=asdict(cfg),
            init_kwargs=tracking.init_kwargs(trackers, log_dir),
        )
    stop = min(loop.steps_total, max_steps) if max_steps else loop.steps_total
    t_loop = time.perf_counter()
    step, tokens = run_loop(
        loop,
        cfg,
        step=step,
        history=history,
        best=best,
        stop=stop,
        ckpt_dir=ckpt_dir,
        progress=progress,
        on_step=on_step,
    )
    loop_seconds = time.perf_counter() - t_loop
    train_seconds = time.perf_counter() - t0
    phases["loop"] = loop_seconds
    if best.state is not None:
        best.restore(accelerator.unwrap_model(loop.module))

    # 4. evaluation and reward statistics ------------------------------------------------------
    t_phase = time.perf_counter()
    result_metrics, stats, model_gaps = final_metrics(loop, cfg)
    phases["scoring"] = time.perf_counter() - t_phase
    result_metrics.update(probe_metrics)
    if best.state is not None:
        result_metrics["reward/best_step"] = float(best.step)
    if trackers:
        accelerator.log(result_metrics, step=step)
        accelerator.end_training()

    # 5. save ----------------------------------------------------------------------------------
    accelerator.wait_for_everyone()
    # the one malloc_trim of the run (see lm/kernels.py): training and scoring are done,
    # and the merge below needs room for an fp32 copy of the model
    release_freed_memory()
    stopped_early = best.state is not None and cfg.patience and best.stale >= cfg.patience
    if probe_reward is not None:  # what [rounds] reward = "auto" weighs (probe.mix_decision)
        probe_reward["model_accuracy"] = result_metrics.get("reward/accuracy")
        probe_reward["eval_pairs"] = result_metrics.get("reward/eval_pairs")
        if "held_out_gaps" in probe_reward:
            probe_reward["held_out_gaps"]["model"] = model_gaps
    t_phase = time.perf_counter()
    if accelerator.is_main_process:
        save_model(
            accelerator.unwrap_model(loop.module).model,
            tokenizer,
            out_dir,
            cfg,
            stats,
            probe=probe_reward,
        )
        from rankloop.lm.cards import write_reward_card

        write_reward_card(
            out_dir,
            base=base,
            config=asdict(cfg),
            metrics=result_metrics,
            examples=len(train_items),
            eval_examples=len(eval_items),
        )
        if ckpt_dir.exists() and (step >= loop.steps_total or stopped_early):
            shutil.rmtree(ckpt_dir, ignore_errors=True)  # finished: the checkpoints are spent
    accelerator.wait_for_everyone()
    phases["saving"] = time.perf_counter() - t_phase
    return TrainResult(
        path=out_dir,
        metrics=result_metrics,
        steps=step,
        train_examples=len(train_items),
        eval_examples=len(eval_items),
        seconds=train_seconds,
        train_tokens=tokens,
        loop_seconds=loop_seconds,
        history=history,
        compiled=loop.compiled,
        phases=phases,
    )


def save_model(
    model, tokenizer, out_dir: Path, cfg: RewardConfig, stats: dict, probe: dict | None = None
) -> None:
    """A standard checkpoint (merged LoRA by default), its tokenizer, reward_stats.json and,
    when the probes were fitted, the frozen-feature probe as a reward (probe.json).

    An ensemble's M-output head is folded into the standard one-output head with the members'
    mean weights, and the members go into config.json (`ensemble.fold_members`).

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
    ensemble.fold_members(model, cfg.ensemble_aggregate, cfg.ensemble_k)
    model.config.use_cache = True
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    (tmp / STATS_FILE).write_text(json.dumps(stats))
    if probe is not None:
        (tmp / PROBE_FILE).write_text(json.dumps(probe))
    (tmp / "rankloop_reward.json").write_text(
        json.dumps({"config": asdict(cfg), "head": head_name(model)}, indent=1)
    )
    if checkpoint_dir(out_dir).exists():  # an unfinished run's checkpoints stay for --resume
        checkpoint_dir(out_dir).replace(checkpoint_dir(tmp))
    if out_dir.exists():
        shutil.rmtree(out_dir)
    tmp.replace(out_dir)
