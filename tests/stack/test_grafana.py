"""Grafana provisioning and the "Pensu Metrics" dashboard: valid JSON, the provisioned datasource,
and only series names Pensu really emits."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from pensu.carbon import DEFAULT_NAME_TEMPLATE, OUTPUT_KINDS
from pensu.namespaces import namespace_rate_target
from pensu.settings import Settings
from tests.stack.stack_files import (
    GRAFANA_DASHBOARD,
    GRAFANA_DATASOURCES,
    container_ports,
    graphite_glob_matches,
    graphite_series_paths,
    iter_plugins,
    load_compose,
    load_logstash_pipeline,
)

VARIABLE_REFS = re.compile(r"\$\{metric(?::[a-z]+)?\}|\$metric\b|\[\[metric\]\]")


@pytest.fixture(scope="module")
def datasource() -> dict[str, Any]:
    sources = yaml.safe_load(GRAFANA_DATASOURCES.read_text())["datasources"]
    assert len(sources) == 1
    return sources[0]


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    return json.loads(GRAFANA_DASHBOARD.read_text())


def all_panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])  # collapsed rows


def graphite_targets(dashboard: dict[str, Any]) -> list[str]:
    return [t["target"] for p in all_panels(dashboard) for t in p.get("targets", []) if t.get("target")]


def substitute(expr: str, metric: str) -> str:
    return VARIABLE_REFS.sub(metric, expr)


def test_datasource_is_graphite_with_a_fixed_uid(datasource: dict[str, Any]) -> None:
    assert datasource["type"] == "graphite"
    assert datasource["uid"] and re.fullmatch(r"[A-Za-z0-9_-]{1,40}", datasource["uid"])
    assert datasource["access"] == "proxy"


def test_datasource_points_at_the_graphite_service(datasource: dict[str, Any]) -> None:
    url = urlsplit(datasource["url"])
    graphite = load_compose()["services"]["graphite"]
    assert url.hostname == "graphite"
    assert (url.port or 80) in container_ports(graphite)


def test_dashboard_identity(dashboard: dict[str, Any]) -> None:
    assert dashboard["title"] == "Pensu Metrics"
    assert dashboard["uid"]
    assert "id" not in dashboard or dashboard["id"] is None  # provisioning assigns ids
    ids = [p["id"] for p in all_panels(dashboard)]
    assert len(ids) == len(set(ids))
    for panel in all_panels(dashboard):
        assert {"h", "w", "x", "y"} <= set(panel["gridPos"])
        assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24


def test_everything_uses_the_provisioned_datasource(dashboard: dict[str, Any], datasource: dict[str, Any]) -> None:
    uid = datasource["uid"]
    for panel in all_panels(dashboard):
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == uid, panel["title"]
        for target in panel.get("targets", []):
            assert target.get("datasource", panel["datasource"])["uid"] == uid
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            assert variable["datasource"]["uid"] == uid
    custom = [a for a in dashboard["annotations"]["list"] if not a.get("builtIn")]
    assert custom
    assert all(a["datasource"]["uid"] == uid for a in custom)


def test_dashboard_is_templated_by_metric(dashboard: dict[str, Any], emitted_names: dict[str, str],
                                          sample_metric: str) -> None:
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    metric = variables["metric"]
    query = metric["query"]
    expr = query["target"] if isinstance(query, dict) else query
    # The variable's query must find Pensu's series...
    paths = graphite_series_paths(expr)
    assert paths
    matched = [n for n in emitted_names.values() for p in paths if graphite_glob_matches(p, n)]
    assert matched, f"{expr} matches no emitted series"
    # ...and its regex must turn each found series name back into the input metric name.
    regex = metric["regex"]
    assert regex.startswith("/") and regex.rstrip("gimsuy").endswith("/")
    pattern = re.compile(regex[1:regex.rstrip("gimsuy").rindex("/")])
    for name in matched:
        m = pattern.search(name)
        assert m and m.group(1) == sample_metric, name
    # Dotted metric names are whole values: find by render (full names), not node by node.
    if isinstance(query, dict):
        assert query.get("queryType") in ("Metric Name", "Metric Name Query")
    assert "**" in expr


def test_every_target_reads_a_series_pensu_emits(dashboard: dict[str, Any], emitted_names: dict[str, str],
                                                 sample_metric: str) -> None:
    targets = graphite_targets(dashboard)
    assert targets
    for target in targets:
        paths = graphite_series_paths(substitute(target, sample_metric))
        assert paths, target
        for path in paths:
            assert any(graphite_glob_matches(path, name) for name in emitted_names.values()), \
                f"{path} (from {target!r}) is not a series Pensu emits"


def test_the_dashboard_shows_every_output_and_the_input(dashboard: dict[str, Any],
                                                        emitted_names: dict[str, str],
                                                        sample_metric: str) -> None:
    """Each output kind and the input metric appears in some templated panel."""
    shown = set()
    for target in graphite_targets(dashboard):
        if not VARIABLE_REFS.search(target):
            continue
        for path in graphite_series_paths(substitute(target, sample_metric)):
            shown |= {kind for kind, name in emitted_names.items() if graphite_glob_matches(path, name)}
    assert shown == set(OUTPUT_KINDS) | {"input"}


def test_value_and_prediction_share_a_panel(dashboard: dict[str, Any], emitted_names: dict[str, str],
                                            sample_metric: str) -> None:
    for panel in all_panels(dashboard):
        kinds = set()
        for target in panel.get("targets", []):
            for path in graphite_series_paths(substitute(target["target"], sample_metric)):
                kinds |= {k for k, n in emitted_names.items() if graphite_glob_matches(path, n)}
        if {"input", "prediction"} <= kinds:
            return
    pytest.fail("no panel plots the input value against the prediction")


def test_report_annotations_match_the_logstash_event_tags(dashboard: dict[str, Any]) -> None:
    annotation = next(a for a in dashboard["annotations"]["list"] if not a.get("builtIn"))
    target = annotation["target"]
    assert target.get("fromAnnotations") and not target.get("target"), "events by tag, not a series"
    tags = target["tags"]
    # Graphite returns events carrying all requested tags; Logstash tags each report event with
    # "pensu", "anomaly" and the metric name, so the selected metric's reports match.
    event_tags = [t for p in iter_plugins(load_logstash_pipeline()["filter"]) if p.name == "mutate"
                  for t in (p.get("add_tag") or [])]
    metric_tag = "%{[@metadata][report][metric]}"
    for tag in tags:
        if VARIABLE_REFS.fullmatch(tag):
            assert metric_tag in event_tags
        else:
            assert tag in event_tags
    assert any(VARIABLE_REFS.fullmatch(t) for t in tags), "annotations should follow the selected metric"


def test_stack_relies_on_the_default_name_template(defaults: Settings) -> None:
    assert defaults.metric_names_template == DEFAULT_NAME_TEMPLATE


def test_a_panel_ranks_namespaces_by_anomaly_rate(dashboard: dict[str, Any], emitted_names: dict[str, str]) -> None:
    """The namespace panel divides the summed `anomalous` counts of all instances by their summed
    `total` counts (each instance writes its own; tests/stack/test_namespace_rates_graphite.py
    evaluates it in graphite-web), and never reads the single-instance share."""
    for panel in all_panels(dashboard):
        for target in panel.get("targets", []):
            expr = target.get("target", "")
            paths = graphite_series_paths(expr)
            kinds = {k for k in ("anomaly_rate_anomalous", "anomaly_rate_total")
                     if any(graphite_glob_matches(p, emitted_names[k]) for p in paths)}
            if not kinds:
                continue
            assert kinds == {"anomaly_rate_anomalous", "anomaly_rate_total"}, expr
            assert not any(graphite_glob_matches(p, emitted_names["anomaly_rate"]) for p in paths), expr
            assert "divideSeriesLists(" in expr and "sumSeriesWithWildcards(" in expr
            assert expr == namespace_rate_target()  # the one documented in docs/alerting.md
            assert "highestCurrent(" in expr and not VARIABLE_REFS.search(expr)
            assert panel["type"] == "bargauge"
            assert panel["options"]["reduceOptions"]["calcs"] == ["lastNotNull"]
            assert panel["fieldConfig"]["defaults"]["max"] == 1
            return
    pytest.fail("no panel combines pensu.anomaly_rate_parts.{anomalous,total}.<instance>.<namespace>")
