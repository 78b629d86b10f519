"""Probe the HTTP service with slow and hostile clients; print what each one got.

    PYTHONPATH=src python scripts/serve_probe.py [--run RUN] [--limit 20]

Serves RUN (default: a tiny FCDD trained here on synthetic textures) on a free loopback port
in this process with a 1 s deadline and a 50 kB upload limit, using whatever ``oneclass`` is
on the path: with an older version (no ``make_server``) a plain ``uvicorn.Server``, so the
same probes show the before and after of docs/reliability.md, item 4. Each probe is raw
bytes on its own connection and gives up after ``--limit`` seconds.
"""

from __future__ import annotations

import argparse
import select
import socket
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

import oneclass.serve as S
from oneclass.viz import to_png

BOUNDARY = b"XyZ"


def _train(tmp: Path) -> Path:
    from oneclass.data.synthetic import write_mvtec
    from oneclass.runs import train

    data = write_mvtec(tmp / "toy", n_train=60, n_test_good=4, n_test_defect=4, size=24, seed=3)
    train("fcdd", str(data), tmp / "run", {"epochs": 1, "batch_size": 16, "seed": 0},
          progress=False)
    return tmp / "run"


def _serve(run: Path):
    kwargs = {"timeout": 1.0} if hasattr(S, "make_server") else {}
    app = S.create_app(run, api_key="s3cret", max_upload_mb=0.05, **kwargs)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    if hasattr(S, "make_server"):
        server = S.make_server(app, port=port, timeout=1.0)
    else:
        import uvicorn

        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port,
                                               log_level="critical"))
    threading.Thread(target=server.run, daemon=True).start()
    for _ in range(200):
        if server.started:
            break
        time.sleep(0.05)
    return server, port


class Probe:
    def __init__(self, port: int, limit: float):
        self.port, self.limit = port, limit

    def connect(self, rcvbuf: int | None = None) -> socket.socket:
        s = socket.socket()
        if rcvbuf:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        s.settimeout(self.limit)
        s.connect(("127.0.0.1", self.port))
        return s

    def outcome(self, s: socket.socket, t0: float) -> str:
        """The first response line, whether it is JSON, and when the probe ended."""
        data = b""
        s.settimeout(max(0.1, self.limit - (time.monotonic() - t0)))
        try:
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
                if b"\r\n\r\n" in data:
                    s.settimeout(0.5)  # a kept-alive answer: do not wait for the close
        except TimeoutError:
            pass
        except ConnectionResetError:
            pass
        head = data.split(b"\r\n\r\n")[0]
        first = head.split(b"\r\n", 1)[0].decode(errors="replace") or "(nothing)"
        kind = " JSON" if b"application/json" in head.lower() else (" not JSON" if data else "")
        took = time.monotonic() - t0
        return f"{first}{kind} after {took:.1f} s"

    def trickle(self, s: socket.socket, data: bytes, gap: float, t0: float) -> int:
        for i in range(len(data)):
            if select.select([s], [], [], 0)[0] or time.monotonic() - t0 > self.limit:
                return i
            try:
                s.send(data[i:i + 1])
            except OSError:
                return i
            time.sleep(gap)
        return len(data)


def _post_head(length: bytes | None = None, chunked: bool = False) -> bytes:
    h = (b"POST /predict HTTP/1.1\r\nHost: t\r\nX-API-Key: s3cret\r\n"
         b"Content-Type: multipart/form-data; boundary=" + BOUNDARY + b"\r\n")
    h += b"Transfer-Encoding: chunked\r\n" if chunked else b"Content-Length: " + length + b"\r\n"
    return h + b"\r\n"


def probes(p: Probe, png: bytes) -> dict[str, str]:
    part = (b"--" + BOUNDARY + b'\r\nContent-Disposition: form-data; name="file"; '
            b'filename="a.png"\r\nContent-Type: image/png\r\n\r\n' + png + b"\r\n")
    body = part + b"--" + BOUNDARY + b"--\r\n"
    out = {}

    s = p.connect()
    t0 = time.monotonic()
    out["connects, sends nothing"] = p.outcome(s, t0)
    s.close()

    req = b"GET /health HTTP/1.1\r\nHost: t\r\nUser-Agent: " + b"s" * 100 + b"\r\n\r\n"
    s = p.connect()
    t0 = time.monotonic()
    n = p.trickle(s, req, 0.05, t0)
    out["headers a byte every 50 ms"] = f"sent {n} of {len(req)} bytes; {p.outcome(s, t0)}"
    s.close()

    s = p.connect()
    s.sendall(_post_head(str(len(body)).encode()))
    t0 = time.monotonic()
    n = p.trickle(s, body, 0.02, t0)
    out["body a byte every 20 ms"] = f"sent {n} of {len(body)} bytes; {p.outcome(s, t0)}"
    s.close()

    s = p.connect()
    t0 = time.monotonic()
    s.sendall(_post_head(str(len(body) + 1000).encode()) + body)
    out["Content-Length 1000 over the body, then waits"] = p.outcome(s, t0)
    s.close()

    s = p.connect()
    t0 = time.monotonic()
    s.sendall(_post_head(chunked=True) + b"%x\r\n" % len(part) + part + b"\r\n")
    chunk = b"\0" * 65536
    frame = b"%x\r\n" % len(chunk) + chunk + b"\r\n"
    sent = 0
    while (sent < 64 * 2**20 and not select.select([s], [], [], 0)[0]
           and time.monotonic() - t0 < p.limit):
        try:
            s.sendall(frame)
        except OSError:
            break
        sent += len(chunk)
    out["64 MB chunked upload, limit 50 kB"] = f"pushed {sent / 2**20:.1f} MB; {p.outcome(s, t0)}"
    s.close()

    s = p.connect(rcvbuf=4096)
    t0 = time.monotonic()
    s.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n" * 5000)
    err = 0
    while time.monotonic() - t0 < p.limit:
        time.sleep(0.2)
        err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            break
    state = "reset" if err else "still open"
    out["5000 pipelined GET /, never read"] = f"{state} after {time.monotonic() - t0:.1f} s"
    s.close()

    for name, raw in [
        ("request line GARBAGE", b"GARBAGE\r\n\r\n"),
        ("Content-Length: 12ab", _post_head(b"12ab") + body),
        ("multipart with two files", _post_head(str(len(part) * 2 + len(BOUNDARY) + 6).encode())
         + part + part + b"--" + BOUNDARY + b"--\r\n"),
        ("unknown path", b"GET /nothing HTTP/1.1\r\nHost: t\r\nX-API-Key: s3cret\r\n\r\n"),
    ]:
        s = p.connect()
        t0 = time.monotonic()
        s.sendall(raw)
        out[name] = p.outcome(s, t0)
        s.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", help="a run directory (default: train a tiny one)")
    ap.add_argument("--limit", type=float, default=20.0, help="seconds per probe at most")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as td:
        run = Path(args.run) if args.run else _train(Path(td))
        png = to_png(np.random.default_rng(0).integers(0, 256, (24, 24, 3), dtype=np.uint8))
        server, port = _serve(run)
        print(f"oneclass from {Path(S.__file__).parent}; "
              f"{'make_server' if hasattr(S, 'make_server') else 'plain uvicorn.Server'}")
        print("| client | outcome |\n|---|---|")
        for name, result in probes(Probe(port, args.limit), png).items():
            print(f"| {name} | {result} |")
        server.should_exit = True


if __name__ == "__main__":
    main()
