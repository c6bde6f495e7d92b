"""The loop benchmark's hidden oracles (bench/loop_quality.py) score known texts exactly."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import loop_quality as lq  # bench/ is a script folder, not a package

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
