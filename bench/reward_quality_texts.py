"""The prompts and sampled responses that bench/reward_quality.py builds its tasks from.

Sampled once from the default model (SmolLM2-135M-Instruct) and kept as JSONL in
bench/results/ (committed, so the benchmark's tasks are the same texts everywhere; rerunning this
script samples a new set): 3 responses per prompt, at most 48 new tokens, temperature 0.9.
Prompts: the single-turn bundled ones plus 180 from templates x topics (254 in the committed set).

Usage:  flock /tmp/rankloop-cpu.lock .venv/bin/python bench/reward_quality_texts.py
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

CACHE = Path(__file__).resolve().parent / "results" / "reward_quality_texts.jsonl"
SAMPLES = 3
MAX_NEW_TOKENS = 48

TOPICS = """a bicycle gear; compound interest; a sourdough starter; the water cycle; jet lag;
a job interview; a houseplant with yellow leaves; learning to swim; a leaking tap; saving for a
holiday; a first marathon; composting at home; a noisy neighbour; public speaking; a cover
letter; the phases of the moon; a budget spreadsheet; a sprained ankle; a vegetable garden;
photosynthesis; a used car; a study timetable; a dog that pulls on the lead; a smoke alarm;
cooking rice; a rainy weekend; volcanoes; a birthday party for a child; a slow laptop; tea and
coffee; a museum visit; a long train journey; recycling plastic; a chess opening; a winter coat;
a morning routine; the immune system; a tidy kitchen; a podcast; earthquakes; a night sky;
bread flour; a small business; a library card; a city bus; a new language; a bee sting;
electric cars; a picnic; a thunderstorm; a haircut; a piano lesson; a fruit salad; a camping
trip; a password manager; a paper airplane; the Roman empire; a lighthouse; honey bees;
a wedding speech""".replace("\n", " ")

TEMPLATES = (
    "Explain {} to a beginner.",
    "Give me practical advice about {}.",
    "Write a few sentences about {}.",
)


def prompts() -> list[str]:
    from rankloop.data.io import bundled_prompts

    rows = [json.loads(line) for line in bundled_prompts().read_text().split("\n") if line.strip()]
    bundled = [r["prompt"] for r in rows if isinstance(r["prompt"], str)]  # single-turn only
    topics = [t.strip() for t in TOPICS.split(";") if t.strip()]
    return bundled + [t.format(topic) for topic in topics for t in TEMPLATES]


def load() -> list[dict]:
    """[{prompt, responses: [3 strings]}], one per prompt, in a fixed order."""
    if not CACHE.exists():
        raise SystemExit(f"{CACHE} is missing: run bench/reward_quality_texts.py first")
    return [
        json.loads(line) for line in CACHE.read_text(encoding="utf-8").split("\n") if line.strip()
    ]


def main() -> None:
    import torch

    from rankloop.lm.device import use_bf16
    from rankloop.lm.loading import DEFAULT_MODEL, load_causal_lm, load_tokenizer
    from rankloop.lm.sampling import sample_many

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch-size", type=int, default=24)
    args = ap.parse_args()
    ps = prompts()
    bf16 = use_bf16("auto", torch.device("cpu"))
    tok = load_tokenizer(DEFAULT_MODEL)
    model = load_causal_lm(DEFAULT_MODEL, dtype=torch.bfloat16 if bf16 else None)
    chats = [[{"role": "user", "content": p}] for p in ps for _ in range(SAMPLES)]
    out: dict[int, str] = {}

    def on_batch(batch, samples, seed):
        out.update({i: s.text.strip() for i, s in zip(batch, samples)})
        print(f"{len(out)}/{len(chats)}", flush=True)

    sample_many(
        model,
        tok,
        chats,
        temperature=0.9,
        top_p=1.0,
        max_new_tokens=MAX_NEW_TOKENS,
        batch_size=args.batch_size,
        seed_for=lambda batch: min(batch),
        bf16=bf16,
        on_batch=on_batch,
    )
    CACHE.parent.mkdir(parents=True, exist_ok=True)
    with CACHE.open("w", encoding="utf-8") as f:
        for j, p in enumerate(ps):
            rs = [out[j * SAMPLES + k] for k in range(SAMPLES)]
            f.write(json.dumps({"prompt": p, "responses": rs}, ensure_ascii=False) + "\n")
    print(f"wrote {len(ps)} prompts x {SAMPLES} responses to {CACHE}")


if __name__ == "__main__":
    main()
