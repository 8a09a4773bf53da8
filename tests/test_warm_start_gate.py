"""pensu.warm_start_gate: held lines, commit holds, history learned before live samples, fallbacks.

A real Pipeline, ModelRegistry and checkpoint store; histories come over HTTP from
tests/render_server.py. Loops that wait for the fetch threads are bounded.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from pensu.analyzer import MetricAnalyzer, Thresholds
from pensu.carbon import DEFAULT_NAME_TEMPLATE, parse_line
from pensu.checkpoint import LocalCheckpointStore
from pensu.delivery import Batch, DeliveryLedger
from pensu.outputs import OutputFormatter, OutputTopics
from pensu.pipeline import MessageResult, Pipeline
from pensu.registry import ModelRegistry
from pensu.settings import load_settings
from pensu.warm_start_gate import WarmStartGate
from tests.render_server import RenderServer
from tests.support import INTERVAL, fast_config, series

TOPICS = OutputTopics("anom", "pred", "reports")
HISTORY = series(120)  # what Graphite holds, 5-minute steps
LIVE = series(10, start=120)


class Harness:
    """A gate over a real pipeline; `emitted` collects what poll hands back to the service."""

    def __init__(self, tmp_path: Path, url: str, **env: str) -> None:
        self.settings = load_settings({"PENSU_GRAPHITE_URL": url, "PENSU_WARM_START_TIMEOUT": "10", **env})
        self.config = fast_config()
        self.registry = ModelRegistry(LocalCheckpointStore(tmp_path / "models"), self.config, capacity=10)
        formatter = OutputFormatter(TOPICS, DEFAULT_NAME_TEMPLATE, Thresholds(), "test")
        self.pipeline = Pipeline(self.registry, formatter, re.compile(".*"))
        self.prom = CollectorRegistry()
        self.gate = WarmStartGate(self.settings, self.registry, self.pipeline, self.prom)
        self.emitted: list[tuple[MessageResult, Batch]] = []

    def emit(self, result: MessageResult, batch: Batch) -> None:
        self.emitted.append((result, batch))

    def poll_until(self, done, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while not done():
            assert time.monotonic() < deadline, "warm start did not finish in time"
            self.gate.poll(self.emit)
            time.sleep(0.01)

    def value(self, name: str, **labels: str) -> float:
        return self.prom.get_sample_value(name, labels or None) or 0.0

    def close(self) -> None:
        self.gate.close()


def carbon(metric: str, samples: list[tuple[float, float]]) -> bytes:
    return b"\n".join(f"{metric} {v!r} {int(ts)}".encode() for ts, v in samples)


def scores(results: list[MessageResult]) -> list[float]:
    out = []
    for result in results:
        for record in result.records:
            sample = parse_line(record.value.rstrip(b"\n"))
            if sample.metric.startswith("pensu.anomaly_score."):
                out.append(sample.value)
    return out


@pytest.fixture
def graphite() -> RenderServer:
    with RenderServer({"web.new": {int(ts): v for ts, v in HISTORY + LIVE}}, step=int(INTERVAL)) as server:
        yield server


def test_new_metric_is_held_learns_history_then_its_live_lines(tmp_path: Path, graphite: RenderServer) -> None:
    h = Harness(tmp_path, graphite.url)
    try:
        known = h.registry.get("web.known")
        known.process(LIVE[0][0] - INTERVAL, 1.0)  # learned something: not new
        batch = Batch()
        payload = carbon("web.new", LIVE[:1]) + b"\n" + carbon("web.known", LIVE[:1])
        passed = h.gate.admit(payload, "metrics:0", 7, None, batch)
        assert passed == carbon("web.known", LIVE[:1])  # the new metric's line is held
        later = Batch()
        assert h.gate.admit(carbon("web.new", LIVE[1:]), "metrics:0", 8, None, later) == b""
        assert (batch.pending, later.pending) == (1, len(LIVE) - 1)  # their offsets stay uncommitted

        h.poll_until(lambda: h.emitted)
        assert (batch.pending, later.pending) == (0, 0)
        # One pipeline call per held message, in arrival order, on the batch it came with.
        assert [b for _, b in h.emitted] == [batch, later]
        (query,) = graphite.requests
        assert query["target"] == "web.new" and int(query["until"]) == int(LIVE[0][0])
        assert h.value("pensu_warm_start_samples_learned_total") == len(HISTORY)
        assert h.value("pensu_warm_starts_total", outcome="warm") == 1
        # The service's model learned the history first: its live outputs are a warm model's.
        reference = MetricAnalyzer("web.new", h.config)
        for ts, v in HISTORY:
            reference.process(ts, v)
        expected = [reference.process(ts, v).anomaly_score for ts, v in LIVE]
        assert scores([r for r, _ in h.emitted]) == expected
        analyzer = h.registry.get("web.new")
        assert analyzer.sample_count == len(HISTORY) + len(LIVE)
        # Replay positions come from live lines only, numbered as in their message.
        assert analyzer.positions == {"metrics:0": (8, len(LIVE) - 2)}
        # Once warm, later lines pass straight through.
        assert h.gate.admit(carbon("web.new", series(1, start=130)), "metrics:0", 9, None, Batch()) \
            == carbon("web.new", series(1, start=130))
    finally:
        h.close()


def test_admit_does_not_wait_for_graphite(tmp_path: Path, graphite: RenderServer) -> None:
    h = Harness(tmp_path, graphite.url)
    graphite.release.clear()  # the server sits on the request until released
    try:
        batch = Batch()
        assert h.gate.admit(carbon("web.new", LIVE[:3]), "metrics:0", 1, None, batch) == b""
        h.gate.poll(h.emit)
        assert h.emitted == [] and batch.pending == 3
        graphite.release.set()
        h.poll_until(lambda: h.emitted)
        assert batch.pending == 0 and len(scores([r for r, _ in h.emitted])) == 3
        assert h.value("pensu_warm_starts_total", outcome="warm") == 1
    finally:
        h.close()


def test_timeout_starts_cold_with_every_held_line(tmp_path: Path, graphite: RenderServer) -> None:
    h = Harness(tmp_path, graphite.url, PENSU_WARM_START_TIMEOUT="0.5")
    graphite.release.clear()
    try:
        batch = Batch()
        h.gate.admit(carbon("web.new", LIVE), "metrics:0", 1, None, batch)
        h.poll_until(lambda: h.emitted)
        graphite.release.set()
        assert batch.pending == 0
        assert h.value("pensu_warm_start_failures_total", reason="timeout") == 1
        assert h.value("pensu_warm_starts_total", outcome="cold") == 1
        cold = MetricAnalyzer("web.new", h.config)
        assert scores([r for r, _ in h.emitted]) == [cold.process(ts, v).anomaly_score for ts, v in LIVE]
        assert h.registry.get("web.new").sample_count == len(LIVE)
    finally:
        h.close()


def test_buffer_overflow_starts_cold_without_losing_a_line(tmp_path: Path, graphite: RenderServer) -> None:
    h = Harness(tmp_path, graphite.url, PENSU_WARM_START_BUFFER="3")
    graphite.release.clear()
    try:
        batch = Batch()
        for i, sample in enumerate(LIVE):
            h.gate.admit(carbon("web.new", [sample]), "metrics:0", i, None, batch)
        h.gate.poll(h.emit)
        assert len(h.emitted) == len(LIVE) and batch.pending == 0
        assert h.value("pensu_warm_start_failures_total", reason="buffer_full") == 1
        assert h.registry.get("web.new").sample_count == len(LIVE)
    finally:
        graphite.release.set()
        h.close()


@pytest.mark.parametrize(("status", "body", "reason"), [(500, b"boom", "http_error"),
                                                         (200, b"<html>", "bad_response")])
def test_bad_answers_start_cold_and_are_counted(tmp_path: Path, graphite: RenderServer, status: int,
                                                body: bytes, reason: str, caplog: pytest.LogCaptureFixture) -> None:
    graphite.status, graphite.body = status, body
    h = Harness(tmp_path, graphite.url)
    try:
        for metric in ("web.a", "web.b"):
            h.gate.admit(carbon(metric, LIVE[:2]), "metrics:0", 1, None, Batch())
        h.poll_until(lambda: len(h.emitted) == 2)
        assert h.value("pensu_warm_start_failures_total", reason=reason) == 2
        assert h.value("pensu_warm_starts_total", outcome="cold") == 2
        logged = [r.getMessage() for r in caplog.records if "warm start of" in r.getMessage()]
        assert len(logged) == 1 and reason in logged[0] and "web.a" in logged[0]  # once per reason
    finally:
        h.close()


def test_checkpointed_metrics_and_own_outputs_are_not_fetched(tmp_path: Path, graphite: RenderServer) -> None:
    store = LocalCheckpointStore(tmp_path / "models")
    first = ModelRegistry(store, fast_config(), capacity=10)
    first.get("web.new").process(LIVE[0][0] - INTERVAL, 1.0)
    assert first.save_dirty() == (1, 0)
    h = Harness(tmp_path, graphite.url)
    try:
        payload = carbon("web.new", LIVE[:1])
        assert h.gate.admit(payload, "metrics:0", 1, None, Batch()) is payload
        own = carbon("pensu.anomaly_score.metrics_analyzer.x", LIVE[:1])
        assert h.gate.admit(own, "metrics:0", 3, None, Batch()) is own
        assert graphite.requests == [] and len(h.gate.book) == 0
    finally:
        h.close()


def test_revoked_partitions_drop_held_lines_and_their_positions(tmp_path: Path, graphite: RenderServer) -> None:
    h = Harness(tmp_path, graphite.url)
    graphite.release.clear()
    try:
        held = Batch()
        h.gate.admit(carbon("web.new", LIVE[:2]), "metrics:1", 5, None, held)
        held.positions[("metrics", 1)] = 6
        held.positions[("metrics", 0)] = 40
        after = Batch()
        after.positions.update({("metrics", 1): 9, ("metrics", 0): 41})
        ledger = DeliveryLedger(lambda: False)
        for batch in (held, after):
            ledger.close_batch(batch)
        assert "web.new" in h.registry
        h.gate.forget({"metrics:1"})
        ledger.drop_positions([("metrics", 1)])  # what the service's hand-over does next
        assert held.pending == 0 and len(h.gate.book) == 0
        assert "web.new" not in h.registry  # released with its partition, not kept stale
        assert held.positions == {("metrics", 0): 40} and after.positions == {("metrics", 0): 41}
        graphite.release.set()
        time.sleep(0.2)
        h.gate.poll(h.emit)
        assert h.emitted == [] and h.value("pensu_warm_start_samples_learned_total") == 0
    finally:
        h.close()
