"""Shared fixtures of the stack tests: Settings defaults, the metric names Pensu emits, and real
carbon-cache / graphite-web processes (tests/stack/graphite_stack.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from pensu.carbon import DEFAULT_NAME_TEMPLATE, OUTPUT_KINDS, output_metric_name
from pensu.generator import DEFAULT_SERIES
from pensu.namespaces import PART_KINDS, namespace_of, part_metric_name, rate_metric_name
from pensu.settings import Settings, load_settings
from tests.stack.graphite_stack import Carbon, carbon_tools, graphite, graphite_web_python_fixture, running_carbon  # noqa: F401 - fixtures


@pytest.fixture(scope="session")
def defaults() -> Settings:
    """Settings built from an empty environment: the documented defaults."""
    return load_settings({})


@pytest.fixture(scope="session")
def sample_metric() -> str:
    """A real input metric name (the synthetic generator's first series)."""
    return DEFAULT_SERIES[0].name


@pytest.fixture(scope="session")
def emitted_names(sample_metric: str) -> dict[str, str]:
    """Every series name that reaches Graphite for `sample_metric`: the raw input (forwarded by
    Logstash) and one name per output kind, rendered by Pensu's own code."""
    names = {"input": sample_metric}
    for kind in OUTPUT_KINDS:
        names[kind] = output_metric_name(DEFAULT_NAME_TEMPLATE, kind, sample_metric)
    settings = load_settings({})
    namespace = namespace_of(sample_metric, settings.namespace_depth)
    names["anomaly_rate"] = rate_metric_name(namespace)
    for kind in PART_KINDS:  # each instance's counts, combined by the dashboard (pensu.namespaces)
        names[f"anomaly_rate_{kind}"] = part_metric_name(kind, settings.instance_id, namespace)
    return names


@pytest.fixture
def carbon(tmp_path: Path) -> Iterator[Carbon]:
    """A carbon-cache on loopback (1-second archive for an hour) with storage in tmp_path."""
    with running_carbon(carbon_tools(), tmp_path) as running:
        yield running
