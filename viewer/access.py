"""Who may use the viewer, and what a client may change.

- `Access.refusal(request)`: every HTTP request and websocket handshake is checked before viser sees
  it. Bound to loopback, the `Host` must be a loopback name (a DNS-rebinding page cannot reach the
  viewer); bound to any other interface, the path must start with `/<token>` (the URL printed at
  start); a websocket whose `Origin` is not the page's own host is refused in both cases.
- `guarded_handshakes(access)`: while it is open, the websocket server that viser starts refuses what
  `access` refuses (HTTP 403) and serves its pages under `/<token>/`. viser 1.1 takes no such hook, so
  this wraps `websockets.asyncio.server.serve` for the duration of one `ViserServer(...)` call.
- `sanitize_gui_update(handle, updates)`: a client may only set a GUI input's value, and only to a
  value of the input's own kind and range (slider and number bounds, dropdown options, text length);
  anything else is dropped. `ViewerServer` runs it before viser applies a client's update.
"""

from __future__ import annotations

import dataclasses
import hmac
import ipaddress
import math
import secrets
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any
from urllib.parse import urlsplit

import websockets.asyncio.server

MAX_TEXT = 10_000  # characters a client may put in a text input
_PATCH_LOCK = threading.Lock()


def is_loopback(host: str) -> bool:
    """Whether `host` (a name or an address, optionally with a port or in brackets) is this machine's loopback."""
    name = _hostname(host)
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def _hostname(host: str) -> str:
    """The host of a `Host` header value or an address, lower case, without port or IPv6 brackets."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1:].split("]", 1)[0]
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def new_token() -> str:
    return secrets.token_urlsafe(16)


@dataclass(frozen=True)
class Access:
    """`token`: required as the first path segment of every request (None: loopback only, checked on `Host`)."""

    token: str | None = None

    def refusal(self, path: str, headers: Any) -> str | None:
        """Why a request for `path` with `headers` is refused, or None when it is allowed."""
        host = headers.get("Host", "")
        if self.token is None and not is_loopback(host):
            return "this viewer answers only to a loopback Host (localhost, 127.0.0.1)"
        if self.token is not None and not _token_matches(path, self.token):
            return "missing or wrong token: open the URL the viewer printed at start"
        origin = headers.get("Origin")
        if headers.get("Upgrade", "").lower() == "websocket" and origin is not None and (
                urlsplit(origin).netloc.lower() != host.strip().lower()):
            return f"websocket from another origin ({origin[:100]}) refused"
        return None

    def local_path(self, path: str) -> str:
        """`path` as viser's own page server knows it (the `/<token>` prefix removed)."""
        return path if self.token is None else path[len(self.token) + 1:] or "/"


def _token_matches(path: str, token: str) -> bool:
    first = path.split("?", 1)[0].split("/")[1] if path.startswith("/") else ""
    return hmac.compare_digest(first.encode(), token.encode())


@contextmanager
def guarded_handshakes(access: Access) -> Iterator[None]:
    """Inside this block, a websockets server started (by viser) refuses what `access` refuses."""
    with _PATCH_LOCK:
        original = websockets.asyncio.server.serve

        def serve(*args, process_request=None, **kwargs):
            def guarded(connection, request):
                refusal = access.refusal(request.path, request.headers)
                if refusal is not None:
                    return connection.respond(HTTPStatus.FORBIDDEN, refusal + "\n")
                if process_request is None:
                    return None
                return process_request(connection, dataclasses.replace(request, path=access.local_path(request.path)))

            return original(*args, process_request=guarded, **kwargs)

        websockets.asyncio.server.serve = serve
        try:
            yield
        finally:
            websockets.asyncio.server.serve = original


def _clean(current: Any, value: Any, props: Any) -> tuple[bool, Any]:
    """(accepted, value): `value` made to fit the kind of `current` and the input's `props`."""
    if isinstance(current, bool):
        return isinstance(value, bool), value
    if isinstance(current, int | float):
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            return False, value
        low, high = getattr(props, "min", None), getattr(props, "max", None)
        value = value if low is None else max(low, value)
        return True, value if high is None else min(high, value)
    if isinstance(current, str):
        options = getattr(props, "options", None)
        if not isinstance(value, str) or (options is not None and value not in options):
            return False, value
        return True, value[:MAX_TEXT]
    if isinstance(current, tuple):
        if not isinstance(value, list | tuple) or len(value) != len(current):
            return False, value
        cleaned = [_clean(c, v, props) for c, v in zip(current, value, strict=True)]
        return all(ok for ok, _ in cleaned), tuple(v for _, v in cleaned)
    return False, value


def sanitize_gui_update(handle_state: Any, updates: dict[str, Any]) -> None:
    """Keep only a valid "value" in a client's `updates` of one GUI input (in place); `handle_state` is
    viser's state of that input (its current value and its props: min, max, options)."""
    value = updates.get("value")
    updates.clear()
    if value is None:
        return
    ok, value = _clean(handle_state.value, value, getattr(handle_state, "props", None))
    if ok:
        updates["value"] = value
