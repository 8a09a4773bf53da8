"""Shared fixtures of the stack tests: Settings defaults, the metric names Pensu emits, and real
carbon-cache / graphite-web processes (tests/stack/graphite_stack.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

from pensu.carbon import DEFAULT_NAME_TEMPLATE, OUTPUT_KINDS, output_metric_name
from pensu.generator import DEFAULT_SERIES
from pensu.namespaces import namespace_of, rate_metric_name
from pensu.settings import Settings, load_settings
from tests.stack.graphite_stack import Carbon, carbon_tools, running_carbon
from tests.stack.graphite_stack import graphite, graphite_web_python_fixture  # noqa: F401 - fixtures


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
    names["anomaly_rate"] = rate_metric_name(namespace_of(sample_metric, load_settings({}).namespace_depth))
    return names


@pytest.fixture
def carbon(tmp_path: Path) -> Iterator[Carbon]:
    """A carbon-cache on loopback (1-second archive for an hour) with storage in tmp_path."""
    with running_carbon(carbon_tools(), tmp_path) as running:
        yield running
