"""Process-wide runtime helpers shared by the trainers."""

from __future__ import annotations


def new_accelerator(**kwargs):
    """An `accelerate.Accelerator` built from `kwargs`, even if this process already built one.

    Accelerate keeps its state in process-wide singletons and refuses a second Accelerator with
    other settings ("AcceleratorState has already been initialized"), which breaks a notebook or
    a test session that trains a reward model after a PPO run, or after a TRL trainer. The
    accelerator-level state is reset first; the process-level state (`PartialState`: ranks and
    the process group of an `accelerate launch`) is kept.
    """
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=False)
    GradientState._reset_state()
    return Accelerator(**kwargs)
