"""The loop benchmark's hidden oracles (bench/loop_quality.py) score known texts exactly, and its
reward diagnostic counts what it says."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import loop_quality as lq  # bench/ is a script folder, not a package
from test_rounds import tiny_project

from rankloop.data.records import Prompt

LIST = "Name three fruits." + lq.ASK[0]
PARAGRAPH = "Name three fruits." + lq.ASK[1]
BULLETS = "Here they are:\n- apple\n- pear\n* plum"


def test_format_pays_for_the_form_the_prompt_asks_for():
    # 3 of the 4 non-empty lines are bullets
    assert lq.fmt([LIST, PARAGRAPH], [BULLETS, BULLETS]) == [0.75, 0.25]
    assert lq.fmt([Prompt.from_text(PARAGRAPH)], ["Apples, pears and plums."]) == [1.0]
    assert lq.fmt([LIST], [""]) == [0.0]


def test_relevance_is_the_share_of_the_prompts_content_words_used():
    prompt = "Explain how gears transmit torque between shafts." + lq.ASK[0]
    # content words: gears, transmit, torque, between, shafts ("explain" is a stop word and the
    # format request is not part of the question); the answer uses gears, torque and shafts
    assert lq.relevance([prompt], ["Gears pass torque from one shaft... shafts turn."]) == [
        pytest.approx(3 / 5)
    ]
    assert lq.relevance(["Why?"], ["Because."]) == [0.0]  # nothing to be relevant to


def test_concise_peaks_at_forty_words():
    words = lambda n: " ".join(["w"] * n)
    assert lq.concise([None] * 4, [words(40), words(20), words(90), ""]) == [1.0, 0.5, 0.0, 0.0]


def test_tidy_is_rankloops_own_oracle():
    from rankloop.app.oracles import tidy

    texts = ["It ends.", "it does not end and"]
    assert lq.tidy([None, None], texts) == tidy([None, None], texts)


def test_reward_oracle_accuracy_orders_the_trainers_held_out_pairs_by_the_oracle(
    tmp_path, tiny_lm_dir, monkeypatch
):
    """The diagnostic only a simulation has: on the reward trainer's own held-out comparisons,
    the share of oracle-untied response pairs that the model, its probe and the labels order as
    the oracle does. Scorers that score by the oracle (and against it) and labels drawn at T = 0
    give 1, 0 and 1 exactly; an oracle that ties everything leaves no pair to count."""
    from rankloop.app import rounds
    from rankloop.app.simulate import simulate
    from rankloop.data.records import Round
    from rankloop.reward import scoring
    from rankloop.reward.pairs import build_examples, split_by_prompt

    def length(prompts, responses):
        return [float(len(r)) for r in responses]

    class ByOracle:
        sign = 1.0

        @classmethod
        def from_pretrained(cls, path):
            return cls()

        def score(self, prompts, texts):
            return [self.sign * len(t) for t in texts]

    class AgainstOracle(ByOracle):
        sign = -1.0

    p = tiny_project(tmp_path / "p", tiny_lm_dir)
    rounds.sample_candidates(p, 0, p.config.generate, progress=False)
    simulate(p.store, length, p.config.labeling, annotators=1, noise=0.0, progress=False)
    (tmp_path / "p/rm").mkdir()
    p.store.save_round(Round(0, reward_model=p.stored(tmp_path / "p/rm")))
    monkeypatch.setattr(scoring, "RewardScorer", ByOracle)
    monkeypatch.setattr(scoring, "ProbeScorer", AgainstOracle)

    cfg = p.config.reward
    data = build_examples(p.store, 0, sources=rounds.label_sources(p))
    held = split_by_prompt(data.examples, cfg.eval_fraction, cfg.seed)[1]
    lengths = [[len(t) for t in e.responses] for e in held]  # 2 candidates: one pair each
    untied = sum(a != b for a, b in lengths)
    assert len(held) == 4 and untied > 0
    assert lq.reward_oracle_accuracy(p, length) == [
        {"round": 0, "pairs": 4, "untied": untied, "model": 1.0, "probe": 0.0, "labels": 1.0}
    ]
    flat = lq.reward_oracle_accuracy(p, lambda prompts, responses: [1.0] * len(responses))
    assert flat == [
        {"round": 0, "pairs": 4, "untied": 0, "model": None, "probe": None, "labels": None}
    ]
    p.close()
