"""Fault injection helpers: a broker in a child process (stop/continue/kill), process RSS and
CPU readings from /proc, Prometheus and health scraping over HTTP, tmpfs mounts."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from tests.service_harness import http_get

_BROKER_CHILD = """
import sys, time
from pensu.kafka_io import EmbeddedKafka
kafka = EmbeddedKafka()
print(kafka.bootstrap_servers, flush=True)
while True:
    time.sleep(3600)
"""


class BrokerProcess:
    """A librdkafka mock cluster hosted by a child process, so it can be frozen or killed for real."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", _BROKER_CHILD], stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, cwd=Path(__file__).resolve().parents[2])
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().decode().strip()
        if not line:
            self.proc.kill()
            raise RuntimeError("broker child did not start")
        self.bootstrap_servers = line

    def freeze(self) -> None:
        """SIGSTOP: the broker stops answering, its state intact (an outage)."""
        self.proc.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        """SIGCONT: the broker answers again (the outage ends)."""
        self.proc.send_signal(signal.SIGCONT)

    def close(self) -> None:
        """Kill the child (after thawing it so it can die)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.kill()
            self.proc.wait(10)

    def __enter__(self) -> BrokerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def proc_status_kb(pid: int, field: str) -> int:
    """A kB field of /proc/<pid>/status (VmRSS: resident now, VmHWM: peak resident)."""
    text = Path(f"/proc/{pid}/status").read_text()
    match = re.search(rf"^{field}:\s+(\d+) kB", text, re.MULTILINE)
    assert match, f"{field} not in /proc/{pid}/status"
    return int(match.group(1))


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds used so far by a process (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def prom_value(port: int, name: str, labels: str = "") -> float | None:
    """One sample of the service's /metrics, e.g. prom_value(p, "pensu_samples_processed_total")."""
    try:
        _, body = http_get(port, "/metrics")
    except OSError:
        return None
    wanted = f"{name}{{{labels}}}" if labels else name
    for line in body.splitlines():
        if line.startswith(wanted + " "):
            return float(line.split()[-1])
    return None


def wait_until(condition: Callable[[], bool], timeout: float, what: str, interval: float = 0.2) -> float:
    """Poll `condition` until true; return the seconds it took, fail the test after `timeout`."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if condition():
            return time.monotonic() - started
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def mount_tmpfs(path: Path, size: str) -> bool:
    """Mount a tmpfs of `size` at `path` (root only); False when the machine does not allow it."""
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True)
    return done.returncode == 0


def remount_tmpfs(path: Path, size: str) -> None:
    """Grow (or shrink) a tmpfs mounted by `mount_tmpfs`."""
    subprocess.run(["mount", "-o", f"remount,size={size}", str(path)], check=True, capture_output=True)


def umount(path: Path) -> None:
    """Unmount `path` (lazily, so a file still open cannot keep it busy)."""
    subprocess.run(["umount", "-l", str(path)], capture_output=True)


def spawn_logged(env: dict[str, str], log_path: Path, *args: str) -> subprocess.Popen:
    """Start `python -m pensu run` with `env` added, its output going to `log_path` (never a pipe
    that nobody reads, which would block a chatty service)."""
    full = dict(os.environ)
    full.update(env)
    full.setdefault("PYTHONUNBUFFERED", "1")
    with open(log_path, "ab") as out:
        return subprocess.Popen([sys.executable, "-m", "pensu", *(args or ("run",))], env=full,
                                cwd=Path(__file__).resolve().parents[2], stdout=out, stderr=subprocess.STDOUT)


def stop_process(proc: subprocess.Popen, timeout: float = 60.0) -> int:
    """SIGTERM a service process and wait; SIGKILL it if it does not exit in time."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    return proc.returncode
