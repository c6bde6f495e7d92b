"""Command modules of the `rankloop` CLI, one per stage.

Each module here defines its commands with `@cli.command()` on the group from `rankloop.app.cli`;
`cli.py` imports every module of this package, so adding a stage's commands touches no other file.
"""
