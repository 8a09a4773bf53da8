"""Pensu's carbon output in a real carbon-cache (Debian's graphite-carbon), read back from whisper.

The `carbon` fixture (tests/stack/conftest.py, started by tests/stack/graphite_stack.py) installs
`graphite-carbon` and `python3-whisper` with apt when they are missing and this process may (root,
apt-get present); otherwise the test is skipped with the reason. carbon-cache runs on loopback, on
free ports, with its own storage under tmp_path and a 1-second archive, so the values written can
be compared exactly.
"""

from __future__ import annotations

import time

import pytest

from pensu.carbon import DEFAULT_NAME_TEMPLATE, OUTPUT_KINDS, format_line, output_metric_name
from tests.stack.graphite_stack import Carbon


@pytest.mark.slow
def test_pensu_output_lines_are_stored_exactly(carbon: Carbon, sample_metric: str) -> None:
    now = int(time.time())
    metrics = [sample_metric, "stack-test.host_01.disk:sda.util-pct"]
    expected: dict[str, dict[int, float]] = {}
    payload = b""
    for metric in metrics:
        for j in range(3):
            ts = now - 30 + 5 * j
            values = {
                "anomaly_score": 0.125 * (j + 1),
                "anomaly_likelihood": 0.999995 - j * 1e-6,
                "anomaly_direction": (-1, 0, 1)[j],
                "prediction": 41.7 + j / 3,
                "prediction_confidence": 1 / 3 + j / 10,
                "prediction_lower": 38.2 - j / 7,
                "prediction_upper": 45.1 + j / 7,
            }
            assert set(values) == set(OUTPUT_KINDS)
            for kind, value in values.items():
                name = output_metric_name(DEFAULT_NAME_TEMPLATE, kind, metric)
                payload += format_line(name, value, ts)
                expected.setdefault(name, {})[ts] = float(value)
            # The input sample itself, as Logstash forwards it from the metrics topic.
            payload += format_line(metric, 40.0 + j * 1e-05, ts)
            expected.setdefault(metric, {})[ts] = 40.0 + j * 1e-05
    # A prediction line is stamped with the time it predicts, slightly in the future: carbon
    # must keep it (whisper reads only up to "now", so it shows once that time has come).
    future_ts = now + 2
    prediction = output_metric_name(DEFAULT_NAME_TEMPLATE, "prediction", metrics[0])
    payload += format_line(prediction, 99.5, future_ts)
    expected[prediction][future_ts] = 99.5

    carbon.send(payload)

    names = sorted(expected)
    carbon.wait_stored(expected)
    stored = carbon.read(names, now - 60, int(time.time()))

    for name in names:
        assert carbon.whisper_path(name).is_file()
        points = {ts: v for ts, v in stored[name].items() if ts in expected[name]}
        assert points == expected[name], name  # exact: carbon parses the shortest repr back
        assert set(stored[name]) == set(expected[name]), f"{name}: unexpected extra points"
    # Reports are counted from |direction| on the dashboard: one per non-zero direction sent.
    direction = output_metric_name(DEFAULT_NAME_TEMPLATE, "anomaly_direction", metrics[0])
    assert sum(abs(v) for v in stored[direction].values()) == 2
