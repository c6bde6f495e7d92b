"""The labeling app: annotators rank responses in the browser; every judgment lands in SQLite.

`build_app(db_path_or_store, config)` returns a `LabelingApp` (the Gradio 6 `gr.Blocks` and the
`Ctx` its handlers share); `rankloop serve` runs `app.launch()` behind a login. See
docs/labeling.md.
"""

from .guard import authenticator
from .handlers import Ctx, Page
from .store_pool import StorePool
from .ui import LabelingApp, build_app

__all__ = ["Ctx", "LabelingApp", "Page", "StorePool", "authenticator", "build_app"]
