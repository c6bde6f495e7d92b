"""Model and dataset cards parse with huggingface_hub's card classes and carry the figures of
the run that wrote them; `rankloop push` refuses cleanly offline or logged out."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner
from huggingface_hub import DatasetCard, ModelCard

from rankloop.app.cli import cli
from rankloop.data.io import export_preferences
from rankloop.data.records import Label
from rankloop.data.store import Store
from rankloop.lm.cards import base_of, round_of, write_policy_card


def test_dataset_card_counts_sources_people_simulated_and_agreement(tmp_path):
    s = Store.memory()
    ann, _ = s.add_annotator("ann")
    ben, _ = s.add_annotator("ben")
    sim = s.add_simulated_annotator("sim")
    c1 = s.add_comparison_texts("Say hi", ["Hi!", "Hello."])
    c2 = s.add_comparison_texts("Count", ["1 2", "one", "two three"])
    c3 = s.add_comparison_texts("Say bye", ["Bye.", "Hello."])
    r1, r2 = s.comparison(c1).response_ids, s.comparison(c2).response_ids
    r3 = s.comparison(c3).response_ids
    s.add_labels(
        [
            Label.pairwise(c1, ann.id, r1, "A"),
            Label.pairwise(c1, ben.id, r1, "A"),  # the two people agree on c1
            Label.pairwise(c1, sim.id, r1, "tie", source="simulated"),
            Label(c2, ann.id, ((r2[0],), (r2[1], r2[2]))),  # 3 pairs, one tied
            Label.pairwise(c3, ann.id, r3, "B"),
            Label.pairwise(c3, ben.id, r3, "B"),  # and on c3
        ]
    )
    assert export_preferences(s, tmp_path / "prefs", "trl") == 8
    card = DatasetCard.load(tmp_path / "prefs" / "README.md")
    assert card.data.license is None and "preference" in card.data.tags
    assert card.data.size_categories == ["n<1K"]
    r = card.data.rankloop
    assert (r["labels"], r["pairs"], r["ties"]) == (6, 8, 2)
    assert r["labels_by_source"] == {"human": 5, "simulated": 1}
    assert r["pairs_by_source"] == {"human": 7, "simulated": 1}
    assert r["annotators"] == {"people": 2, "simulated": 1, "external": 0}
    assert r["agreement_alpha"] == 1.0  # both people judged c1 and c3 the same way
    assert "| pairs from simulated | 1 |" in card.text
    # the card does not get in the way of loading the export
    import datasets

    assert datasets.load_from_disk(str(tmp_path / "prefs")).num_rows == 8


def test_policy_card_names_base_license_kl_and_optimiser(tmp_path):
    out = tmp_path / "rounds" / "2" / "policy.partial"
    out.mkdir(parents=True)
    (out / "adapter_config.json").write_text("{}")
    summary = {"ppo/kl_final": 0.125, "ppo/eval_score_final": 1.5, "ppo/steps": 8.0}
    write_policy_card(
        out,
        base="smollm2-135m-instruct",
        config={"kl_coef": 0.05, "kl_estimator": "k3", "lr": 1e-4},
        summary=summary,
        trained_on={"prompts": 40, "reward": "rounds/2/reward"},
    )
    card = ModelCard.load(out / "README.md")
    assert card.data.base_model == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert card.data.license == "apache-2.0" and card.data.library_name == "peft"
    r = card.data.rankloop
    assert (r["kind"], r["round"]) == ("policy", 2)
    assert r["metrics"] == summary and r["config"]["kl_estimator"] == "k3"
    assert r["config"]["optimizer"] == "PPO"
    assert "AutoPeftModelForCausalLM" in card.text and "| `ppo/kl_final` | 0.125 |" in card.text
    # a model trained from this folder inherits its base and license through the card
    assert base_of(str(out)) == ("HuggingFaceTB/SmolLM2-135M-Instruct", "apache-2.0")


def test_base_of_without_network():
    default = ("HuggingFaceTB/SmolLM2-135M-Instruct", "apache-2.0")
    assert base_of("default") == base_of("/cache/models/smollm2-135m-instruct") == default
    assert base_of("HuggingFaceTB/SmolLM2-135M-Instruct") == default
    assert base_of("someone/some-model") == ("someone/some-model", None)
    assert base_of("/no/such/folder") == (None, None)
    assert round_of("/x/rounds/3/reward") == 3 and round_of("/x/models/reward") is None


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def test_push_refuses_offline_in_one_line(tmp_path):
    # tests/conftest.py sets HF_HUB_OFFLINE=1
    result = run("push", "reward", "me/rm", "--project", tmp_path)
    assert result.exit_code == 1
    assert result.output.strip() == (
        "Error: offline (HF_HUB_OFFLINE is set): push from a machine that reaches the Hub, "
        "without HF_HUB_OFFLINE"
    )


def test_push_refuses_when_not_logged_in(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    monkeypatch.setattr(constants, "HF_STORED_TOKENS_PATH", str(tmp_path / "no-tokens"))

    def no_network(*a, **kw):
        raise AssertionError("push reached for the network")

    monkeypatch.setattr("huggingface_hub.HfApi.create_repo", no_network)
    result = run("push", "preferences", "me/prefs", "--private", "--project", tmp_path)
    assert result.exit_code == 1
    assert result.output.strip() == (
        "Error: not logged in to the Hugging Face Hub: run `hf auth login` or set HF_TOKEN"
    )


def test_push_help_documents_what_goes_and_the_license():
    text = " ".join(run("push", "--help").output.split())
    assert "{reward|policy|preferences} REPO_ID" in text and "--private" in text
    assert "a model derived from the embedded default stays under Apache-2.0" in text


def test_a_ppo_run_leaves_a_policy_card_with_its_summary(tiny_lm_dir, tmp_path):
    import torch

    from rankloop.data.records import Prompt
    from rankloop.ppo.config import PPOConfig
    from rankloop.ppo.train import train_ppo

    cfg = PPOConfig(
        steps=2,
        batch_size=4,
        mini_batch_size=2,
        ppo_epochs=1,
        max_new_tokens=4,
        kl_coef=0.02,
        log_samples=0,
        bf16="no",
        kl_target=0.0,
        eval_every=0,
    )
    out = tmp_path / "rounds" / "1" / "policy"
    res = train_ppo(
        cfg,
        policy=str(tiny_lm_dir),
        prompts=[Prompt.from_text(t) for t in ("hello", "the sea", "good day", "yes no")],
        reward_fn=lambda prompts, responses: torch.tensor([float(len(r)) for r in responses]),
        out_dir=out,
        progress=False,
        log=None,
    )
    card = ModelCard.load(out / "README.md")
    r = card.data.rankloop
    assert (r["kind"], r["round"], card.data.library_name) == ("policy", 1, "peft")
    assert r["metrics"]["ppo/kl_final"] == res.summary["ppo/kl_final"]
    assert r["metrics"]["ppo/steps"] == 2.0 and "ppo/kl_per_step" not in r["metrics"]
    assert r["config"]["kl_coef"] == 0.02 and r["trained_on"]["prompts"] == 4
    # a local base without a card: no license claimed
    assert card.data.license is None and card.data.base_model is None


def test_push_uploads_the_hub_layout_with_the_card(tmp_path, monkeypatch, tiny_lm_dir):
    """With a token and no HF_HUB_OFFLINE, push creates the repository and uploads the folder:
    here HfApi's two calls are recorded instead of sent."""
    from huggingface_hub import HfApi, constants

    run("init", tmp_path / "p", "--policy", tiny_lm_dir)
    from rankloop.app.project import Project

    p = Project.find(tmp_path / "p")
    ann, _ = p.store.add_annotator("ann")
    c = p.store.add_comparison_texts("Say hi", ["Hi!", "Hello."])
    p.store.add_label(Label.pairwise(c, ann.id, p.store.comparison(c).response_ids, "A"))
    p.close()
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_TOKEN", "hf_test_token")
    calls = []

    def create_repo(self, repo_id, **kw):
        calls.append(("create", repo_id, kw["repo_type"], kw["private"]))

    def upload_folder(self, *, folder_path, repo_id, repo_type, commit_message):
        files = sorted(str(f.relative_to(folder_path)) for f in Path(folder_path).rglob("*"))
        card = DatasetCard.load(Path(folder_path) / "README.md")
        calls.append(("upload", repo_id, repo_type, files, card.data.rankloop["pairs"]))

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    result = run("push", "preferences", "me/prefs", "--private", "--project", tmp_path / "p")
    assert result.exit_code == 0, result.output
    assert calls == [
        ("create", "me/prefs", "dataset", True),
        (
            "upload",
            "me/prefs",
            "dataset",
            ["README.md", "data", "data/train-00000-of-00001.parquet"],
            1,
        ),
    ]
    assert "https://huggingface.co/datasets/me/prefs" in result.output
    missing = run("push", "reward", "me/rm", "--project", tmp_path / "p")
    assert missing.exit_code == 1
    assert "no round has a reward model yet: run `rankloop train-reward` first" in missing.output


def test_a_dpo_run_leaves_a_policy_card_naming_dpo(tiny_lm_dir, tmp_path):
    from rankloop.ppo.config import DPOConfig
    from rankloop.ppo.dpo import train_dpo

    s = Store.memory()
    ann, _ = s.add_annotator("ann")
    for p, good, bad in [("hello", "good day", "no"), ("the sea", "yes", "bad")]:
        c = s.add_comparison_texts(p, [good, bad])
        s.add_label(Label.pairwise(c, ann.id, s.comparison(c).response_ids, "A"))
    out = tmp_path / "rounds" / "0" / "dpo"
    metrics = train_dpo(
        DPOConfig(batch_size=2, epochs=1, bf16="no"),
        policy=str(tiny_lm_dir),
        preferences=list(s.preferences()),
        out_dir=out,
        progress=False,
        log=None,
    )
    card = ModelCard.load(out / "README.md")
    r = card.data.rankloop
    assert (r["config"]["optimizer"], r["round"], card.data.library_name) == ("DPO", 0, "peft")
    assert r["metrics"]["dpo/accuracy"] == metrics["dpo/accuracy"]
    assert r["trained_on"] == {"preference pairs (ties left out)": 2}
    assert "trained by rankloop with DPO" in card.text and "| `dpo/pairs` | 2 |" in card.text
