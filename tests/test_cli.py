"""The `pensu` command line, run as real subprocesses."""

from __future__ import annotations

import csv
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pensu.carbon import parse_line
from pensu.replay import OUTPUT_COLUMNS
from tests.conftest import KafkaCluster, free_port

REPO = Path(__file__).resolve().parents[1]
NAB_DATA = Path(os.environ.get("PENSU_NAB_DATA", REPO.parent / "shared" / "nab" / "data"))


def pensu(*args: str, env: dict[str, str] | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    full = {k: v for k, v in os.environ.items() if not k.startswith("PENSU_")}
    full.update(env or {})
    return subprocess.run([sys.executable, "-m", "pensu", *args], env=full, cwd=REPO, capture_output=True,
                          text=True, timeout=timeout)


def test_config_prints_effective_settings_with_secrets_masked() -> None:
    result = pensu("config", env={"PENSU_KAFKA_SASL_PASSWORD": "hunter2", "PENSU_PREDICTION_STEPS": "3"})
    assert result.returncode == 0, result.stderr
    assert "hunter2" not in result.stdout
    assert re.search(r"^PENSU_KAFKA_SASL_PASSWORD=\*+$", result.stdout, re.M)
    assert "PENSU_PREDICTION_STEPS=3" in result.stdout
    assert "PENSU_METRICS_KAFKA_TOPIC=metrics" in result.stdout


@pytest.mark.parametrize("variable,value", [("PENSU_PING_LISTEN_PORT", "abc"),
                                            ("PENSU_ALLOWED_TO_WORK_ON_METRICS", "(unclosed"),
                                            ("PENSU_ANOMALY_SCORE_THRESHOLD", "1.5")])
def test_bad_setting_stops_start_up_naming_the_variable(variable: str, value: str) -> None:
    result = pensu("run", env={variable: value}, timeout=60)
    assert result.returncode == 2
    assert variable in result.stderr
    assert result.stderr.count("\n") <= 3  # one clear message, not a traceback
    assert "Traceback" not in result.stderr


@pytest.mark.kafka
def test_generate_produces_parseable_keyed_lines(kafka: KafkaCluster) -> None:
    topic = kafka.unique("gen")
    result = pensu("generate", "--bootstrap-servers", kafka.bootstrap_servers, "--topic", topic,
                   "--backfill", "4", "--count", "4", "--rate", "0", timeout=120)
    assert result.returncode == 0, result.stderr
    msgs = kafka.consume_all([topic], expected=20, timeout=30, idle=1)
    assert len(msgs) == 20  # 5 series × 4 samples
    for msg in msgs:
        sample = parse_line(msg.value())
        assert msg.key() == sample.metric.encode()


@pytest.mark.slow
def test_run_without_bootstrap_starts_an_embedded_broker_and_stops_on_sigterm(tmp_path: Path) -> None:
    port = free_port()
    env = {"PENSU_PING_LISTEN_HOST": "127.0.0.1", "PENSU_PING_LISTEN_PORT": str(port), "PENSU_HTTP_PORT": "0",
           "PENSU_MODELS_DIR": str(tmp_path / "models"), "PYTHONUNBUFFERED": "1"}
    full = {k: v for k, v in os.environ.items() if not k.startswith("PENSU_")}
    full.update(env)
    proc = subprocess.Popen([sys.executable, "-m", "pensu", "run"], env=full, cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        first = proc.stdout.readline()  # type: ignore[union-attr]
        deadline = time.monotonic() + 60
        while "embedded Kafka at" not in first and time.monotonic() < deadline and first:
            first = proc.stdout.readline()  # type: ignore[union-attr]
        assert re.search(r"embedded Kafka at 127\.0\.0\.1:\d+", first), first
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(b"ping\n")
            assert sock.recv(64).strip() == b"pong"
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0


NAB_FILE = NAB_DATA / "artificialWithAnomaly" / "art_daily_jumpsup.csv"


@pytest.mark.slow
@pytest.mark.skipif(not NAB_FILE.exists(), reason=f"NAB data not found at {NAB_FILE}")
def test_replay_a_nab_file_end_to_end(tmp_path: Path) -> None:
    out, plot = tmp_path / "out.csv", tmp_path / "out.png"
    result = pensu("replay", str(NAB_FILE), "-o", str(out), "--plot", str(plot))
    assert result.returncode == 0, result.stderr
    with NAB_FILE.open() as fh:
        inputs = list(csv.DictReader(fh))
    with out.open() as fh:
        reader = csv.reader(fh)
        header = next(reader)
        rows = list(reader)
    assert tuple(header) == OUTPUT_COLUMNS
    assert [r[0] for r in rows] == [r["timestamp"] for r in inputs]
    assert [r[1] for r in rows] == [r["value"] for r in inputs]
    scores = [float(r[2]) for r in rows]
    assert all(0.0 <= s <= 1.0 for s in scores)
    # The labelled jump (2014-04-11 09:00) is the most anomalous stretch after the first day.
    jump = next(i for i, r in enumerate(inputs) if r["timestamp"].startswith("2014-04-11 09"))
    assert max(scores[jump - 20:jump + 60]) >= max(scores[1000:jump - 100])
    # the band columns: filled wherever a prediction is, bracketing it
    col = {name: i for i, name in enumerate(header)}
    pred, low, high = col["prediction"], col["prediction_lower"], col["prediction_upper"]
    banded = [r for r in rows if r[pred] != ""]
    assert len(banded) > len(rows) // 2
    assert all(float(r[low]) <= float(r[pred]) <= float(r[high]) for r in banded)
    assert plot.stat().st_size > 1000
    assert "rows" in result.stderr


def test_replay_reports_bad_rows_and_keeps_going(tmp_path: Path) -> None:
    src = tmp_path / "in.csv"
    src.write_text("timestamp,value\n2014-01-01 00:00:00,1\nnot-a-time,2\n2014-01-01 00:10:00,abc\n"
                   "2014-01-01 00:15:00,3\n")
    out = tmp_path / "out.csv"
    result = pensu("replay", str(src), "-o", str(out))
    assert result.returncode == 0, result.stderr
    assert "line 3" in result.stderr and "line 4" in result.stderr
    rows = list(csv.reader(out.open()))[1:]
    assert len(rows) == 4
    empty = [""] * (len(OUTPUT_COLUMNS) - 2)
    assert rows[1][2:] == empty and rows[2][2:] == empty
    assert rows[0][2] != "" and rows[3][2] != ""


def test_replay_rejects_an_unusable_file(tmp_path: Path) -> None:
    src = tmp_path / "in.csv"
    src.write_text("time;val\n1;2\n")
    result = pensu("replay", str(src), "-o", str(tmp_path / "out.csv"))
    assert result.returncode != 0
    assert "timestamp,value" in result.stderr
    missing = pensu("replay", str(tmp_path / "missing.csv"), "-o", str(tmp_path / "o.csv"))
    assert missing.returncode != 0
