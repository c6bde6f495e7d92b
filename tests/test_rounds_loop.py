"""Two whole simulated rounds on a task with a known answer: the loop must make the policy better
by the oracle's own measure, and the win-rate of round 2 over round 0 must show it.

The task: a tiny policy trained here to answer every prompt in one of two styles, half the time
each: "good" words or "bad" words. The oracle scores a response by its share of good words. A
round can only help by moving the policy's choice of style: the reward model must learn which
words the oracle likes, and PPO must act on it.
"""

from __future__ import annotations

import random

import pytest
import torch

from rankloop.app import rounds
from rankloop.app.project import Project
from rankloop.app.simulate import simulate
from rankloop.data.leaderboard import win_rate
from rankloop.data.records import Prompt

from tiny import build_causal_lm, build_tokenizer

GOOD = ["good", "yes", "thanks", "better"]
BAD = ["bad", "no", "worse", "maybe"]
TOPICS = ["sea", "wind", "dog", "fox", "poem", "bicycle", "gear", "words"]


def share_of_good(prompts, responses):
    """The oracle: the share of a response's words that are good ones (0 for no words)."""
    out = []
    for r in responses:
        words = r.split()
        out.append(sum(w.strip(".,!") in GOOD for w in words) / len(words) if words else 0.0)
    return out


def two_style_lm(folder, seed: int = 0, steps: int = 300):
    """A tiny chat model that answers in the good or the bad style, about half each."""
    tok = build_tokenizer()
    model = build_causal_lm(tok, seed=seed, hidden=48)
    rng = random.Random(seed)
    texts = []
    for _ in range(512):
        style = GOOD if rng.random() < 0.5 else BAD
        prompt = f"tell me about the {rng.choice(TOPICS)} ({rng.randrange(100)})"  # as asked
        reply = " ".join(rng.choice(style) for _ in range(rng.randint(2, 4)))
        texts.append(
            tok.apply_chat_template(
                [{"role": "user", "content": prompt}, {"role": "assistant", "content": reply}],
                tokenize=False,
            )
        )
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model.train()
    torch.manual_seed(seed)
    for step in range(steps):
        batch = tok(
            [texts[(step * 32 + i) % len(texts)] for i in range(32)],
            padding=True,
            return_tensors="pt",
        )
        labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
        loss = model(**batch, labels=labels).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    model.eval()
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def style_lm(tmp_path_factory):
    return two_style_lm(tmp_path_factory.mktemp("two-style-lm"))


def small_project(root, policy, prompts: int = 48) -> Project:
    """A project on the tiny model with settings sized for it (fp32, no compile)."""
    p = Project.init(root, policy=str(policy), reward_model=str(policy))
    c = p.config
    for k, v in {
        "n": 4,
        "max_new_tokens": 8,
        "bf16": "no",
        "temperature": 1.0,
        "top_p": 1.0,
    }.items():
        setattr(c.generate, k, v)
    c.labeling.k = 4
    for k, v in {
        "lora": False,
        "lr": 3e-3,
        "epochs": 3.0,
        "bf16": "no",
        "compile": "no",
        "batch_size": 8,
    }.items():
        setattr(c.reward, k, v)
    # lr 3e-4: at 3e-3 the tiny policy's LoRA moved 0.2-2.3 nats per token in one step (the
    # default model's steps move 0.004-0.02), its KL reached 23 nats and the score fell
    for k, v in {
        "steps": 12,
        "batch_size": 8,
        "mini_batch_size": 4,
        "max_new_tokens": 8,
        "bf16": "no",
        "lr": 3e-4,
    }.items():
        setattr(c.ppo, k, v)
    c.rounds.eval_fraction = 0.5
    c.rounds.eval_comparisons = 4  # 4 per held-out prompt and opponent: a tighter win-rate
    # PPO runs whatever the reward model's verdict: what these rounds measure is the loop. (In
    # the two-round test, round 1's model, 0.613 against its probe's 0.738 on 80 held-out
    # pairs, lost by more than the standard error, yet PPO on it raised the oracle's score.)
    c.rounds.weak_reward = "run"
    p.save_config()
    p = Project.find(root)
    p.store.add_prompts(
        [
            Prompt.from_text(f"tell me about the {TOPICS[i % len(TOPICS)]} ({i})")
            for i in range(prompts)
        ]
    )
    return p


def test_two_simulated_rounds_raise_the_oracle_score_and_win_over_round_0(tmp_path, style_lm):
    p = small_project(tmp_path / "proj", style_lm)
    quiet = {"log": lambda m: None, "progress": False}
    rounds.sample_candidates(p, 0, p.config.generate, progress=False)
    for r in range(2):
        simulate(
            p.store,
            share_of_good,
            p.config.labeling,
            annotators=2,
            noise=0.1,
            round_=r,
            seed=r,
            progress=False,
        )
        rounds.run_round(p, rounds.RoundSettings.of(p), **quiet)
    assert p.store.current_round() == 2
    simulate(
        p.store,
        share_of_good,
        p.config.labeling,
        annotators=2,
        noise=0.1,
        round_=2,
        seed=2,
        progress=False,
    )
    means = rounds.oracle_means(p, share_of_good)
    print({r: round(m[0], 3) for r, m in means.items()})
    held = rounds.split_prompts(p.store.prompts(), p.config.rounds.eval_fraction)[1]
    wr = win_rate(p.store.cross_round_outcomes(), 2, 0, seed=0)
    print(f"round 2 over round 0: {wr.rate:.3f} [{wr.low:.3f}, {wr.high:.3f}], n = {wr.n}")
    assert means[2][0] > means[0][0] + 0.1  # round 2's samples: clearly more good words
    assert means[2][1] > means[0][1]  # on the evaluation prompts PPO never trained on, too
    assert wr.prompts == len(held) and wr.n == 4 * len(held)  # 4 against round 0 a prompt
    assert wr.rate > 0.5 and wr.low < wr.rate < wr.high
    p.close()
