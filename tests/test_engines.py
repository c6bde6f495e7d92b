"""Generation where the hardware is: the vLLM engine's adapter (with a stand-in for vLLM,
which needs a GPU and is not installed here) and the device setting's refusals."""

from __future__ import annotations

import json
import sys
import types
from dataclasses import dataclass, field

import pytest
import torch

from rankloop.app.config import GenerateConfig, RuntimeConfig
from rankloop.app.generate import generate
from rankloop.data.records import Prompt
from rankloop.data.store import Store
from rankloop.lm.loading import ModelLoadError, load_tokenizer
from rankloop.lm.sampling import encode_chats
from rankloop.settings import ConfigError

PROMPTS = [
    Prompt.from_text("Explain gears."),
    Prompt.from_text("A poem about the sea, please."),
    Prompt.from_text("hi"),
]


@dataclass
class FakeVLLM:
    """Records what rankloop asks of vLLM's offline API (`LLM`, `SamplingParams`,
    `LoRARequest`, `LLM.generate`) and answers like it: one RequestOutput per prompt whose
    `outputs[0]` has text, token_ids and finish_reason."""

    eos: int
    engines: list = field(default_factory=list)
    calls: list = field(default_factory=list)

    def module(self):
        fake = self

        class SamplingParams:
            def __init__(self, **kw):
                self.kw = kw

        class LLM:
            def __init__(self, model, **kw):
                fake.engines.append({"model": model, **kw})

            def generate(self, prompts, params, lora_request=None, use_tqdm=True):
                fake.calls.append((prompts, [p.kw for p in params], lora_request))
                outs = []
                for p, sp in zip(prompts, params):
                    n = len(p["prompt_token_ids"])
                    stop = sp.kw["seed"] % 2 == 0  # even seeds "stop on EOS", odd hit the cap
                    ids = [7] * 3 + ([fake.eos] if stop else [])
                    out = types.SimpleNamespace(
                        text=f" reply {n} {sp.kw['seed']} ",
                        token_ids=ids,
                        finish_reason="stop" if stop else "length",
                    )
                    outs.append(types.SimpleNamespace(outputs=[out]))
                return outs

        class LoRARequest:
            def __init__(self, name, int_id, path):
                self.args = (name, int_id, path)

        vllm = types.ModuleType("vllm")
        vllm.LLM, vllm.SamplingParams = LLM, SamplingParams
        lora = types.ModuleType("vllm.lora")
        request = types.ModuleType("vllm.lora.request")
        request.LoRARequest = LoRARequest
        vllm.__spec__ = types.SimpleNamespace(name="vllm")
        return {"vllm": vllm, "vllm.lora": lora, "vllm.lora.request": request}


@pytest.fixture
def fake_vllm(monkeypatch, tiny_lm_dir):
    fake = FakeVLLM(eos=load_tokenizer(str(tiny_lm_dir)).eos_token_id)
    for name, mod in fake.module().items():
        monkeypatch.setitem(sys.modules, name, mod)
    monkeypatch.setattr("rankloop.lm.vllm_engine.vllm_available", lambda: True)
    return fake


CFG = GenerateConfig(
    n=2,
    max_new_tokens=12,
    batch_size=2,
    temperature=0.8,
    top_p=0.9,
    bf16="no",
    engine="vllm",
    seed=5,
)


def test_vllm_engine_stores_the_records_the_hf_path_stores(fake_vllm, tiny_lm_dir):
    store = Store.memory()
    store.add_prompts(PROMPTS)
    report = generate(store, str(tiny_lm_dir), CFG, round=0, k=2, progress=False, device="cpu")
    assert (report.generated, report.comparisons_created) == (6, 3)
    (engine,) = fake_vllm.engines
    assert engine == {"model": str(tiny_lm_dir), "dtype": "auto", "seed": 5}
    # the prompts go as the chat template's token ids, in the HF path's length-sorted batches
    tok = load_tokenizer(str(tiny_lm_dir))
    ids = encode_chats(tok, [p.as_chat() for p in PROMPTS for _ in range(2)])
    sent = [p["prompt_token_ids"] for prompts, _, _ in fake_vllm.calls for p in prompts]
    assert sorted(map(tuple, sent)) == sorted(map(tuple, ids))
    for _, params, lora in fake_vllm.calls:
        assert lora is None
        seeds = [p.pop("seed") for p in params]
        assert seeds == [seeds[0] + j for j in range(len(seeds))]  # one seed per row
        assert params == [{"temperature": 0.8, "top_p": 0.9, "max_tokens": 12}] * len(params)
    rows = store.responses()
    assert len(rows) == 6
    for r in rows:
        n, seed = (int(x) for x in r.text.split()[1:])
        assert r.text == f"reply {n} {seed}"  # stripped, as HF's sampler stores it
        assert r.finished == (seed % 2 == 0)
        assert seed - r.sampling.seed in (0, 1)  # stored: the batch's seed; a row adds its index
        assert (r.sampling.temperature, r.sampling.top_p, r.sampling.max_new_tokens) == (
            0.8,
            0.9,
            12,
        )
        assert (r.policy, r.round, r.source) == (str(tiny_lm_dir), 0, "generated")
    assert sorted(r.sample_index for r in rows) == [0, 0, 0, 1, 1, 1]


def test_vllm_serves_a_lora_policy_on_its_base(fake_vllm, tiny_lm_dir, tmp_path):
    adapter = tmp_path / "policy"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(
        json.dumps({"base_model_name_or_path": str(tiny_lm_dir), "r": 16})
    )
    for f in tiny_lm_dir.iterdir():  # the tokenizer lives beside the adapter, as ppo saves it
        if f.name.startswith(("tokenizer", "special_tokens", "chat_template")):
            (adapter / f.name).write_bytes(f.read_bytes())
    store = Store.memory()
    store.add_prompts(PROMPTS[:1])
    generate(store, str(adapter), CFG, round=1, progress=False, device="cpu")
    (engine,) = fake_vllm.engines
    assert engine == {
        "model": str(tiny_lm_dir),
        "dtype": "auto",
        "seed": 5,
        "enable_lora": True,
        "max_lora_rank": 16,
    }
    assert {c[2].args for c in fake_vllm.calls} == {("policy", 1, str(adapter.resolve()))}


def test_vllm_missing_says_what_to_do(tiny_lm_dir, monkeypatch):
    monkeypatch.setattr("rankloop.lm.vllm_engine.vllm_available", lambda: False)
    store = Store.memory()
    store.add_prompts(PROMPTS[:1])
    with pytest.raises(
        ModelLoadError,
        match=r"engine = 'vllm' needs vLLM: pip install "
        r"'rankloop\[vllm\]'.*or set engine = 'hf'",
    ):
        generate(store, str(tiny_lm_dir), CFG, progress=False, device="cpu")
    assert store.responses() == []


def test_settings_refuse_unknown_engines_and_devices(monkeypatch):
    with pytest.raises(ConfigError, match=r"\[generate\] engine must be one of hf, vllm"):
        GenerateConfig(engine="tgi").validate()
    with pytest.raises(ConfigError, match=r"\[runtime\] device must be one of auto, cpu"):
        RuntimeConfig(device="tpu").validate()
    RuntimeConfig(device="cuda:1").validate()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    store = Store.memory()
    store.add_prompts(PROMPTS[:1])
    with pytest.raises(ConfigError, match="device = 'cuda' but torch sees no CUDA GPU"):
        generate(
            store, "unused", GenerateConfig(), tokenizer=object(), progress=False, device="cuda"
        )
