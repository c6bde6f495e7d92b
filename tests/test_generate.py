import pytest
import torch

from rankloop.app.config import GenerateConfig
from rankloop.app.generate import generate, make_comparisons
from rankloop.data.records import Message, Prompt
from rankloop.data.store import Store
from rankloop.lm.loading import ModelLoadError, load_causal_lm, load_tokenizer
from rankloop.lm.sampling import (
    InverseCDFSampler,
    encode_chats,
    generate_shared_prompts,
    left_pad,
    plan_batches,
    repeats_of,
    sample_batch,
    sampling_kwargs,
)

PROMPTS = [
    Prompt.from_text("Explain how a bicycle gear works."),
    Prompt.from_text("Write a short poem about the sea."),
    Prompt(
        messages=(
            Message("user", "hello"),
            Message("assistant", "yes"),
            Message("user", "thanks, and the dog?"),
        )
    ),
    Prompt.from_text("def add(a, b):"),
]


@pytest.fixture(scope="module")
def tiny(tiny_lm_dir):
    return load_causal_lm(str(tiny_lm_dir)), load_tokenizer(str(tiny_lm_dir))


def store_with_prompts():
    store = Store.memory()
    store.add_prompts(PROMPTS)
    return store


CFG = GenerateConfig(n=3, max_new_tokens=12, batch_size=4, temperature=1.0, top_p=1.0, bf16="no")


def test_left_pad_and_plan_batches():
    ids, mask = left_pad([[5, 6, 7], [8]], pad_id=0)
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    assert plan_batches([3, 9, 1, 9, 4], batch_size=2) == [[1, 3], [4, 0], [2]]


def test_inverse_cdf_sampler_draws_the_softmax_distribution():
    probs = torch.tensor([0.5, 0.0, 0.3, 0.2, 0.0])
    n = 40000
    scores = probs.log().expand(n, -1)  # zero probability = -inf, as top-p leaves it
    torch.manual_seed(0)
    out = InverseCDFSampler()(None, scores)
    assert out.shape == (n, 5)
    assert ((out == 0).sum(-1) == 1).all()  # one token kept per row, the rest -inf
    assert torch.isinf(out).sum() == n * 4
    freq = torch.bincount(out.argmax(-1), minlength=5).float() / n
    # the standard error of each frequency is <= 0.0025: 4 sigma
    assert torch.allclose(freq, probs, atol=0.01), freq
    assert freq[1] == 0 and freq[4] == 0  # zero-probability tokens are never drawn
    torch.manual_seed(0)
    assert torch.equal(InverseCDFSampler()(None, scores), out)  # seeded: reproducible


def test_inverse_cdf_sampler_never_draws_past_the_last_possible_token(monkeypatch):
    # the worst rounding case: u equals the total mass; the draw falls back to the last token
    # with probability > 0, not to the -inf one after it
    scores = torch.tensor([[0.0, 0.0, float("-inf")]])
    monkeypatch.setattr(torch, "rand", lambda shape, **kw: torch.ones(shape, **kw))
    assert InverseCDFSampler()(None, scores).argmax(-1).item() == 1


def test_sampling_kwargs():
    assert sampling_kwargs(0.0, 0.9) == {"do_sample": False}
    kinds = [type(p).__name__ for p in sampling_kwargs(0.7, 0.9)["logits_processor"]]
    assert kinds == ["TemperatureLogitsWarper", "TopPLogitsWarper", "InverseCDFSampler"]
    kinds = [type(p).__name__ for p in sampling_kwargs(1.0)["logits_processor"]]
    assert kinds == ["InverseCDFSampler"]


def test_chat_template_is_applied(tiny):
    _, tok = tiny
    (ids,) = encode_chats(tok, [PROMPTS[2].as_chat()])
    assert tok.decode(ids) == (
        "<|im_start|>user\nhello<|im_end|>\n<|im_start|>assistant\nyes"
        "<|im_end|>\n<|im_start|>user\nthanks, and the dog?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


def test_batched_greedy_equals_one_at_a_time(tiny):
    """Left padding and position ids are right: a batch gives each row what it gives alone."""
    model, tok = tiny
    ids = encode_chats(tok, [p.as_chat() for p in PROMPTS])
    kw = {"temperature": 0, "top_p": 1.0, "max_new_tokens": 10, "seed": 0}
    batched = sample_batch(model, tok, ids, **kw)
    alone = [sample_batch(model, tok, [i], **kw)[0] for i in ids]
    assert [s.token_ids for s in batched] == [s.token_ids for s in alone]


def test_repeats_of_finds_runs_of_identical_rows():
    a, b = [5, 6, 7], [8, 9]
    for rows, r in [([a, a, b, b], 2), ([a] * 4, 4), ([a, b], 1), ([a, a, b], 1),
                    ([a, b, a, b], 1), ([a, a, a, b, b, b], 3), ([a], 1)]:  # fmt: skip
        ids, mask = left_pad(rows, 0)
        assert repeats_of(ids, mask) == r, rows


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_shared_prompts_sample_what_generate_samples(tiny, temperature):
    """Each prompt's KV cache computed once for its k rows: the same tokens as plain
    `generate` (fp32 here; in bf16 a differently shaped matmul may round apart)."""
    model, tok = tiny
    ids = encode_chats(tok, [p.as_chat() for p in PROMPTS])
    rows = [i for i in ids for _ in range(3)]  # each prompt's 3 samples side by side
    input_ids, mask = left_pad(rows, tok.pad_token_id)
    kw = {"max_new_tokens": 10, "pad_token_id": tok.pad_token_id, "use_cache": True}
    kw |= {"eos_token_id": tok.eos_token_id, **sampling_kwargs(temperature)}
    torch.manual_seed(7)
    plain = model.generate(input_ids=input_ids, attention_mask=mask, **kw)
    torch.manual_seed(7)
    shared = generate_shared_prompts(model, input_ids=input_ids, attention_mask=mask, **kw)
    assert torch.equal(shared, plain)
    if temperature:  # the draw is random: a prompt's rows differ
        assert any(not torch.equal(shared[3 * j], shared[3 * j + 1]) for j in range(4))


def test_generate_records_n_responses_with_sampling_and_comparisons(tiny):
    model, tok = tiny
    store = store_with_prompts()
    report = generate(store, "tiny", CFG, round=0, k=2, model=model, tokenizer=tok, progress=False)
    assert (report.prompts, report.generated, report.skipped_existing) == (4, 12, 0)
    responses = store.responses()
    assert len(responses) == 12
    assert sorted((r.prompt_id, r.sample_index) for r in responses) == [
        (p, i) for p in (1, 2, 3, 4) for i in range(3)
    ]
    assert {(r.policy, r.round, r.source) for r in responses} == {("tiny", 0, "generated")}
    assert {
        (r.sampling.temperature, r.sampling.top_p, r.sampling.max_new_tokens) for r in responses
    } == {(1.0, 1.0, 12)}
    # n=3 and k=2: one pair per prompt, the third response waits for a partner
    comps = store.comparisons()
    assert len(comps) == report.comparisons_created == 4
    by_id = {r.id: r for r in responses}
    assert all(sorted(by_id[i].sample_index for i in c.response_ids) == [0, 1] for c in comps)


def test_generate_is_deterministic_given_the_seed(tiny):
    model, tok = tiny
    texts = []
    for _ in range(2):
        store = store_with_prompts()
        generate(store, "tiny", CFG, model=model, tokenizer=tok, progress=False)
        texts.append([r.text for r in store.responses()])
    assert texts[0] == texts[1]
    assert len(set(texts[0])) > 1


def test_the_same_round_draws_the_same_samples_whatever_the_policys_path(tiny):
    """The seed hashes --seed, the round and the slots, not where the policy lies: the same
    model under another path (a project rebuilt in another folder) samples the same texts."""
    model, tok = tiny
    texts = {}
    for path in ("/tmp/one/policy", "/elsewhere/rounds/0/policy"):
        store = store_with_prompts()
        generate(store, path, CFG, model=model, tokenizer=tok, progress=False)
        texts[path] = [r.text for r in store.responses()]
        assert {r.policy for r in store.responses()} == {path}
    assert texts["/tmp/one/policy"] == texts["/elsewhere/rounds/0/policy"]


class DiesAfter:
    """Wraps a model; raises after `n` generate calls (a run killed midway)."""

    def __init__(self, model, n):
        self.model, self.n = model, n

    def parameters(self):
        return self.model.parameters()

    def generate(self, **kw):
        if self.n == 0:
            raise KeyboardInterrupt
        self.n -= 1
        return self.model.generate(**kw)


def test_killed_run_resumes_without_doubling(tiny):
    model, tok = tiny
    store = store_with_prompts()
    cfg = GenerateConfig(n=3, max_new_tokens=8, batch_size=5, bf16="no")
    with pytest.raises(KeyboardInterrupt):
        generate(store, "tiny", cfg, model=DiesAfter(model, 1), tokenizer=tok, progress=False)
    kept = {(r.prompt_id, r.sample_index): r.text for r in store.responses()}
    assert len(kept) == 5  # the first batch was committed before the kill
    report = generate(store, "tiny", cfg, model=model, tokenizer=tok, progress=False)
    assert (report.generated, report.skipped_existing) == (7, 5)
    after = {(r.prompt_id, r.sample_index): r.text for r in store.responses()}
    assert len(after) == 12 and all(after[key] == text for key, text in kept.items())
    assert generate(store, "tiny", cfg, model=model, tokenizer=tok, progress=False).generated == 0


def test_limit_and_k_wise_comparisons(tiny):
    model, tok = tiny
    store = store_with_prompts()
    cfg = GenerateConfig(n=4, max_new_tokens=6, bf16="no")
    report = generate(store, "tiny", cfg, k=4, limit=2, model=model, tokenizer=tok, progress=False)
    assert (report.prompts, report.generated, report.comparisons_created) == (2, 8, 2)
    assert [len(c.response_ids) for c in store.comparisons()] == [4, 4]
    assert make_comparisons(store, 0, 4) == 0  # nothing left to group


def test_bf16_sampling_runs_on_cpu(tiny):
    model, tok = tiny
    store = store_with_prompts()
    cfg = GenerateConfig(n=1, max_new_tokens=5, bf16="yes")
    generate(store, "tiny", cfg, model=model, tokenizer=tok, progress=False)
    assert len(store.responses()) == 4
    assert next(model.parameters()).dtype == torch.float32  # the caller's model is not changed


def test_unloadable_model_gives_one_clear_message(tmp_path):
    with pytest.raises(ModelLoadError, match="cannot load model '/nope/model'.*local checkpoint"):
        load_tokenizer("/nope/model")
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ModelLoadError, match="cannot load model"):
        load_causal_lm(str(tmp_path))
