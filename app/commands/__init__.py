"""The commands of the `rankloop` CLI, one module per stage; `rankloop.app.cli` registers each
explicitly (a new command is added to its `COMMANDS`)."""
