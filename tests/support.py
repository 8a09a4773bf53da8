"""Small, fast analyzer configurations and series shared by tests."""

from __future__ import annotations

import math

from pensu.analyzer import AnalyzerConfig, Thresholds
from pensu.htm.likelihood import AnomalyLikelihoodParams

START_TS = 1_600_000_000.0
INTERVAL = 300.0


def fast_config(thresholds: Thresholds | None = None, steps: int = 1, warmup: int = 30,
                learning: int = 40, estimation: int = 40) -> AnalyzerConfig:
    """The `small` preset with a short warm-up and likelihood probation, for quick tests."""
    likelihood = AnomalyLikelihoodParams(learning_period=learning, estimation_samples=estimation,
                                         reestimation_period=20)
    return AnalyzerConfig.from_presets("small", "small", steps=steps, warmup=warmup,
                                       thresholds=thresholds or Thresholds(), likelihood=likelihood)


def periodic_value(index: int, period: int = 24) -> float:
    """A clean periodic signal in [0, 100]."""
    return round(50.0 + 40.0 * math.sin(2 * math.pi * index / period), 3)


def series(n: int, start: int = 0, period: int = 24) -> list[tuple[float, float]]:
    """(timestamp, value) pairs of the periodic signal at a 5-minute interval."""
    return [(START_TS + INTERVAL * i, periodic_value(i, period)) for i in range(start, start + n)]
