"""The Gradio 6 app: `build_app(stores_or_path, config) -> LabelingApp`.

No module-level mutable state: every session's data is in `gr.State`, every shared object in the
`Ctx` built here. The page is put together from three builders, each given the ctx: the label
tab (`label_tab.py`), the admin tab (`admin_tab.py`) and the HTTP API (`api.py`); their event
functions only read `gr.Request.username` (set by the login that `launch(auth=...)` enforces on
every route) and map the plain handlers of `handlers.py` / `admin.py` onto components.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import gradio as gr
from starlette.middleware import Middleware

from rankloop.app.config import LabelingConfig
from rankloop.data.store import Store, unknown_user_hash

from . import admin, handlers
from .admin_tab import build_admin_tab
from .api import build_api
from .events import guarded
from .guard import Guard, authenticator
from .handlers import Ctx
from .label_tab import CSS, HEAD, build_label_tab
from .store_pool import StorePool

AUTH_MESSAGE = "Log in with the name and secret from `rankloop annotator add`."
MAX_UPLOAD = "100mb"  # an admin's prompt file (about 100k prompts); nobody else uploads


@dataclass
class LabelingApp:
    """The page and what it holds: serve it with `launch()`, stop it with `close()`."""

    blocks: gr.Blocks
    ctx: Ctx
    export_dir: tempfile.TemporaryDirectory = field(repr=False)

    def launch(self, *, host: str = "127.0.0.1", port: int = 7860, block: bool = True) -> str:
        """Serve the page behind the login; returns its URL. With `block=False` the server
        runs in a background thread (tests, benchmarks) until `close()`."""
        unknown_user_hash()  # made now, so the first login of an unknown name costs no more
        _, url, _ = self.blocks.launch(
            server_name=host,
            server_port=port,
            auth=authenticator(self.ctx),
            auth_message=AUTH_MESSAGE,
            show_error=True,
            quiet=True,
            max_threads=max(40, 2 * self.ctx.config.concurrency),
            footer_links=[],
            max_file_size=MAX_UPLOAD,
            prevent_thread_lock=True,
            head=HEAD,
            css=CSS,
            app_kwargs={"middleware": [Middleware(Guard, ctx=self.ctx)]},
        )
        self.ctx.sessions.attach(self.blocks.server_app.tokens)
        if block:
            self.blocks.block_thread()
        return url

    def close(self) -> None:
        """Stop the server (if running), close the database connections, remove the exports."""
        self.blocks.close()
        self.ctx.stores.close()
        self.export_dir.cleanup()


def _as_stores(source: StorePool | Store | str | Path) -> StorePool:
    """A database file gets one connection behind a lock: on bench/labeling.py it matches a
    connection per thread on p95 without the seconds-long tails of writers waiting in SQLite's
    sleeping busy handler (docs/benchmarks.md)."""
    if isinstance(source, StorePool):
        return source
    if isinstance(source, Store):
        return StorePool.shared(source)
    return StorePool.shared(Store.open(source), owned=True)


def build_app(
    source: StorePool | Store | str | Path,
    config: LabelingConfig | None = None,
    *,
    guidelines_path: Path | None = None,
    margins: tuple[float, float] | None = None,
    ctx: Ctx | None = None,
) -> LabelingApp:
    """The labeling app over a database file, one `Store` (both: one connection shared behind a
    lock), or a `StorePool` (e.g. `StorePool.per_thread(path)`: a connection per worker thread).
    `margins` = the project's ([reward] margin_slightly, margin_much), for the admin's export."""
    ctx = ctx or Ctx(
        stores=_as_stores(source),
        config=config or LabelingConfig(),
        guidelines_path=guidelines_path,
        **({} if margins is None else {"margins": margins}),
    )
    export_dir = tempfile.TemporaryDirectory(prefix="rankloop-export-")
    # Gradio copies files it serves (uploads, exports) into its cache: delete_cache removes
    # this app's copies after an hour and when the server stops.
    with gr.Blocks(title="rankloop labeling", delete_cache=(600, 3600)) as blocks:
        with gr.Row():
            who = gr.Markdown("")
            gr.Button("Log out", link="/logout", size="sm", scale=0)
        with gr.Tabs():
            with gr.Tab("Label", id="label"):
                label = build_label_tab(ctx)
            with gr.Tab("Admin", id="admin", visible=False) as admin_tab:
                build_admin_tab(ctx, admin_tab, Path(export_dir.name))

        def on_load(request: gr.Request):
            page = guarded(lambda: handlers.load(ctx, request.username))
            return [
                *label.show(page),
                f"Logged in as **{request.username}**",
                handlers.guidelines_html(ctx),
                gr.update(visible=admin.is_admin(ctx, request.username)),
            ]

        blocks.load(
            on_load,
            None,
            [*label.outputs, who, label.guidelines, admin_tab],
            api_visibility="private",
        )
        build_api(ctx)

    blocks.queue(default_concurrency_limit=ctx.config.concurrency)
    return LabelingApp(blocks=blocks, ctx=ctx, export_dir=export_dir)
