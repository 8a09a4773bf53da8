"""Offline backtest of one series through the same `MetricAnalyzer` the service runs.

Input: CSV with header ``timestamp,value``; timestamps as ``2014-07-01 00:00:00`` (UTC, ISO
8601 also accepted) or unix seconds. Output: one row per input row, same order, columns
``timestamp,value,anomaly_score,raw_score,anomaly_likelihood,prediction,prediction_confidence,
prediction_lower,prediction_upper`` where ``anomaly_score`` is the final score the service
thresholds (log-likelihood, or 1.0 on a spatial anomaly) and ``prediction`` is the value predicted *for this row* (made
``steps`` rows earlier), so it lines up with ``value``; ``prediction_lower`` / ``prediction_upper``
are that prediction's 80 % band (empty when unknown); then ``reported`` (1 when the service
would send a report for this row: an anomaly episode opens) and ``event`` (``opened``,
``resolved`` or empty). Unparseable rows are reported on stderr with their line numbers and
get empty cells after ``value``.

The analyzer is configured from the same `PENSU_*` environment as the service (presets,
thresholds, episode periods, warm-up, `PENSU_METRIC_RANGES` matched against ``--metric``),
through the service's own recipe (`pensu.analyzer_settings`), and decides through the same
`MetricAnalyzer`, so the ``reported`` column is what the service would alert on; the command
line's ``--preset``, ``--steps`` and ``--min/--max`` override the environment. At the end it
prints the alerts per day, to tune thresholds on one's own history.

Feedback rules (``--rules FILE``, ``--rules-from-topic``; pensu.feedback_io.replay_rules) apply
as in the service: a suppressed episode's rows say ``reported`` 0 with no ``event``, and rows in
a maintenance window with learning off are not learned (empty cells after ``value``).
"""

from __future__ import annotations

import csv
import math
import os
import sys
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO

from pensu.analyzer import MetricAnalyzer
from pensu.analyzer_settings import metric_configs
from pensu.errors import LineRejected, PensuError
from pensu.feedback import OfflineFeedback
from pensu.settings import ModelPreset, load_settings

OUTPUT_COLUMNS = ("timestamp", "value", "anomaly_score", "raw_score", "anomaly_likelihood",
                  "prediction", "prediction_confidence", "prediction_lower", "prediction_upper",
                  "reported", "event")
DAYS_LISTED = 62  # alerts-per-day lines printed before the list is cut short


class ReplayInputError(PensuError):
    """The input file as a whole is unusable (missing, no header, wrong columns)."""


@dataclass(frozen=True, slots=True)
class ReplayRow:
    """One output row; score fields are None for rows that could not be processed."""

    line: int
    timestamp: str
    value: str
    anomaly_score: float | None = None
    raw_score: float | None = None
    anomaly_likelihood: float | None = None
    prediction: float | None = None
    prediction_confidence: float | None = None
    reported: bool = False
    event: str = ""  # "opened" | "resolved" | ""
    unix_time: float | None = None
    prediction_lower: float | None = None
    prediction_upper: float | None = None

    def cells(self) -> list[str]:
        """The row as CSV cells."""
        def fmt(x: float | None) -> str:
            return "" if x is None else repr(float(x))
        processed = self.anomaly_score is not None
        return [self.timestamp, self.value, fmt(self.anomaly_score), fmt(self.raw_score),
                fmt(self.anomaly_likelihood), fmt(self.prediction), fmt(self.prediction_confidence),
                fmt(self.prediction_lower), fmt(self.prediction_upper),
                str(int(self.reported)) if processed else "", self.event]


def parse_timestamp(text: str) -> float:
    """Unix seconds from unix-seconds text or a date-time (naive means UTC)."""
    text = text.strip()
    try:
        value = float(text)
    except ValueError:
        try:
            parsed = datetime.fromisoformat(text)
        except ValueError:
            raise ValueError(f"unrecognised timestamp {text!r}") from None
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=UTC)
        return parsed.timestamp()
    if not math.isfinite(value):
        raise ValueError(f"timestamp {text!r} is not finite")
    return value


def build_analyzer(env: Mapping[str, str] | None = None, preset: ModelPreset | None = None,
                   min_value: float | None = None, max_value: float | None = None, steps: int | None = None,
                   metric: str = "replay") -> MetricAnalyzer:
    """The analyzer the service would build for `metric` from `env` (default: os.environ).

    `preset` and `steps` override both models' preset and the prediction steps; `min_value` and
    `max_value` fix the encoder range (else a matching PENSU_METRIC_RANGES entry does, else the
    warm-up estimates it, as in the service).
    """
    overrides: dict[str, str] = {}
    if preset is not None:
        overrides.update(PENSU_ANOMALY_MODEL_PRESET=preset, PENSU_PREDICTION_MODEL_PRESET=preset)
    if steps is not None:
        overrides["PENSU_PREDICTION_STEPS"] = str(steps)
    source = dict(os.environ if env is None else env)
    # Overrides replace any spelling of the variable (settings names are case-insensitive).
    source = {k: v for k, v in source.items() if k.upper() not in overrides}
    configs = metric_configs(load_settings({**source, **overrides}))
    if min_value is not None and max_value is not None:
        return MetricAnalyzer(metric, configs.base.with_range(min_value, max_value))
    return MetricAnalyzer(metric, configs.for_metric(metric))


def read_rows(stream: IO[str]) -> Iterator[tuple[int, list[str]]]:
    """Yield (line number, cells) of data rows after checking the header."""
    reader = csv.reader(stream)
    try:
        header = next(reader)
    except StopIteration:
        raise ReplayInputError("input is empty (expected a header 'timestamp,value')") from None
    names = [h.strip().lower() for h in header]
    if names[:2] != ["timestamp", "value"]:
        raise ReplayInputError(f"header must start with 'timestamp,value', got {','.join(header)!r}")
    for cells in reader:
        yield reader.line_num, cells


def replay(stream: IO[str], analyzer: MetricAnalyzer, warn: Callable[[str], None],
           progress: Callable[[int], None] = lambda n: None,
           rules: OfflineFeedback | None = None) -> Iterator[ReplayRow]:
    """Run every row through `analyzer` (and feedback `rules`), yielding output rows in input order."""
    for count, (line, cells) in enumerate(read_rows(stream), start=1):
        progress(count)
        ts_text = cells[0] if cells else ""
        value_text = cells[1] if len(cells) > 1 else ""
        try:
            if len(cells) < 2:
                raise ValueError(f"expected 2 columns, got {len(cells)}")
            ts = parse_timestamp(ts_text)
            value = float(value_text)
            if not math.isfinite(value):
                raise ValueError(f"value {value_text!r} is not finite")
            if rules is not None and not rules.learns(analyzer.metric, ts):
                yield ReplayRow(line, ts_text, value_text)  # maintenance window, learning off
                continue
            analysis = analyzer.process(ts, value)
            if rules is not None:
                analysis = rules.review(analysis)
        except (ValueError, LineRejected) as exc:
            warn(f"line {line}: skipped ({exc})")
            yield ReplayRow(line, ts_text, value_text)
            continue
        yield ReplayRow(line, ts_text, value_text, analysis.final_score, analysis.anomaly_score,
                        analysis.anomaly_likelihood, analysis.predicted_value, analysis.prediction_confidence,
                        analysis.reported, "" if analysis.event is None else analysis.event.event, ts,
                        prediction_lower=analysis.predicted_lower, prediction_upper=analysis.predicted_upper)


def write_rows(rows: Iterator[ReplayRow], out: IO[str]) -> list[ReplayRow]:
    """Write rows as CSV and return them (for plotting)."""
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(OUTPUT_COLUMNS)
    kept = []
    for row in rows:
        writer.writerow(row.cells())
        kept.append(row)
    return kept


def plot(rows: list[ReplayRow], path: Path, title: str) -> None:
    """Draw value, prediction with its band and anomaly score, reported anomalies marked (needs matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise PensuError("--plot needs matplotlib: pip install 'pensu[plot]'") from exc
    good = [r for r in rows if r.anomaly_score is not None]
    x = list(range(len(good)))
    fig, (top, bottom) = plt.subplots(2, 1, sharex=True, figsize=(14, 7), height_ratios=(2, 1))
    top.plot(x, [float(r.value) for r in good], lw=0.8, label="value")
    top.fill_between(x, [r.prediction_lower if r.prediction_lower is not None else math.nan for r in good],
                     [r.prediction_upper if r.prediction_upper is not None else math.nan for r in good],
                     color="tab:orange", alpha=0.2, lw=0, label="80 % band")
    top.plot(x, [r.prediction if r.prediction is not None else math.nan for r in good], lw=0.8,
             alpha=0.7, label="prediction")
    marks = [i for i, r in enumerate(good) if r.reported]
    top.scatter(marks, [float(good[i].value) for i in marks], color="red", zorder=3, s=18, label="reported")
    top.legend(loc="upper left")
    top.set_title(title)
    bottom.plot(x, [r.anomaly_score for r in good], lw=0.8, color="purple", label="anomaly score")
    bottom.plot(x, [r.raw_score for r in good], lw=0.5, color="grey", alpha=0.5, label="raw score")
    bottom.set_ylim(-0.02, 1.02)
    bottom.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def alerts_per_day(rows: list[ReplayRow]) -> list[str]:
    """Lines summarising reported anomalies per UTC day (every day with data is counted)."""
    days: Counter[str] = Counter()
    for row in rows:
        if row.unix_time is not None:
            day = datetime.fromtimestamp(row.unix_time, UTC).date().isoformat()
            days[day] += int(row.reported)
    if not days:
        return []
    total = sum(days.values())
    busiest = max(days.items(), key=lambda kv: (kv[1], kv[0]))
    lines = [f"alerts per day: {total} alerts over {len(days)} days, mean {total / len(days):.2f}, "
             f"max {busiest[1]} on {busiest[0]}, {sum(1 for n in days.values() if n)} days with alerts"]
    with_alerts = sorted(day for day, n in days.items() if n)
    lines += [f"  {day} {days[day]}" for day in with_alerts[:DAYS_LISTED]]
    if len(with_alerts) > DAYS_LISTED:
        lines.append(f"  ... {len(with_alerts) - DAYS_LISTED} more days with alerts")
    return lines


def run_replay(input_path: Path, output_path: Path, preset: ModelPreset | None = None,
               min_value: float | None = None, max_value: float | None = None, steps: int | None = None,
               plot_path: Path | None = None, metric: str = "replay", env: Mapping[str, str] | None = None,
               err: IO[str] = sys.stderr, rules: OfflineFeedback | None = None) -> int:
    """The `pensu replay` command; returns the exit code."""
    analyzer = build_analyzer(env, preset, min_value, max_value, steps, metric)
    try:
        total = sum(1 for _ in input_path.open(encoding="utf-8", errors="replace")) - 1
        step = max(1000, total // 10)

        def progress(n: int) -> None:
            if total >= 5000 and n % step == 0:
                print(f"replay: {n}/{total} rows ({100 * n // total}%)", file=err, flush=True)

        with input_path.open(newline="", encoding="utf-8") as src, output_path.open("w", newline="") as out:
            rows = write_rows(replay(src, analyzer, lambda m: print(f"replay: {m}", file=err), progress, rules), out)
    except (OSError, UnicodeDecodeError, ReplayInputError) as exc:
        print(f"replay: cannot use {input_path}: {exc}", file=err)
        return 2
    reported = sum(r.reported for r in rows)
    print(f"replay: {len(rows)} rows, {reported} reported anomalies -> {output_path}", file=err)
    if rules is not None:
        print(f"replay: {rules.summary()}", file=err)
    for text in alerts_per_day(rows):
        print(f"replay: {text}", file=err)
    if plot_path is not None:
        plot(rows, plot_path, input_path.name)
        print(f"replay: plot written to {plot_path}", file=err)
    return 0
