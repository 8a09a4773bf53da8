"""pensu.warm_start: render JSON → ordered history, and the per-metric warm-start state machine."""

from __future__ import annotations

import json

import pytest

from pensu.warm_start import (
    History,
    HistoryRequest,
    Phase,
    WarmStartBook,
    WarmStartError,
    history_request,
    parse_render_json,
    render_target,
)

FIRST_TS = 1_700_000_000.0


def request(metric: str = "web.latency", before: float = FIRST_TS) -> HistoryRequest:
    req = history_request(metric, before, 7)
    assert req is not None
    return req


def body(*series: dict) -> bytes:
    return json.dumps(list(series)).encode()


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


# --- request and target -----------------------------------------------------------------------

def test_request_covers_the_days_before_the_first_sample() -> None:
    req = history_request("web.latency", 1_000_000.5, 2)
    assert req is not None
    assert (req.start, req.until, req.before) == (1_000_000 - 2 * 86400, 1_000_001, 1_000_000.5)
    assert req.query() == {"target": "web.latency", "from": str(req.start), "until": "1000001", "format": "json"}


@pytest.mark.parametrize("metric", ["web.*", "a.{b,c}", "sum(x)", "a b", "x,y", "a..b", ".a", "a.", "q'x"])
def test_names_graphite_would_read_as_syntax_are_not_fetched(metric: str) -> None:
    assert render_target(metric) is None
    assert history_request(metric, FIRST_TS, 7) is None


@pytest.mark.parametrize("metric", ["web.latency", "stack-test.host_01.disk:sda.util-pct", "a.b%c.d@e"])
def test_plain_names_are_their_own_target(metric: str) -> None:
    assert render_target(metric) == metric


# --- parsing ------------------------------------------------------------------------------------

def test_parse_orders_samples_and_skips_nulls_and_live_points() -> None:
    points = [[3.0, FIRST_TS - 300], [None, FIRST_TS - 600], [1.5, FIRST_TS - 900], [7.0, FIRST_TS],
              [8.0, FIRST_TS + 300], [2, FIRST_TS - 1200]]
    history = parse_render_json(body({"target": "web.latency", "datapoints": points}), request())
    assert history.samples == ((FIRST_TS - 1200, 2.0), (FIRST_TS - 900, 1.5), (FIRST_TS - 300, 3.0))
    assert (history.nulls, history.too_new, history.invalid) == (1, 2, 0)


def test_parse_counts_invalid_points() -> None:
    points = [["x", FIRST_TS - 10], [1.0], [True, FIRST_TS - 20], [4.0, "t"], [5.0, FIRST_TS - 30]]
    history = parse_render_json(body({"target": "web.latency", "datapoints": points}), request())
    assert history.samples == ((FIRST_TS - 30, 5.0),)
    assert history.invalid == 4


def test_parse_skips_non_finite_values_written_as_json_extensions() -> None:
    raw = b'[{"target": "web.latency", "datapoints": [[NaN, 10], [Infinity, 20], [1.0, 30]]}]'
    history = parse_render_json(raw, request())
    assert history.samples == ((30.0, 1.0),) and history.invalid == 2


def test_no_series_is_an_empty_history() -> None:
    assert parse_render_json(b"[]", request()) == History(())


@pytest.mark.parametrize("raw", [b"<html>", b"{}", b'[{"target": "x"}]', b"[1]", b"\xff\xfe"])
def test_malformed_answers_are_bad_responses(raw: bytes) -> None:
    with pytest.raises(WarmStartError) as info:
        parse_render_json(raw, request())
    assert info.value.reason == "bad_response"


def test_several_series_are_ambiguous() -> None:
    raw = body({"target": "a", "datapoints": []}, {"target": "b", "datapoints": []})
    with pytest.raises(WarmStartError) as info:
        parse_render_json(raw, request())
    assert info.value.reason == "ambiguous"


# --- the book -------------------------------------------------------------------------------------

def test_warm_path_learns_history_in_chunks_then_releases_held_samples_in_order() -> None:
    book: WarmStartBook[str] = WarmStartBook(buffer_limit=10, timeout=30, max_pending=5, clock=Clock())
    assert book.begin("m", FIRST_TS, "live-1")
    book.hold("m", "live-2")
    assert book.phase("m") is Phase.FETCHING
    assert book.learning_chunk(100) == [] and book.take_ready() == []
    history = History(tuple((FIRST_TS - 300 * i, float(i)) for i in range(5, 0, -1)))
    assert book.arrived("m", history)
    first = book.learning_chunk(3)
    assert first == [("m", history.samples[:3])]
    assert book.take_ready() == []  # history not all handed out yet
    book.hold("m", "live-3")
    assert book.learning_chunk(3) == [("m", history.samples[3:])]
    (released,) = book.take_ready()
    assert (released.metric, released.held, released.warm, released.history_length) == \
        ("m", ("live-1", "live-2", "live-3"), True, 5)
    assert "m" not in book and len(book) == 0


def test_learning_budget_is_shared_by_metrics_in_start_order() -> None:
    book: WarmStartBook[str] = WarmStartBook(10, 30, 5, Clock())
    for metric in ("a", "b"):
        book.begin(metric, FIRST_TS, metric)
        book.arrived(metric, History(tuple((float(i), 1.0) for i in range(4))))
    chunks = book.learning_chunk(6)
    assert [(m, len(c)) for m, c in chunks] == [("a", 4), ("b", 2)]
    assert [r.metric for r in book.take_ready()] == ["a"]


def test_history_at_or_after_the_first_sample_is_never_learned() -> None:
    book: WarmStartBook[str] = WarmStartBook(10, 30, 5, Clock())
    book.begin("m", 1000.0, "x")
    book.arrived("m", History(((998.0, 1.0), (999.0, 2.0), (1000.0, 3.0), (1001.0, 4.0))))
    assert book.learning_chunk(10) == [("m", ((998.0, 1.0), (999.0, 2.0)))]


def test_empty_history_is_a_warm_start_with_nothing_learned() -> None:
    book: WarmStartBook[str] = WarmStartBook(10, 30, 5, Clock())
    book.begin("m", FIRST_TS, "x")
    book.arrived("m", History(()))
    (released,) = book.take_ready()
    assert released.warm and released.history_length == 0 and released.held == ("x",)


def test_failure_starts_cold_with_held_samples() -> None:
    book: WarmStartBook[str] = WarmStartBook(10, 30, 5, Clock())
    book.begin("m", FIRST_TS, "x")
    book.hold("m", "y")
    assert book.failed("m", "unreachable")
    (released,) = book.take_ready()
    assert (released.warm, released.reason, released.held) == (False, "unreachable", ("x", "y"))


def test_timeout_starts_cold_and_a_late_answer_is_ignored() -> None:
    clock = Clock()
    book: WarmStartBook[str] = WarmStartBook(10, 30, 5, clock)
    book.begin("m", FIRST_TS, "x")
    clock.now += 29.9
    assert book.expire() == []
    clock.now += 0.1
    assert book.expire() == ["m"]
    assert not book.arrived("m", History(((1.0, 1.0),)))  # too late: discarded
    assert not book.failed("m", "unreachable")  # not counted twice
    (released,) = book.take_ready()
    assert (released.warm, released.reason, released.history_length) == (False, "timeout", 0)


def test_buffer_overflow_abandons_the_warm_start_but_keeps_every_sample() -> None:
    book: WarmStartBook[int] = WarmStartBook(buffer_limit=3, timeout=30, max_pending=5, clock=Clock())
    book.begin("m", FIRST_TS, 1)
    book.hold("m", 2)
    book.hold("m", 3)
    assert book.phase("m") is Phase.FETCHING
    book.hold("m", 4)
    assert book.phase("m") is Phase.READY
    book.hold("m", 5)  # until released, later samples still queue behind the others
    assert not book.arrived("m", History(((1.0, 1.0),)))
    (released,) = book.take_ready()
    assert (released.held, released.warm, released.reason) == ((1, 2, 3, 4, 5), False, "buffer_full")


def test_overflow_while_learning_keeps_what_was_learned() -> None:
    book: WarmStartBook[int] = WarmStartBook(buffer_limit=1, timeout=30, max_pending=5, clock=Clock())
    book.begin("m", FIRST_TS, 1)
    book.arrived("m", History(tuple((float(i), 1.0) for i in range(10))))
    book.learning_chunk(4)
    book.hold("m", 2)
    (released,) = book.take_ready()
    assert (released.warm, released.reason, released.history_length) == (False, "buffer_full", 4)


def test_pending_metrics_are_bounded() -> None:
    book: WarmStartBook[str] = WarmStartBook(10, 30, max_pending=2, clock=Clock())
    assert book.begin("a", FIRST_TS, "a") and book.begin("b", FIRST_TS, "b")
    assert not book.begin("c", FIRST_TS, "c")
    assert "c" not in book and len(book) == 2
    with pytest.raises(ValueError):
        book.begin("a", FIRST_TS, "again")


def test_forget_drops_samples_of_revoked_sources_and_empty_metrics() -> None:
    book: WarmStartBook[tuple[str, int]] = WarmStartBook(10, 30, 5, Clock())
    book.begin("a", FIRST_TS, ("p0", 1))
    book.hold("a", ("p1", 2))
    book.begin("b", FIRST_TS, ("p1", 3))
    dropped = book.forget(lambda item: item[0] != "p1")
    assert sorted(dropped) == [("p1", 2), ("p1", 3)]
    assert "a" in book and "b" not in book
    book.failed("a", "unreachable")
    assert book.take_ready()[0].held == (("p0", 1),)


def test_drain_returns_everything_held() -> None:
    book: WarmStartBook[str] = WarmStartBook(10, 30, 5, Clock())
    book.begin("a", FIRST_TS, "x")
    book.hold("a", "y")
    book.begin("b", FIRST_TS, "z")
    assert sorted(book.drain()) == ["x", "y", "z"] and len(book) == 0


def test_invalid_limits_are_refused() -> None:
    with pytest.raises(ValueError):
        WarmStartBook(0, 30, 5)
    with pytest.raises(ValueError):
        WarmStartBook(1, 0, 5)
