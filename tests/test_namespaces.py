"""Namespaces: anomaly rate per namespace and shared incident ids."""

from __future__ import annotations

from dataclasses import replace

from pensu.analyzer import Analysis
from pensu.carbon import parse_line
from pensu.decision import OPENED, RESOLVED
from pensu.namespaces import IDLE_SECONDS, NamespaceTracker, aligned, instance_node, namespace_of, part_metric_name
from tests.test_alerting import analysis


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_namespace_of() -> None:
    assert namespace_of("web.front.latency", 2) == "web.front"
    assert namespace_of("web.latency", 2) == "web"
    assert namespace_of("web", 2) == "web"
    assert namespace_of("a.b.c.d", 1) == "a"


def test_rate_counts_open_episodes_until_they_resolve() -> None:
    tracker = NamespaceTracker(depth=2, incident_window=300, clock=Clock())
    for i in range(4):
        tracker.observe(analysis(None, 100.0, metric=f"web.front.m{i}"))
    tracker.observe(analysis(None, 100.0, metric="db.main.qps"))
    tracker.observe(analysis(OPENED, 110.0, metric="web.front.m0"))
    assert tracker.rates() == {"web.front": 0.25, "db.main": 0.0}
    tracker.observe(analysis(None, 120.0, metric="web.front.m0"))  # normal sample, episode still open
    assert tracker.rates()["web.front"] == 0.25
    tracker.observe(analysis(RESOLVED, 200.0, metric="web.front.m0"))
    assert tracker.rates()["web.front"] == 0.0
    lines = tracker.rate_lines(1_700_000_000)
    assert {key for key, _line in lines} == {"web.front", "db.main"}  # Kafka key: the namespace
    assert carbon_values(lines)["pensu.anomaly_rate.web.front"] == (0.0, 1_700_000_000)


def test_forgotten_and_idle_metrics_leave_the_denominator() -> None:
    clock = Clock()
    tracker = NamespaceTracker(depth=1, incident_window=300, clock=clock)
    tracker.observe(analysis(OPENED, 110.0, metric="web.a"))
    tracker.observe(analysis(None, 110.0, metric="web.b"))
    tracker.forget("web.b")
    assert tracker.rates() == {"web": 1.0}
    clock.now += IDLE_SECONDS + 1
    tracker.observe(analysis(None, 500.0, metric="web.c"))
    assert tracker.rates() == {"web": 0.0}


def opening(metric: str, ts: float) -> Analysis:
    a = analysis(OPENED, ts, metric=metric)
    assert a.event is not None
    return replace(a, event=replace(a.event, episode_id=f"{metric}@{int(ts)}", opened_at=ts))


def resolution(metric: str, opened: float, ts: float) -> Analysis:
    a = analysis(RESOLVED, ts, metric=metric)
    assert a.event is not None
    return replace(a, event=replace(a.event, episode_id=f"{metric}@{int(opened)}", opened_at=opened))


def test_openings_close_in_sample_time_share_an_incident_until_resolved() -> None:
    tracker = NamespaceTracker(depth=2, incident_window=300, clock=Clock())
    first = opening("web.front.a", 1000)
    assert tracker.observe(first) == "web.front@1000"
    assert tracker.report_fields(first) == {"namespace": "web.front", "incident": "web.front@1000"}
    assert tracker.observe(opening("web.front.b", 1200)) == "web.front@1000"  # within 300 s
    assert tracker.observe(opening("web.front.c", 1450)) == "web.front@1000"  # chained from 1200
    assert tracker.observe(opening("db.main.a", 1450)) == "db.main@1450"  # another namespace
    assert tracker.observe(opening("web.front.d", 2000)) == "web.front@2000"  # past the window
    end = resolution("web.front.b", 1200, 1300)
    assert tracker.observe(end) == "web.front@1000"
    assert tracker.report_fields(end)["incident"] == "web.front@1000"  # the report renders after observe
    assert tracker.observe(resolution("web.x.y", 5, 10)) is None  # opening never seen (restart)


def test_zero_window_makes_every_episode_its_own_incident() -> None:
    tracker = NamespaceTracker(depth=1, incident_window=0, clock=Clock())
    assert tracker.observe(opening("web.a", 1000)) == "web@1000"
    assert tracker.observe(opening("web.b", 1001)) == "web@1001"


def carbon_values(lines: list[tuple[str, bytes]]) -> dict[str, tuple[float, float]]:
    """Carbon lines as {name: (value, timestamp)}."""
    out = {}
    for _key, line in lines:
        sample = parse_line(line.rstrip(b"\n"))
        out[sample.metric] = (sample.value, sample.timestamp)
    return out


def test_two_instances_write_counts_that_sum_to_the_exact_rate() -> None:
    """A consumer group of two: each instance sees its partitions' metrics only. Their shares do not
    combine, their counts do: Σ anomalous / Σ total is the namespace's exact rate."""
    clock = Clock()
    first = NamespaceTracker(depth=2, incident_window=300, clock=clock, instance="pensu-0", rate_interval=60)
    second = NamespaceTracker(depth=2, incident_window=300, clock=clock, instance="pensu-1", rate_interval=60)
    metrics = {f"web.front.m{i}": (first if i < 2 else second) for i in range(5)}  # 2 here, 3 there
    metrics["db.main.qps"] = second
    anomalous = {"web.front.m0", "web.front.m2", "web.front.m3"}
    for metric, owner in metrics.items():
        owner.observe(opening(metric, 1000) if metric in anomalous else analysis(None, 1000.0, metric=metric))
    one_instance = NamespaceTracker(depth=2, incident_window=300, clock=clock)  # all metrics: the truth
    for metric in metrics:
        one_instance.observe(opening(metric, 1000) if metric in anomalous else analysis(None, 1000.0, metric=metric))
    truth = one_instance.rates()
    assert truth == {"web.front": 0.6, "db.main": 0.0}

    stamp = 1_699_999_980.0  # a multiple of the 60 s interval
    now = stamp + 7
    lines = carbon_values(first.rate_lines(now)) | carbon_values(second.rate_lines(now + 45))
    # Both instances stamp the interval's start, whatever their phase within it.
    assert {ts for _v, ts in lines.values()} == {stamp}
    for namespace, rate in truth.items():
        parts = {kind: sum(lines.get(part_metric_name(kind, instance, namespace), (0.0, stamp))[0]
                           for instance in ("pensu-0", "pensu-1")) for kind in ("anomalous", "total")}
        assert parts["anomalous"] / parts["total"] == rate
    assert lines[part_metric_name("anomalous", "pensu-0", "web.front")] == (1.0, stamp)
    assert lines[part_metric_name("total", "pensu-1", "web.front")] == (3.0, stamp)
    # Each instance's own share is still written under the one name: they disagree (why the parts exist).
    assert carbon_values(first.rate_lines(now))["pensu.anomaly_rate.web.front"][0] == 0.5
    assert carbon_values(second.rate_lines(now))["pensu.anomaly_rate.web.front"][0] == 2 / 3


def test_instance_ids_become_one_name_node() -> None:
    assert instance_node("pensu-0") == "pensu-0"
    assert instance_node("node-1.eu-west.example.com") == "node-1_eu-west_example_com"
    assert part_metric_name("total", "a.b c", "web") == "pensu.anomaly_rate_parts.total.a_b_c.web"
    assert aligned(1_700_000_037.9, 60) == 1_699_999_980 and aligned(1_700_000_037.9, 0) == 1_700_000_037
