"""Built-in oracles: Python scoring functions that stand in for people's judgment.

An oracle has the form of a PPO `--reward-fn`: `fn(prompts, responses) -> one float per
response`, prompts being `Prompt` records (or strings) and responses decoded texts; higher is
better. `rankloop simulate --oracle NAME` takes a built-in by its name (`ORACLES`) or any
`module:function`.

`tidy` measures a real failure of the default model: SmolLM2-135M-Instruct often does not stop.
In the demo project 97 of 168 samples at max_new_tokens = 128 were cut off, many of them
repeating one phrase until the cut. `tidy` prefers a response that ends on its own (its last
sentence is finished) and does not repeat itself.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

# What a finished response ends with: a sentence's final punctuation (possibly inside quotes,
# brackets or markdown emphasis), a closed code fence, or a closing bracket of code.
_ENDING = re.compile(r"""([.!?…]|```|[)\]}>;])["'”’*_)\]]*\s*$""")
_WORD = re.compile(r"\w+", re.UNICODE)


def ends_cleanly(text: str) -> bool:
    """True when the text's last sentence is finished (see `_ENDING`); a text cut at a token
    limit almost always stops mid-sentence."""
    return bool(text.strip()) and _ENDING.search(text.rstrip()) is not None


def repetition(text: str, n: int = 4) -> float:
    """Share of the text's word n-grams that repeat an earlier one: 0 for a text that never
    repeats itself, near 1 for one phrase looped until the cut."""
    words = [w.lower() for w in _WORD.findall(text)]
    grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
    if not grams:
        return 0.0
    return 1.0 - len(set(grams)) / len(grams)


def tidy(prompts: Sequence, responses: Sequence[str]) -> list[float]:
    """1 for a response that ends on its own, plus 1 - its repetition share (`repetition`,
    word 4-grams): from 0 (cut off and looping) to 2 (finished, never repeating). An empty
    response scores 0."""
    return [float(ends_cleanly(r)) + (1.0 - repetition(r)) if r.strip() else 0.0 for r in responses]


ORACLES = {"tidy": tidy}
"""Built-in oracles by name (`rankloop simulate --oracle tidy`)."""
