"""Reward trainer on tiny random-weight models: quality, save/load, LoRA, resume, tie models."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from rankloop.data.records import Label
from rankloop.data.store import Store
from rankloop.reward.config import RewardConfig
from rankloop.reward.metrics import best_achievable_accuracy
from rankloop.reward.model import format_text
from rankloop.reward.pairs import RewardDataError, build_examples, pairwise_example
from rankloop.reward.scoring import RewardScorer
from rankloop.reward.train import (
    RewardModule,
    length_grouped_batches,
    pack,
    stats_sample,
    train_reward,
)

from simulate import SimulatedTask, keyword_examples, simulate_labels, simulate_pairs

# tiny models: fp32 is faster, and compiling costs more than it saves
FAST = {"batch_size": 16, "warmup_ratio": 0.0, "eval_fraction": 0.25, "bf16": "no", "compile": "no"}


def labeled(store):
    """The store's labels as training examples (what `rankloop train-reward` passes)."""
    return build_examples(store).examples


@pytest.fixture(scope="module")
def keyword_run(tmp_path_factory, tiny_lm_dir):
    """Full fine-tuning of the tiny model on 400 simulated keyword preferences."""
    store = Store.memory()
    diffs = simulate_labels(store, 400, seed=0)
    out = tmp_path_factory.mktemp("rm") / "reward"
    cfg = RewardConfig(lora=False, lr=3e-3, epochs=3, **FAST)
    result = train_reward(labeled(store), cfg, out, base=str(tiny_lm_dir), progress=False)
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
    # stats_sample: 128 of the 300 training pairs, 2 responses each
    assert set(stats) == {"mean", "std", "n"} and stats["n"] == 256
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
        one_by_one = torch.stack(
            [model(**scorer.tokenizer(t, return_tensors="pt")).logits[0, 0] for t in texts]
        )
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


def test_a_prompts_responses_score_packed_in_one_row_as_alone(keyword_run, monkeypatch):
    """Responses that share a prompt (a policy stage's k samples) are scored packed, the
    prompt once per row of at most PACK_MAX: each score is the one the response gets alone,
    in input order, with interleaved prompts and a run longer than PACK_MAX."""
    from transformers import AutoModelForSequenceClassification

    from rankloop.reward import scoring, train

    _, _, result = keyword_run
    scorer = RewardScorer.from_pretrained(result.path, bf16="no", batch_size=4)
    prompts = ["q"] * 3 + ["another prompt", "q", "another prompt"] + ["third"] * 10
    responses = [f"{w} fox {i}" for i, w in enumerate(["good", "the", "sea"] * 5 + ["no"])]
    packed_rows = []
    real_pack = train.pack
    monkeypatch.setattr(
        train,
        "pack",
        lambda groups, *a: packed_rows.extend(map(len, groups)) or real_pack(groups, *a),
    )
    scores = scorer.score(prompts, responses)
    assert sorted(packed_rows) == [2, 2, 4, 8]  # q x4, another x2, third x10 as 8 + 2
    assert scoring.prompt_runs(prompts, 8)[0] == [0, 1, 2, 4]
    model = AutoModelForSequenceClassification.from_pretrained(result.path).eval()
    texts = [format_text(scorer.tokenizer, p, r) for p, r in zip(prompts, responses)]
    with torch.no_grad():
        alone = torch.stack(
            [model(**scorer.tokenizer(t, return_tensors="pt")).logits[0, 0] for t in texts]
        )
    torch.testing.assert_close(scores, alone, atol=1e-4, rtol=1e-4)


def test_lora_head_trained_merged_and_adapter_save(tmp_path, tiny_lm_dir, fresh_store):
    simulate_labels(fresh_store, 48, seed=1)
    # bf16: the frozen base trains in bf16, the adapters and head in fp32, the merge in fp32
    cfg = RewardConfig(
        lora=True, lora_r=4, lr=1e-2, epochs=1, batch_size=8, eval_fraction=0.25, bf16="yes"
    )
    merged = train_reward(
        labeled(fresh_store), cfg, tmp_path / "merged", base=str(tiny_lm_dir), progress=False
    )
    files = {p.name for p in merged.path.iterdir()}
    assert "adapter_config.json" not in files and "model.safetensors" in files
    adapter = train_reward(
        labeled(fresh_store),
        RewardConfig(**{**cfg.__dict__, "merge_lora": False}),
        tmp_path / "adapter",
        base=str(tiny_lm_dir),
        progress=False,
    )
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


def test_lora_on_top_blocks_reuses_the_frozen_blocks_output(
    tmp_path, tiny_lm_dir, fresh_store, monkeypatch
):
    """[reward] lora_layers = 1 of the tiny model's 2 blocks: adapters on block 1 only; block
    0's output, kept from the frozen-feature pass, gives the same steps, held-out metrics and
    saved model as running both blocks at every step (the cache turned off)."""
    from safetensors.torch import load_file

    from rankloop.reward import train as reward_train

    simulate_labels(fresh_store, 48, seed=1)
    cfg = RewardConfig(
        lora=True,
        lora_r=4,
        lr=1e-2,
        epochs=2,
        batch_size=8,
        eval_fraction=0.25,
        bf16="no",
        compile="no",
        lora_layers=1,
        merge_lora=False,
    )
    used = []  # per forward with packed items: did it start from kept outputs?
    stack = reward_train.stack_lower
    monkeypatch.setattr(
        reward_train,
        "stack_lower",
        lambda *a: used.append(stack(*a) is not None) or stack(*a),
    )
    kept = train_reward(labeled(fresh_store), cfg, tmp_path / "kept", base=str(tiny_lm_dir))
    assert used and all(used[used.index(True) :])  # after the frozen pass, every forward
    used.clear()
    monkeypatch.setattr(reward_train, "LOWER_CACHE_BYTES", 0)
    every = train_reward(labeled(fresh_store), cfg, tmp_path / "every", base=str(tiny_lm_dir))
    assert used and not any(used)
    adapted = load_file(kept.path / "adapter_model.safetensors")
    lora = [n for n in adapted if "lora_" in n]
    assert lora and all(".layers.1." in n for n in lora)
    assert len(kept.history) == len(every.history) == kept.steps
    for a, b in zip(kept.history, every.history):
        assert a["reward/loss"] == pytest.approx(b["reward/loss"], rel=1e-5, abs=1e-6)
    for name in ("reward/accuracy", "reward/eval_pairs", "reward/probe_accuracy"):
        assert kept.metrics[name] == every.metrics[name]
    assert kept.metrics["reward/mean"] == pytest.approx(every.metrics["reward/mean"], abs=1e-5)
    texts = (["a prompt"] * 3, ["good day", "the sea", "no"])
    torch.testing.assert_close(
        RewardScorer.from_pretrained(kept.path, bf16="no").score(*texts),
        RewardScorer.from_pretrained(every.path, bf16="no").score(*texts),
        atol=1e-5,
        rtol=1e-5,
    )


def test_lora_layers_beyond_the_model_is_a_clear_error(tmp_path, tiny_lm_dir, fresh_store):
    from rankloop.lm.loading import ModelLoadError

    simulate_labels(fresh_store, 8, seed=1)
    cfg = RewardConfig(lora_layers=2, bf16="no", compile="no")
    with pytest.raises(ModelLoadError, match="lora_layers = 2, but .* has 2 decoder blocks"):
        train_reward(labeled(fresh_store), cfg, tmp_path / "r", base=str(tiny_lm_dir))


def test_resume_continues_to_the_same_model(tmp_path, tiny_lm_dir, fresh_store):
    simulate_labels(fresh_store, 40, seed=2)
    # select_best stays on (the best weights so far travel in the checkpoint); patience 0
    # runs every step
    cfg = RewardConfig(
        lora=False,
        lr=1e-3,
        epochs=1,
        batch_size=6,
        eval_fraction=0.2,
        checkpoint_every=2,
        bf16="no",
        patience=0,
    )
    rows = []
    straight = train_reward(
        labeled(fresh_store),
        cfg,
        tmp_path / "a",
        base=str(tiny_lm_dir),
        progress=False,
        on_step=rows.append,
    )
    assert straight.steps == 6  # 32 training comparisons / 6 = 6 batches (last one short)
    assert rows == straight.history and [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]
    stopped = train_reward(
        labeled(fresh_store),
        cfg,
        tmp_path / "b",
        base=str(tiny_lm_dir),
        progress=False,
        max_steps=3,
    )
    assert stopped.steps == 3
    # the one checkpoint rule (lm.checkpoints): inside the run's folder, as the policy stage's
    assert [p.name for p in (tmp_path / "b" / "checkpoints").iterdir()] == ["step-2"]
    resumed = train_reward(
        labeled(fresh_store),
        cfg,
        tmp_path / "b",
        base=str(tiny_lm_dir),
        progress=False,
        resume=True,
    )
    assert resumed.steps == 6 and [h["step"] for h in resumed.history] == [1, 2, 3, 4, 5, 6]
    assert not (tmp_path / "b" / "checkpoints").exists()  # spent once the run finished
    assert not (tmp_path / "b-checkpoints").exists()
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
    m = train_reward(
        labeled(fresh_store), cfg, tmp_path / "rm", base=str(tiny_lm_dir), progress=False
    ).metrics
    assert m["reward/eval_pairs"] == 60.0 and m["reward/eval_ties"] == 20.0  # 3 pairs x 20
    assert m["reward/accuracy"] > 0.9  # a keyword response beats the one without
    if loss == "davidson":
        assert m["reward/nu"] > 0
        # ties are predicted too: above the 2/3 of a model that never predicts a tie
        assert m["reward/accuracy_tie_aware"] > 0.7


def test_rao_kupper_learns_its_tie_threshold(tmp_path, tiny_lm_dir, fresh_store):
    _ranked_with_ties(fresh_store, 16, seed=4)
    cfg = RewardConfig(
        loss="rao-kupper",
        lora=False,
        lr=0.05,
        epochs=3,
        batch_size=4,
        eval_fraction=0.25,
        warmup_ratio=0.0,
    )
    m = train_reward(
        labeled(fresh_store), cfg, tmp_path / "rm", base=str(tiny_lm_dir), progress=False
    ).metrics
    # a third of the pairs are ties: eps grows from its start at 0.5
    assert m["reward/epsilon"] > 0.5


def test_clear_errors(tmp_path, tiny_lm_dir):
    cfg = RewardConfig()
    with pytest.raises(RewardDataError, match="no training examples"):
        train_reward([], cfg, tmp_path / "x", base=str(tiny_lm_dir))
    ties = [pairwise_example(f"p{i}", "x", "y", tie=True) for i in range(4)]
    with pytest.raises(RewardDataError, match="no strict preference"):
        train_reward(ties, cfg, tmp_path / "x", base=str(tiny_lm_dir))
    one_prompt = [pairwise_example("p", "x", "y"), pairwise_example("p", "x", "z")]
    with pytest.raises(RewardDataError, match="held-out split by prompt needs at least 2"):
        train_reward(one_prompt, cfg, tmp_path / "x", base=str(tiny_lm_dir))
    assert not (tmp_path / "x").exists()


def test_trains_on_records_that_never_saw_a_store(tmp_path, tiny_lm_dir):
    """Examples built from plain (prompt, chosen, rejected) data, a held-out list given: no
    Store anywhere, and the model learns the keyword task."""
    pairs = [
        (p, a, b) if a_wins else (p, b, a) for p, a, b, a_wins, _ in simulate_pairs(240, seed=7)
    ]
    train = [pairwise_example(p, c, r) for p, c, r in pairs[:200]]
    # two held-out annotators: one labels as the task says, the other the opposite way round
    held = [pairwise_example(p, c, r, annotator="agrees") for p, c, r in pairs[200:220]]
    held += [pairwise_example(p, r, c, annotator="contrary") for p, c, r in pairs[220:]]
    cfg = RewardConfig(lora=False, lr=3e-3, epochs=3, center_coef=0.01, select_best=False, **FAST)
    result = train_reward(
        train, cfg, tmp_path / "rm", base=str(tiny_lm_dir), held_out=held, progress=False
    )
    m = result.metrics
    assert (result.train_examples, result.eval_examples) == (200, 40)
    # the training statistics come from stats_sample (128) of the 200 comparisons, scored by
    # the final model: the saved model gives the same numbers on exactly those
    assert m["reward/eval_pairs"] == 40.0 and m["reward/train_pairs"] == 128.0
    picked = stats_sample(pairs[:200], 128, cfg.seed)
    assert len(picked) == 128 and picked != pairs[:128]
    saved = RewardScorer.from_pretrained(result.path, bf16="no")
    got = saved.score(
        [p for p, *_ in picked] * 2, [c for _, c, _ in picked] + [r for *_, r in picked]
    )
    assert m["reward/mean"] == pytest.approx(float(got.mean()), abs=1e-4)
    assert m["reward/std"] == pytest.approx(float(got.std()), abs=1e-4)
    assert m["reward/train_accuracy"] == pytest.approx(
        float((got[:128] > got[128:]).float().mean())
    )
    # simulated labels are right with probability sigma(3) = 0.95: the contrary annotator
    # agrees with the model on the pairs the simulation got wrong, no more
    assert m["reward/accuracy/agrees"] >= 0.8 and m["reward/accuracy/contrary"] <= 0.2
    assert m["reward/accuracy"] == pytest.approx(
        (m["reward/accuracy/agrees"] + m["reward/accuracy/contrary"]) / 2
    )
    # centering was part of every step's loss
    assert all(h["reward/centering_loss"] > 0 for h in result.history)
    scorer = RewardScorer.from_pretrained(result.path, bf16="no")
    assert bool(
        (
            scorer.score(["q"] * 2, ["good fox", "sea good"])
            > scorer.score(["q"] * 2, ["the fox", "sea wind"])
        ).all()
    )


def test_stats_sample_takes_all_or_k_at_random_in_order():
    items = list(range(10))
    assert stats_sample(items, 0, seed=0) == items  # 0 = every comparison
    assert stats_sample(items, 10, seed=0) == items and stats_sample(items, 50, seed=0) == items
    picked = stats_sample(items, 4, seed=3)
    assert len(picked) == 4 and picked == sorted(set(picked))
    assert picked == stats_sample(items, 4, seed=3) != stats_sample(items, 4, seed=4)


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
    # a random head (no warm start): the probe's larger weights would magnify inductor's
    # reordered float arithmetic beyond the tolerance below
    cfg = RewardConfig(
        lora=True,
        lora_r=4,
        lr=1e-2,
        epochs=1,
        batch_size=6,
        eval_fraction=0.0,
        bf16="no",
        warm_start=False,
    )
    eager = train_reward(
        labeled(fresh_store), cfg, tmp_path / "eager", base=str(tiny_lm_dir), progress=False
    )
    compiled = train_reward(
        labeled(fresh_store),
        RewardConfig(**{**cfg.__dict__, "compile": True}),
        tmp_path / "compiled",
        base=str(tiny_lm_dir),
        progress=False,
    )
    assert (eager.compiled, compiled.compiled) == (False, True)  # 4 steps: 'auto' stays eager
    losses = [[h["reward/loss"] for h in r.history] for r in (eager, compiled)]
    assert len(losses[0]) == 4
    assert losses[1] == pytest.approx(losses[0], rel=1e-4, abs=1e-5)
    texts = (["a prompt"] * 3, ["good day", "the sea", "no"])
    torch.testing.assert_close(
        RewardScorer.from_pretrained(compiled.path, bf16="no").score(*texts),
        RewardScorer.from_pretrained(eager.path, bf16="no").score(*texts),
        atol=1e-4,
        rtol=1e-4,
    )


def test_auto_compiles_long_runs_where_torch_compile_works(monkeypatch):
    from rankloop.lm import kernels

    assert kernels.compile_works("cpu") == (
        shutil.which("g++") is not None or shutil.which("c++") is not None
    )
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
    groups = [
        [[5, 6, 7, 8, 9], [5, 6, 7, 10]],  # prefix 5 6 7, then 8 9 / 10
        [[5, 11, 12, 13], [5, 11, 14, 15, 16, 17], [5, 11, 18]],
    ]  # prefix 5 11
    ids, pos, mask, ends, tokens = pack(groups, tok.pad_token_id, multiple)
    width = 9 if multiple == 1 else 16  # the second row: 2 + 2 + 4 + 1 tokens
    assert ids.shape == (2, width) and tokens == 6 + 9
    assert pos[1, :9].tolist() == [0, 1, 2, 3, 2, 3, 4, 5, 2]
    assert ends.tolist() == [4, 5, width + 3, width + 7, width + 8]
    with torch.no_grad():
        packed = RewardModule(model, 0.0)(ids, pos, mask, ends)[:, 0]  # (S, 1): one member
        alone = torch.stack(
            [model(input_ids=torch.tensor([s])).logits[0, 0] for g in groups for s in g]
        )
    torch.testing.assert_close(packed, alone, atol=1e-5, rtol=1e-5)


def test_batch_loss_applies_margins_and_centering_as_in_the_losses(tiny_lm_dir):
    """The loss a training step takes on collated examples: Bradley-Terry with each pair's
    margin, plus the centering term, computed by hand."""
    from rankloop.reward.model import load_reward_tokenizer
    from rankloop.reward.train import batch_loss, collate, encode

    tok = load_reward_tokenizer(str(tiny_lm_dir), 64)
    items = encode(
        tok, [pairwise_example("p", "a", "b", margin=1.5), pairwise_example("q", "c", "d")], 64
    )
    batch = collate(items, tok.pad_token_id)
    r = torch.tensor([2.0, 1.0, 0.5, 1.0])  # (S,): a, b, c, d
    cfg = RewardConfig(center_coef=0.1)
    loss, stats = batch_loss(cfg, r, batch, torch.tensor(0.0))
    bt = (
        torch.nn.functional.softplus(-(torch.tensor(1.0) - 1.5))
        + torch.nn.functional.softplus(-torch.tensor(-0.5))
    ) / 2
    centering = 0.1 * (3.0**2 + 1.5**2) / 2
    assert float(loss) == pytest.approx(float(bt) + centering, rel=1e-6)
    assert float(stats["reward/centering_loss"]) == pytest.approx(centering)
    assert float(stats["reward/accuracy"]) == 0.5


def test_warm_start_makes_the_head_the_last_token_probe(tmp_path, tiny_lm_dir):
    """LP-FT: with a learning rate too small to move anything, the saved model is the head
    fitted on frozen features, which already ranks the keyword task; a random head does not."""
    train, held = keyword_examples(160, seed=8), keyword_examples(40, seed=9)
    cfg = RewardConfig(lora=False, lr=1e-12, epochs=1, select_best=False, **FAST)
    warm = train_reward(
        train, cfg, tmp_path / "warm", base=str(tiny_lm_dir), held_out=held, progress=False
    ).metrics
    cold = train_reward(
        train,
        RewardConfig(**{**cfg.__dict__, "warm_start": False}),
        tmp_path / "cold",
        base=str(tiny_lm_dir),
        held_out=held,
        progress=False,
    ).metrics
    assert warm["reward/accuracy"] == pytest.approx(warm["reward/probe_last_accuracy"])
    assert warm["reward/accuracy"] >= 0.8 and cold["reward/accuracy"] <= 0.7
    assert warm["reward/probe_accuracy"] >= 0.8  # the mean-pooled baseline learns it too


def test_the_saved_probe_scores_as_the_probe_baseline_was_measured(tmp_path, tiny_lm_dir):
    """Issue 23 item 5: probe.json is the mean-pooled probe `train-reward` reports as its
    baseline, and `ProbeScorer` reproduces it from the text alone: its scores rank the held-out
    pairs exactly as `reward/probe_accuracy` says, and its saved mean and std are those of its
    scores on the training responses; its cross-validated accuracy on the training labels is
    saved and reported."""
    import json

    from rankloop.reward.metrics import pairwise_accuracy
    from rankloop.reward.scoring import ProbeScorer

    train, held = keyword_examples(120, seed=8), keyword_examples(40, seed=9)
    cfg = RewardConfig(lora=False, lr=1e-12, epochs=1, select_best=False, **FAST)
    res = train_reward(
        train, cfg, tmp_path / "rm", base=str(tiny_lm_dir), held_out=held, progress=False
    )
    spec = json.loads((tmp_path / "rm" / "probe.json").read_text())
    assert spec["base"] == str(tiny_lm_dir) and spec["pooling"] == "mean"
    assert spec["accuracy"] == res.metrics["reward/probe_accuracy"]
    # its accuracy on training labels it was not fitted on: the keyword is easy to find
    assert spec["cv_accuracy"] == res.metrics["reward/probe_cv_accuracy"] >= 0.8
    assert spec["cv_se"] == res.metrics["reward/probe_cv_se"] > 0
    # each held-out pair's score gap under the model and under the probe, in the same order:
    # their shares above zero are the two accuracies (probe.mix_decision's paired test)
    gaps = spec["held_out_gaps"]
    assert len(gaps["model"]) == len(gaps["probe"]) == res.metrics["reward/eval_pairs"] == 40
    assert np.mean(np.array(gaps["model"]) > 0) == res.metrics["reward/accuracy"]
    assert np.mean(np.array(gaps["probe"]) > 0) == res.metrics["reward/probe_accuracy"]
    scorer = ProbeScorer.from_pretrained(tmp_path / "rm", device="cpu")
    assert scorer.w.shape == (tiny_lm_config_hidden(tiny_lm_dir),)

    def scores(examples):
        out = []
        for e in examples:
            out.append(scorer.score([e.prompt] * len(e.responses), list(e.responses)))
        return out

    held_scores = scores(held)  # the winner is responses[0]
    acc = pairwise_accuracy(
        torch.stack([s[0] for s in held_scores]), torch.stack([s[1] for s in held_scores])
    )
    assert acc == res.metrics["reward/probe_accuracy"] and acc >= 0.8
    train_scores = torch.cat(scores(train))
    assert float(train_scores.mean()) == pytest.approx(scorer.mean, abs=1e-4)
    assert float(train_scores.std(unbiased=False)) == pytest.approx(scorer.std, rel=1e-4)


def tiny_lm_config_hidden(path) -> int:
    import json

    return json.loads((path / "config.json").read_text())["hidden_size"]


def test_early_stopping_returns_the_best_checkpoint(tmp_path, tiny_lm_dir):
    """Held-out labels that contradict the training labels: every epoch makes the held-out
    accuracy worse, so the weights of step 0 are the ones saved, and the run stops after
    `patience` epochs without a better evaluation."""
    train = keyword_examples(120, seed=10)
    held = [
        pairwise_example(e.prompt, e.responses[1], e.responses[0])  # the other way round
        for e in keyword_examples(40, seed=11)
    ]
    cfg = RewardConfig(
        lora=False, lr=3e-3, epochs=4, warm_start=False, patience=2, select_best=True, **FAST
    )
    result = train_reward(
        train, cfg, tmp_path / "rm", base=str(tiny_lm_dir), held_out=held, progress=False
    )
    evals = [h["eval/accuracy"] for h in result.history if "eval/accuracy" in h]
    assert len(evals) == 2 and result.steps == 2 * 8  # 120 / 16 = 8 steps per epoch, 2 epochs
    assert result.metrics["reward/best_step"] == 0.0
    assert result.metrics["reward/accuracy"] > max(evals) + 0.2
    plain = train_reward(
        train,
        RewardConfig(**{**cfg.__dict__, "select_best": False}),
        tmp_path / "plain",
        base=str(tiny_lm_dir),
        held_out=held,
        progress=False,
    )
    assert plain.steps == 4 * 8 and plain.metrics["reward/accuracy"] < 0.3
    # the default patience: the first epoch that does not beat the best ends the run (the saved
    # model is the same; on bench/reward_quality.py that cut a third to a half of the steps)
    defaults = RewardConfig(
        lora=False, lr=3e-3, epochs=4, warm_start=False, select_best=True, **FAST
    )
    quick = train_reward(
        train, defaults, tmp_path / "quick", base=str(tiny_lm_dir), held_out=held, progress=False
    )
    assert quick.steps == 8 and quick.metrics["reward/best_step"] == 0.0
    assert quick.metrics["reward/accuracy"] == pytest.approx(result.metrics["reward/accuracy"])


def test_by_default_every_epoch_trains_whatever_a_small_held_out_split_says(tmp_path, tiny_lm_dir):
    """The defaults train their 2 epochs and save the last weights: on bench/reward_quality.py
    (300 pairs) choosing the epoch on the ~30-pair split kept the warm start on relevance at
    0.623 where training on gave 0.716 (docs/reward.md). Held-out labels that contradict the
    training ones would have stopped an early-stopping run after its first epoch at step 0."""
    train = keyword_examples(120, seed=10)
    held = [
        pairwise_example(e.prompt, e.responses[1], e.responses[0])
        for e in keyword_examples(40, seed=11)
    ]
    cfg = RewardConfig(lora=False, lr=3e-3, warm_start=False, **FAST)
    result = train_reward(
        train, cfg, tmp_path / "rm", base=str(tiny_lm_dir), held_out=held, progress=False
    )
    assert result.steps == 2 * 8  # 120 / 16 = 8 steps per epoch, both epochs
    assert "reward/best_step" not in result.metrics
    assert result.metrics["reward/accuracy"] < 0.3  # trained on: the contradicting split says so
