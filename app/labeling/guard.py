"""The app's front door: the login check, login throttling, and the routes only admins may use.

`Guard` is an ASGI middleware in front of Gradio's server (`LabelingApp.launch` installs it):

- **Logins** (`POST /login`): after `ACCOUNT_THROTTLE.free` failed logins in a row for one name
  (`ADDRESS_THROTTLE.free` from one address), each further attempt must wait twice as long as
  the one before (1 s, 2 s, 4 s ... up to 5 minutes) and is answered 429 with the wait until
  then, without checking the secret. A success clears the name's and the address's count.
  `authenticator` checks the secret: the account is read in one quick query, and the hash
  (PBKDF2, ~0.1-0.2 s of CPU) runs afterwards in a worker thread, one at a time, neither holding
  the store's lock nor blocking the event loop; a name without an account costs the same hash.
- **Uploads** (`/gradio_api/upload`) and **files** (`/gradio_api/file=...`: uploaded prompts,
  exports) are for admins only: the annotator's page uses neither, and an export holds every
  label. Uploads are also capped in size (`launch(max_file_size=...)`).
- **Direct API calls** (`/gradio_api/run/NAME`) run the endpoint the URL names: a body naming an
  event by `fn_index` (which Gradio would run instead, private events included) is refused, and
  a body over `MAX_BODY` is refused before it is read whole.
- **Refusals** of the label API (a bad field, no access) answer 400 / 403 instead of Gradio's
  500 (`refuse` marks the request; the handler's message is the body).
"""

from __future__ import annotations

import contextvars
import json
import math
from dataclasses import dataclass, field
from urllib.parse import parse_qs

import anyio
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse

from rankloop.data.store import check_secret, unknown_user_hash

from .handlers import Ctx

MAX_BODY = 1 << 20  # bytes of a direct API call's body: a label with its longest rationale fits
API = "/gradio_api"
# The inputs a direct call must send, per endpoint (the rest have defaults): fewer would reach
# Gradio's input count check, which answers 500.
REQUIRED_INPUTS = {"label": ("comparison_id", "request_id"), "next_task": ()}


@dataclass
class Throttle:
    """Failed logins per key (a name, or an address): after `free` failures in a row, each
    attempt must wait `base * 2**(extra failures)` seconds (at most `max_wait`) after the last
    failure. Failures older than `forget_after` seconds are forgotten."""

    free: int
    max_wait: float = 300.0
    base: float = 1.0
    forget_after: float = 900.0
    _failures: dict[str, tuple[int, float]] = field(default_factory=dict)

    def wait(self, key: str, now: float) -> float:
        """Seconds until `key` may try again (0: now)."""
        n, last = self._failures.get(key, (0, -math.inf))
        if n < self.free or now - last > self.forget_after:
            return 0.0
        return max(0.0, last + min(self.max_wait, self.base * 2 ** (n - self.free)) - now)

    def failed(self, key: str, now: float) -> None:
        n, last = self._failures.get(key, (0, -math.inf))
        self._failures[key] = (1 if now - last > self.forget_after else n + 1, now)
        if len(self._failures) > 100_000:  # a flood of names: keep the most recent half
            for k, _ in sorted(self._failures.items(), key=lambda kv: kv[1][1])[:50_000]:
                self._failures.pop(k, None)

    def succeeded(self, key: str) -> None:
        self._failures.pop(key, None)


ACCOUNT_THROTTLE = {"free": 5}  # a person mistyping; a guesser gets ~12 tries an hour
ADDRESS_THROTTLE = {"free": 20}  # one address trying many names (or a team behind one proxy)

# Per request: its path and the status a refusal asks for (set by `refuse`).
_REQUEST: contextvars.ContextVar[dict] = contextvars.ContextVar("rankloop_request")


def refuse(status: int) -> None:
    """Ask the Guard to answer this direct API call with `status` (a handler's refusal, raised
    as gr.Error right after: Gradio would answer 500). A queued event runs in the queue's own
    context, not its request's: nothing to rewrite there."""
    info = _REQUEST.get(None)
    if info is not None and info["path"].startswith(f"{API}/run/"):
        info["status"] = status


def authenticator(ctx: Ctx):
    """`launch(auth=...)`: a name and secret checked against the store's PBKDF2 hashes.

    Async, so Gradio awaits it instead of running the hash on its event loop; the hash runs in
    a worker thread, one at a time (a burst of logins takes one core, not both), after the
    account was read."""
    hashing = anyio.CapacityLimiter(1)

    def verify(name: str, secret: str) -> bool:
        with ctx.stores() as store:  # a quick read; the hash is checked without the store
            got = store.credentials(name)
        return check_secret(secret, got[1] if got else unknown_user_hash()) and got is not None

    async def check(name: str, secret: str) -> bool:
        return await anyio.to_thread.run_sync(verify, name, secret, limiter=hashing)

    return check


class Guard:
    """ASGI middleware in front of Gradio's app (see the module docstring)."""

    def __init__(self, app, ctx: Ctx):
        self.app = app
        self.ctx = ctx
        self.clock = ctx.clock
        self.accounts = Throttle(**ACCOUNT_THROTTLE)
        self.addresses = Throttle(**ADDRESS_THROTTLE)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path, method = scope["path"], scope["method"]
        address = (scope.get("client") or ("?",))[0]
        info = {"path": path, "status": None}
        token = _REQUEST.set(info)
        try:
            if method == "POST" and path.rstrip("/") == "/login":
                return await self._login(scope, receive, send, address)
            if path.startswith((f"{API}/upload", f"{API}/file=")):
                if not await self._is_admin(scope):
                    return await PlainTextResponse(
                        "only an admin may upload or download files", 403
                    )(scope, receive, send)
            elif method == "POST" and path.startswith(f"{API}/run/"):
                body = await _read_body(receive, MAX_BODY)
                if body is None:
                    return await PlainTextResponse(
                        f"the request body is over {MAX_BODY:,} bytes", 413
                    )(scope, receive, send)
                if _names_an_event(body):
                    return await PlainTextResponse(
                        f"{path} runs the endpoint its URL names; leave fn_index out", 400
                    )(scope, receive, send)
                missing = _missing_inputs(path, body)
                if missing:
                    return await JSONResponse({"error": missing}, 400)(scope, receive, send)
                receive = _replay(body, receive)
            return await self.app(scope, receive, _with_status(send, info))
        finally:
            _REQUEST.reset(token)

    async def _login(self, scope, receive, send, address: str):
        body = await _read_body(receive, 64 << 10) or b""
        form = parse_qs(body.decode("latin-1"))
        name = (form.get("username") or [""])[0].strip()
        now = self.clock()
        wait = max(self.accounts.wait(name, now), self.addresses.wait(address, now))
        if wait > 0:
            return await JSONResponse(
                {"detail": f"Too many failed logins: try again in {math.ceil(wait)} s."},
                429,
                headers={"Retry-After": str(math.ceil(wait))},
            )(scope, _replay(body, receive), send)
        status = {}

        async def watch(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        await self.app(scope, _replay(body, receive), watch)
        now = self.clock()
        if status.get("code") == 200:
            self.accounts.succeeded(name)
            self.addresses.succeeded(address)
        else:
            self.accounts.failed(name, now)
            self.addresses.failed(address, now)

    async def _is_admin(self, scope) -> bool:
        from .admin import is_admin

        app = scope.get("app")
        cookies = Request(scope).cookies
        cookie_id = getattr(app, "cookie_id", "")
        token = cookies.get(f"access-token-{cookie_id}") or cookies.get(
            f"access-token-unsecure-{cookie_id}"
        )
        name = getattr(app, "tokens", {}).get(token)
        return bool(name) and await anyio.to_thread.run_sync(is_admin, self.ctx, name)


async def _read_body(receive, limit: int) -> bytes | None:
    """The request's body, or None once it passes `limit` bytes (the rest is not read)."""
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
        if not message.get("more_body"):
            break
    return b"".join(chunks)


def _replay(body: bytes, receive):
    """A `receive` that gives the already-read body once, then passes on (the disconnect)."""
    sent = False

    async def receive_():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return receive_


def _names_an_event(body: bytes) -> bool:
    try:
        data = json.loads(body)
    except ValueError:
        return False  # not JSON: Gradio refuses it itself
    return isinstance(data, dict) and data.get("fn_index") is not None


def _missing_inputs(path: str, body: bytes) -> str | None:
    """The refusal of a direct call whose `data` lacks a required input (None when it has them,
    or when it is no JSON object: Gradio answers that itself)."""
    name = path[len(f"{API}/run/") :].strip("/")
    required = REQUIRED_INPUTS.get(name)
    try:
        data = json.loads(body)
    except ValueError:
        return None
    if required is None or not isinstance(data, dict):
        return None
    given = data.get("data", [])
    if not isinstance(given, list):
        return f"data must be a list of the inputs of {name}: {', '.join(required) or 'none'}"
    if len(given) < len(required):
        return (
            f"{name} needs {', '.join(required)} first in data; got {len(given)} of them "
            f"(data: [{', '.join(required)}, ...])"
        )
    return None


def _with_status(send, info: dict):
    """`send` with the response status replaced by the one a refusal asked for."""

    async def send_(message):
        if message["type"] == "http.response.start" and info["status"] is not None:
            message = {**message, "status": info["status"]}
        await send(message)

    return send_
