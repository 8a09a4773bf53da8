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


def popen_run(env: dict[str, str]) -> subprocess.Popen:
    """`pensu run` as a subprocess with only `env`'s PENSU_* variables, output merged as text."""
    full = {k: v for k, v in os.environ.items() if not k.startswith("PENSU_")}
    full.update(env)
    return subprocess.Popen([sys.executable, "-m", "pensu", "run"], env=full, cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


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
def test_run_with_embedded_bootstrap_starts_an_embedded_broker_and_stops_on_sigterm(tmp_path: Path) -> None:
    port = free_port()
    env = {"PENSU_KAFKA_BOOTSTRAP_SERVERS": "embedded", "PENSU_PING_LISTEN_HOST": "127.0.0.1",
           "PENSU_PING_LISTEN_PORT": str(port), "PENSU_HTTP_PORT": "0",
           "PENSU_MODELS_DIR": str(tmp_path / "models"), "PYTHONUNBUFFERED": "1"}
    proc = popen_run(env)
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


def test_run_without_a_broker_stops_with_one_message_naming_the_variables(tmp_path: Path) -> None:
    result = pensu("run", env={"PENSU_PING_LISTEN_HOST": "127.0.0.1", "PENSU_PING_LISTEN_PORT": str(free_port()),
                               "PENSU_HTTP_PORT": "0", "PENSU_MODELS_DIR": str(tmp_path)}, timeout=60)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "embedded Kafka" not in result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    message = [line for line in result.stderr.splitlines() if "pensu:" in line]
    assert len(message) == 1, result.stderr
    for variable in ("PENSU_KAFKA_BOOTSTRAP_SERVERS", "PENSU_KAFKA_CONSUMER_SERVER", "PENSU_KAFKA_PRODUCER_SERVER"):
        assert variable in message[0]


def test_original_variables_alone_are_no_longer_unknown_and_select_the_clusters(tmp_path: Path) -> None:
    # Before #11 these were "unknown variable (typo?)" and an embedded broker started instead.
    result = pensu("config", env={"PENSU_KAFKA_CONSUMER_SERVER": "in:9092", "PENSU_KAFKA_PRODUCER_SERVER": "out:9092"})
    assert result.returncode == 0, result.stderr
    assert "unknown variable" not in result.stderr
    assert "PENSU_KAFKA_CONSUMER_SERVER=in:9092" in result.stdout
    assert "PENSU_KAFKA_PRODUCER_SERVER=out:9092" in result.stdout


@pytest.mark.parametrize("variable,value,words", [
    ("PENSU_KAFKA_OPT_FOO_BAR", "1", "No such configuration property"),
    ("PENSU_KAFKA_OPT_SOCKET_TIMEOUT_MS", "abc", "Invalid value"),
    ("PENSU_KAFKA_CONSUMER_OPT_FETCH_WAIT_MAX_MS", "soon", "Invalid value"),
])
def test_bad_pass_through_option_fails_config_and_run_with_one_line(variable: str, value: str, words: str,
                                                                    tmp_path: Path) -> None:
    env = {variable: value, "PENSU_KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1", "PENSU_MODELS_DIR": str(tmp_path),
           "PENSU_PING_LISTEN_PORT": str(free_port()), "PENSU_HTTP_PORT": "0"}
    for command in ("config", "run"):
        result = pensu(command, env=env, timeout=60)
        assert result.returncode == 2, (command, result.stderr)
        assert "Traceback" not in result.stderr
        assert result.stderr.strip().count("\n") == 0, result.stderr
        assert variable in result.stderr and words in result.stderr


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
    # With the default thresholds the labelled jump is reported, once, where it starts.
    reported = [i for i, r in enumerate(rows) if r[OUTPUT_COLUMNS.index("reported")] == "1"]
    assert reported and jump - 5 <= reported[0] <= jump + 20 and len(reported) <= 3
    assert "alerts per day:" in result.stderr and "2014-04-11" in result.stderr


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
    assert rows[0][2] != "" and rows[3][2] != "" and rows[0][OUTPUT_COLUMNS.index("reported")] == "0"


def test_replay_rejects_an_unusable_file(tmp_path: Path) -> None:
    src = tmp_path / "in.csv"
    src.write_text("time;val\n1;2\n")
    result = pensu("replay", str(src), "-o", str(tmp_path / "out.csv"))
    assert result.returncode != 0
    assert "timestamp,value" in result.stderr
    missing = pensu("replay", str(tmp_path / "missing.csv"), "-o", str(tmp_path / "o.csv"))
    assert missing.returncode != 0


@pytest.mark.slow
def test_librdkafka_logs_go_through_logging_rate_limited(tmp_path: Path) -> None:
    """Broker unreachable: librdkafka's connection failures come out as JSON log lines, a few, not
    ~22 raw `%3|FAIL` lines a second on stderr."""
    env = {"PENSU_KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{free_port()}", "PENSU_LOGGING_FORMAT": "json",
           "PENSU_PING_LISTEN_HOST": "127.0.0.1", "PENSU_PING_LISTEN_PORT": str(free_port()), "PENSU_HTTP_PORT": "0",
           "PENSU_MODELS_DIR": str(tmp_path / "models"), "PYTHONUNBUFFERED": "1"}
    proc = popen_run(env)
    time.sleep(8)
    proc.send_signal(signal.SIGTERM)
    try:
        out, _ = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
    lines = [line for line in out.splitlines() if line.strip()]
    assert not [line for line in lines if line.startswith("%")], out[-2000:]
    import json

    records = [json.loads(line) for line in lines]  # every line in the configured format
    from_librdkafka = [r for r in records if r["logger"] == "pensu.kafka.librdkafka"]
    assert from_librdkafka, out[-2000:]
    assert any("FAIL" in r["message"] for r in from_librdkafka)
    # Rate-limited per facility (one per 30 s each): a handful in 8 s, not hundreds.
    assert len(from_librdkafka) <= 10, out[-2000:]


def test_generate_to_an_unreachable_broker_gives_up_with_an_error() -> None:
    started = time.monotonic()
    result = pensu("generate", "--bootstrap-servers", f"127.0.0.1:{free_port()}", "--timeout", "3",
                   "--backfill", "4", "--count", "4", "--rate", "0", timeout=60)
    assert time.monotonic() - started < 30
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("pensu:")]
    assert len(errors) == 1 and "cannot reach Kafka" in errors[0] and "3 s" in errors[0], result.stderr
