"""Warm start, HTTP edge: fetch a metric's history from graphite-web's render API off the loop.

`fetch_render` is one GET of `<PENSU_GRAPHITE_URL>/render?target=..&from=..&until=..&format=json`
with the standard library (no extra dependency for one request shape); every way it can fail
becomes a `WarmStartError` with a short reason (`unreachable`, `timeout`, `http_error`, `too_large`), which
the caller counts. `HistoryFetcher` runs fetches (and the JSON parsing) on a small thread pool
(`PENSU_WARM_START_CONCURRENCY` workers), so the consume loop only ever checks finished futures.
A worker never touches a model: results come back to the loop thread through `completed()`.
"""

from __future__ import annotations

import http.client
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

from pensu import __version__
from pensu.warm_start import History, HistoryRequest, WarmStartError, parse_render_json

# A week of 10-second points is ~60 k points, about 2 MB of render JSON; far beyond that the
# answer is not the history of one metric.
MAX_RESPONSE_BYTES = 64 * 1024 * 1024


def render_url(base_url: str, request: HistoryRequest) -> str:
    """The render URL of `request` under graphite-web's base URL (which may carry a path prefix)."""
    return f"{base_url.rstrip('/')}/render?{urllib.parse.urlencode(request.query())}"


def fetch_render(base_url: str, request: HistoryRequest, timeout: float,
                 max_bytes: int = MAX_RESPONSE_BYTES) -> bytes:
    """The body of the render query; `timeout` bounds the connection and each read."""
    url = render_url(base_url, request)
    req = urllib.request.Request(url, headers={"Accept": "application/json", "User-Agent": f"pensu/{__version__}"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            body = resp.read(max_bytes + 1)
    except urllib.error.HTTPError as exc:
        raise WarmStartError("http_error", f"HTTP {exc.code} {exc.reason} from {url}") from None
    except (urllib.error.URLError, OSError, http.client.HTTPException, ValueError) as exc:
        cause = getattr(exc, "reason", exc)
        if isinstance(exc, TimeoutError) or isinstance(cause, TimeoutError):
            raise WarmStartError("timeout", f"{url}: no answer within {timeout:g} s") from None
        raise WarmStartError("unreachable", f"{url}: {cause}") from None
    if len(body) > max_bytes:
        raise WarmStartError("too_large", f"{url}: answer larger than {max_bytes} bytes")
    return body


Outcome = History | WarmStartError


class HistoryFetcher:
    """Fetches and parses histories on a bounded thread pool; results are collected by polling."""

    def __init__(self, base_url: str, timeout: float, workers: int,
                 fetch: Callable[[str, HistoryRequest, float], bytes] = fetch_render) -> None:
        self.base_url = base_url
        self.timeout = timeout
        self._fetch = fetch
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="pensu-warm-start")
        self._running: list[tuple[HistoryRequest, Future[Outcome]]] = []

    def submit(self, request: HistoryRequest) -> None:
        """Queue one fetch (runs when a worker is free)."""
        self._running.append((request, self._pool.submit(self._run, request)))

    def _run(self, request: HistoryRequest) -> Outcome:
        try:
            return parse_render_json(self._fetch(self.base_url, request, self.timeout), request)
        except WarmStartError as exc:
            return exc

    def completed(self) -> list[tuple[HistoryRequest, Outcome]]:
        """Finished fetches since the last call, in submission order."""
        done: list[tuple[HistoryRequest, Future[Outcome]]] = []
        running: list[tuple[HistoryRequest, Future[Outcome]]] = []
        for item in self._running:  # one look at each future: one finishing meanwhile waits a poll
            (done if item[1].done() else running).append(item)
        self._running = running
        out: list[tuple[HistoryRequest, Outcome]] = []
        for request, future in done:
            if future.cancelled():
                continue
            error = future.exception()
            # _run turns every expected failure into a result; anything else is a bug worth naming.
            out.append((request, future.result() if error is None
                        else WarmStartError("fetch_error", f"{type(error).__name__}: {error}")))
        return out

    def close(self) -> None:
        """Stop: queued fetches are cancelled, running ones end on their own timeout."""
        self._pool.shutdown(wait=False, cancel_futures=True)
