"""Simulated preferences from a known scoring function, for tests and benchmarks.

A simulated annotator prefers responses that contain a keyword: the true reward of a response
is `scale` if the keyword is one of its words, else 0, and a pair is labeled with Bradley-Terry
noise, P(a wins) = sigma(s_a - s_b). No predictor beats sigma(|s_a - s_b|) on such labels
(`metrics.best_achievable_accuracy`), which is what a trained reward model's held-out accuracy
is compared with.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from rankloop.data.records import Label
from rankloop.data.store import Store

WORDS = [
    "the",
    "quick",
    "brown",
    "fox",
    "jumps",
    "over",
    "lazy",
    "dog",
    "sea",
    "wind",
    "poem",
    "bicycle",
    "gear",
    "simple",
    "words",
    "yes",
    "no",
    "maybe",
    "hello",
    "thanks",
]


@dataclass(frozen=True)
class SimulatedTask:
    """The task: which word is rewarded, how much, and how long the texts are (in words)."""

    keyword: str = "good"
    scale: float = 3.0
    prompt_words: tuple[int, int] = (5, 8)
    response_words: tuple[int, int] = (6, 10)

    def true_reward(self, response: str) -> float:
        return self.scale * (self.keyword in response.split())


def _text(rng: random.Random, n: tuple[int, int], keyword: str | None = None) -> str:
    words = [rng.choice(WORDS) for _ in range(rng.randint(*n))]
    if keyword:
        words.insert(rng.randrange(len(words) + 1), keyword)
    return " ".join(words)


def simulate_pairs(n: int, task: SimulatedTask = SimulatedTask(), seed: int = 0):
    """n (prompt, a, b, a_wins, true_diff) tuples; in each pair one response has the keyword."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        prompt = f"{_text(rng, task.prompt_words)} ({i})"  # distinct prompts
        a, b = _text(rng, task.response_words, task.keyword), _text(rng, task.response_words)
        if rng.random() < 0.5:
            a, b = b, a
        d = task.true_reward(a) - task.true_reward(b)
        a_wins = rng.random() < 1.0 / (1.0 + math.exp(-d))
        out.append((prompt, a, b, a_wins, d))
    return out


def simulate_labels(
    store: Store,
    n: int,
    task: SimulatedTask = SimulatedTask(),
    seed: int = 0,
    annotator: str = "simulator",
    round: int = 0,
) -> list[float]:
    """Write n simulated pairwise labels into the store; returns each pair's true s_a - s_b."""
    ann = store.external_annotator(annotator)
    diffs, labels = [], []
    for prompt, a, b, a_wins, d in simulate_pairs(n, task, seed):
        cid = store.add_comparison_texts(prompt, [a, b], source="simulated", round=round)
        ids = store.comparison(cid).response_ids
        labels.append(Label.pairwise(cid, ann.id, ids, "A" if a_wins else "B", source="simulated"))
        diffs.append(d)
    store.add_labels(labels)
    return diffs


def keyword_examples(n: int, seed: int, annotator: str = ""):
    """`simulate_pairs` as training examples (the winner first), with no store in between."""
    from rankloop.reward.pairs import pairwise_example

    return [
        pairwise_example(p, a, b, annotator=annotator)
        if a_wins
        else pairwise_example(p, b, a, annotator=annotator)
        for p, a, b, a_wins, _ in simulate_pairs(n, seed=seed)
    ]
