"""Cardinality flood: N distinct metric names (one sample each) through `python -m pensu run`.

Prints the processing rate, the service's resident memory (now and peak, from /proc), the
checkpoint directory (files, bytes) as it evolves, and how many over-quota log lines were
written. The service runs as a child process against a librdkafka mock cluster hosted here.

    python bench/flood.py                       # 1,000,000 names, cap 1000, 10,000 tracked
    python bench/flood.py --names 20000 --cap 500 --tracked 2000
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from confluent_kafka import Producer

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pensu.kafka_io import EmbeddedKafka  # noqa: E402

START = 1_700_000_000
OVER_QUOTA_TEXT = "over the model quota"


@dataclass
class FloodResult:
    """What one flood run measured."""

    names: int
    processed: int
    seconds: float
    rss_kb: list[tuple[int, int]] = field(default_factory=list)  # (processed, VmRSS kB) samples
    peak_rss_kb: int = 0
    max_files: int = 0
    max_bytes: int = 0
    final_files: int = 0
    final_bytes: int = 0
    over_quota_lines: int = 0
    exit_code: int | None = None
    log_tail: str = ""

    @property
    def rate(self) -> float:
        """Names (samples) processed per second."""
        return self.processed / self.seconds if self.seconds else 0.0


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _status_kb(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def _processed(port: int) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            for line in resp.read().decode().splitlines():
                if line.startswith("pensu_samples_processed_total "):
                    return int(float(line.split()[-1]))
    except OSError:
        pass
    return -1


def disk_usage(models: Path) -> tuple[int, int]:
    """(checkpoint files, bytes) under the models directory, quarantine excluded."""
    files = size = 0
    for sub in os.scandir(models):
        if not sub.is_dir() or len(sub.name) != 2:
            continue
        for item in os.scandir(sub.path):
            try:
                size += item.stat().st_size
                files += 1
            except FileNotFoundError:
                continue
    return files, size


def _line(i: int, step: int, prefix: str) -> str:
    return f"{prefix}.host{i % 997}.m{i} {(i + step) % 100} {START + 60 * step}"


def flood_messages(names: int, samples_per_name: int = 1, per_message: int = 100,
                   prefix: str = "flood") -> Iterator[tuple[bytes | None, list[str]]]:
    """(key, lines) messages: one sample per name, `per_message` names a message, unkeyed; or,
    with several samples per name, `per_message` consecutive samples of one name keyed by it
    (so each name's samples stay in order on one partition)."""
    if samples_per_name == 1:
        for start in range(0, names, per_message):
            yield None, [_line(i, 0, prefix) for i in range(start, min(names, start + per_message))]
        return
    for i in range(names):
        name = _line(i, 0, prefix).split(" ", 1)[0].encode()
        for start in range(0, samples_per_name, per_message):
            yield name, [_line(i, step, prefix) for step in range(start, min(samples_per_name, start + per_message))]


def produce_flood(bootstrap: str, topic: str, messages: Iterator[tuple[bytes | None, list[str]]], count: int,
                  ahead: Callable[[], int] | None = None, window: int = 0) -> None:
    """Produce messages until `count` lines were sent.

    With `window`, wait while more than `window` lines are ahead of `ahead()` (processed so
    far): the mock cluster retains a bounded log per partition (measured: the oldest of 2,000
    3.5 KB messages were deleted), and a flood queued all at once would lose its first lines.
    """
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20})
    sent = 0
    while sent < count:
        while window and ahead is not None and sent - max(0, ahead()) > window:
            time.sleep(0.5)
        key, chunk = next(messages)
        while True:
            try:
                producer.produce(topic, key=key, value="\n".join(chunk).encode())
                break
            except BufferError:
                producer.poll(0.1)
        sent += len(chunk)
        producer.poll(0)
    assert producer.flush(60) == 0


def run_flood(bootstrap: str, models: Path, names: int, cap: int, tracked: int, autosave: float = 2.0,
              quota_log_seconds: float = 10.0, timeout: float = 3600.0, extra_env: dict[str, str] | None = None,
              log_path: Path | None = None, progress: bool = False, samples_per_name: int = 1,
              window: int = 0) -> FloodResult:
    """Start the service, flood it with `names` names, watch memory and disk, stop it cleanly."""
    tag = f"flood{os.getpid()}x{int(time.time() * 1000) % 10**8}"
    topic, port = f"{tag}.metrics", _free_port()
    env = dict(os.environ)
    env.update({
        "PENSU_KAFKA_BOOTSTRAP_SERVERS": bootstrap, "PENSU_KAFKA_CONSUMER_GROUP_ID": f"{tag}.group",
        "PENSU_METRICS_KAFKA_TOPIC": topic, "PENSU_ANOMALY_SCORES_KAFKA_TOPIC": f"{tag}.anomaly_metrics",
        "PENSU_PREDICTION_METRICS_KAFKA_TOPIC": f"{tag}.predictions",
        "PENSU_ANOMALY_REPORTS_KAFKA_TOPIC": f"{tag}.anomalies", "PENSU_TOPICS_REPORT_INTERVAL": "0",
        "PENSU_MODELS_DIR": str(models), "PENSU_MAX_ALLOWED_MODELS": str(cap),
        "PENSU_MAX_TRACKED_METRICS": str(tracked), "PENSU_MODELS_AUTOSAVE_INTERVAL": str(autosave),
        "PENSU_MIN_SECONDS_BETWEEN_OVER_QUOTA_LOG_MSG": str(quota_log_seconds),
        "PENSU_PING_LISTEN_HOST": "127.0.0.1", "PENSU_PING_LISTEN_PORT": str(_free_port()),
        "PENSU_HTTP_HOST": "127.0.0.1", "PENSU_HTTP_PORT": str(port), "PENSU_INSTANCE_ID": "flood",
        "PENSU_KAFKA_CONSUMER_OPT_TOPIC_METADATA_REFRESH_INTERVAL_MS": "500", "PYTHONUNBUFFERED": "1",
    })
    env.update(extra_env or {})
    total = names * samples_per_name
    lines = flood_messages(names, samples_per_name)
    # The input topic exists before the service subscribes (a group joining a missing topic stalls).
    first = total if not window else min(total, window)
    produce_flood(bootstrap, topic, lines, first)
    log_path = log_path or models.parent / "flood-service.log"
    with open(log_path, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "pensu", "run"], env=env, cwd=ROOT, stdout=out,
                                stderr=subprocess.STDOUT)
    if first < total:  # the rest follows the service, at most `window` lines ahead
        threading.Thread(target=produce_flood, args=(bootstrap, topic, lines, total - first),
                         kwargs={"ahead": lambda: _processed(port) - first, "window": window},
                         daemon=True).start()
    result = FloodResult(names=names, processed=0, seconds=0.0)
    started: float | None = None
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and proc.poll() is None:
            done = _processed(port)
            if done > 0 and started is None:
                started = time.monotonic()
            rss = _status_kb(proc.pid, "VmRSS")
            result.peak_rss_kb = max(result.peak_rss_kb, _status_kb(proc.pid, "VmHWM"))
            if models.is_dir():
                files, size = disk_usage(models)
                result.max_files, result.max_bytes = max(result.max_files, files), max(result.max_bytes, size)
            if done >= 0:
                result.rss_kb.append((done, rss))
                result.processed = done
            if progress:
                print(f"  {done:>9} processed  rss {rss / 1024:7.1f} MiB  files {result.max_files}", flush=True)
            if done >= total:
                break
            time.sleep(1.0)
        result.seconds = time.monotonic() - (started or time.monotonic())
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(120)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        result.exit_code = proc.returncode
    text = log_path.read_text(errors="replace")
    result.over_quota_lines = text.count(OVER_QUOTA_TEXT)
    result.log_tail = text[-3000:]
    result.final_files, result.final_bytes = disk_usage(models) if models.is_dir() else (0, 0)
    return result


def main() -> None:
    """Run one flood and print its figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--names", type=int, default=1_000_000)
    parser.add_argument("--cap", type=int, default=1000, help="PENSU_MAX_ALLOWED_MODELS")
    parser.add_argument("--tracked", type=int, default=10_000, help="PENSU_MAX_TRACKED_METRICS")
    parser.add_argument("--autosave", type=float, default=5.0, help="PENSU_MODELS_AUTOSAVE_INTERVAL")
    parser.add_argument("--quota-log-seconds", type=float, default=10.0)
    parser.add_argument("--timeout", type=float, default=7200.0)
    parser.add_argument("--window", type=int, default=100_000,
                        help="lines produced ahead of the service at most (0: all up front)")
    args = parser.parse_args()
    with EmbeddedKafka() as kafka, tempfile.TemporaryDirectory() as tmp:
        result = run_flood(kafka.bootstrap_servers, Path(tmp) / "models", args.names, args.cap, args.tracked,
                           args.autosave, args.quota_log_seconds, args.timeout, progress=True,
                           window=args.window)
    rss = result.rss_kb
    quarter = next((kb for done, kb in rss if done >= result.names // 4), rss[-1][1] if rss else 0)
    print(f"flood: {result.processed:,} of {result.names:,} names in {result.seconds:.0f} s "
          f"({result.rate:,.0f} names/s), cap {args.cap}, tracked {args.tracked}")
    print(f"  RSS: {quarter / 1024:.0f} MiB at 25%, {rss[-1][1] / 1024 if rss else 0:.0f} MiB at the end, "
          f"peak {result.peak_rss_kb / 1024:.0f} MiB")
    print(f"  disk: at most {result.max_files:,} checkpoint files / {result.max_bytes / 2**20:.1f} MiB; "
          f"{result.final_files:,} files / {result.final_bytes / 2**20:.1f} MiB after shutdown")
    print(f"  over-quota log lines: {result.over_quota_lines} "
          f"(at most one per {args.quota_log_seconds:g} s); exit code {result.exit_code}")


if __name__ == "__main__":
    main()
