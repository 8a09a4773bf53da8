"""pensu.graphite_fetch: one render GET per history, every failure a `WarmStartError` reason."""

from __future__ import annotations

import time

import pytest

from pensu.graphite_fetch import HistoryFetcher, fetch_render, render_url
from pensu.warm_start import History, WarmStartError, history_request
from tests.conftest import free_port
from tests.render_server import RenderServer

FIRST_TS = 1_700_000_040.0


def request(metric: str = "web.latency", days: float = 1.0):
    req = history_request(metric, FIRST_TS, days)
    assert req is not None
    return req


def test_render_url_keeps_a_path_prefix_and_encodes_the_query() -> None:
    url = render_url("http://graphite:8080/graphite/", request("a.b:c"))
    assert url.startswith("http://graphite:8080/graphite/render?target=a.b%3Ac&from=")
    assert url.endswith("&format=json")


def test_fetch_returns_the_render_answer() -> None:
    points = {int(FIRST_TS) - 120: 1.5, int(FIRST_TS) - 60: 2.5}
    with RenderServer({"web.latency": points}) as server:
        body = fetch_render(server.url, request(), timeout=5)
    (query,) = server.requests
    assert query == {"path": "/render", "target": "web.latency", "from": str(int(FIRST_TS) - 86400),
                     "until": str(int(FIRST_TS)), "format": "json"}
    assert b'"web.latency"' in body and b"[1.5, " in body


@pytest.mark.parametrize(("status", "reason"), [(404, "http_error"), (500, "http_error")])
def test_http_errors_are_named(status: int, reason: str) -> None:
    with RenderServer() as server:
        server.status, server.body = status, b"oops"
        with pytest.raises(WarmStartError) as info:
            fetch_render(server.url, request(), timeout=5)
    assert info.value.reason == reason and str(status) in info.value.detail


def test_answers_beyond_the_size_bound_are_refused() -> None:
    with RenderServer() as server:
        server.body = b"[" + b" " * 2000 + b"]"
        with pytest.raises(WarmStartError) as info:
            fetch_render(server.url, request(), timeout=5, max_bytes=1000)
    assert info.value.reason == "too_large"


def test_nothing_listening_is_unreachable() -> None:
    with pytest.raises(WarmStartError) as info:
        fetch_render(f"http://127.0.0.1:{free_port()}", request(), timeout=5)
    assert info.value.reason == "unreachable"


def test_a_server_that_does_not_answer_in_time_is_a_timeout() -> None:
    with RenderServer() as server:
        server.release.clear()
        with pytest.raises(WarmStartError) as info:
            fetch_render(server.url, request(), timeout=0.3)
    assert info.value.reason == "timeout"


def test_fetcher_runs_off_the_caller_and_parses_the_answer() -> None:
    points = {int(FIRST_TS) - 120: 1.5, int(FIRST_TS) - 60: 2.5, int(FIRST_TS): 9.0}
    with RenderServer({"web.latency": points}) as server:
        server.release.clear()  # the server holds the request until the test lets it go
        fetcher = HistoryFetcher(server.url, timeout=10, workers=2)
        try:
            fetcher.submit(request())
            fetcher.submit(request("no.such.metric"))
            assert fetcher.completed() == []  # submit returned while the server still holds them
            server.release.set()
            results = []
            deadline = time.monotonic() + 10
            while len(results) < 2 and time.monotonic() < deadline:
                results += fetcher.completed()
                time.sleep(0.02)
        finally:
            fetcher.close()
    by_metric = {req.metric: outcome for req, outcome in results}
    assert by_metric["web.latency"] == History(((FIRST_TS - 120, 1.5), (FIRST_TS - 60, 2.5)), nulls=1437,
                                               too_new=1)  # the point at the first live sample
    assert by_metric["no.such.metric"] == History(())


def test_fetcher_reports_failures_as_results() -> None:
    fetcher = HistoryFetcher(f"http://127.0.0.1:{free_port()}", timeout=5, workers=1)
    try:
        fetcher.submit(request())
        deadline = time.monotonic() + 10
        results = []
        while not results and time.monotonic() < deadline:
            results = fetcher.completed()
            time.sleep(0.02)
    finally:
        fetcher.close()
    ((_req, outcome),) = results
    assert isinstance(outcome, WarmStartError) and outcome.reason == "unreachable"
