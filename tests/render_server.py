"""A small HTTP server on 127.0.0.1 answering GET /render like graphite-web, for the warm-start
unit tests (the end-to-end test uses the real graphite-web from tests/stack/graphite_stack.py).

It answers each request from the series it holds (render JSON: `[{"target", "datapoints"}]`,
points in (from, until] on the series' step grid, a `null` for each empty step as whisper does), or with a set
status/body; a request can be made to wait on an event, to test timeouts and that callers do
not block on it. Every request's query is recorded.
"""

from __future__ import annotations

import json
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class RenderServer:
    """Serves `series` (name -> {ts: value}) on /render; see the module docstring."""

    def __init__(self, series: dict[str, dict[int, float]] | None = None, step: int = 60) -> None:
        self.series = series or {}
        self.step = step
        self.requests: list[dict[str, str]] = []
        self.status = 200
        self.body: bytes | None = None  # fixed answer instead of the series
        self.release = threading.Event()
        self.release.set()  # clear it to make requests wait
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                url = urllib.parse.urlsplit(self.path)
                query = dict(urllib.parse.parse_qsl(url.query))
                server.requests.append({"path": url.path, **query})
                server.release.wait(30)
                payload = server.body if server.body is not None else server.answer(query)
                try:
                    self.send_response(server.status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                except OSError:
                    pass  # the client gave up (timeout test)

            def log_message(self, *args: Any) -> None:
                pass

        self._http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._http.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._http.server_address[1]}"
        self._thread = threading.Thread(target=self._http.serve_forever, daemon=True)

    def answer(self, query: dict[str, str]) -> bytes:
        """Render JSON for the query's target between its from and until."""
        target, start, until = query["target"], int(query["from"]), int(query["until"])
        points = self.series.get(target)
        if points is None:
            return b"[]"
        phase = min(points) % self.step if points else 0  # the series' own grid, as whisper's archive
        first = start - (start - phase) % self.step + self.step
        datapoints = [[points.get(ts), ts] for ts in range(first, until + 1, self.step)]
        return json.dumps([{"target": target, "tags": {"name": target}, "datapoints": datapoints}]).encode()

    def __enter__(self) -> RenderServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release.set()
        self._http.shutdown()
        self._http.server_close()
