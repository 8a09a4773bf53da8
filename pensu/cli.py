"""The `pensu` command line: run, demo, generate, replay, config."""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
import threading
import time
from pathlib import Path

from pensu.errors import ConfigurationError, PensuError


class JsonLogFormatter(logging.Formatter):
    """One JSON object per log line."""

    def format(self, record: logging.LogRecord) -> str:
        """Render a record as JSON."""
        return json.dumps({"ts": round(record.created, 3), "level": record.levelname,
                           "logger": record.name, "message": record.getMessage()})


class LegacyLogFormatter(logging.Formatter):
    """The original Pensu's positional format, e.g. `timestamp=%s;module=%s;...;message=%s`.

    Each `%s` is filled by the key written before its `=`: timestamp, module, method, severity,
    exception_msg, exception_type and message have values; any other key (state, metric, ...)
    is left empty.
    """

    _KEY = re.compile(r"([A-Za-z_/-]+)=[^;=]*$")  # the key of the field a "%s" ends

    def __init__(self, fmt: str) -> None:
        super().__init__()
        self._legacy = fmt
        keys = []
        for part in fmt.split("%s")[:-1]:
            found = self._KEY.search(part)
            keys.append(found.group(1).lower() if found else "")
        self._keys = keys

    def format(self, record: logging.LogRecord) -> str:
        """Fill the positional fields from the record."""
        exc_type = exc_msg = ""
        if record.exc_info and record.exc_info[0] is not None:
            exc_type, exc_msg = record.exc_info[0].__name__, str(record.exc_info[1])
        values = {"timestamp": self.formatTime(record), "module": record.name, "method": record.funcName,
                  "severity": record.levelname, "exception_msg": exc_msg, "exception_type": exc_type,
                  "message": record.getMessage()}
        filled = [values.get(key, "") for key in self._keys]
        pieces = self._legacy.split("%s")
        return "".join(piece + (filled[i] if i < len(filled) else "") for i, piece in enumerate(pieces))


def make_formatter(fmt: str) -> logging.Formatter:
    """The formatter of PENSU_LOGGING_FORMAT: 'json', a legacy 'key=%s;...' form, or a logging format."""
    from pensu.settings import is_legacy_logging_format

    if fmt == "json":
        return JsonLogFormatter()
    if is_legacy_logging_format(fmt):
        return LegacyLogFormatter(fmt)
    return logging.Formatter(fmt)


def setup_logging(fmt: str, level: str) -> None:
    """Configure root logging from PENSU_LOGGING_FORMAT / PENSU_LOG_LEVEL."""
    handler = logging.StreamHandler()
    handler.setFormatter(make_formatter(fmt))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


def _load_settings():  # noqa: ANN202 - returns pensu.settings.Settings
    from pensu.settings import deprecation_warnings, load_settings, unknown_variables

    settings = load_settings()
    setup_logging(settings.logging_format, settings.log_level)
    for name in unknown_variables():
        logging.getLogger("pensu").warning("unknown variable %s ignored (typo?)", name)
    for line in deprecation_warnings(settings=settings):
        logging.getLogger("pensu").warning("%s", line)
    return settings


def cmd_run(args: argparse.Namespace) -> int:
    """Run the service until SIGTERM/SIGINT."""
    from pensu.service import PensuService, install_signal_handlers

    service = PensuService(_load_settings())
    install_signal_handlers(service)
    service.start()
    if service._embedded is not None:  # noqa: SLF001 - tell a newcomer where to send lines
        print(f"pensu: embedded Kafka at {service.bootstrap_servers}; produce carbon lines to topic "
              f"{service.settings.metrics_kafka_topic!r}", flush=True)
    return service.run()


def cmd_generate(args: argparse.Namespace) -> int:
    """Produce synthetic metrics (with injected anomalies) to a Kafka cluster."""
    from pensu.generator import SyntheticMetrics
    from pensu.kafka_io import produce_synthetic

    setup_logging("%(asctime)s %(levelname)s %(name)s %(message)s", "INFO")
    generator = SyntheticMetrics(interval=args.interval, start_time=time.time() - args.backfill * args.interval,
                                 seed=args.seed)
    produce_synthetic(args.bootstrap_servers, args.topic, generator, backfill=args.backfill,
                      rate=args.rate, limit=args.count, stop=threading.Event(), timeout=args.timeout)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """Embedded broker + Pensu + synthetic generator + live console view of reports."""
    from pensu.demo import run_demo

    setup_logging("%(asctime)s %(levelname)s %(name)s %(message)s", "WARNING")
    return run_demo(duration=args.duration, models_dir=Path(args.models_dir))


def cmd_replay(args: argparse.Namespace) -> int:
    """Offline backtest of one CSV series."""
    from pensu.feedback_io import replay_rules
    from pensu.replay import run_replay

    rules = replay_rules(Path(args.rules) if args.rules else None, args.rules_from_topic)
    return run_replay(Path(args.input), Path(args.output), preset=args.preset, min_value=args.min,
                      max_value=args.max, steps=args.steps,
                      plot_path=Path(args.plot) if args.plot else None, metric=args.metric, rules=rules)


def cmd_config(args: argparse.Namespace) -> int:
    """Print the effective settings, secrets masked."""
    from pensu.settings import deprecation_warnings, effective_settings, load_settings, unknown_variables

    settings = load_settings()
    for name, value in effective_settings(settings).items():
        print(f"{name}={value}")
    for name in unknown_variables():
        print(f"pensu: warning: unknown variable {name} ignored (typo?)", file=sys.stderr)
    for line in deprecation_warnings(settings=settings):
        print(f"pensu: warning: {line}", file=sys.stderr)
    return 0


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of the `pensu` command."""
    from pensu.htm.presets import PRESETS

    parser = argparse.ArgumentParser(prog="pensu", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("run", help="run the service (configured by PENSU_* variables)").set_defaults(func=cmd_run)
    demo = sub.add_parser("demo", help="embedded Kafka + generator + live anomaly reports")
    demo.add_argument("--duration", type=float, default=0, help="seconds to run (0: until Ctrl-C)")
    demo.add_argument("--models-dir", default=".pensu-demo-models")
    demo.set_defaults(func=cmd_demo)
    gen = sub.add_parser("generate", help="produce synthetic metrics with injected anomalies")
    gen.add_argument("--bootstrap-servers", required=True)
    gen.add_argument("--topic", default="metrics")
    gen.add_argument("--interval", type=float, default=60.0, help="seconds between samples of a series")
    gen.add_argument("--backfill", type=int, default=1500, help="history samples sent at once first")
    gen.add_argument("--rate", type=float, default=1.0, help="live samples per second per series after backfill")
    gen.add_argument("--count", type=int, default=0, help="stop after this many samples per series (0: never)")
    gen.add_argument("--seed", type=int, default=7)
    gen.add_argument("--timeout", type=float, default=30.0,
                     help="give up when the cluster does not answer or acknowledge within this many seconds")
    gen.set_defaults(func=cmd_generate)
    rep = sub.add_parser("replay", help="backtest a CSV series (timestamp,value) offline, with the "
                                        "service's PENSU_* thresholds")
    rep.add_argument("input")
    rep.add_argument("-o", "--output", required=True)
    rep.add_argument("--preset", default=None, choices=list(PRESETS),
                     help="both models' preset (default: PENSU_ANOMALY/PREDICTION_MODEL_PRESET)")
    rep.add_argument("--min", type=float, default=None, help="fixed minimum of the value range")
    rep.add_argument("--max", type=float, default=None, help="fixed maximum of the value range")
    rep.add_argument("--steps", type=int, default=None, help="prediction steps ahead (default: PENSU_PREDICTION_STEPS)")
    rep.add_argument("--metric", default="replay",
                     help="metric name: PENSU_METRIC_RANGES patterns are matched against it, episode ids carry it")
    rep.add_argument("--plot", default=None, help="write a PNG plot (needs the 'plot' extra)")
    rep.add_argument("--rules", default=None, metavar="FILE",
                     help="apply feedback rules from FILE (the feedback topic's JSON records, one per line)")
    rep.add_argument("--rules-from-topic", action="store_true",
                     help="apply the feedback rules of PENSU_FEEDBACK_KAFKA_TOPIC (read once to its end)")
    rep.set_defaults(func=cmd_replay)
    sub.add_parser("config", help="print the effective settings (secrets masked)").set_defaults(func=cmd_config)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `pensu` console script."""
    args = build_parser().parse_args(argv)
    if (args.min is None) != (args.max is None) if args.command == "replay" else False:
        print("pensu replay: give both --min and --max, or neither", file=sys.stderr)
        return 2
    try:
        return int(args.func(args))
    except ConfigurationError as exc:
        print(f"pensu: invalid configuration: {exc}", file=sys.stderr)
        return 2
    except PensuError as exc:
        print(f"pensu: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
