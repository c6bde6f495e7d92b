"""Seeds: the one scheme every stage uses.

- `seed_everything(seed)` seeds Python's `random`, NumPy and torch on every device (accelerate's
  `set_seed`), where a run starts and where a batch of sampling starts;
- `derive_seed(seed, *purpose)` gives each purpose its own seed from the run's seed and what it
  is for (a step, a process, "sample", a batch's contents), so a resumed or re-ordered run draws
  the same numbers as an uninterrupted one, and two purposes never share a stream.
"""

from __future__ import annotations

from rankloop.data.records import content_hash


def derive_seed(seed: int, *purpose) -> int:
    """A 32-bit seed that depends only on `seed` and `purpose` (JSON-able values)."""
    return int(content_hash(seed, *purpose)[:8], 16)


def seed_everything(seed: int) -> None:
    """Seed Python's `random`, NumPy and torch (CPU and every GPU) with `seed`."""
    from accelerate.utils import set_seed

    set_seed(seed)
