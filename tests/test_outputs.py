"""OutputFormatter: the memoised fast `records` renders the same bytes as the line-by-line reference."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import pensu.outputs as outputs
from pensu.analyzer import Analysis, Thresholds
from pensu.carbon import DEFAULT_NAME_TEMPLATE, MIN_TIMESTAMP, format_line, output_metric_name
from pensu.decision import EpisodeEvent
from pensu.errors import LineRejected
from pensu.outputs import OutputFormatter, OutputTopics

TOPICS = OutputTopics("anom", "pred", "reports")


def formatter(template: str = DEFAULT_NAME_TEMPLATE) -> OutputFormatter:
    return OutputFormatter(TOPICS, template, Thresholds(), "inst-1")


def analysis(metric: str = "a.b", **fields: object) -> Analysis:
    base: dict[str, object] = {
        "metric": metric, "timestamp": 1_700_000_060.0, "value": 5.0, "anomaly_score": 0.25,
        "anomaly_likelihood": 0.5, "log_likelihood": 0.1, "final_score": 0.1, "spatial_anomaly": False,
        "predicted_value": 4.5, "prediction_confidence": 0.7, "forecast": 5.5, "forecast_confidence": 0.6,
        "forecast_timestamp": 1_700_000_120.0, "direction": 1, "reported": False, "model_age": 10,
        "warming_up": False, "anomalous": False, "event": None, "forecast_lower": 4.0, "forecast_upper": 7.0,
    }
    base.update(fields)
    return Analysis(**base)  # type: ignore[arg-type]


EVENT = EpisodeEvent("opened", "a.b@1700000060", 1_700_000_060.0, 0.9, "temporal", (1.0, 2.0), 1, 1)

_numbers = (st.floats(allow_nan=False, allow_infinity=False) | st.integers(-(2**60), 2**60)
            | st.sampled_from([0.0, -0.0, 2.0**53, -(2.0**53), 2.0**53 - 1, 1e300, 5e-324]))
_optional = st.none() | _numbers
_stamps = st.floats(min_value=MIN_TIMESTAMP, max_value=4e9) | st.integers(int(MIN_TIMESTAMP), 2**40)


@settings(max_examples=400, deadline=None)
@given(score=_numbers, likelihood=_numbers, direction=st.sampled_from([-1, 0, 1]), ts=_stamps,
       forecast=_optional, forecast_ts=st.none() | _stamps, confidence=_numbers, lower=_optional, upper=_optional,
       event=st.sampled_from([None, EVENT]))
def test_records_equal_the_checked_reference_byte_for_byte(
        score: float, likelihood: float, direction: int, ts: float, forecast: float | None,
        forecast_ts: float | None, confidence: float, lower: float | None, upper: float | None,
        event: EpisodeEvent | None) -> None:
    a = analysis(anomaly_score=score, anomaly_likelihood=likelihood, direction=direction, timestamp=ts,
                 forecast=forecast, forecast_timestamp=forecast_ts, forecast_confidence=confidence,
                 forecast_lower=lower, forecast_upper=upper, event=event)
    fast, checked = formatter(), formatter()
    assert fast.records(a) == checked.records_checked(a)
    assert fast.records(a) == checked.records_checked(a)  # from the memo this time


@pytest.mark.parametrize("special", [math.nan, math.inf, -math.inf, np.float64(0.125), np.float32(0.5), True,
                                     10**400])
def test_unusual_numbers_give_the_same_text_or_the_same_error(special: object) -> None:
    for field in ("anomaly_score", "forecast", "forecast_upper"):
        a = analysis(**{field: special})
        try:
            expected = formatter().records_checked(a)
        except LineRejected as exc:
            with pytest.raises(LineRejected) as info:
                formatter().records(a)
            assert (info.value.reason, info.value.detail) == (exc.reason, exc.detail)
        else:
            assert formatter().records(a) == expected


def test_a_bad_timestamp_raises_like_the_reference() -> None:
    for ts in (math.nan, -5.0):
        a = analysis(timestamp=ts)
        with pytest.raises(LineRejected) as expected:
            formatter().records_checked(a)
        with pytest.raises(LineRejected) as info:
            formatter().records(a)
        assert (info.value.reason, info.value.detail) == (expected.value.reason, expected.value.detail)


def test_the_name_memo_never_mixes_metrics() -> None:
    f = formatter()
    first, second = f.records(analysis("svc.one")), f.records(analysis("svc.two"))
    assert {r.key for r in first} == {b"svc.one"} and {r.key for r in second} == {b"svc.two"}
    assert first[0].value == format_line(output_metric_name(DEFAULT_NAME_TEMPLATE, "anomaly_score", "svc.one"),
                                         0.25, 1_700_000_060.0)
    assert all(b"svc.two" in r.value and b"svc.one" not in r.value for r in second)
    assert f.records(analysis("svc.one")) == first


def test_the_name_memo_stays_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(outputs, "NAMES_CACHE_MAX_METRICS", 5)
    f = formatter()
    for i in range(23):
        metric = f"m.{i}"
        assert f.records(analysis(metric)) == formatter().records_checked(analysis(metric))
        assert len(f._lines) <= 5  # noqa: SLF001 - the memo's size is the property under test


def test_a_metric_with_an_overlong_output_name_behaves_like_the_reference() -> None:
    # A long template: the anomaly names of this metric fit, the longer prediction names do not.
    template = "p" * 748 + ".{{#anomaly_metric}}"
    metric = "m" * 255
    output_metric_name(template, "anomaly_direction", metric)
    with pytest.raises(LineRejected):
        output_metric_name(template, "prediction_confidence", metric)
    no_forecast = analysis(metric, forecast=None)
    assert formatter(template).records(no_forecast) == formatter(template).records_checked(no_forecast)
    with pytest.raises(LineRejected) as info:
        formatter(template).records(analysis(metric))
    assert info.value.reason == "name_too_long"
