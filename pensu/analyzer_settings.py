"""Settings → analyzer configurations: how `PENSU_*` settings map onto `AnalyzerConfig.from_presets`.

The service and `pensu replay` both build their configs here, so a backtest honours the same
presets, thresholds, episode periods and metric ranges as the service, and what it marks
`reported` is what the service would send. The recipe itself lives with `AnalyzerConfig`.
"""

from __future__ import annotations

from pensu.analyzer import AnalyzerConfig, MetricConfigs
from pensu.decision import DecisionConfig
from pensu.settings import Settings


def decision_config(settings: Settings) -> DecisionConfig:
    """The decision rule's thresholds and episode periods from settings."""
    return DecisionConfig(anomaly_score=settings.anomaly_score_threshold,
                          anomaly_likelihood=settings.anomaly_likelihood_threshold,
                          minimum_confidence=settings.minimum_confidence_for_reporting,
                          quiet_samples=settings.episode_quiet_samples,
                          suppression_samples=settings.episode_suppression_samples)


def analyzer_config(settings: Settings) -> AnalyzerConfig:
    """The base analyzer configuration (presets, thresholds, episodes, steps) from settings."""
    return AnalyzerConfig.from_presets(settings.anomaly_model_preset, settings.prediction_model_preset,
                                       steps=settings.prediction_steps, warmup=settings.warmup_samples,
                                       thresholds=decision_config(settings))


def metric_configs(settings: Settings) -> MetricConfigs:
    """Per-metric configurations: the base one, with PENSU_METRIC_RANGES fixing matching metrics' range."""
    return MetricConfigs(analyzer_config(settings), settings.metric_ranges)
