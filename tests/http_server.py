"""A real HTTP server on 127.0.0.1 that plays scripted replies, for the HTTP tests.

Each path has a script: a list of replies played in order, the last one repeated.
A reply answers with a status (after an optional delay), or resets the
connection without answering. The server speaks HTTP/1.1 with keep-alive and
counts the connections it accepts, so a test can tell a leaked connection (a new
one per attempt) from one returned to the client's pool.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

__all__ = ["RESET", "Reply", "Seen", "ScriptedServer", "scripted_server"]


@dataclass(frozen=True)
class Reply:
    """One scripted answer: a status, headers and body, after ``delay`` seconds."""

    status: int = 200
    body: bytes = b"ok"
    headers: Mapping[str, str] = field(default_factory=dict)
    delay: float = 0.0
    reset: bool = False
    """Close the connection without sending anything."""


RESET = Reply(reset=True)


@dataclass(frozen=True)
class Seen:
    """A request as the server received it."""

    method: str
    path: str
    headers: Mapping[str, str]
    body: bytes


class ScriptedServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self._lock = threading.Lock()
        self._scripts: dict[str, list[Reply]] = {}
        self.seen: list[Seen] = []
        self.connections = 0

    @property
    def base_url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host!s}:{port}"

    def url(self, path: str) -> str:
        return self.base_url + path

    def script(self, path: str, *replies: Reply) -> str:
        """Answer ``path`` with ``replies`` in order (the last one repeats); return its URL."""
        with self._lock:
            self._scripts[path] = list(replies)
        return self.url(path)

    def hits(self, path: str) -> int:
        with self._lock:
            return sum(1 for seen in self.seen if seen.path == path)

    def _next(self, seen: Seen) -> Reply:
        with self._lock:
            self.seen.append(seen)
            replies = self._scripts.get(seen.path)
            if not replies:
                return Reply(404, b"no script")
            return replies.pop(0) if len(replies) > 1 else replies[0]

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # a client that times out or drops a pooled connection is expected here

    def _connected(self) -> None:
        with self._lock:
            self.connections += 1


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: ScriptedServer

    def setup(self) -> None:
        super().setup()
        self.server._connected()

    def log_message(self, format: str, *args: object) -> None:
        pass

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks: list[bytes] = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _handle(self) -> None:
        seen = Seen(self.command, self.path, dict(self.headers.items()), self._body())
        reply = self.server._next(seen)
        if reply.delay:
            time.sleep(reply.delay)
        if reply.reset:
            self.close_connection = True
            return
        try:
            self.send_response(reply.status)
            for name, value in reply.headers.items():
                self.send_header(name, value)
            body = b"" if self.command == "HEAD" else reply.body
            self.send_header("Content-Length", str(len(reply.body)))
            self.end_headers()
            self.wfile.write(body)
            self.wfile.flush()
        except OSError:  # the client gave up (a timeout) and closed its end
            self.close_connection = True

    do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _handle


@contextmanager
def scripted_server() -> Iterator[ScriptedServer]:
    """A running :class:`ScriptedServer`, shut down on exit."""
    server = ScriptedServer()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.daemon = True
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
