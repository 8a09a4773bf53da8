"""A minimal Alertmanager stand-in for tests: records every POST /api/v2/alerts on 127.0.0.1, and the
checks of Alertmanager's API v2 schema (openapi.yaml: postableAlerts = [postableAlert]) that its
receiving end applies."""

from __future__ import annotations

import json
import re
import threading
import time
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

# postableAlert: labels (required LabelSet), annotations (LabelSet), startsAt/endsAt (date-time),
# generatorURL (uri); LabelSet = map of string to string. Alertmanager also requires label names
# to match this and endsAt not to be before startsAt.
POSTABLE_ALERT_KEYS = {"labels", "annotations", "startsAt", "endsAt", "generatorURL"}
LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
RFC3339 = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)")


def parse_time(text: str) -> float:
    """An RFC 3339 date-time as a Unix timestamp."""
    assert RFC3339.fullmatch(text), text
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def check_postable_alerts(body: Any) -> None:
    """Assert `body` is a valid postableAlerts document."""
    assert isinstance(body, list)
    for alert in body:
        assert isinstance(alert, dict) and set(alert) <= POSTABLE_ALERT_KEYS, alert
        labels = alert["labels"]
        assert isinstance(labels, dict) and labels
        for name, value in labels.items():
            assert LABEL_NAME.fullmatch(name) and isinstance(value, str) and value, (name, value)
        for name, value in alert.get("annotations", {}).items():
            assert isinstance(name, str) and isinstance(value, str), (name, value)
        starts = parse_time(alert["startsAt"]) if "startsAt" in alert else None
        ends = parse_time(alert["endsAt"]) if "endsAt" in alert else None
        if starts is not None and ends is not None:
            assert ends >= starts, alert


class AlertReceiver:
    """Records posted alert lists; answers with `status` (settable, e.g. 503 to force retries)."""

    def __init__(self) -> None:
        self.posts: list[list[dict[str, Any]]] = []
        self.paths: list[str] = []
        self.status = 200
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - name fixed by http.server
                length = int(self.headers.get("Content-Length", "0"))
                body = json.loads(self.rfile.read(length))
                with receiver._lock:
                    receiver.paths.append(self.path)
                    status = receiver.status
                    if status == 200:
                        receiver.posts.append(body)
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.1},
                                        daemon=True)

    def __enter__(self) -> AlertReceiver:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def alerts(self) -> list[dict[str, Any]]:
        """Every accepted alert, in arrival order."""
        with self._lock:
            return [alert for post in self.posts for alert in post]

    def wait_for(self, predicate: Any, timeout: float = 30.0) -> list[dict[str, Any]]:
        """Accepted alerts once `predicate(alerts)` holds (bounded wait)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            alerts = self.alerts()
            if predicate(alerts):
                return alerts
            time.sleep(0.05)
        raise AssertionError(f"alerts never satisfied the condition: {self.alerts()}")
