"""Reward trainer on tiny random-weight models: quality, save/load, LoRA, resume, tie models."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from rankloop.data.records import Label
from rankloop.data.store import Store
from rankloop.reward.config import RewardConfig
from rankloop.reward.metrics import best_achievable_accuracy
from rankloop.reward.model import format_text
from rankloop.reward.pairs import RewardDataError
from rankloop.reward.scoring import RewardScorer
from rankloop.reward.train import RewardModule, length_grouped_batches, pack, train_reward

from simulate import SimulatedTask, simulate_labels, simulate_pairs

# tiny models: fp32 is faster, and compiling costs more than it saves
FAST = dict(batch_size=16, warmup_ratio=0.0, eval_fraction=0.25, bf16="no", compile="no")


@pytest.fixture(scope="module")
def keyword_run(tmp_path_factory, tiny_lm_dir):
    """Full fine-tuning of the tiny model on 400 simulated keyword preferences."""
    store = Store.memory()
    diffs = simulate_labels(store, 400, seed=0)
    out = tmp_path_factory.mktemp("rm") / "reward"
    cfg = RewardConfig(lora=False, lr=3e-3, epochs=3, **FAST)
    result = train_reward(store, cfg, out, base=str(tiny_lm_dir), progress=False)
    yield store, diffs, result
    store.close()


def test_heldout_accuracy_reaches_best_achievable(keyword_run):
    _, diffs, result = keyword_run
    best = best_achievable_accuracy(diffs)  # sigma(3) = 0.953: every pair differs by 3
    assert best == pytest.approx(0.9526, abs=1e-4)
    m = result.metrics
    assert m["reward/eval_pairs"] == 100.0  # 25% of 400 prompts held out
    assert m["reward/accuracy"] >= best - 0.05
    assert m["reward/margin"] > 1.0  # keyword responses score clearly higher
    assert m["reward/ece"] < 0.1
    assert m["reward/accuracy/simulator"] == m["reward/accuracy"]


def test_saved_checkpoint_loads_with_from_pretrained_and_pipeline(keyword_run):
    from transformers import AutoModelForSequenceClassification, pipeline

    _, _, result = keyword_run
    path = result.path
    stats = json.loads((path / "reward_stats.json").read_text())
    assert set(stats) == {"mean", "std", "n"} and stats["n"] == 600  # 300 train pairs x 2
    assert stats["mean"] == pytest.approx(result.metrics["reward/mean"])

    task = SimulatedTask()
    pairs = simulate_pairs(6, task, seed=99)
    prompts = [p for p, *_ in pairs] + ["hi"]
    responses = [a for _, a, *_ in pairs] + ["good good"]
    scorer = RewardScorer.from_pretrained(path, bf16="no", batch_size=3)
    assert (scorer.mean, scorer.std) == (stats["mean"], stats["std"])
    scores = scorer.score(prompts, responses)
    assert scores.shape == (7,) and scores.dtype == torch.float32

    model = AutoModelForSequenceClassification.from_pretrained(path).eval()
    assert model.config.pad_token_id is not None and model.config.num_labels == 1
    texts = [format_text(scorer.tokenizer, p, r) for p, r in zip(prompts, responses)]
    with torch.no_grad():
        one_by_one = torch.stack([model(**scorer.tokenizer(t, return_tensors="pt")).logits[0, 0]
                                  for t in texts])
    torch.testing.assert_close(scores, one_by_one, atol=1e-4, rtol=1e-4)
    pipe = pipeline("text-classification", model=str(path), device="cpu")
    piped = torch.tensor([out["score"] for out in pipe(texts)])
    torch.testing.assert_close(scores, piped, atol=1e-4, rtol=1e-4)
    # prompts given as chat messages score the same
    again = scorer.score([[{"role": "user", "content": p}] for p in prompts], responses)
    torch.testing.assert_close(again, scores, atol=1e-2, rtol=1e-2)
    # the model learned the task: keyword responses score above their partners
    with_kw = scorer.score(["q"] * 3, ["good fox", "sea good wind", "good"])
    without = scorer.score(["q"] * 3, ["the fox", "sea lazy wind", "maybe"])
    assert bool((with_kw > without).all())


def test_lora_head_trained_merged_and_adapter_save(tmp_path, tiny_lm_dir, fresh_store):
    simulate_labels(fresh_store, 48, seed=1)
    # bf16: the frozen base trains in bf16, the adapters and head in fp32, the merge in fp32
    cfg = RewardConfig(lora=True, lora_r=4, lr=1e-2, epochs=1, batch_size=8, eval_fraction=0.25,
                       bf16="yes")
    merged = train_reward(fresh_store, cfg, tmp_path / "merged", base=str(tiny_lm_dir),
                          progress=False)
    files = {p.name for p in merged.path.iterdir()}
    assert "adapter_config.json" not in files and "model.safetensors" in files
    adapter = train_reward(fresh_store, RewardConfig(**{**cfg.__dict__, "merge_lora": False}),
                           tmp_path / "adapter", base=str(tiny_lm_dir), progress=False)
    assert (adapter.path / "adapter_config.json").exists()
    texts = (["a prompt"] * 3, ["good day", "the sea", "no"])
    s_merged = RewardScorer.from_pretrained(merged.path, bf16="no").score(*texts)
    s_adapter = RewardScorer.from_pretrained(adapter.path, bf16="no").score(*texts)
    # same seed, same data: the adapter folder and the merged checkpoint give the same model
    torch.testing.assert_close(s_merged, s_adapter, atol=1e-4, rtol=1e-4)
    # the head was trained (modules_to_save): it differs from its initialisation (same seed)
    from accelerate.utils import set_seed
    from transformers import AutoModelForSequenceClassification

    from rankloop.reward.model import load_backbone, load_reward_tokenizer

    def fresh_head():
        set_seed(cfg.seed)
        return load_backbone(str(tiny_lm_dir), load_reward_tokenizer(str(tiny_lm_dir))).score.weight

    assert torch.equal(fresh_head(), fresh_head())
    trained = AutoModelForSequenceClassification.from_pretrained(merged.path).score.weight
    assert not torch.allclose(trained, fresh_head(), atol=1e-3)


def test_resume_continues_to_the_same_model(tmp_path, tiny_lm_dir, fresh_store):
    simulate_labels(fresh_store, 40, seed=2)
    cfg = RewardConfig(lora=False, lr=1e-3, epochs=1, batch_size=6, eval_fraction=0.2,
                       checkpoint_every=2, bf16="no")
    rows = []
    straight = train_reward(fresh_store, cfg, tmp_path / "a", base=str(tiny_lm_dir),
                            progress=False, on_step=rows.append)
    assert straight.steps == 6  # 32 training comparisons / 6 = 6 batches (last one short)
    assert rows == straight.history and [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]
    stopped = train_reward(fresh_store, cfg, tmp_path / "b", base=str(tiny_lm_dir),
                           progress=False, max_steps=3)
    assert stopped.steps == 3
    assert [p.name for p in (tmp_path / "b-checkpoints").iterdir()] == ["step-2"]
    resumed = train_reward(fresh_store, cfg, tmp_path / "b", base=str(tiny_lm_dir),
                           progress=False, resume=True)
    assert resumed.steps == 6 and [h["step"] for h in resumed.history] == [1, 2, 3, 4, 5, 6]
    assert not (tmp_path / "b-checkpoints").exists()  # spent once the run finished
    texts = (["p"] * 2, ["good fox", "lazy dog"])
    a = RewardScorer.from_pretrained(straight.path, bf16="no").score(*texts)
    b = RewardScorer.from_pretrained(resumed.path, bf16="no").score(*texts)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    assert straight.metrics["reward/accuracy"] == resumed.metrics["reward/accuracy"]


def _ranked_with_ties(store, n, seed):
    """K = 3 rankings by the keyword reward: the two responses with the keyword tie on top."""
    ann = store.external_annotator("ranker")
    labels = []
    for prompt, a, b, _, _ in simulate_pairs(n, seed=seed):
        good, bad = (a, b) if "good" in a.split() else (b, a)
        third = f"good {bad}"
        cid = store.add_comparison_texts(prompt, [a, b, third])
        ids = dict(zip([a, b, third], store.comparison(cid).response_ids))
        labels.append(Label(cid, ann.id, ((ids[good], ids[third]), (ids[bad],))))
    store.add_labels(labels)


@pytest.mark.parametrize("loss", ["davidson", "plackett-luce"])
def test_tie_models_and_rankings_learn(loss, tmp_path, tiny_lm_dir, fresh_store):
    _ranked_with_ties(fresh_store, 80, seed=3)
    cfg = RewardConfig(loss=loss, lora=False, lr=3e-3, epochs=4, **FAST)
    m = train_reward(fresh_store, cfg, tmp_path / "rm", base=str(tiny_lm_dir),
                     progress=False).metrics
    assert m["reward/eval_pairs"] == 60.0 and m["reward/eval_ties"] == 20.0  # 3 pairs x 20
    assert m["reward/accuracy"] > 0.9  # a keyword response beats the one without
    if loss == "davidson":
        assert m["reward/nu"] > 0
        # ties are predicted too: above the 2/3 of a model that never predicts a tie
        assert m["reward/accuracy_tie_aware"] > 0.7


def test_rao_kupper_learns_its_tie_threshold(tmp_path, tiny_lm_dir, fresh_store):
    _ranked_with_ties(fresh_store, 16, seed=4)
    cfg = RewardConfig(loss="rao-kupper", lora=False, lr=0.05, epochs=3, batch_size=4,
                       eval_fraction=0.25, warmup_ratio=0.0)
    m = train_reward(fresh_store, cfg, tmp_path / "rm", base=str(tiny_lm_dir),
                     progress=False).metrics
    # a third of the pairs are ties: eps grows from its start at 0.5
    assert m["reward/epsilon"] > 0.5


def test_clear_errors(tmp_path, tiny_lm_dir, fresh_store):
    cfg = RewardConfig()
    with pytest.raises(RewardDataError, match="no labels up to round 0"):
        train_reward(fresh_store, cfg, tmp_path / "x", base=str(tiny_lm_dir), round=0)
    ann = fresh_store.external_annotator("a")
    cid = fresh_store.add_comparison_texts("p", ["x", "y"])
    fresh_store.add_label(Label.pairwise(cid, ann.id, fresh_store.comparison(cid).response_ids,
                                         "tie"))
    with pytest.raises(RewardDataError, match="single label class"):
        train_reward(fresh_store, cfg, tmp_path / "x", base=str(tiny_lm_dir))
    cid = fresh_store.add_comparison_texts("p", ["x", "z"])
    fresh_store.add_label(Label.pairwise(cid, ann.id, fresh_store.comparison(cid).response_ids,
                                         "A"))
    with pytest.raises(RewardDataError, match="held-out split by prompt needs at least 2"):
        train_reward(fresh_store, cfg, tmp_path / "x", base=str(tiny_lm_dir))
    assert not (tmp_path / "x").exists()


def test_length_grouped_batches_cover_everything_once_with_little_padding():
    lengths = [5, 50, 7, 52, 6, 51, 8, 49]
    batches = length_grouped_batches(lengths, 2, seed=0)
    assert sorted(i for b in batches for i in b) == list(range(8))
    assert all(abs(lengths[a] - lengths[b]) <= 3 for a, b in batches)
    assert batches == length_grouped_batches(lengths, 2, seed=0)


def test_compiled_blocks_train_the_same_model(tmp_path, tiny_lm_dir, fresh_store):
    """`compile = true` compiles every transformer block; the steps and the saved model match
    the eager run's (inductor reorders float arithmetic, so not bit for bit)."""
    simulate_labels(fresh_store, 24, seed=4)
    cfg = RewardConfig(lora=True, lora_r=4, lr=1e-2, epochs=1, batch_size=6, eval_fraction=0.0,
                       bf16="no")
    eager = train_reward(fresh_store, cfg, tmp_path / "eager", base=str(tiny_lm_dir),
                         progress=False)
    compiled = train_reward(fresh_store, RewardConfig(**{**cfg.__dict__, "compile": True}),
                            tmp_path / "compiled", base=str(tiny_lm_dir), progress=False)
    assert (eager.compiled, compiled.compiled) == (False, True)  # 4 steps: 'auto' stays eager
    losses = [[h["reward/loss"] for h in r.history] for r in (eager, compiled)]
    assert len(losses[0]) == 4
    assert losses[1] == pytest.approx(losses[0], rel=1e-4, abs=1e-5)
    texts = (["a prompt"] * 3, ["good day", "the sea", "no"])
    torch.testing.assert_close(RewardScorer.from_pretrained(compiled.path, bf16="no").score(*texts),
                               RewardScorer.from_pretrained(eager.path, bf16="no").score(*texts),
                               atol=1e-4, rtol=1e-4)


def test_auto_compiles_long_runs_where_torch_compile_works(monkeypatch):
    from rankloop.lm import kernels

    assert kernels.compile_works("cpu") == (shutil.which("g++") is not None
                                             or shutil.which("c++") is not None)
    monkeypatch.setattr(kernels, "compile_works", lambda device_type: True)
    assert [kernels.use_compile("auto", n, "cpu") for n in (31, 32)] == [False, True]
    assert kernels.use_compile("yes", 1, "cpu") and not kernels.use_compile("no", 99, "cpu")
    monkeypatch.setattr(kernels, "compile_works", lambda device_type: False)
    assert kernels.use_compile("auto", 1000, "cpu") is False


def test_compile_blocks_compiles_each_transformer_block(tiny_lm_dir):
    from rankloop.lm.kernels import compile_blocks
    from rankloop.reward.model import add_lora, load_backbone, load_reward_tokenizer

    model = load_backbone(str(tiny_lm_dir), load_reward_tokenizer(str(tiny_lm_dir)))
    model = add_lora(model, 4, 8, 0.0, ["q_proj", "v_proj"])
    layers = model.base_model.model.model.layers
    assert compile_blocks(model) == len(layers) == 2
    assert all(layer._compiled_call_impl is not None for layer in layers)


@pytest.mark.parametrize("multiple", [1, 16])
def test_packed_rows_give_each_response_its_reward_alone(multiple, tiny_lm_dir):
    """A pairwise and a 3-way comparison packed into rows (prefix once, block mask, positions
    from the prefix), padded to a multiple of 16 or not: every response gets the reward the
    model gives it as a sequence of its own."""
    from rankloop.reward.model import load_backbone, load_reward_tokenizer

    tok = load_reward_tokenizer(str(tiny_lm_dir), 64)
    model = load_backbone(str(tiny_lm_dir), tok).eval()
    groups = [[[5, 6, 7, 8, 9], [5, 6, 7, 10]],  # prefix 5 6 7, then 8 9 / 10
              [[5, 11, 12, 13], [5, 11, 14, 15, 16, 17], [5, 11, 18]]]  # prefix 5 11
    ids, pos, mask, ends, tokens = pack(groups, tok.pad_token_id, multiple)
    width = 9 if multiple == 1 else 16  # the second row: 2 + 2 + 4 + 1 tokens
    assert ids.shape == (2, width) and tokens == 6 + 9
    assert pos[1, :9].tolist() == [0, 1, 2, 3, 2, 3, 4, 5, 2]
    assert ends.tolist() == [4, 5, width + 3, width + 7, width + 8]
    with torch.no_grad():
        packed = RewardModule(model, 0.0)(ids, pos, mask, ends)
        alone = torch.stack([model(input_ids=torch.tensor([s])).logits[0, 0]
                             for g in groups for s in g])
    torch.testing.assert_close(packed, alone, atol=1e-5, rtol=1e-5)
