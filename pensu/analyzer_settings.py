"""Settings → analyzer configuration: the one recipe shared by the service and `pensu replay`.

A backtest honours the same `PENSU_*` presets, thresholds, episode periods and metric ranges as
the service, so what it marks `reported` is what the service would send.
"""

from __future__ import annotations

import re

from pensu.analyzer import AnalyzerConfig
from pensu.decision import DecisionConfig
from pensu.htm.presets import prediction_params, preset_params
from pensu.settings import Settings


def decision_config(settings: Settings) -> DecisionConfig:
    """The decision rule's thresholds and episode periods from settings."""
    return DecisionConfig(anomaly_score=settings.anomaly_score_threshold,
                          anomaly_likelihood=settings.anomaly_likelihood_threshold,
                          minimum_confidence=settings.minimum_confidence_for_reporting,
                          quiet_samples=settings.episode_quiet_samples,
                          suppression_samples=settings.episode_suppression_samples)


def analyzer_config(settings: Settings) -> AnalyzerConfig:
    """Build the analyzer configuration (presets, thresholds, episodes, steps) from settings."""
    anomaly = preset_params(settings.anomaly_model_preset, warmup_samples=settings.warmup_samples)
    prediction = prediction_params(preset_params(settings.prediction_model_preset,
                                                 warmup_samples=settings.warmup_samples),
                                   settings.prediction_steps)
    return AnalyzerConfig(anomaly_params=anomaly, prediction_params=prediction,
                          thresholds=decision_config(settings), prediction_steps=settings.prediction_steps)


class RangeAwareConfig:
    """Per-metric analyzer configs: settings' metric_ranges fix a metric's encoder range."""

    def __init__(self, base: AnalyzerConfig, ranges: dict[str, tuple[float, float]]) -> None:
        self.base = base
        self._ranges = [(re.compile(pattern), bounds) for pattern, bounds in ranges.items()]

    def for_metric(self, metric: str) -> AnalyzerConfig:
        """The config for `metric`: the base one, with a fixed range when a pattern matches."""
        for pattern, (lo, hi) in self._ranges:
            if pattern.match(metric):
                return with_range(self.base, lo, hi)
        return self.base


def with_range(config: AnalyzerConfig, lo: float, hi: float) -> AnalyzerConfig:
    """`config` with a fixed encoder range [lo, hi] for both models."""
    return AnalyzerConfig(anomaly_params=config.anomaly_params.replace(min_value=lo, max_value=hi),
                          prediction_params=config.prediction_params.replace(min_value=lo, max_value=hi),
                          thresholds=config.thresholds, prediction_steps=config.prediction_steps)
