"""The labeling app: annotators rank responses in the browser; every judgment lands in SQLite.

`build_app(db_path_or_store, config)` returns the Gradio 6 `gr.Blocks`; `rankloop serve` launches
it behind a login (`authenticator`). See docs/labeling.md.
"""

from .handlers import Ctx, Page
from .store_pool import StorePool
from .ui import authenticator, build_app, launch, launch_kwargs

__all__ = ["Ctx", "Page", "StorePool", "authenticator", "build_app", "launch", "launch_kwargs"]
