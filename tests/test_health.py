"""HealthServer through real sockets on 127.0.0.1: ping protocol, HTTP endpoints, limits, lifecycle."""

from __future__ import annotations

import http.client
import socket
import threading
import time
from collections.abc import Iterator

import pytest
from prometheus_client import CollectorRegistry, Counter

from pensu.errors import ConfigurationError
from pensu.health import HealthServer, HealthStatus, status_line

HOST = "127.0.0.1"


class MutableStatus:
    """A status callable the test can flip between calls (thread-safe enough for reads)."""

    def __init__(self) -> None:
        self.value = HealthStatus(live=True, ready=False, detail="assigned=0 models=0")
        self.error: Exception | None = None
        self.calls = 0

    def __call__(self) -> HealthStatus:
        self.calls += 1
        if self.error is not None:
            raise self.error
        return self.value


def make_server(status: MutableStatus, registry: CollectorRegistry | None = None, *,
                http: bool = True, **kwargs: object) -> HealthServer:
    return HealthServer(ping_host=HOST, ping_port=0, http_host=HOST, http_port=0 if http else None,
                        registry=registry or CollectorRegistry(), status=status, **kwargs)  # type: ignore[arg-type]


@pytest.fixture
def status() -> MutableStatus:
    return MutableStatus()


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
def server(status: MutableStatus, registry: CollectorRegistry) -> Iterator[HealthServer]:
    srv = make_server(status, registry)
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


def connect(srv: HealthServer, timeout: float = 5.0) -> socket.socket:
    return socket.create_connection(srv.ping_address, timeout=timeout)


def read_line(sock: socket.socket, buf: bytearray) -> bytes:
    """Read one `\\n`-terminated line (keeping any surplus in `buf`); b'' if the peer closed first."""
    while b"\n" not in buf:
        chunk = sock.recv(4096)
        if not chunk:
            return b""
        buf += chunk
    line, _, rest = bytes(buf).partition(b"\n")
    buf[:] = rest
    return line + b"\n"


def read_to_eof(sock: socket.socket) -> bytes:
    data = bytearray()
    while chunk := sock.recv(4096):
        data += chunk
    return bytes(data)


def get(srv: HealthServer, path: str, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    addr = srv.http_address
    assert addr is not None
    conn = http.client.HTTPConnection(*addr, timeout=5)
    try:
        conn.request(method, path)
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


# -- status line ------------------------------------------------------------------------------

def test_status_line_format_and_single_line_detail() -> None:
    assert status_line(HealthStatus(True, True, "assigned=4 models=12")) == "ready live assigned=4 models=12\n"
    assert status_line(HealthStatus(False, False, "")) == "not_ready dead\n"
    # A detail with line breaks must not be able to forge a second protocol line.
    assert status_line(HealthStatus(True, False, "a\nready live\r\nb")) == "not_ready live a ready live b\n"


# -- ping server ------------------------------------------------------------------------------

def test_ping_answers_pong(server: HealthServer) -> None:
    with connect(server) as sock:
        sock.sendall(b"ping\n")
        assert read_line(sock, bytearray()) == b"pong\n"


def test_other_line_answers_status_line(server: HealthServer, status: MutableStatus) -> None:
    status.value = HealthStatus(live=True, ready=True, detail="assigned=4 models=12")
    with connect(server) as sock:
        sock.sendall(b"status\n")
        assert read_line(sock, bytearray()) == b"ready live assigned=4 models=12\n"


def test_several_lines_on_one_connection(server: HealthServer, status: MutableStatus) -> None:
    with connect(server) as sock:
        buf = bytearray()
        # Sent in one segment with CRLF and surrounding spaces: each line still gets its own answer.
        sock.sendall(b"ping\r\n  ping \nstatus\n")
        assert read_line(sock, buf) == b"pong\n"
        assert read_line(sock, buf) == b"pong\n"
        assert read_line(sock, buf) == b"not_ready live assigned=0 models=0\n"
        status.value = HealthStatus(live=False, ready=False, detail="stopping")
        sock.sendall(b"\n")     # an empty line is "any other line"
        assert read_line(sock, buf) == b"not_ready dead stopping\n"
        sock.sendall(b"ping\n")
        assert read_line(sock, buf) == b"pong\n"


def test_idle_client_gets_status_line_then_close(server: HealthServer, status: MutableStatus) -> None:
    status.value = HealthStatus(live=True, ready=True, detail="assigned=2 models=3")
    with connect(server) as sock:
        started = time.monotonic()
        data = read_to_eof(sock)
        waited = time.monotonic() - started
    assert data == b"ready live assigned=2 models=3\n"
    assert 0.5 < waited < 4.0


def test_idle_timeout_after_activity_closes_silently(status: MutableStatus) -> None:
    srv = make_server(status, http=False, idle_timeout_s=0.3)
    srv.start()
    try:
        with connect(srv) as sock:
            sock.sendall(b"ping\n")
            assert read_to_eof(sock) == b"pong\n"       # no status line once the client has spoken
    finally:
        srv.stop()


def test_oversized_line_is_refused_and_server_survives(status: MutableStatus) -> None:
    srv = make_server(status, http=False, max_line_bytes=64)
    srv.start()
    try:
        big = b"x" * (10 * 1024 * 1024) + b"\n"
        with connect(srv) as sock:
            received = b""
            try:
                sock.sendall(big)
            except OSError:
                pass        # the server hung up mid-send: that is the point
            try:
                received = read_to_eof(sock)
            except ConnectionResetError:
                received = b""
        # Either the refusal arrived or the reset swallowed it; never a pong or status for that line.
        assert received in (b"", b"error line_too_long\n")
        # A line exactly at the limit is still accepted.
        with connect(srv) as sock:
            sock.sendall(b" " * 59 + b"ping\n")
            assert read_line(sock, bytearray()) == b"pong\n"
        with connect(srv) as sock:
            sock.sendall(b"ping\n")
            assert read_line(sock, bytearray()) == b"pong\n"
    finally:
        srv.stop()


def test_oversized_line_gets_refusal_when_client_stops_sending(status: MutableStatus) -> None:
    srv = make_server(status, http=False, max_line_bytes=64)
    srv.start()
    try:
        with connect(srv) as sock:
            sock.sendall(b"y" * 65)     # one byte over, no newline: refused without waiting for more
            assert read_to_eof(sock) == b"error line_too_long\n"
    finally:
        srv.stop()


def test_concurrent_clients(server: HealthServer) -> None:
    results: list[bytes] = []
    lock = threading.Lock()

    def client(i: int) -> None:
        with connect(server) as sock:
            buf = bytearray()
            got = []
            for _ in range(5):
                sock.sendall(b"ping\n")
                got.append(read_line(sock, buf))
        with lock:
            results.extend(got)

    # One silent client holds a connection meanwhile; it must not block the others.
    silent = connect(server)
    threads = [threading.Thread(target=client, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    silent.close()
    assert results == [b"pong\n"] * 40


def test_connections_beyond_limit_are_dropped(status: MutableStatus) -> None:
    srv = make_server(status, http=False, max_connections=2)
    srv.start()
    try:
        a, b = connect(srv), connect(srv)
        for s in (a, b):       # make sure both hold a slot before the third arrives
            s.sendall(b"ping\n")
            assert read_line(s, bytearray()) == b"pong\n"
        with connect(srv) as c:
            assert read_to_eof(c) == b""
        a.close()
        b.close()
        deadline = time.monotonic() + 5
        while True:            # slots free up once the handlers notice the closes
            with connect(srv) as d:
                d.sendall(b"ping\n")
                if read_line(d, bytearray()) == b"pong\n":
                    break
            assert time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        srv.stop()


def test_raising_status_callable_reports_dead_with_error(server: HealthServer, status: MutableStatus) -> None:
    status.error = RuntimeError("registry lock poisoned")
    with connect(server) as sock:
        buf = bytearray()
        sock.sendall(b"status\n")
        assert read_line(sock, buf) == b"not_ready dead status error: RuntimeError: registry lock poisoned\n"
        sock.sendall(b"ping\n")
        assert read_line(sock, buf) == b"pong\n"
    code, _, body = get(server, "/healthz")
    assert code == 503 and b"registry lock poisoned" in body
    status.error = None
    assert get(server, "/healthz")[0] == 200


# -- HTTP server ------------------------------------------------------------------------------

def test_healthz_and_readyz_follow_status(server: HealthServer, status: MutableStatus) -> None:
    status.value = HealthStatus(live=True, ready=False, detail="assigned=0 models=0")
    code, headers, body = get(server, "/healthz")
    assert code == 200 and body == b"assigned=0 models=0\n"
    assert headers["content-type"].startswith("text/plain")
    code, _, body = get(server, "/readyz")
    assert code == 503 and body == b"assigned=0 models=0\n"

    status.value = HealthStatus(live=True, ready=True, detail="assigned=4 models=12")
    assert get(server, "/readyz")[::2] == (200, b"assigned=4 models=12\n")

    status.value = HealthStatus(live=False, ready=False, detail="loop stalled")
    assert get(server, "/healthz")[::2] == (503, b"loop stalled\n")
    assert get(server, "/readyz")[::2] == (503, b"loop stalled\n")
    assert get(server, "/readyz?verbose=1")[0] == 503


def test_metrics_exposes_registry(server: HealthServer, registry: CollectorRegistry) -> None:
    counter = Counter("pensu_test_events", "Events counted by the health test.", registry=registry)
    counter.inc(3)
    code, headers, body = get(server, "/metrics")
    assert code == 200
    assert headers["content-type"].startswith("text/plain; version=0.0.4")
    assert b"pensu_test_events_total 3.0" in body
    counter.inc()
    assert b"pensu_test_events_total 4.0" in get(server, "/metrics")[2]


def test_unknown_path_is_404_and_head_has_no_body(server: HealthServer) -> None:
    assert get(server, "/")[0] == 404
    assert get(server, "/metricsx")[0] == 404
    code, headers, body = get(server, "/healthz", method="HEAD")
    assert code == 200 and body == b"" and int(headers["content-length"]) > 0


def test_http_requests_are_not_logged_to_stderr(server: HealthServer, capfd: pytest.CaptureFixture[str]) -> None:
    get(server, "/healthz")
    get(server, "/nope")
    server.stop()       # joins the threads, so any stderr write has happened by now
    assert capfd.readouterr().err == ""


def test_http_disabled(status: MutableStatus) -> None:
    srv = make_server(status, http=False)
    srv.start()
    try:
        assert srv.http_address is None
        with connect(srv) as sock:
            sock.sendall(b"ping\n")
            assert read_line(sock, bytearray()) == b"pong\n"
    finally:
        srv.stop()


# -- lifecycle --------------------------------------------------------------------------------

def assert_refused(address: tuple[str, int]) -> None:
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(address, timeout=2).close()


def test_stop_frees_ports_and_cuts_open_connections(status: MutableStatus) -> None:
    srv = make_server(status)
    srv.start()
    ping_addr, http_addr = srv.ping_address, srv.http_address
    assert ping_addr[1] != 0 and http_addr is not None and http_addr[1] != 0
    held = connect(srv)
    held.sendall(b"ping\n")
    assert read_line(held, bytearray()) == b"pong\n"
    get(srv, "/healthz")

    started = time.monotonic()
    srv.stop()
    assert time.monotonic() - started < 5
    assert read_to_eof(held) == b""         # the open connection was cut, not left to time out
    held.close()
    assert_refused(ping_addr)
    assert_refused(http_addr)

    # The same ports can be taken again straight away (a restart).
    again = HealthServer(ping_host=HOST, ping_port=ping_addr[1], http_host=HOST, http_port=http_addr[1],
                         registry=CollectorRegistry(), status=status)
    again.start()
    try:
        assert again.ping_address == ping_addr and again.http_address == http_addr
        with connect(again) as sock:
            sock.sendall(b"ping\n")
            assert read_line(sock, bytearray()) == b"pong\n"
    finally:
        again.stop()
    srv.stop()      # a second stop is harmless


def test_port_in_use_raises_configuration_error(status: MutableStatus) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind((HOST, 0))
        taken.listen()
        port = taken.getsockname()[1]
        srv = HealthServer(ping_host=HOST, ping_port=port, http_host=HOST, http_port=None,
                           registry=CollectorRegistry(), status=status)
        with pytest.raises(ConfigurationError, match=f"{HOST}:{port}"):
            srv.start()


def test_http_port_in_use_releases_ping_port(status: MutableStatus) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken, \
            socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        taken.bind((HOST, 0))
        taken.listen()
        http_port = taken.getsockname()[1]
        probe.bind((HOST, 0))
        ping_port = probe.getsockname()[1]
        probe.close()       # a port that was free a moment ago
        srv = HealthServer(ping_host=HOST, ping_port=ping_port, http_host=HOST, http_port=http_port,
                           registry=CollectorRegistry(), status=status)
        with pytest.raises(ConfigurationError, match=f"HTTP on {HOST}:{http_port}"):
            srv.start()
        assert_refused((HOST, ping_port))   # the ping server that did bind was closed again


# --- issue #11: what users of the original Pensu probe ------------------------------------------

def _info() -> dict[str, object]:
    return {"instance_id": "pensu-7", "service_specific_info": {"samples_processed": 42}}


@pytest.mark.parametrize("line", [b"PING\n", b"Ping\r\n", b"ping\n"])
def test_ping_is_case_insensitive(server: HealthServer, line: bytes) -> None:
    host, port = server.ping_address
    with socket.create_connection((host, port), timeout=5) as sock:
        sock.sendall(line)
        assert sock.recv(64) == b"pong\n"


def test_http_get_ping_on_the_ping_port_answers_pong_with_counters(status: MutableStatus) -> None:
    import json

    srv = make_server(status, info=_info)
    srv.start()
    try:
        host, port = srv.ping_address
        conn = http.client.HTTPConnection(host, port, timeout=5)
        conn.request("GET", "/ping")
        resp = conn.getresponse()
        body = json.loads(resp.read())
        assert resp.status == 200 and resp.version == 11
        assert body["response"] == "PONG"
        assert body["instance_id"] == "pensu-7" and body["service_specific_info"]["samples_processed"] == 42
        conn.close()
        conn = http.client.HTTPConnection(host, port, timeout=5)
        conn.request("GET", "/nothing")
        assert conn.getresponse().status == 404
        conn.close()
        # ... and the same answer on the HTTP port
        http_host, http_port = srv.http_address  # type: ignore[misc]
        conn = http.client.HTTPConnection(http_host, http_port, timeout=5)
        conn.request("GET", "/ping")
        resp = conn.getresponse()
        assert resp.status == 200 and json.loads(resp.read())["response"] == "PONG"
        conn.close()
        # the line protocol still works on the ping port
        with socket.create_connection((host, port), timeout=5) as sock:
            sock.sendall(b"ping\n")
            assert sock.recv(64) == b"pong\n"
    finally:
        srv.stop()
