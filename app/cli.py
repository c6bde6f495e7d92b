"""The `rankloop` command line.

Every command takes `--project DIR`; without it, the project is the current directory or its
nearest parent holding `rankloop.toml`. Errors a user can cause end in one line naming what was
wrong and what to do (exit status 1), never a traceback. The commands live in
`rankloop.app.commands`, one module per stage, and are registered here, explicitly.
"""

from __future__ import annotations

import sys

import click

from .commands import archive, interop, labeling, measure, ppo, project, reward, rounds


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="rankloop")
def cli():
    """rankloop: rank model responses in the browser, train a reward model on the rankings,
    optimise the policy with PPO, and repeat.

    \b
    A first round on the embedded default model (no network needed):
      rankloop init myproject && cd myproject
      rankloop import --bundled          # 84 bundled prompts
      rankloop generate --n 2            # 2 candidate responses per prompt
      rankloop status
    """
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # rankloop shows its own progress bars


COMMANDS = (
    project.init,
    project.import_,
    project.generate,
    project.export,
    interop.push_cmd,
    project.status,
    labeling.annotator,
    labeling.serve,
    reward.train_reward_cmd,
    reward.score_cmd,
    ppo.ppo_cmd,
    ppo.rloo_cmd,
    ppo.bon_cmd,
    ppo.odpo_cmd,
    ppo.train_dpo_cmd,
    rounds.round_cmd,
    rounds.simulate_cmd,
    rounds.demo_cmd,
    measure.leaderboard_cmd,
    measure.report_cmd,
    archive.backup,
    archive.restore,
    archive.export_all,
)
for command in COMMANDS:
    cli.add_command(command)


def main(argv: list[str] | None = None) -> int:
    return cli.main(args=argv, prog_name="rankloop", standalone_mode=True)


if __name__ == "__main__":
    sys.exit(main())
