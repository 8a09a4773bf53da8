"""Debian's Graphite (carbon-cache + graphite-web) started for tests: private config, loopback only.

Nothing under /etc is read or written: carbon-cache gets `--config` pointing at a carbon.conf in
the test's tmp directory, graphite-web gets `GRAPHITE_SETTINGS_MODULE` naming a settings module
written to that directory (STORAGE_DIR / WHISPER_DIR = the carbon fixture's storage, sqlite db in
tmp, CARBONLINK_HOSTS = that carbon's query port). graphite-web runs with Django's `runserver`
(no reloader) from Debian's python3-django on 127.0.0.1 and a free port; start-up is bounded.

The packages are installed with apt when missing and this process may (root, apt-get present),
under an flock so parallel workers install once; otherwise the fixtures skip with the reason.
Used by tests/stack (dashboard against real graphite-web) and tests/test_warm_start_service.py.
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
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

CARBON_PACKAGES = ("graphite-carbon", "python3-whisper")
GRAPHITE_WEB_PACKAGES = ("graphite-web", "graphite-carbon", "python3-whisper")
APT_LOCK = Path(tempfile.gettempdir()) / "pensu-stack-tests-apt.lock"
APT_LOCK_WAIT = 900.0
CARBON_START_TIMEOUT = 60.0
GRAPHITE_WEB_START_TIMEOUT = 90.0
WRITE_TIMEOUT = 60.0
# One archive of 1-second points for an hour: every value sent is kept as sent.
SECOND_RETENTION = "1s:1h"
# 5-minute points for 90 days: NAB series (5-minute samples) shifted into the recent past.
FIVE_MINUTE_RETENTION = "5m:90d"

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


def clean_env() -> dict[str, str]:
    """Environment for the system python: nothing from this test run's virtualenv."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "DJANGO_SETTINGS_MODULE",
                        "GRAPHITE_SETTINGS_MODULE")}
    env["PATH"] = "/usr/sbin:/usr/bin:/sbin:/bin"
    return env


def _imports(python: str, module: str) -> bool:
    with contextlib.suppress(OSError, subprocess.TimeoutExpired):
        return subprocess.run([python, "-c", f"import {module}"], env=clean_env(), timeout=60,
                              capture_output=True).returncode == 0
    return False


def _python_with_whisper() -> str | None:
    candidates = []
    system_fetch = "/usr/bin/whisper-fetch"
    fetch = shutil.which("whisper-fetch") or (system_fetch if os.path.exists(system_fetch) else None)
    if fetch:
        first = Path(fetch).read_text(errors="replace").splitlines()[0]
        if first.startswith("#!"):
            candidates.append(first[2:].strip().split()[0])
    candidates.append("/usr/bin/python3")
    return next((p for p in candidates if os.path.exists(p) and _imports(p, "whisper")), None)


def _find_carbon_tools() -> CarbonTools | None:
    carbon = "/usr/bin/carbon-cache" if os.path.exists("/usr/bin/carbon-cache") else shutil.which("carbon-cache")
    python = _python_with_whisper()
    return CarbonTools(carbon, python) if carbon and python else None


def _find_graphite_web_python() -> str | None:
    """The system python that imports graphite-web and Django (Debian's /usr/bin/python3)."""
    python = "/usr/bin/python3"
    return python if os.path.exists(python) and _imports(python, "graphite.render, django") else None


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


def _apt_install(packages: tuple[str, ...]) -> str | None:
    """Install the packages; return None on success, else why it failed."""
    env = {**clean_env(), "DEBIAN_FRONTEND": "noninteractive"}
    steps = (["apt-get", "update", "-q"],
             ["apt-get", "install", "-y", "-q", "--no-install-recommends", *packages])
    for argv, timeout in zip(steps, (300, 600)):
        try:
            proc = subprocess.run(argv, env=env, timeout=timeout, capture_output=True, text=True)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"{' '.join(argv)}: {exc}"
        if proc.returncode != 0:
            return f"{' '.join(argv)} exited {proc.returncode}: {proc.stderr.strip()[-400:]}"
    return None


def installed(packages: tuple[str, ...], find: Any) -> Any:
    """`find()`'s result, installing `packages` with apt first when it is None; skips the test
    with the reason when they are missing and cannot be installed."""
    found = find()
    if found is not None:
        return found
    what = "/".join(packages)
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        pytest.skip(f"{what} not installed, and not root to apt-get install them")
    if shutil.which("apt-get") is None:
        pytest.skip(f"{what} not installed, and no apt-get on this system")
    try:
        with _exclusive(APT_LOCK, APT_LOCK_WAIT):
            found = find()  # another worker may have installed them while we waited
            if found is None:
                failure = _apt_install(packages)
                found = find()
                if found is None:
                    pytest.skip(f"could not install {' '.join(packages)}: {failure or 'not found after install'}")
    except OSError as exc:
        pytest.skip(f"could not take the apt lock {APT_LOCK}: {exc}")
    return found


def carbon_tools() -> CarbonTools:
    """carbon-cache and a whisper-capable python (installed with apt when needed and possible)."""
    return installed(CARBON_PACKAGES, _find_carbon_tools)


def graphite_web_python() -> str:
    """A python that runs graphite-web (installed with apt when needed and possible)."""
    installed(GRAPHITE_WEB_PACKAGES, _find_carbon_tools)
    return installed(GRAPHITE_WEB_PACKAGES, _find_graphite_web_python)


def free_ports(count: int) -> list[int]:
    """`count` distinct TCP ports on 127.0.0.1 that were free a moment ago."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


@dataclass(frozen=True)
class Carbon:
    """A running carbon-cache: plaintext and cache-query ports, storage and whisper directories."""

    port: int
    query_port: int
    storage_dir: Path
    whisper_dir: Path
    tools: CarbonTools

    def whisper_path(self, metric: str) -> Path:
        """Where carbon stores a metric (one directory level per name node)."""
        return self.whisper_dir.joinpath(*metric.split(".")).with_suffix(".wsp")

    def send(self, payload: bytes) -> None:
        """Send plaintext lines to the line receiver."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=10) as conn:
            conn.sendall(payload)
            conn.shutdown(socket.SHUT_WR)

    def read(self, metrics: list[str], start: int, until: int) -> dict[str, dict[int, float] | None]:
        """Stored points of each metric in [start, until], None for a metric with no file yet."""
        request = [[str(self.whisper_path(m)), start, until] for m in metrics]
        proc = subprocess.run([self.tools.whisper_python, "-c", READ_WHISPER], input=json.dumps(request),
                              env=clean_env(), capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        raw = json.loads(proc.stdout)
        return {m: None if raw[str(self.whisper_path(m))] is None
                else {int(ts): v for ts, v in raw[str(self.whisper_path(m))]} for m in metrics}

    def wait_stored(self, expected: dict[str, dict[int, float]],
                    timeout: float = WRITE_TIMEOUT) -> dict[str, dict[int, float]]:
        """Poll whisper until every expected (metric, timestamp) is stored; fail after `timeout`."""
        names = sorted(expected)
        start = min(min(points) for points in expected.values()) - 1
        until = max(max(points) for points in expected.values()) + 1
        deadline = time.monotonic() + timeout
        while True:
            stored = self.read(names, start, until)
            missing = {n: len(set(expected[n]) - set(stored[n] or {})) for n in names}
            missing = {n: count for n, count in missing.items() if count}
            if not missing:
                return {n: stored[n] or {} for n in names}
            if time.monotonic() > deadline:
                pytest.fail(f"not in whisper after {timeout:.0f}s (missing points per metric): {missing}")
            time.sleep(0.5)


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)  # its own session: only what we started
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(15)


@contextlib.contextmanager
def running_carbon(tools: CarbonTools, root: Path, retentions: str = SECOND_RETENTION) -> Iterator[Carbon]:
    """A carbon-cache on loopback with storage under `root`; stopped (killed if need be) after."""
    line_port, pickle_port, query_port = free_ports(3)
    conf_dir, storage = root / "conf", root / "storage"
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
    (conf_dir / "storage-schemas.conf").write_text(f"[everything]\npattern = .*\nretentions = {retentions}\n")
    (conf_dir / "storage-aggregation.conf").write_text(
        "[everything]\npattern = .*\nxFilesFactor = 0\naggregationMethod = average\n")
    out_path = root / "carbon-cache.out"
    with open(out_path, "wb") as output:
        proc = subprocess.Popen(
            [tools.carbon_cache, f"--config={conf_dir / 'carbon.conf'}", "--nodaemon",
             f"--pidfile={storage / 'carbon-cache.pid'}", f"--logdir={log_dir}", "start"],
            stdout=output, stderr=subprocess.STDOUT, env=clean_env(), start_new_session=True)
        try:
            deadline = time.monotonic() + CARBON_START_TIMEOUT
            while True:
                if proc.poll() is not None:
                    pytest.fail(f"carbon-cache exited {proc.returncode}: "
                                f"{out_path.read_text(errors='replace')[-2000:]}")
                with contextlib.suppress(OSError):
                    socket.create_connection(("127.0.0.1", line_port), timeout=1).close()
                    break
                if time.monotonic() > deadline:
                    pytest.fail(f"carbon-cache did not listen on {line_port} within {CARBON_START_TIMEOUT:.0f}s")
                time.sleep(0.2)
            yield Carbon(line_port, query_port, storage, whisper_dir, tools)
        finally:
            _stop(proc)


# --- graphite-web ------------------------------------------------------------------------------

_LOCAL_SETTINGS = """# Written by tests/stack/graphite_stack.py: graphite-web for one test, nothing from /etc.
SECRET_KEY = 'pensu-tests-only'
ALLOWED_HOSTS = ['127.0.0.1', 'localhost']
DEBUG = False
TIME_ZONE = 'UTC'
USE_TZ = True
GRAPHITE_ROOT = '/usr/share/graphite-web'
STATIC_ROOT = '/usr/share/graphite-web/static'
CONF_DIR = {conf!r}
STORAGE_DIR = {storage!r}
WHISPER_DIR = {whisper!r}
LOG_DIR = {logs!r}
INDEX_FILE = {index!r}
LOG_ROTATION = False
DEFAULT_XFILES_FACTOR = 0
CARBONLINK_HOSTS = ['127.0.0.1:{query_port}']
FUNCTION_PLUGINS = []
DATABASES = {{'default': {{'NAME': {db!r}, 'ENGINE': 'django.db.backends.sqlite3',
                           'USER': '', 'PASSWORD': '', 'HOST': '', 'PORT': ''}}}}
"""
SETTINGS_MODULE = "pensu_test_graphite_settings"


@dataclass(frozen=True)
class GraphiteWeb:
    """A running graphite-web over a `Carbon`'s storage."""

    url: str
    carbon: Carbon
    log: Path

    def get(self, path: str, params: dict[str, Any] | list[tuple[str, Any]],
            timeout: float = 60.0) -> tuple[int, str, bytes]:
        """Status, content type and body of GET <url><path>?<params>."""
        query = urllib.parse.urlencode(params, doseq=True)
        try:
            with urllib.request.urlopen(f"{self.url}{path}?{query}", timeout=timeout) as resp:
                return resp.status, resp.headers.get("Content-Type", ""), resp.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.headers.get("Content-Type", ""), exc.read()

    def render_json(self, target: str, start: str | int, until: str | int = "now") -> list[dict[str, Any]]:
        """The render API's JSON for one target ([{"target", "datapoints": [[v, ts], ...]}, ...])."""
        status, _type, body = self.get("/render", {"target": target, "from": start, "until": until,
                                                   "format": "json"})
        assert status == 200, f"/render {target!r}: HTTP {status}: {body[:500]!r}"
        return json.loads(body)

    def find(self, query: str, start: str | int, until: str | int = "now") -> list[str]:
        """Full names of the leaf series matching a target glob (what Grafana's variable query lists)."""
        status, _type, body = self.get("/metrics/find", {"query": query, "from": start, "until": until,
                                                          "format": "completer"})
        assert status == 200, f"/metrics/find {query!r}: HTTP {status}: {body[:500]!r}"
        return sorted(m["path"].rstrip(".") for m in json.loads(body)["metrics"] if str(m.get("is_leaf")) == "1")


@contextlib.contextmanager
def running_graphite_web(python: str, carbon: Carbon, root: Path) -> Iterator[GraphiteWeb]:
    """graphite-web (Django runserver) on 127.0.0.1 reading `carbon`'s whisper files."""
    port = free_ports(1)[0]
    settings_dir, conf, logs = root / "settings", root / "conf", root / "log"
    for d in (settings_dir, conf, logs):
        d.mkdir(parents=True)
    (settings_dir / f"{SETTINGS_MODULE}.py").write_text(_LOCAL_SETTINGS.format(
        conf=str(conf), storage=str(carbon.storage_dir), whisper=str(carbon.whisper_dir) + "/",
        logs=str(logs), index=str(root / "index"), query_port=carbon.query_port, db=str(root / "graphite.db")))
    env = {**clean_env(), "PYTHONPATH": str(settings_dir), "GRAPHITE_SETTINGS_MODULE": SETTINGS_MODULE,
           "DJANGO_SETTINGS_MODULE": "graphite.settings", "TZ": "UTC"}
    out_path = root / "graphite-web.out"
    migrate = subprocess.run([python, "-m", "django", "migrate", "--run-syncdb", "--noinput", "-v", "0"],
                             env=env, cwd=root, capture_output=True, text=True, timeout=GRAPHITE_WEB_START_TIMEOUT)
    if migrate.returncode != 0:
        pytest.fail(f"graphite-web database set-up failed: {migrate.stderr[-2000:]}")
    with open(out_path, "wb") as output:
        proc = subprocess.Popen([python, "-m", "django", "runserver", "--noreload", f"127.0.0.1:{port}"],
                                stdout=output, stderr=subprocess.STDOUT, env=env, cwd=root,
                                start_new_session=True)
        web = GraphiteWeb(f"http://127.0.0.1:{port}", carbon, out_path)
        try:
            deadline = time.monotonic() + GRAPHITE_WEB_START_TIMEOUT
            while True:
                if proc.poll() is not None:
                    output = out_path.read_text(errors="replace")[-2000:]
                    pytest.fail(f"graphite-web exited {proc.returncode}: {output}")
                with contextlib.suppress(OSError):
                    with urllib.request.urlopen(f"{web.url}/version/", timeout=5) as resp:
                        if resp.status == 200:
                            break
                if time.monotonic() > deadline:
                    pytest.fail(f"graphite-web did not answer on {port} within {GRAPHITE_WEB_START_TIMEOUT:.0f}s: "
                                f"{out_path.read_text(errors='replace')[-2000:]}")
                time.sleep(0.3)
            yield web
        finally:
            _stop(proc)


# --- fixtures (registered by tests/stack/conftest.py and imported by service tests) --------------

@pytest.fixture(scope="session")
def graphite_web_python_fixture() -> str:
    """The python running graphite-web, installed with apt when needed (skips when impossible)."""
    return graphite_web_python()


@pytest.fixture
def graphite(graphite_web_python_fixture: str, tmp_path: Path) -> Iterator[GraphiteWeb]:
    """carbon-cache (5-minute archive, 90 days) plus graphite-web over its storage, for one test."""
    tools = carbon_tools()
    with running_carbon(tools, tmp_path / "carbon", FIVE_MINUTE_RETENTION) as carbon:
        with running_graphite_web(graphite_web_python_fixture, carbon, tmp_path / "graphite-web") as web:
            yield web
