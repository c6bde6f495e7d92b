"""Reward-model quality from few labels: known-answer tasks, rankloop vs TRL vs two baselines.

Four preference tasks of different kinds, built on responses sampled once from the default model
(bench/reward_quality_texts.py) and judged by an oracle whose score s(prompt, response) is known:
  format     the prompt asks for a bulleted list or for one paragraph; each response is offered in
             both forms; s = 1 for the form asked for, else 0 (the preferred form depends on the
             prompt, not on the words);
  formality  each response at 4 levels of informality (contractions, a casual opener, "u", "lol");
             s = -level (word-level cues);
  relevance  the prompt's own responses against responses sampled for other prompts; s = 1 for
             its own, else 0 (meaning; a response-only word count cannot see the prompt);
  coherence  each response with 0-3 rounds of adjacent word swaps; s = -rounds (the same words:
             a bag of words cannot tell them apart).
Labels are drawn with Bradley-Terry noise, P(a preferred) = sigma(beta (s_a - s_b)), beta set per
task, so the best possible accuracy on held-out labels is known: mean sigma(beta |s_a - s_b|).
Train and held-out pairs come from disjoint prompts (200 / 54). Held-out accuracy is the expected
agreement with such a noisy label (a pair counts sigma(beta |d|) when the model orders it as the
oracle does, 1 - sigma(beta |d|) otherwise), which takes the luck of one label draw out; ECE
uses one fixed draw of held-out labels, each pair in both orientations.

Systems, all on the same pairs in the same run:
  rankloop   rankloop.reward.train.train_reward with its defaults (it holds out 10% of the
             training prompts itself to pick its best epoch);
  round      what a round's policy stage optimises under the defaults, from the same training
             as `rankloop`: the model, or its saved frozen-feature probe (probe.json) when the
             model lost to that probe on its own held-out split ([rounds] weak_reward = 'probe',
             app.rounds.lost_to_probe); the row records both accuracies and the decision;
  mix        from the same training too: the model's and its saved probe's scores, each
             standardised by its own training statistics, summed (an ensemble of two views);
  auto       from the same training: `mix` when the probe ranks the training labels above
             chance, cross-validated (probe.json, [rounds] reward = 'auto'), else the model;
  ensemble   the same with [reward] ensemble = --ensemble (4) members on one backbone, scored
             by their mean (what plain transformers load);
  trl        TRL's RewardTrainer, LoRA r=16 on the same modules, its defaults otherwise
             (lr 1e-4, gradient checkpointing), --trl-epochs epochs;
  probe      logistic regression on frozen SmolLM2 features (mean-pooled last hidden states of
             prompt + response), chosen minus rejected (rankloop.reward.probe);
  bow        logistic regression on bag-of-words counts of the response (chosen minus rejected).
Time is each system's fit (and, for the probe, its feature pass), not the held-out scoring.

Usage (split long runs by task / size so other jobs get the CPU lock in between):
  flock /tmp/rankloop-cpu.lock .venv/bin/python bench/reward_quality.py --tasks format \\
      --sizes 300 --seeds 0 --systems rankloop,trl,probe,bow --out bench/results/rq-format.json
  .venv/bin/python bench/reward_quality.py --table bench/results/rq-*.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import random
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from reward_quality_texts import load

HELD_OUT_PROMPTS = 54
HELD_OUT_PAIRS = 300

# ---------------------------------------------------------------------------------------------
# the tasks: candidates (text, oracle score) per prompt
# ---------------------------------------------------------------------------------------------


def sentences(text: str) -> list[str]:
    parts = [p.strip(" -*\n") for p in re.split(r"(?<=[.!?])\s+|\n+", text)]
    parts = [p for p in parts if p]
    if len(parts) < 2:  # one long sentence: its clauses become the items
        parts = [p.strip() for p in text.split(",") if p.strip()] or [text.strip()]
    return parts


def as_paragraph(text: str) -> str:
    return " ".join(
        re.sub(r"^\s*(?:[-*]|\d+[.)])\s*", "", line) for line in text.split("\n") if line.strip()
    )


def as_list(text: str) -> str:
    return "\n".join(f"- {s}" for s in sentences(as_paragraph(text)))


CONTRACTIONS = [
    ("do not", "don't"),
    ("does not", "doesn't"),
    ("it is", "it's"),
    ("you are", "you're"),
    ("I am", "I'm"),
    ("cannot", "can't"),
    ("will not", "won't"),
    ("is not", "isn't"),
    ("are not", "aren't"),
    ("going to", "gonna"),
    ("want to", "wanna"),
    ("that is", "that's"),
    ("you will", "you'll"),
    ("there is", "there's"),
]


def informal(text: str, level: int) -> str:
    """Informality in rounds: 1 contractions, 2 a casual opener, 3 'u' / 'ur' and 'lol'."""
    if level >= 1:
        for a, b in CONTRACTIONS:
            text = re.sub(rf"\b{a}\b", b, text)
            text = re.sub(rf"\b{a.capitalize()}\b", b.capitalize(), text)
    if level >= 2:
        text = "hey so, " + text[:1].lower() + text[1:]
    if level >= 3:
        text = re.sub(
            r"\byou\b",
            "u",
            re.sub(r"\byour\b", "ur", text, flags=re.IGNORECASE),
            flags=re.IGNORECASE,
        )
        text = text.rstrip() + " lol"
    return text


def scrambled(text: str, rounds: int, rng: random.Random) -> str:
    """`rounds` x (words / 10) swaps of a random word with its neighbour: the same words."""
    words = text.split(" ")
    for _ in range(rounds * max(1, len(words) // 10)):
        if len(words) < 2:
            break
        i = rng.randrange(len(words) - 1)
        words[i], words[i + 1] = words[i + 1], words[i]
    return " ".join(words)


def task_candidates(task: str, texts: list[dict], i: int) -> tuple[str, list[tuple[str, float]]]:
    """(prompt, [(response, oracle score)]) of prompt i for a task."""
    prompt, responses = texts[i]["prompt"], texts[i]["responses"]
    rng = random.Random(f"{task}:{i}")
    if task == "format":
        want_list = i % 2 == 0
        prompt += (
            " Answer as a bulleted list."
            if want_list
            else " Answer in one paragraph, without a list."
        )
        return prompt, (
            [(as_list(r), float(want_list)) for r in responses]
            + [(as_paragraph(r), float(not want_list)) for r in responses]
        )
    if task == "formality":
        return prompt, [(informal(r, k), -float(k)) for r in responses for k in range(4)]
    if task == "relevance":
        others = rng.sample([j for j in range(len(texts)) if j != i], 3)
        return prompt, (
            [(r, 1.0) for r in responses]
            + [(texts[j]["responses"][rng.randrange(3)], 0.0) for j in others]
        )
    if task == "coherence":
        return prompt, [(scrambled(r, k, rng), -float(k)) for r in responses for k in range(4)]
    raise ValueError(task)


TASKS = ("format", "formality", "relevance", "coherence")
BETA = {"format": math.log(9), "formality": 1.5, "relevance": math.log(9), "coherence": 1.5}


def prompt_pairs(task: str, texts: list[dict], i: int) -> tuple[str, list[tuple[str, str, float]]]:
    """(prompt, [(a, b, s_a - s_b)]): every candidate pair the oracle does not tie."""
    prompt, cands = task_candidates(task, texts, i)
    out = [
        (a, b, sa - sb)
        for x, (a, sa) in enumerate(cands)
        for (b, sb) in cands[x + 1 :]
        if sa != sb and a != b
    ]
    return prompt, out


def draw(prompts: list[int], n: int, task: str, texts, rng: random.Random):
    """n pairs spread over the prompts (one per prompt per round, in a shuffled order):
    [(prompt, a, b, d)]."""
    pools = {}
    for i in prompts:
        p, pairs = prompt_pairs(task, texts, i)
        rng.shuffle(pairs)
        pools[i] = (p, pairs)
    order = list(prompts)
    rng.shuffle(order)
    out = []
    while len(out) < n and any(pools[i][1] for i in order):
        for i in order:
            if pools[i][1] and len(out) < n:
                a, b, d = pools[i][1].pop()
                out.append((pools[i][0], a, b, d))
    return out


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-np.asarray(x, dtype=np.float64)))


def noisy_labels(pairs, beta: float, rng: random.Random):
    """(prompt, chosen, rejected) with P(a chosen) = sigma(beta d)."""
    return [(p, a, b) if rng.random() < sigmoid(beta * d) else (p, b, a) for p, a, b, d in pairs]


def split_prompts(n: int) -> tuple[list[int], list[int]]:
    order = list(range(n))
    random.Random(0).shuffle(order)
    return sorted(order[HELD_OUT_PROMPTS:]), sorted(order[:HELD_OUT_PROMPTS])


# ---------------------------------------------------------------------------------------------
# scoring the held-out pairs
# ---------------------------------------------------------------------------------------------


def quality(r_a: np.ndarray, r_b: np.ndarray, held, beta: float, label_rng_seed: int = 12345):
    """Expected accuracy against a noisy label, its ceiling, oracle accuracy and ECE."""
    d = np.array([x[3] for x in held])
    q = sigmoid(beta * np.abs(d))  # P(a label agrees with the oracle)
    # a model that scores both sides the same guesses: half right (bag of words on coherence)
    right = np.where(r_a == r_b, 0.5, (np.sign(r_a - r_b) == np.sign(d)).astype(float))
    expected = float(np.mean(right * q + (1 - right) * (1 - q)))
    rng = random.Random(label_rng_seed)
    a_wins = np.array([rng.random() < sigmoid(beta * x) for x in d])
    p = sigmoid(r_a - r_b)
    from rankloop.reward.metrics import expected_calibration_error

    ece = expected_calibration_error(
        np.concatenate([p, 1 - p]), np.concatenate([a_wins, ~a_wins]).astype(float)
    )
    return {
        "accuracy": expected,
        "ceiling": float(np.mean(q)),
        "oracle_accuracy": float(np.mean(right)),
        "ece": ece,
    }


def score_pairs(score_fn, held) -> tuple[np.ndarray, np.ndarray]:
    prompts = [p for p, *_ in held]
    r_a = np.asarray(score_fn(prompts, [a for _, a, _, _ in held]), dtype=np.float64)
    r_b = np.asarray(score_fn(prompts, [b for _, _, b, _ in held]), dtype=np.float64)
    return r_a, r_b


# ---------------------------------------------------------------------------------------------
# the systems: fit on (prompt, chosen, rejected), return (score_fn, seconds)
# ---------------------------------------------------------------------------------------------


PHASES = (
    "load_model",
    "encode",
    "fit_probes",
    "make_loop",
    "train_step",
    "evaluate_now",
    "final_metrics",
    "save_model",
)


@contextlib.contextmanager
def phase_timer():
    """Seconds spent in each phase function of rankloop.reward.train during the block (the
    first train_step, which pays torch.compile, apart as "first_step"): where a run's time goes."""
    from rankloop.reward import train as rt

    spent: dict[str, float] = {}
    saved = {name: getattr(rt, name) for name in PHASES}

    def timed(name, fn):
        def wrapper(*args, **kwargs):
            t = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                key = "first_step" if name == "train_step" and "first_step" not in spent else name
                spent[key] = spent.get(key, 0.0) + time.perf_counter() - t

        return wrapper

    for name, fn in saved.items():
        setattr(rt, name, timed(name, fn))
    try:
        yield spent
    finally:
        for name, fn in saved.items():
            setattr(rt, name, fn)


def fit_rankloop(train, seed: int, overrides: dict, base: str):
    from rankloop.reward.config import RewardConfig
    from rankloop.reward.pairs import pairwise_example
    from rankloop.reward.scoring import RewardScorer
    from rankloop.reward.train import train_reward

    out = Path(tempfile.mkdtemp()) / "reward"
    cfg = RewardConfig(seed=seed, **overrides)
    t0 = time.perf_counter()
    with phase_timer() as phases:
        result = train_reward(
            [pairwise_example(p, c, r) for p, c, r in train], cfg, out, base=base, progress=False
        )
    seconds = time.perf_counter() - t0
    scorer = RewardScorer.from_pretrained(out, batch_size=32)
    extra = {
        "steps": result.steps,
        "best_step": result.metrics.get("reward/best_step"),
        "compiled": result.compiled,
        "loop_seconds": result.loop_seconds,
        "phases": {k: round(v, 1) for k, v in phases.items()},
        "train_phases": {k: round(v, 1) for k, v in result.phases.items()},
        # the selection split's accuracy: the warm start's probe, then each epoch's end
        "probe_last_accuracy": result.metrics.get("reward/probe_last_accuracy"),
        "evals": [[h["step"], h["eval/accuracy"]] for h in result.history if "eval/accuracy" in h],
        # an ensemble's members on the trainer's own held-out split
        **{
            k.split("/")[1]: result.metrics[k]
            for k in ("reward/member_accuracy_min", "reward/member_accuracy_max", "reward/spread")
            if k in result.metrics
        },
    }

    def score(prompts, responses):
        return scorer.score(prompts, responses).numpy()

    extra["metrics"] = {k: v for k, v in result.metrics.items() if isinstance(v, (int, float))}
    extra["model_dir"] = str(out)
    extra["score_stats"] = [float(scorer.mean), float(scorer.std)]
    return score, seconds, extra, lambda: shutil.rmtree(out.parent, ignore_errors=True)


DERIVED = {"round", "mix", "auto"}  # rows from the rankloop fit, not fits of their own


def derived_rows(model_row: dict, model_scores, held, beta: float, systems) -> list[dict]:
    """The `round`, `mix` and `auto` systems from a `rankloop` fit (`model_scores`: its (r_a, r_b) on
    the held-out pairs): the reward the round's gate hands its policy stage (the model, or its
    probe when the model lost to it), and the sum of the two standardised scores."""
    from rankloop.app.rounds import lost_to_probe
    from rankloop.reward.scoring import ProbeScorer

    probe = ProbeScorer.from_pretrained(model_row["model_dir"], batch_size=32)
    probe_scores = score_pairs(lambda p, r: probe.score(p, r).numpy(), held)
    q_probe = quality(*probe_scores, held, beta)
    same = {k: model_row[k] for k in ("task", "pairs", "seed", "seconds")}
    rows = []
    if "round" in systems:
        lost = lost_to_probe(model_row["metrics"])
        chosen = q_probe if lost else {k: model_row[k] for k in q_probe}
        rows.append(
            {
                **same,
                "system": "round",
                **chosen,
                "optimises_probe": lost,
                "model_accuracy": model_row["accuracy"],
                "saved_probe_accuracy": q_probe["accuracy"],
                "split_accuracy": model_row["metrics"].get("reward/accuracy"),
                "split_probe_accuracy": model_row["metrics"].get("reward/probe_accuracy"),
            }
        )
    m_mean, m_std = model_row["score_stats"]
    z = [
        (m - m_mean) / m_std + (q - probe.mean) / probe.std
        for m, q in zip(model_scores, probe_scores)
    ]
    if "mix" in systems:
        rows.append({**same, "system": "mix", **quality(*z, held, beta)})
    if "auto" in systems:
        from rankloop.reward.probe import mix_decision
        from rankloop.reward.scoring import PROBE_FILE

        spec = json.loads((Path(model_row["model_dir"]) / PROBE_FILE).read_text())
        cv = spec.get("cv_accuracy"), spec.get("cv_se")
        mixed, _ = mix_decision(spec)
        chosen = quality(*z, held, beta) if mixed else {k: model_row[k] for k in q_probe}
        rows.append(
            {
                **same,
                "system": "auto",
                **chosen,
                "mixes_probe": mixed,
                "probe_cv": list(cv),
                # each held-out pair's gap under the model and the probe: a later rule replays
                "held_out_gaps": spec.get("held_out_gaps"),
            }
        )
    return rows


def fit_trl(train, seed: int, epochs: float, base: str):
    import torch

    from rankloop.reward.model import format_text, rewards, right_pad, tokenize
    from reward import trl_trainer

    t0 = time.perf_counter()
    from rankloop.lm.loading import resolve

    trainer, out = trl_trainer(train, lora=True, epochs=epochs, seed=seed, base=resolve(base))
    tok = trainer.processing_class
    trainer.train()
    seconds = time.perf_counter() - t0
    m = trainer.model.eval()
    tok.padding_side = "right"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token

    @torch.no_grad()
    def score(prompts, responses):
        ids = tokenize(tok, [format_text(tok, p, r) for p, r in zip(prompts, responses)], 1024)
        outs = []
        for i in range(0, len(ids), 32):
            x, mask = right_pad(ids[i : i + 32], tok.pad_token_id)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                outs.append(rewards(m, x, mask))
        return torch.cat(outs).float().numpy()

    return score, seconds, {}, lambda: shutil.rmtree(out, ignore_errors=True)


class FrozenFeatures:
    """Mean-pooled last hidden states of SmolLM2 over prompt + response (chat-formatted)."""

    def __init__(self, base: str):
        import torch

        from rankloop.reward.model import load_backbone, load_reward_tokenizer

        self.tok = load_reward_tokenizer(base, 512)
        self.model = load_backbone(base, self.tok, dtype=torch.bfloat16).eval()
        self.cache: dict[tuple[str, str], np.ndarray] = {}

    def __call__(self, prompts, responses) -> np.ndarray:
        import torch

        from rankloop.reward.model import format_text, right_pad, tokenize

        todo = sorted({(p, r) for p, r in zip(prompts, responses)} - set(self.cache))
        if not todo:  # all seen before (a tokenizer fails on an empty batch)
            return np.stack([self.cache[(p, r)] for p, r in zip(prompts, responses)])
        ids = tokenize(self.tok, [format_text(self.tok, p, r) for p, r in todo], 512)
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        backbone = getattr(self.model, self.model.base_model_prefix)
        with torch.no_grad():
            for s in range(0, len(order), 32):
                idx = order[s : s + 32]
                x, m = right_pad([ids[i] for i in idx], self.tok.pad_token_id)
                h = backbone(input_ids=x, attention_mask=m).last_hidden_state.float()
                mean = (h * m[..., None]).sum(1) / m.sum(1, keepdim=True)
                for i, v in zip(idx, mean.numpy()):
                    self.cache[todo[i]] = v
        return np.stack([self.cache[(p, r)] for p, r in zip(prompts, responses)])


def fit_probe_system(train, seed: int, features: FrozenFeatures):
    from rankloop.reward.probe import fit_probe

    t0 = time.perf_counter()
    prompts = [p for p, _, _ in train]
    x = features(prompts, [c for _, c, _ in train]) - features(prompts, [r for _, _, r in train])
    w = fit_probe(x, seed=seed)
    seconds = time.perf_counter() - t0
    return (lambda ps, rs: features(ps, rs) @ w), seconds, {}, lambda: None


def fit_bow(train, seed: int):
    from sklearn.feature_extraction.text import CountVectorizer
    from sklearn.linear_model import LogisticRegressionCV

    t0 = time.perf_counter()
    vec = CountVectorizer(
        token_pattern=r"[A-Za-z']+|[^\sA-Za-z']", lowercase=True, ngram_range=(1, 1)
    )
    vec.fit([t for _, c, r in train for t in (c, r)])
    d = vec.transform([c for _, c, _ in train]) - vec.transform([r for _, _, r in train])
    rng = np.random.default_rng(seed)
    sign = np.where(rng.random(d.shape[0]) < 0.5, 1.0, -1.0)
    sign[:2] = (1.0, -1.0)
    x = d.multiply(sign[:, None]).tocsr()
    clf = LogisticRegressionCV(
        Cs=[0.01, 0.1, 1.0, 10.0],
        cv=5,
        fit_intercept=False,
        scoring="neg_log_loss",
        max_iter=3000,
        l1_ratios=(0.0,),
        use_legacy_attributes=False,
    )
    clf.fit(x, (sign > 0).astype(int))
    w = clf.coef_[0]
    seconds = time.perf_counter() - t0
    return (lambda ps, rs: vec.transform(rs) @ w), seconds, {}, lambda: None


# ---------------------------------------------------------------------------------------------
# the run and the table
# ---------------------------------------------------------------------------------------------


def parse_value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def replay_auto(files: list[str], base: str, out: str | None) -> list[dict]:
    """`auto` rows for recorded `rankloop` fits that have their `mix` row, without training
    again. The decision (`probe.mix_decision`) needs the held-out split's accuracies of the
    model and its probe, which the fit's metrics hold, and the probe's cross-validated
    accuracy (and each held-out pair's gaps, where recorded): from a recorded `auto` row
    (decided again: the rule may have changed since) or
    else from one step of `train_reward` on the same draw (same pairs, labels, seed and
    settings: same split and features; the trainer computes it before the loop). The row
    takes the recorded model's or mix's accuracy. Marked `replayed`."""
    from rankloop.reward.config import RewardConfig
    from rankloop.reward.pairs import pairwise_example
    from rankloop.reward.probe import mix_decision
    from rankloop.reward.train import train_reward

    recorded = [json.loads(x) for f in files for x in Path(f).read_text().split("\n") if x.strip()]
    by = {(r["task"], r["pairs"], r["seed"], r["system"]): r for r in recorded}
    texts = load()
    train_prompts, _ = split_prompts(len(texts))
    rows = []
    for (task, n, seed, system), model_row in sorted(by.items()):
        mix_row = by.get((task, n, seed, "mix"))
        if system != "rankloop" or mix_row is None:
            continue
        auto_row = by.get((task, n, seed, "auto"), {})
        cv = auto_row.get("probe_cv")
        if cv is None:
            pairs = draw(train_prompts, n, task, texts, random.Random(f"{task}:{n}:{seed}"))
            train = noisy_labels(pairs, BETA[task], random.Random(f"noise:{task}:{n}:{seed}"))
            cfg = RewardConfig(seed=seed, **model_row.get("settings", {}))
            with tempfile.TemporaryDirectory() as tmp:
                res = train_reward(
                    [pairwise_example(p, c, r) for p, c, r in train],
                    cfg,
                    Path(tmp) / "reward",
                    base=base,
                    progress=False,
                    max_steps=1,
                )
            cv = [
                res.metrics.get("reward/probe_cv_accuracy"),
                res.metrics.get("reward/probe_cv_se"),
            ]
        m = model_row["metrics"]
        mixed, _ = mix_decision(
            {
                "cv_accuracy": cv[0],
                "cv_se": cv[1],
                "model_accuracy": m.get("reward/accuracy"),
                "accuracy": m.get("reward/probe_accuracy"),
                "eval_pairs": m.get("reward/eval_pairs"),
                "held_out_gaps": auto_row.get("held_out_gaps"),
            }
        )
        chosen = mix_row if mixed else model_row
        keys = ("task", "pairs", "seed", "seconds", "accuracy", "ceiling", "oracle_accuracy", "ece")
        row = {**{k: chosen[k] for k in keys}, "system": "auto", "mixes_probe": mixed}
        row.update(probe_cv=list(cv), held_out_gaps=auto_row.get("held_out_gaps"), replayed=True)
        rows.append(row)
        print(json.dumps(row), flush=True)
        if out:
            with open(out, "a") as f:
                f.write(json.dumps(row) + "\n")
    return rows


def run(args) -> list[dict]:
    texts = load()
    train_prompts, held_prompts = split_prompts(len(texts))
    overrides = {k: parse_value(v) for k, v in (kv.split("=", 1) for kv in args.set)}
    features = FrozenFeatures(args.base) if "probe" in args.systems else None
    rows = []
    for task in args.tasks:
        beta = BETA[task]
        held = draw(held_prompts, HELD_OUT_PAIRS, task, texts, random.Random(f"held:{task}"))
        for n in args.sizes:
            for seed in args.seeds:
                pairs = draw(train_prompts, n, task, texts, random.Random(f"{task}:{n}:{seed}"))
                train = noisy_labels(pairs, beta, random.Random(f"noise:{task}:{n}:{seed}"))
                for system in args.systems:
                    if system in DERIVED:
                        continue  # rows beside each rankloop row, from the same fit
                    if system == "rankloop":
                        fit = fit_rankloop(train, seed, overrides, args.base)
                    elif system == "ensemble":
                        members = {**overrides, "ensemble": args.ensemble}
                        fit = fit_rankloop(train, seed, members, args.base)
                    elif system == "trl":
                        fit = fit_trl(train, seed, args.trl_epochs, args.base)
                    elif system == "probe":
                        fit = fit_probe_system(train, seed, features)
                    else:
                        fit = fit_bow(train, seed)
                    score, seconds, extra, cleanup = fit
                    scores = score_pairs(score, held)
                    q = quality(*scores, held, beta)
                    row = {
                        "task": task,
                        "pairs": n,
                        "seed": seed,
                        "system": system,
                        "seconds": seconds,
                        **q,
                        **extra,
                        **({"settings": overrides} if system == "rankloop" else {}),
                        **({"members": args.ensemble} if system == "ensemble" else {}),
                    }
                    more = [row]
                    if system == "rankloop" and DERIVED & set(args.systems):
                        more += derived_rows(row, scores, held, beta, args.systems)
                    cleanup()
                    for row in more:
                        row.pop("model_dir", None)
                        row.pop("score_stats", None)
                        rows.append(row)
                        print(json.dumps(row), flush=True)
                        if args.out:  # row by row: a run killed later keeps what it measured
                            with open(args.out, "a") as f:
                                f.write(json.dumps(row) + "\n")
    return rows


def table(rows: list[dict]) -> str:
    """Markdown: mean (± std over seeds) held-out accuracy per task and size, ECE and time. A
    row run with `--set` overrides is a system of its own (`rankloop lora_layers=8`)."""
    rows = [
        {**r, "system": " ".join([r["system"], *(f"{k}={v}" for k, v in r["settings"].items())])}
        if r.get("settings")
        else r
        for r in rows
    ]
    named = ("rankloop", "round", "mix", "auto", "ensemble", "trl", "probe", "bow")
    systems = [s for s in named if any(r["system"] == s for r in rows)]
    systems[1:1] = sorted({r["system"] for r in rows} - set(named))
    tasks = [t for t in TASKS if any(r["task"] == t for r in rows)]
    sizes = sorted({r["pairs"] for r in rows})
    lines = [
        "| task | pairs | ceiling | " + " | ".join(systems) + " |",
        "|---|---|---|" + "---|" * len(systems),
    ]
    for t in tasks:
        for n in sizes:
            cell = {
                s: [r for r in rows if (r["task"], r["pairs"], r["system"]) == (t, n, s)]
                for s in systems
            }
            if not any(cell.values()):
                continue
            ceil = next(r["ceiling"] for v in cell.values() for r in v)
            out = []
            for s in systems:
                acc = [r["accuracy"] for r in cell[s]]
                if not acc:
                    out.append("")
                    continue
                spread = f" ± {np.std(acc):.3f}" if len(acc) > 1 else ""
                # the round's reward: how often its gate handed the policy stage the probe
                probe = sum(bool(r.get("optimises_probe")) for r in cell[s])
                mixed = sum(bool(r.get("mixes_probe")) for r in cell[s])
                chose = {
                    "round": f", probe {probe}/{len(acc)}",
                    "auto": f", mix {mixed}/{len(acc)}",
                }
                chose = chose.get(s, "")
                out.append(
                    f"{np.mean(acc):.3f}{spread} (ECE {np.mean([r['ece'] for r in cell[s]]):.2f},"
                    f" {np.mean([r['seconds'] for r in cell[s]]):.0f} s, n={len(acc)}{chose})"
                )
            lines.append(f"| {t} | {n} | {ceil:.3f} | " + " | ".join(out) + " |")
    for n in sizes:
        means = []
        for s in systems:
            per_task = [
                np.mean(
                    [
                        r["accuracy"]
                        for r in rows
                        if (r["task"], r["pairs"], r["system"]) == (t, n, s)
                    ]
                )
                for t in tasks
                if any((r["task"], r["pairs"], r["system"]) == (t, n, s) for r in rows)
            ]
            means.append(f"{np.mean(per_task):.3f} over {len(per_task)} tasks" if per_task else "")
        lines.append(f"| **mean** | {n} | | " + " | ".join(means) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", default=",".join(TASKS))
    ap.add_argument("--sizes", default="100,300,1000")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--systems", default="rankloop,trl,probe,bow")
    ap.add_argument("--trl-epochs", type=float, default=2.0)
    ap.add_argument("--ensemble", type=int, default=4, help="Members of the 'ensemble' system.")
    ap.add_argument(
        "--base",
        default="smollm2-135m-instruct",
        help="Backbone of every model-based system (a small local one to smoke-test).",
    )
    ap.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="Override a [reward] setting for rankloop (repeatable).",
    )
    ap.add_argument("--out", default=None, help="Append the rows as JSON lines here.")
    ap.add_argument("--table", nargs="*", default=None, help="Print the table of result files.")
    ap.add_argument(
        "--replay-auto",
        nargs="*",
        default=None,
        help="Add `auto` rows to recorded rankloop + mix rows of these files (see replay_auto).",
    )
    args = ap.parse_args()
    if args.replay_auto is not None:
        print(table(replay_auto(args.replay_auto, args.base, args.out)))
        return
    if args.table is not None:
        rows = [
            json.loads(line)
            for f in args.table
            for line in Path(f).read_text().split("\n")
            if line.strip()
        ]
        print(table(rows))
        return
    args.tasks = args.tasks.split(",")
    args.sizes = [int(x) for x in args.sizes.split(",")]
    args.seeds = [int(x) for x in args.seeds.split(",")]
    args.systems = args.systems.split(",")
    if DERIVED & set(args.systems) and "rankloop" not in args.systems:
        ap.error("--systems round, mix and auto come from the rankloop fit: ask for rankloop too")
    print(table(run(args)))


if __name__ == "__main__":
    main()
