"""The service's server: uvicorn with a deadline for request headers, a connection limit
and the two-signal shutdown; :func:`serve` is ``oneclass serve``.
"""

import asyncio
import json
import logging
import signal
from pathlib import Path

from ..errors import OneclassError
from .app import DEFAULT_TIMEOUT, create_app
from .guards import API_KEY_HEADER, log_access, serve_hosts

log = logging.getLogger("oneclass.serve")
#: Connections open at once; one more gets 503.
DEFAULT_MAX_CONNECTIONS = 64
#: Seconds a shutdown (SIGTERM, Ctrl-C) waits for the requests in flight; the ones still
#: running then get 503. Under the 30 s Kubernetes gives a pod between SIGTERM and SIGKILL
#: (systemd: 90 s), so they are answered and the process ends before it is killed.
DEFAULT_SHUTDOWN_TIMEOUT = 25.0


def _protocol(timeout: float, max_connections: int | None = None, access: bool = True):
    """uvicorn's h11 protocol (a subclass: it relies on uvicorn's ``H11Protocol`` internals,
    tested with uvicorn 0.54) with a deadline for the request line and headers.

    uvicorn times out idle kept-alive connections only after a response; a client that
    connects and sends nothing, or its headers a byte at a time, is otherwise held for ever.
    Here the clock starts when the connection opens and again when a new request begins, and
    stops when the headers are complete; past ``timeout`` the client gets 408 and is
    disconnected. A client that stops reading its responses is disconnected once the
    server's write buffer has been full for ``timeout``. A connection beyond
    ``max_connections`` gets 503 at once. uvicorn's plain-text 400 for unparseable requests
    becomes JSON too. With ``access``, each of these answers gets an access-log line.
    """
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    def raw_response(status: int, reason: str, message: str) -> bytes:
        body = json.dumps({"error": message}).encode()
        return (f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n"
                f"content-length: {len(body)}\r\nconnection: close\r\n\r\n").encode() + body

    class GuardedH11Protocol(H11Protocol):
        header_timer: asyncio.TimerHandle | None = None
        write_timer: asyncio.TimerHandle | None = None
        protocol_error = ""

        def _refuse(self, status: int, reason: str, message: str) -> None:
            """Answer ``status`` before any request reached the app, and close."""
            self.transport.write(raw_response(status, reason, message))
            self.transport.close()
            if access:  # no request line to show (none, or not HTTP)
                peer = self.transport.get_extra_info("peername")
                log_access("-", "-", status, 0.0, f"{peer[0]}:{peer[1]}" if peer else "-")

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            if max_connections and len(self.connections) > max_connections:
                self._refuse(503, "Service Unavailable",
                             f"the server has {max_connections} connections open; try again "
                             "later")
                return
            self._arm()
            next_event = self.conn.next_event

            def remember_error():  # uvicorn drops h11's reason; keep it for the answer
                try:
                    return next_event()
                except h11.RemoteProtocolError as exc:
                    self.protocol_error = str(exc)
                    raise

            self.conn.next_event = remember_error

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
                self._arm()  # a request has begun (or the connection is new): headers pending
            else:
                self._disarm()

        def connection_lost(self, exc) -> None:
            self._disarm()
            if self.write_timer is not None:
                self.write_timer.cancel()
            super().connection_lost(exc)

        def pause_writing(self) -> None:
            # The client does not read what it asked for (pipelined requests it never reads,
            # say): give up on it after ``timeout`` instead of holding the response for ever.
            super().pause_writing()
            if self.write_timer is None:
                self.write_timer = self.loop.call_later(timeout, self._abort_stalled)

        def _abort_stalled(self) -> None:
            """Drop a client that has not read for ``timeout``, with a reset: a plain close
            would queue a FIN behind the unsent responses, and the kernel would keep them
            (up to its send buffer, megabytes) for as long as the client does not read."""
            import socket
            import struct

            sock = self.transport.get_extra_info("socket")
            if sock is not None:
                try:  # linger 0: close discards what is unsent and resets the connection
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                except OSError:
                    pass
            self.transport.abort()

        def resume_writing(self) -> None:
            super().resume_writing()
            if self.write_timer is not None:
                self.write_timer.cancel()
                self.write_timer = None

        def on_response_complete(self) -> None:
            self._disarm()  # between requests uvicorn's keep-alive timeout applies
            super().on_response_complete()

        def _arm(self) -> None:
            if self.header_timer is None:
                self.header_timer = self.loop.call_later(timeout, self._headers_too_slow)

        def _disarm(self) -> None:
            if self.header_timer is not None:
                self.header_timer.cancel()
                self.header_timer = None

        def _headers_too_slow(self) -> None:
            self.header_timer = None
            if self.transport.is_closing() or self.conn.their_state is not h11.IDLE:
                return
            self._refuse(408, "Request Timeout",
                         f"the request headers did not arrive within {timeout:g} s")

        def send_400_response(self, msg: str) -> None:
            self._disarm()
            why = (self.protocol_error or msg.rstrip("."))[:200]
            self._refuse(400, "Bad Request", f"not a valid HTTP request ({why})")

    return GuardedH11Protocol


def make_server(app, *, host: str = "127.0.0.1", port: int = 8000,
                timeout: float = DEFAULT_TIMEOUT,
                max_connections: int | None = DEFAULT_MAX_CONNECTIONS,
                shutdown_timeout: float = DEFAULT_SHUTDOWN_TIMEOUT, access_log: bool = True):
    """A ``uvicorn.Server`` for ``app`` with the deadlines and the connection limit of
    ``oneclass serve`` (``server.run()`` serves until ``should_exit``).

    Stopping: the first SIGTERM or SIGINT logs one line and stops taking connections; the
    requests in flight get ``shutdown_timeout`` seconds to finish, then 503. A second signal
    ends the process at once, by that signal (see :class:`_Server`).
    """
    import uvicorn

    # access_log=False: uvicorn's own access lines stay off whatever the logging setup
    # (ours come from AccessLog and the protocol)
    config = uvicorn.Config(app, host=host, port=port, log_level="warning",
                            http=_protocol(timeout, max_connections, access_log),
                            timeout_keep_alive=min(5, timeout), access_log=False,
                            timeout_graceful_shutdown=shutdown_timeout)
    logging.getLogger("uvicorn.error").addFilter(_CUT_OFF)  # once: a filter is added once
    server = _server_class()(config)
    server.app_state = getattr(app, "state", None)
    return server


class _CutOff(logging.Filter):
    """uvicorn's ERROR line of a shutdown timeout ("Cancel 3 running task(s), ...") as one
    of ours that says what the clients got."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str) and record.msg.startswith("Cancel %s running task"):
            log.warning("shutdown timeout reached: %s request(s) still running get 503",
                        *record.args)
            return False
        return True


_CUT_OFF = _CutOff()


def _server_class():
    import uvicorn

    class _Server(uvicorn.Server):
        """uvicorn's server with oneclass's stop: a log line, and a second signal that ends
        the process at once.

        uvicorn forces its shutdown on a second SIGINT only, and then cancels the requests
        still running, which answer text/plain 500s and log their tracebacks; a second
        SIGTERM does nothing. Here a second SIGINT or SIGTERM logs one line and kills the
        process with that signal (default action): clients see their connection closed.
        """

        app_state = None  # the app's state, told when the server stops

        async def shutdown(self, sockets=None) -> None:
            if self.app_state is not None:
                self.app_state.shutting_down = True
            await super().shutdown(sockets)
            # uvicorn cancels the requests still running at the timeout without waiting for
            # them: give them a moment to answer their 503 (an upload still arriving too),
            # or the process ends first and they get a closed connection
            cut = [t for t in self.server_state.tasks if not t.done()]
            if cut:
                await asyncio.wait(cut, timeout=2.0)

        def handle_exit(self, sig: int, frame) -> None:
            name = signal.Signals(sig).name
            n = len(self.server_state.tasks)
            if self.should_exit:
                log.warning("%s again: stopping now; %d request(s) in flight get no answer",
                            name, n)
                for handler in logging.getLogger().handlers + log.handlers:
                    handler.flush()
                signal.signal(sig, signal.SIG_DFL)
                signal.raise_signal(sig)
                return
            if n:
                log.warning("%s: shutting down; waiting up to %g s for %d request(s) in "
                            "flight (another %s stops at once)", name,
                            self.config.timeout_graceful_shutdown, n,
                            "Ctrl-C" if sig == signal.SIGINT else "signal")
            else:
                log.warning("%s: shutting down (no requests in flight)", name)
            super().handle_exit(sig, frame)

    return _Server


def serve(run: str | Path, *, host: str = "127.0.0.1", port: int = 8000,
          api_key: str | None = None, max_upload_mb: float = 20.0, device: str = "auto",
          timeout: float = DEFAULT_TIMEOUT,
          max_connections: int | None = DEFAULT_MAX_CONNECTIONS,
          shutdown_timeout: float = DEFAULT_SHUTDOWN_TIMEOUT, access_log: bool = True,
          allowed_hosts=()) -> None:
    """Run the service until interrupted (SIGINT, SIGTERM; see :func:`make_server`).
    ``allowed_hosts``: more ``Host`` names to answer on a loopback address (see
    :func:`serve_hosts`)."""
    app = create_app(run, api_key=api_key, max_upload_mb=max_upload_mb, device=device,
                     timeout=timeout, access_log=access_log,
                     allowed_hosts=serve_hosts(host, tuple(allowed_hosts or ())))
    sock = _listen(host, port)  # before saying "serving": a port in use is our error
    port = sock.getsockname()[1]  # port 0: the one the system chose
    log.info("serving %s (%s) on http://%s:%d; %s", run, app.state.scorer.det.name, host, port,
             f"requests need the {API_KEY_HEADER} header (all but /health and /)"
             if api_key is not None else "no API key: open to anyone who can connect")
    make_server(app, host=host, port=port, timeout=timeout, max_connections=max_connections,
                shutdown_timeout=shutdown_timeout, access_log=access_log).run(sockets=[sock])


def _listen(host: str, port: int):
    """A socket bound to ``host:port``, or a OneclassError saying why not (in use, no such
    address); uvicorn's own bind logs and exits with status 3."""
    import socket

    sock = None
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        family, kind, proto, _, addr = infos[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(addr)
    except OSError as exc:
        if sock is not None:
            sock.close()
        raise OneclassError(f"cannot serve on {host}:{port}: {exc.strerror or exc}") from None
    sock.set_inheritable(True)
    return sock
