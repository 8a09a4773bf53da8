"""Pensu's carbon output in a real carbon-cache (Debian's graphite-carbon), read back from whisper.

The session fixture installs `graphite-carbon` and `python3-whisper` with apt when they are
missing and this process may (root, apt-get present); otherwise the test is skipped with the
reason. carbon-cache runs on loopback, on free ports, with its own storage under tmp_path and a
1-second archive, so the values written can be compared exactly.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest

from pensu.carbon import DEFAULT_NAME_TEMPLATE, OUTPUT_KINDS, format_line, output_metric_name

APT_PACKAGES = ("graphite-carbon", "python3-whisper")
APT_LOCK = Path(tempfile.gettempdir()) / "pensu-stack-tests-apt.lock"
APT_LOCK_WAIT = 900.0
CARBON_START_TIMEOUT = 60.0
WRITE_TIMEOUT = 60.0

# Reads whisper files with the system python that has the `whisper` module (Debian's); input
# is a JSON list of [path, from, until], output maps each path to [[ts, value], ...] or null.
READ_WHISPER = r"""
import json, os, sys, whisper
out = {}
for path, start, until in json.load(sys.stdin):
    if not os.path.exists(path):
        out[path] = None
        continue
    (first, _end, step), values = whisper.fetch(path, start, until)
    out[path] = [[first + i * step, v] for i, v in enumerate(values) if v is not None]
print(json.dumps(out))
"""


@dataclass(frozen=True)
class CarbonTools:
    """Paths of the carbon-cache launcher and of a python that imports `whisper`."""

    carbon_cache: str
    whisper_python: str


def _clean_env() -> dict[str, str]:
    """Environment for the system python: nothing from this test run's virtualenv."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env["PATH"] = "/usr/sbin:/usr/bin:/sbin:/bin"
    return env


def _python_with_whisper() -> str | None:
    candidates = []
    fetch = shutil.which("whisper-fetch") or ("/usr/bin/whisper-fetch" if os.path.exists("/usr/bin/whisper-fetch") else None)
    if fetch:
        first = Path(fetch).read_text(errors="replace").splitlines()[0]
        if first.startswith("#!"):
            candidates.append(first[2:].strip().split()[0])
    candidates.append("/usr/bin/python3")
    for python in candidates:
        if not os.path.exists(python):
            continue
        with contextlib.suppress(OSError, subprocess.TimeoutExpired):
            if subprocess.run([python, "-c", "import whisper"], env=_clean_env(), timeout=30,
                              capture_output=True).returncode == 0:
                return python
    return None


def _find_tools() -> CarbonTools | None:
    carbon = "/usr/bin/carbon-cache" if os.path.exists("/usr/bin/carbon-cache") else shutil.which("carbon-cache")
    python = _python_with_whisper()
    return CarbonTools(carbon, python) if carbon and python else None


@contextlib.contextmanager
def _exclusive(path: Path, timeout: float) -> Iterator[None]:
    """An flock held across processes (parallel test workers install only once)."""
    with open(path, "w") as handle:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES) or time.monotonic() > deadline:
                    raise
                time.sleep(1.0)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _apt_install() -> str | None:
    """Install the packages; return None on success, else why it failed."""
    env = {**_clean_env(), "DEBIAN_FRONTEND": "noninteractive"}
    steps = (["apt-get", "update", "-q"],
             ["apt-get", "install", "-y", "-q", "--no-install-recommends", *APT_PACKAGES])
    for argv, timeout in zip(steps, (300, 600)):
        try:
            proc = subprocess.run(argv, env=env, timeout=timeout, capture_output=True, text=True)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"{' '.join(argv)}: {exc}"
        if proc.returncode != 0:
            return f"{' '.join(argv)} exited {proc.returncode}: {proc.stderr.strip()[-400:]}"
    return None


@pytest.fixture(scope="session")
def carbon_tools() -> CarbonTools:
    """carbon-cache and a whisper-capable python, installed with apt when needed and possible."""
    tools = _find_tools()
    if tools is not None:
        return tools
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        pytest.skip("graphite-carbon/python3-whisper not installed, and not root to apt-get install them")
    if shutil.which("apt-get") is None:
        pytest.skip("graphite-carbon/python3-whisper not installed, and no apt-get on this system")
    try:
        with _exclusive(APT_LOCK, APT_LOCK_WAIT):
            tools = _find_tools()  # another worker may have installed them while we waited
            if tools is None:
                failure = _apt_install()
                tools = _find_tools()
                if tools is None:
                    pytest.skip(f"could not install {' '.join(APT_PACKAGES)}: {failure or 'tools not found after install'}")
    except OSError as exc:
        pytest.skip(f"could not take the apt lock {APT_LOCK}: {exc}")
    return tools


@dataclass(frozen=True)
class Carbon:
    """A running carbon-cache: plaintext port and whisper directory."""

    port: int
    whisper_dir: Path
    tools: CarbonTools

    def whisper_path(self, metric: str) -> Path:
        """Where carbon stores a metric (one directory level per name node)."""
        return self.whisper_dir.joinpath(*metric.split(".")).with_suffix(".wsp")

    def read(self, metrics: list[str], start: int, until: int) -> dict[str, dict[int, float] | None]:
        """Stored points of each metric in [start, until], None for a metric with no file yet."""
        request = [[str(self.whisper_path(m)), start, until] for m in metrics]
        proc = subprocess.run([self.tools.whisper_python, "-c", READ_WHISPER], input=json.dumps(request),
                              env=_clean_env(), capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        raw = json.loads(proc.stdout)
        return {m: None if raw[str(self.whisper_path(m))] is None
                else {int(ts): v for ts, v in raw[str(self.whisper_path(m))]} for m in metrics}


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


@pytest.fixture
def carbon(carbon_tools: CarbonTools, tmp_path: Path) -> Iterator[Carbon]:
    """A carbon-cache on loopback with storage in tmp_path; stopped (and killed if need be) after."""
    line_port, pickle_port, query_port = _free_ports(3)
    conf_dir, storage = tmp_path / "conf", tmp_path / "storage"
    whisper_dir, log_dir = storage / "whisper", storage / "log"
    for d in (conf_dir, whisper_dir, log_dir):
        d.mkdir(parents=True)
    (conf_dir / "carbon.conf").write_text(f"""[cache]
STORAGE_DIR = {storage}
LOCAL_DATA_DIR = {whisper_dir}
CONF_DIR = {conf_dir}
LOG_DIR = {log_dir}
PID_DIR = {storage}
DATABASE = whisper
ENABLE_LOGROTATION = False
MAX_CACHE_SIZE = inf
MAX_UPDATES_PER_SECOND = 100000
MAX_CREATES_PER_MINUTE = inf
MIN_TIMESTAMP_RESOLUTION = 1
LINE_RECEIVER_INTERFACE = 127.0.0.1
LINE_RECEIVER_PORT = {line_port}
ENABLE_UDP_LISTENER = False
PICKLE_RECEIVER_INTERFACE = 127.0.0.1
PICKLE_RECEIVER_PORT = {pickle_port}
CACHE_QUERY_INTERFACE = 127.0.0.1
CACHE_QUERY_PORT = {query_port}
WHISPER_AUTOFLUSH = True
CARBON_METRIC_INTERVAL = 0
""")
    # One archive of 1-second points for an hour: every value sent is kept as sent.
    (conf_dir / "storage-schemas.conf").write_text("[everything]\npattern = .*\nretentions = 1s:1h\n")
    (conf_dir / "storage-aggregation.conf").write_text(
        "[everything]\npattern = .*\nxFilesFactor = 0\naggregationMethod = average\n")
    output = open(tmp_path / "carbon-cache.out", "wb")
    proc = subprocess.Popen(
        [carbon_tools.carbon_cache, f"--config={conf_dir / 'carbon.conf'}", "--nodaemon",
         f"--pidfile={storage / 'carbon-cache.pid'}", f"--logdir={log_dir}", "start"],
        stdout=output, stderr=subprocess.STDOUT, env=_clean_env(), start_new_session=True)
    try:
        deadline = time.monotonic() + CARBON_START_TIMEOUT
        while True:
            if proc.poll() is not None:
                pytest.fail(f"carbon-cache exited {proc.returncode}: "
                            f"{(tmp_path / 'carbon-cache.out').read_text(errors='replace')[-2000:]}")
            with contextlib.suppress(OSError):
                socket.create_connection(("127.0.0.1", line_port), timeout=1).close()
                break
            if time.monotonic() > deadline:
                pytest.fail(f"carbon-cache did not listen on {line_port} within {CARBON_START_TIMEOUT:.0f}s")
            time.sleep(0.2)
        yield Carbon(line_port, whisper_dir, carbon_tools)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)  # its own session: only what we started
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(15)
        output.close()


def _send(port: int, payload: bytes) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        conn.sendall(payload)
        conn.shutdown(socket.SHUT_WR)


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

    _send(carbon.port, payload)

    names = sorted(expected)
    deadline = time.monotonic() + WRITE_TIMEOUT
    while True:
        stored = carbon.read(names, now - 60, int(time.time()))
        missing = {n: sorted(set(expected[n]) - set(stored[n] or {})) for n in names}
        missing = {n: ts for n, ts in missing.items() if ts}
        if not missing:
            break
        if time.monotonic() > deadline:
            pytest.fail(f"not in whisper after {WRITE_TIMEOUT:.0f}s: {missing}")
        time.sleep(0.5)

    for name in names:
        assert carbon.whisper_path(name).is_file()
        points = {ts: v for ts, v in stored[name].items() if ts in expected[name]}
        assert points == expected[name], name  # exact: carbon parses the shortest repr back
        assert set(stored[name]) == set(expected[name]), f"{name}: unexpected extra points"
    # Reports are counted from |direction| on the dashboard: one per non-zero direction sent.
    direction = output_metric_name(DEFAULT_NAME_TEMPLATE, "anomaly_direction", metrics[0])
    assert sum(abs(v) for v in stored[direction].values()) == 2
