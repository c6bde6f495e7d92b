"""Other tools and the Hub: `import --from label-studio|argilla` (the parsing here, the
command in project.py), `export --format label-studio|argilla` (the registry in data/io.py)
and `push` (a round's reward model, policy or preference dataset to the Hugging Face Hub)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import click

from rankloop.app.project import Project
from rankloop.app.rounds import reward_model_of
from rankloop.data.cards import write_dataset_card
from rankloop.data.interop import argilla, labelstudio
from rankloop.data.interop.common import InteropError, InteropReport, write_items
from rankloop.data.io import preference_dataset

from .common import console, open_project, project_option, user_errors

#: `rankloop import --from` values besides rankloop's own rows.
TOOLS = ("label-studio", "argilla")


def import_from_tool(
    project: Project,
    tool: str,
    path: Path,
    *,
    ls_config: Path | None,
    prompt_field: str,
    responses: tuple[str, ...] | None,
    question: str | None,
    source: str | None,
) -> InteropReport:
    """Parse and check a whole export of `tool`, then store it in one transaction."""
    if not path.exists():
        raise InteropError(f"{path}: no such file or folder")
    if tool == "label-studio" and path.is_dir():  # a folder `rankloop export` wrote
        if ls_config is None and (path / labelstudio.CONFIG_FILE).exists():
            ls_config = path / labelstudio.CONFIG_FILE
        path = path / labelstudio.TASKS_FILE
        if not path.exists():
            raise InteropError(f"{path}: no such file (give the JSON export itself)")
    if tool == "label-studio":
        if ls_config is not None:
            if not ls_config.is_file():
                raise InteropError(f"{ls_config}: no such labeling configuration file")
            cfg = labelstudio.parse_config(ls_config.read_text(encoding="utf-8"), str(ls_config))
        elif responses:
            cfg = labelstudio.config_from_fields(prompt_field, responses)
        else:
            raise InteropError(
                "say where the project keeps its texts: --ls-config labeling.xml (the "
                "project's Settings > Labeling Interface > Code), or --prompt-column and "
                "--responses-column answer1,answer2 (a pairwise project) / items (a ranker's list)"
            )
        items = labelstudio.parse_export(path, cfg)
    else:
        items = argilla.parse_dataset(
            path, prompt_field=prompt_field, question=question, responses=responses
        )
    tool_name = labelstudio.TOOL if tool == "label-studio" else argilla.TOOL
    return write_items(project.store, items, source or f"{tool}:{path.name}", tool_name)


def describe(path: Path, report: InteropReport) -> str:
    return (
        f"Imported {path.name}: {report.items} tasks -> {report.prompts_added} new prompts, "
        f"{report.responses_added} responses, {report.comparisons_added} comparisons, "
        f"{report.labels_added} labels, {report.skips_added} skips by "
        f"{len(report.annotators)} annotators"
    )


# -- push -------------------------------------------------------------------------------------

PUSHABLE = ("reward", "policy", "preferences")


def hub_token() -> str:
    """The Hub token from the usual places (HF_TOKEN, `hf auth login`), or one clear refusal
    when offline or logged out: nothing is sent before both are known."""
    import huggingface_hub
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        raise click.ClickException(
            "offline (HF_HUB_OFFLINE is set): push from a machine that reaches the Hub, "
            "without HF_HUB_OFFLINE"
        )
    token = huggingface_hub.get_token()
    if not token:
        raise click.ClickException(
            "not logged in to the Hugging Face Hub: run `hf auth login` or set HF_TOKEN"
        )
    return token


@click.command("push")
@click.argument("what", type=click.Choice(PUSHABLE))
@click.argument("repo_id")
@click.option(
    "--round", "round_", type=int, default=None, help="Which round's (default: the latest)."
)
@click.option("--private", is_flag=True, help="Create the repository private.")
@project_option
@user_errors
def push_cmd(what, repo_id, round_, private, project_dir):
    """Push a round's reward model, policy adapter or the preference dataset to the Hub.

    The folder goes up with its card (README.md), which carries the base model's license:
    a model derived from the embedded default stays under Apache-2.0. The token comes from
    HF_TOKEN or `hf auth login`; offline or logged out, nothing is sent.

    \b
    Example:
      rankloop push reward my-team/assistant-rm --round 2 --private
      rankloop push preferences my-team/assistant-prefs
    """
    token = hub_token()
    project = open_project(project_dir)
    from huggingface_hub import HfApi

    with tempfile.TemporaryDirectory() as tmp:
        if what == "reward":
            folder, repo_type = reward_model_of(project, round_), "model"
        elif what == "policy":
            r = (
                round_
                if round_ is not None
                else max((x.number for x in project.store.rounds() if x.policy), default=None)
            )
            if r is None or not project.round_dir(r, "policy").is_dir():
                raise click.ClickException(
                    "no trained policy"
                    + (f" for round {r}" if r is not None else "")
                    + ": run `rankloop ppo` (or `rankloop round`) first"
                )
            folder, repo_type = project.round_dir(r, "policy"), "model"
        else:  # the Hub's dataset layout: data/*.parquet and the card
            folder, repo_type = Path(tmp) / "preferences", "dataset"
            rc = project.config.reward  # a strength's margin as the trainer reads it
            ds = preference_dataset(
                project.store, round=round_, margins=(rc.margin_slightly, rc.margin_much)
            )
            ds.to_parquet(str(folder / "data" / "train-00000-of-00001.parquet"))
            write_dataset_card(project.store, folder, round=round_)
        api = HfApi(token=token)
        try:
            api.create_repo(repo_id, repo_type=repo_type, private=private, exist_ok=True)
            api.upload_folder(
                folder_path=str(folder),
                repo_id=repo_id,
                repo_type=repo_type,
                commit_message=f"rankloop: {what}" + (f", round {round_}" if round_ else ""),
            )
        except Exception as e:  # the network and the Hub's answers: one line, no traceback
            raise click.ClickException(f"push to {repo_id} failed: {e}") from e
    console.print(
        f"Pushed {what} ({folder.name}) to https://huggingface.co/"
        + ("datasets/" if repo_type == "dataset" else "")
        + repo_id
    )
    project.close()
