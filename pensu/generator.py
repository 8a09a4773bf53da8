"""Synthetic operational metrics with injected anomalies (for `pensu demo` and `pensu generate`).

Pure and seeded: `SyntheticMetrics.sample(i)` returns the i-th sample of every series, so the
same seed always yields the same data, and the anomaly schedule is known (for tests).
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from dataclasses import dataclass

DAY = 86400.0


@dataclass(frozen=True, slots=True)
class SeriesSpec:
    """One synthetic series: a shape, its scale, and its noise."""

    name: str
    shape: str  # daily | sawtooth | square | latency | queue
    base: float
    amplitude: float
    noise: float


DEFAULT_SERIES: tuple[SeriesSpec, ...] = (
    SeriesSpec("demo.web01.cpu.percent", "daily", 40.0, 25.0, 2.0),
    SeriesSpec("demo.web01.requests.per_second", "sawtooth", 300.0, 120.0, 8.0),
    SeriesSpec("demo.batch.jobs.running", "square", 2.0, 10.0, 0.3),
    SeriesSpec("demo.api.latency.p99_ms", "latency", 120.0, 20.0, 6.0),
    SeriesSpec("demo.kafka.consumer.lag", "queue", 500.0, 200.0, 30.0),
)
ANOMALY_KINDS = ("spike", "dip", "level_shift", "flatline", "noise_burst")


@dataclass(frozen=True, slots=True)
class Anomaly:
    """An injected anomaly: which series, kind, first and last sample index."""

    series: str
    kind: str
    start: int
    end: int


class SyntheticMetrics:
    """Deterministic synthetic series sampled every `interval` seconds from `start_time`."""

    def __init__(self, series: tuple[SeriesSpec, ...] = DEFAULT_SERIES, interval: float = 60.0,
                 start_time: float = 1_700_000_000.0, seed: int = 7, anomaly_every: int = 400,
                 first_anomaly: int = 900) -> None:
        self.series = series
        self.interval = interval
        self.start_time = start_time
        self.seed = seed
        self.anomaly_every = anomaly_every
        self.first_anomaly = first_anomaly

    def anomaly_at(self, index: int, spec_pos: int) -> Anomaly | None:
        """The anomaly affecting series `spec_pos` at sample `index`, if any."""
        if index < self.first_anomaly:
            return None
        period = self.anomaly_every * len(self.series)
        # Series take turns so anomalies are spread over time and across series.
        offset = (index - self.first_anomaly) % period
        turn = offset // self.anomaly_every
        if turn != spec_pos:
            return None
        local = offset - turn * self.anomaly_every
        episode = (index - self.first_anomaly) // period
        kind = ANOMALY_KINDS[(episode + spec_pos) % len(ANOMALY_KINDS)]
        length = 1 if kind in ("spike", "dip") else 12
        if local >= length:
            return None
        start = index - local
        return Anomaly(self.series[spec_pos].name, kind, start, start + length - 1)

    def _normal(self, spec_pos: int, index: int) -> float:
        spec = self.series[spec_pos]
        t = self.start_time + index * self.interval
        phase = (t % DAY) / DAY
        if spec.shape == "daily":
            level = spec.base + spec.amplitude * math.sin(2 * math.pi * phase)
        elif spec.shape == "sawtooth":
            level = spec.base + spec.amplitude * ((index % 60) / 60.0)
        elif spec.shape == "square":
            level = spec.base + (spec.amplitude if (index // 30) % 2 == 0 else 0.0)
        elif spec.shape == "latency":
            level = spec.base + spec.amplitude * math.sin(2 * math.pi * phase * 2)
        else:  # queue: fills and drains
            level = spec.base + spec.amplitude * abs(math.sin(2 * math.pi * index / 90.0))
        return level

    def value(self, spec_pos: int, index: int) -> float:
        """The value of series `spec_pos` at sample `index` (anomalies included)."""
        spec = self.series[spec_pos]
        rng = random.Random((self.seed * 1_000_003 + spec_pos) * 10_000_019 + index)
        value = self._normal(spec_pos, index) + rng.gauss(0.0, spec.noise)
        anomaly = self.anomaly_at(index, spec_pos)
        if anomaly is not None:
            scale = spec.amplitude + 3 * spec.noise
            if anomaly.kind == "spike":
                value += 3 * scale
            elif anomaly.kind == "dip":
                value -= 3 * scale
            elif anomaly.kind == "level_shift":
                value += 1.5 * scale
            elif anomaly.kind == "flatline":
                value = self._normal(spec_pos, anomaly.start)
            else:
                value += rng.gauss(0.0, scale)
        return round(value, 3)

    def index_at(self, timestamp: float) -> int:
        """The sample index whose timestamp is nearest `timestamp`."""
        return int(round((timestamp - self.start_time) / self.interval))

    def series_position(self, metric: str) -> int | None:
        """The position of series `metric`, None if it is not one of ours."""
        return next((pos for pos, spec in enumerate(self.series) if spec.name == metric), None)

    def injected(self, stop: int) -> list[Anomaly]:
        """Every anomaly that starts before sample `stop`, in start order."""
        found = []
        for index in range(self.first_anomaly, max(self.first_anomaly, stop)):
            for pos in range(len(self.series)):
                anomaly = self.anomaly_at(index, pos)
                if anomaly is not None and anomaly.start == index:
                    found.append(anomaly)
        return found

    def timestamp(self, index: int) -> float:
        """The timestamp of sample `index`."""
        return self.start_time + index * self.interval

    def sample(self, index: int) -> list[tuple[str, float, float]]:
        """(metric, value, timestamp) of every series at sample `index`."""
        ts = self.timestamp(index)
        return [(spec.name, self.value(pos, index), ts) for pos, spec in enumerate(self.series)]

    def lines(self, start: int, stop: int) -> Iterator[bytes]:
        """Carbon lines for samples [start, stop), grouped by sample index."""
        for index in range(start, stop):
            for metric, value, ts in self.sample(index):
                yield f"{metric} {value!r} {int(ts)}".encode()
