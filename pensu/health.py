"""Health endpoints: the ping port and an HTTP server for /ping, /healthz, /readyz, /metrics
(plus one optional extra route the service passes in: GET /rules and POST /feedback).

The ping port speaks two protocols, told apart by the first line: an HTTP request line
(`GET /ping HTTP/1.1`, what the original Pensu answered and what its users probe with curl)
gets an HTTP/1.1 answer — `200` with a JSON body whose `response` is `PONG` plus the service's
counters — and anything else is the line protocol: `ping` (any case) → `pong`, other lines →
a status line.
"""

from __future__ import annotations

import errno
import json
import logging
import re
import socket
import socketserver
import threading
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, TypedDict

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import generate_latest

from pensu.errors import ConfigurationError
from pensu.telemetry import RateLimitedLog

log = logging.getLogger(__name__)

# The content type of the classic text format that `generate_latest` writes.
METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
TEXT_CONTENT_TYPE = "text/plain; charset=utf-8"

MAX_LINE_BYTES = 1024            # a ping line is a few bytes; anything longer is abuse or a mistake
FIRST_LINE_TIMEOUT_S = 1.0       # a silent client gets the status line after this long
IDLE_TIMEOUT_S = 30.0            # a chatty client that goes quiet is dropped after this long
HTTP_TIMEOUT_S = 10.0            # a slow HTTP client cannot pin a handler thread for longer
MAX_CONNECTIONS = 64             # per server; beyond this new connections are closed at once
STOP_JOIN_TIMEOUT_S = 2.0        # stop() never waits longer than this per wait


_HTTP_REQUEST_LINE = re.compile(rb"^(GET|HEAD) (\S+) HTTP/1\.[01]\r?\n$")
MAX_HTTP_HEADER_LINES = 100
MAX_POST_BYTES = 64 * 1024       # a feedback record is a few hundred bytes

# An extra HTTP route (POST /feedback, GET /rules): (method, path, headers, body) -> (code,
# content type, body), or None when it does not serve that request.
HttpRoute = Callable[[str, str, Any, bytes], "tuple[int, str, bytes] | None"]


def ping_body(info: dict[str, Any]) -> bytes:
    """The JSON answer to GET /ping: `{"response": "PONG", ...info}`."""
    return (json.dumps({"response": "PONG", **info}, sort_keys=False, default=str) + "\n").encode()


@dataclass
class HealthStatus:
    """What the service reports about itself: liveness, readiness and a one-line detail."""

    live: bool
    ready: bool
    detail: str


def _one_line(text: str) -> str:
    """Collapse `text` to one line so a detail can never break the line protocol."""
    return " ".join(text.split())


def status_line(status: HealthStatus) -> str:
    """The ping server's status line: `ready|not_ready live|dead <detail>\\n`."""
    ready = "ready" if status.ready else "not_ready"
    live = "live" if status.live else "dead"
    detail = _one_line(status.detail)
    return f"{ready} {live} {detail}\n" if detail else f"{ready} {live}\n"


class _StatusSource:
    """Calls the service's status callable, turning its failures into a dead, not-ready status."""

    def __init__(self, status: Callable[[], HealthStatus]) -> None:
        self._status = status
        self._warn = RateLimitedLog(log, 60.0)   # probes come every few seconds; warn once a minute

    def __call__(self) -> HealthStatus:
        try:
            result = self._status()
            if not isinstance(result, HealthStatus):
                raise TypeError(f"status callable returned {type(result).__name__}, not HealthStatus")
            return result
        except Exception as exc:  # noqa: BLE001 - a broken status callable must not kill the server
            self._warn.log(logging.WARNING, "health status callable failed: %s: %s", type(exc).__name__, exc)
            return HealthStatus(live=False, ready=False, detail=f"status error: {type(exc).__name__}: {exc}")


class _TrackedServerMixin:
    """Bounds concurrent connections and remembers open ones so `stop()` can cut them off."""

    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True          # a restart must not trip over TIME_WAIT sockets

    def _init_tracking(self, max_connections: int) -> None:
        self._slots = threading.BoundedSemaphore(max_connections)
        self._open: set[socket.socket] = set()
        self._open_cond = threading.Condition()
        self._closing = False

    def process_request(self, request: Any, client_address: Any) -> None:
        """Hand the connection to a thread, or drop it when all slots are busy or we are closing."""
        if self._closing or not self._slots.acquire(blocking=False):
            self.shutdown_request(request)  # type: ignore[attr-defined]
            return
        with self._open_cond:
            self._open.add(request)
        try:
            super().process_request(request, client_address)  # type: ignore[misc]
        except BaseException:
            self._release(request)
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        """Run the handler, then free the connection's slot whatever happened."""
        try:
            super().process_request_thread(request, client_address)  # type: ignore[misc]
        finally:
            self._release(request)

    def _release(self, request: socket.socket) -> None:
        with self._open_cond:
            self._open.discard(request)
            self._open_cond.notify_all()
        self._slots.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Log handler failures instead of printing tracebacks to stderr."""
        log.debug("health connection from %s failed", client_address, exc_info=True)

    def cut_connections(self, timeout: float) -> None:
        """Shut down every open connection and wait (bounded) for their handlers to finish."""
        with self._open_cond:
            self._closing = True
            for conn in list(self._open):
                try:
                    conn.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass    # already gone: nothing to cut
            self._open_cond.wait_for(lambda: not self._open, timeout=timeout)


class _PingServer(_TrackedServerMixin, socketserver.ThreadingTCPServer):
    """Threaded TCP server answering the line protocol; see `_PingHandler`."""

    def __init__(self, address: tuple[str, int], status: _StatusSource, *, max_line: int,
                 first_timeout: float, idle_timeout: float, max_connections: int,
                 info: Callable[[], dict[str, Any]] = dict) -> None:
        self.address_family = _family(address[0])
        self.status = status
        self.info = info
        self.max_line = max_line
        self.first_timeout = first_timeout
        self.idle_timeout = idle_timeout
        self._init_tracking(max_connections)
        super().__init__(address, _PingHandler)


class _PingHandler(socketserver.BaseRequestHandler):
    """One connection: `ping` → `pong`, other lines → status line, silence → status line and close."""

    server: _PingServer

    def handle(self) -> None:
        conn: socket.socket = self.request
        srv = self.server
        conn.settimeout(srv.first_timeout)
        reader = conn.makefile("rb")
        try:
            first = True
            while True:
                try:
                    line = reader.readline(srv.max_line + 1)
                except TimeoutError:
                    if first:
                        conn.sendall(status_line(srv.status()).encode())
                    return
                if not line:
                    return                              # client closed
                if len(line) > srv.max_line and not line.endswith(b"\n"):
                    # Reading on would buffer an unbounded line; refuse and hang up instead.
                    conn.sendall(b"error line_too_long\n")
                    return
                if first:
                    first = False
                    conn.settimeout(srv.idle_timeout)
                    request = _HTTP_REQUEST_LINE.match(line)
                    if request is not None:
                        self._answer_http(reader, conn, request.group(1), request.group(2))
                        return
                conn.sendall(self._answer(line))
        except OSError as exc:
            log.debug("ping connection %s ended: %s", self.client_address, exc)
        finally:
            reader.close()

    def _answer(self, line: bytes) -> bytes:
        if line.strip().lower() == b"ping":
            return b"pong\n"
        return status_line(self.server.status()).encode()

    def _answer_http(self, reader: Any, conn: socket.socket, method: bytes, target: bytes) -> None:
        """One HTTP/1.x request on the ping port: GET/HEAD /ping → 200 PONG, else 404; then close."""
        for _ in range(MAX_HTTP_HEADER_LINES):  # skip the headers (bounded)
            header = reader.readline(self.server.max_line + 1)
            if not header or header in (b"\r\n", b"\n"):
                break
        path = target.split(b"?", 1)[0]
        if path == b"/ping":
            code, reason, body = 200, "OK", ping_body(_safe_info(self.server.info))
        else:
            code, reason, body = 404, "Not Found", b"not found\n"
        head = (f"HTTP/1.1 {code} {reason}\r\nContent-Type: {'application/json' if code == 200 else 'text/plain'}; "
                f"charset=utf-8\r\nContent-Length: {len(body)}\r\nCache-Control: no-store\r\n"
                f"Connection: close\r\n\r\n").encode()
        conn.sendall(head + (body if method == b"GET" else b""))


def _safe_info(info: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    try:
        return dict(info())
    except Exception as exc:  # noqa: BLE001 - a broken counter source must not kill the ping answer
        log.debug("ping info failed: %s", exc)
        return {"error": f"{type(exc).__name__}: {exc}"}


class _HttpServer(_TrackedServerMixin, ThreadingHTTPServer):
    """Threaded HTTP server carrying the registry and status source for `_HttpHandler`."""

    def __init__(self, address: tuple[str, int], status: _StatusSource, registry: CollectorRegistry,
                 *, max_connections: int, info: Callable[[], dict[str, Any]] = dict,
                 route: HttpRoute | None = None) -> None:
        self.address_family = _family(address[0])
        self.route = route
        self.status = status
        self.info = info
        self.registry = registry
        self._init_tracking(max_connections)
        super().__init__(address, _HttpHandler)


class _HttpHandler(BaseHTTPRequestHandler):
    """GET/HEAD of /ping, /healthz, /readyz and /metrics; 404 for anything else."""

    server: _HttpServer
    timeout = HTTP_TIMEOUT_S
    server_version = "pensu-health"

    def do_GET(self) -> None:  # noqa: N802 - name fixed by http.server
        """Serve the resource with its body."""
        self._serve(with_body=True)

    def do_HEAD(self) -> None:  # noqa: N802 - name fixed by http.server
        """Serve the resource's headers only."""
        self._serve(with_body=False)

    def do_POST(self) -> None:  # noqa: N802 - name fixed by http.server
        """POST goes to the extra route (POST /feedback) only; the body is bounded."""
        try:
            length = int(self.headers.get("Content-Length", "0"))
        except ValueError:
            length = -1
        if not 0 <= length <= MAX_POST_BYTES:
            self._answer(413, TEXT_CONTENT_TYPE, f"body must be 0-{MAX_POST_BYTES} bytes\n".encode(), True)
            return
        self._serve(with_body=True, method="POST", body=self.rfile.read(length))

    def _serve(self, *, with_body: bool, method: str | None = None, body: bytes = b"") -> None:
        path = self.path.split("?", 1)[0]
        method = method or ("GET" if with_body else "HEAD")
        extra = None if self.server.route is None else self.server.route(method, path, self.headers, body)
        if extra is not None:
            code, ctype, content = extra
            self._answer(code, ctype, content, with_body)
            return
        if method == "POST":
            code, ctype, body = 404, TEXT_CONTENT_TYPE, b"not found\n"
        elif path == "/metrics":
            code, ctype, body = 200, METRICS_CONTENT_TYPE, generate_latest(self.server.registry)
        elif path == "/ping":
            code, ctype, body = 200, "application/json; charset=utf-8", ping_body(_safe_info(self.server.info))
        elif path in ("/healthz", "/readyz"):
            status = self.server.status()
            ok = status.live if path == "/healthz" else status.ready
            code, ctype, body = (200 if ok else 503), TEXT_CONTENT_TYPE, (_one_line(status.detail) + "\n").encode()
        else:
            code, ctype, body = 404, TEXT_CONTENT_TYPE, b"not found\n"
        self._answer(code, ctype, body, with_body)

    def _answer(self, code: int, ctype: str, body: bytes, with_body: bool) -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        if with_body:
            self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - signature fixed by http.server
        """Route the per-request access log to `logging` at DEBUG instead of stderr."""
        log.debug("http %s: " + format, self.address_string(), *args)


def _family(host: str) -> socket.AddressFamily:
    """IPv6 for literal IPv6 hosts, IPv4 otherwise (names resolve through the IPv4 family)."""
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def _bind(what: str, host: str, port: int, make: Callable[[tuple[str, int]], Any]) -> Any:
    """Create a server, turning bind failures into a `ConfigurationError` naming host:port."""
    try:
        return make((host, port))
    except OSError as exc:
        why = "address already in use" if exc.errno == errno.EADDRINUSE else str(exc)
        raise ConfigurationError(f"cannot listen for {what} on {host}:{port}: {why}") from exc


class _Limits(TypedDict):
    """Per-connection limits shared by the ping and HTTP servers."""

    max_line: int
    first_timeout: float
    idle_timeout: float
    max_connections: int


class HealthServer:
    """The TCP ping server and the optional HTTP health/metrics server, on daemon threads."""

    def __init__(self, *, ping_host: str, ping_port: int, http_host: str, http_port: int | None,
                 registry: CollectorRegistry, status: Callable[[], HealthStatus],
                 info: Callable[[], dict[str, Any]] = dict, route: HttpRoute | None = None,
                 max_line_bytes: int = MAX_LINE_BYTES, first_line_timeout_s: float = FIRST_LINE_TIMEOUT_S,
                 idle_timeout_s: float = IDLE_TIMEOUT_S, max_connections: int = MAX_CONNECTIONS) -> None:
        self._ping_cfg = (ping_host, ping_port)
        self._http_cfg = None if http_port is None else (http_host, http_port)
        self._registry = registry
        self._status = _StatusSource(status)
        self._info = info
        self._route = route
        self._limits = _Limits(max_line=max_line_bytes, first_timeout=first_line_timeout_s,
                               idle_timeout=idle_timeout_s, max_connections=max_connections)
        self._ping: _PingServer | None = None
        self._http: _HttpServer | None = None
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()

    @property
    def ping_address(self) -> tuple[str, int]:
        """The ping server's bound (host, port) once started, else the configured one."""
        if self._ping is not None:
            return _host_port(self._ping.server_address)
        return self._ping_cfg

    @property
    def http_address(self) -> tuple[str, int] | None:
        """The HTTP server's bound (host, port) once started, the configured one before, None if disabled."""
        if self._http is not None:
            return _host_port(self._http.server_address)
        return self._http_cfg

    def start(self) -> None:
        """Bind both servers and serve them on daemon threads; port 0 picks a free port."""
        with self._lock:
            if self._ping is not None:
                return
            limits = self._limits
            ping = _bind("ping", *self._ping_cfg,
                         lambda addr: _PingServer(addr, self._status, info=self._info, **limits))
            http = None
            if self._http_cfg is not None:
                try:
                    http = _bind("HTTP", *self._http_cfg, lambda addr: _HttpServer(
                        addr, self._status, self._registry, max_connections=limits["max_connections"],
                        info=self._info, route=self._route))
                except ConfigurationError:
                    ping.server_close()
                    raise
            self._ping, self._http = ping, http
            for name, server in (("pensu-ping", ping), ("pensu-http", http)):
                if server is not None:
                    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2},
                                              name=name, daemon=True)
                    thread.start()
                    self._threads.append(thread)
            log.info("health: ping on %s:%d, HTTP %s", *self.ping_address,
                     "disabled" if http is None else "on {}:{}".format(*_host_port(http.server_address)))

    def stop(self) -> None:
        """Stop accepting, close the listening sockets, cut open connections and join the threads."""
        with self._lock:
            servers = [s for s in (self._ping, self._http) if s is not None]
            for server in servers:
                server.shutdown()       # serve_forever is running on our thread, so this returns promptly
                server.server_close()
            for server in servers:
                server.cut_connections(STOP_JOIN_TIMEOUT_S)
            for thread in self._threads:
                thread.join(STOP_JOIN_TIMEOUT_S)
            self._threads.clear()
            self._ping = self._http = None


def _host_port(address: Any) -> tuple[str, int]:
    """(host, port) from an IPv4 or IPv6 socket address."""
    return str(address[0]), int(address[1])
