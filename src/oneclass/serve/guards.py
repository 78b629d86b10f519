"""The service's request guards (ASGI middleware, outermost first in :func:`create_app`):
the body size and time limits, the access log, the API key, the Host check and the safety
headers.
"""

import asyncio
import hmac
import logging
import time
from typing import Any

#: One line per request at INFO (``oneclass serve --no-access-log`` leaves it out).
access_log = logging.getLogger("oneclass.serve.access")

API_KEY_HEADER = "X-API-Key"


#: The 503 of a request the server stopped waiting for when it shut down.
SHUTDOWN_MESSAGE = ("the server is shutting down and did not finish this request in time; "
                    "send it again")


class RequestBodyError(Exception):
    """The request body came too slowly (408) or is too large (413)."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


def _json_error(status: int, message: str, close: bool = False):
    from fastapi.responses import JSONResponse

    return JSONResponse({"error": message}, status_code=status,
                        headers={"Connection": "close"} if close else None)


class BodyGuard:
    """ASGI middleware: a deadline for the whole request body and a cap on its size.

    The body is pulled by whoever reads it (the multipart parser of ``/predict``); each pull
    waits at most until ``timeout`` seconds after the request started, and the bytes are
    counted as they come, so neither a trickle nor an endless chunked upload can hold the
    request or fill memory or disk. Raises :class:`RequestBodyError` inside the route, which
    the app turns into a JSON 408 / 413. A response that starts before the body was read to
    its end gets ``Connection: close``.
    """

    def __init__(self, app, timeout: float, max_body: int):
        self.app, self.timeout, self.max_body = app, float(timeout), int(max_body)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        headers = dict(scope["headers"])
        has_body = (headers.get(b"content-length", b"0") != b"0"
                    or b"transfer-encoding" in headers)
        state = {"read": 0, "done": not has_body}

        async def guarded_receive():
            if state["done"]:
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), max(deadline - loop.time(), 0.001))
            except asyncio.TimeoutError:
                raise RequestBodyError(
                    408, f"the request body did not arrive within {self.timeout:g} s "
                         f"(read {state['read']} bytes)") from None
            if message["type"] == "http.request":
                state["read"] += len(message.get("body", b""))
                if state["read"] > self.max_body:
                    state["done"] = True
                    raise RequestBodyError(413, f"request body is over the limit of "
                                                f"{self.max_body} bytes")
                state["done"] = not message.get("more_body", False)
            else:  # http.disconnect
                state["done"] = True
            return message

        async def closing_send(message):
            if message["type"] == "http.response.start" and not state["done"]:
                given = list(message.get("headers", []))
                if not any(k.lower() == b"connection" for k, _ in given):
                    message = {**message, "headers": [*given, (b"connection", b"close")]}
            await send(message)

        await self.app(scope, guarded_receive, closing_send)


def _client(scope) -> str:
    client = scope.get("client")
    return f"{client[0]}:{client[1]}" if client else "-"


def _printable(raw: bytes, limit: int = 200) -> str:
    """A request path for the log: control and non-ASCII bytes escaped (no forged lines)."""
    text = "".join(chr(b) if 32 < b < 127 else f"\\x{b:02x}" for b in raw[:limit])
    return text + ("..." if len(raw) > limit else "")


def log_access(method: str, path: str, status: int | str, seconds: float, client: str) -> None:
    """The access-log line of one request: never its headers (the API key) or body."""
    access_log.info("%s %s %s %.0f ms %s", method, path, status, seconds * 1000, client)


class AccessLog:
    """ASGI middleware (outermost): one access-log line per request, and a JSON 503 for a
    request the server stopped waiting for when it shut down.

    A request still running when the shutdown timeout ends is cancelled by uvicorn; without
    this, uvicorn logs the CancelledError's traceback and answers a text/plain 500.
    """

    def __init__(self, app, enabled: bool = True, on_cancel=None):
        self.app, self.enabled, self.on_cancel = app, enabled, on_cancel

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        state: dict[str, Any] = {"status": None}

        async def recording_send(message):
            if message["type"] == "http.response.start":
                state["status"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, recording_send)
        except asyncio.CancelledError:
            if self.on_cancel is not None:
                self.on_cancel()
            if state["status"] is not None:
                raise  # an answer is under way: the connection is closed as it is
            state["status"] = 503
            await _json_error(503, SHUTDOWN_MESSAGE, close=True)(scope, receive, send)
        finally:
            if self.enabled:
                log_access(scope["method"], _printable(scope.get("raw_path") or
                                                       scope["path"].encode()),
                           state["status"] or "-", time.perf_counter() - t0, _client(scope))


class KeyGuard:
    """ASGI middleware: every path but ``/health`` and ``/`` needs the header ``X-API-Key``.

    Checked before routing, so unknown paths are refused alike, and before the body is read.
    The comparison takes the same time wherever the given key differs (``hmac``).
    """

    OPEN = ("/health", "/")

    def __init__(self, app, api_key: str):
        self.app, self.key = app, api_key.encode()

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["path"] not in self.OPEN:
            name = API_KEY_HEADER.lower().encode()
            given = next((v for k, v in scope["headers"] if k.lower() == name), b"")
            if not hmac.compare_digest(given, self.key):
                response = _json_error(401, f"missing or wrong API key (header {API_KEY_HEADER})")
                # a 401 names its scheme (RFC 9110); ours is the key in that header
                response.headers["WWW-Authenticate"] = f'ApiKey header="{API_KEY_HEADER}"'
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


#: Host names a service bound to a loopback address answers to (any port).
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")


def is_loopback(host: str) -> bool:
    """Whether the bind address ``host`` is reachable from this machine only."""
    import ipaddress

    if host.lower() in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _host_name(raw: bytes) -> str:
    """The host of a ``Host`` header, without its port or a final dot: ``[::1]:8000`` ->
    ``::1``, ``LocalHost.:80`` -> ``localhost``."""
    text = raw.decode("latin-1").strip().lower()
    if text.startswith("["):
        text = text[1:text.find("]")] if "]" in text else text
    elif text.count(":") == 1:
        text = text.rsplit(":", 1)[0]
    return text.rstrip(".") if text not in ("", ".") else text


class HostGuard:
    """ASGI middleware: requests whose ``Host`` header names another host get 400.

    A service on a loopback address is reachable from this machine's browser: a web page
    whose domain is rebound to 127.0.0.1 (DNS rebinding) could otherwise read ``/model`` and
    send images to ``/predict`` from the user's browser; such requests carry the page's
    domain as their host. Loopback IP addresses (``127.0.0.2``, ``0:0:0:0:0:0:0:1``) and a
    request without a ``Host`` (HTTP/1.0, never a browser) pass. Checked before anything
    else, the API key too.
    """

    def __init__(self, app, hosts):
        self.app, self.hosts = app, {_host_name(h.encode("latin-1")) for h in hosts}

    def allows(self, given: bytes | None) -> bool:
        if given is None:
            return True
        name = _host_name(given)
        return name in self.hosts or is_loopback(name)

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            given = next((v for k, v in scope["headers"] if k.lower() == b"host"), None)
            if not self.allows(given):
                response = _json_error(400, "invalid Host header: this service answers to "
                                            f"{', '.join(sorted(self.hosts))} only", close=True)
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


class SafetyHeaders:
    """ASGI middleware: every response says not to sniff its type and not to be framed by
    another site's page (the upload page's buttons cannot be overlaid: clickjacking)."""

    HEADERS = [(b"x-content-type-options", b"nosniff"), (b"x-frame-options", b"DENY"),
               (b"content-security-policy", b"frame-ancestors 'none'")]

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def with_headers(message):
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *self.HEADERS]}
            await send(message)

        await self.app(scope, receive, with_headers)


def serve_hosts(host: str, extra=()) -> tuple[str, ...] | None:
    """The ``Host`` names a service bound to ``host`` answers to (None: any): on a loopback
    address, the loopback names, ``host`` itself and ``extra`` (``"*"`` in it: any)."""
    if not is_loopback(host) or "*" in extra:
        return None
    return (*LOOPBACK_HOSTS, host, *extra)
