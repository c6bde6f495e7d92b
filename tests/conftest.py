from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

# Never reach for the network in tests; the cache of converted models lives in the test run
# unless the caller shares one (RANKLOOP_CACHE) so the slow tests convert the default once.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# trackio reads its folder once, when first imported: one folder for the whole session (tests
# tell their runs apart by project name); W&B never goes online from a test.
os.environ.setdefault("TRACKIO_DIR", tempfile.mkdtemp(prefix="rankloop-trackio-"))
os.environ["WANDB_MODE"] = "offline"
os.environ.setdefault("WANDB_SILENT", "true")

from rankloop.data.store import Store

from tiny import save_tiny_lm


@pytest.fixture
def fresh_store():
    """An empty in-memory store with the schema applied."""
    store = Store.memory()
    yield store
    store.close()


@pytest.fixture(scope="session")
def tiny_lm_dir(tmp_path_factory) -> Path:
    """A tiny random-weight causal LM checkpoint with a ChatML tokenizer."""
    return save_tiny_lm(tmp_path_factory.mktemp("tiny-lm"))
