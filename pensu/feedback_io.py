"""The feedback edges: the rules topic (PENSU_FEEDBACK_KAFKA_TOPIC) and `POST /feedback`, `GET /rules`.

Rules live in the topic, keyed by rule id (compaction keeps the latest record per id; an empty
value deletes): every instance reads it from the beginning in a background thread with its own
unassigned consumer, so rules survive restarts and reach every instance of a consumer group.
`POST /feedback` (bearer token PENSU_FEEDBACK_TOKEN) validates a record, produces it to the topic
and applies it at once on the instance that answered; the others pick it up within a poll.
A bad record is refused — HTTP 400 with the reason, or, read from the topic, logged once per
reason with its offset and counted in `pensu_feedback_rejected_total{reason}`.

`pensu replay` reads the same records from a file (`--rules FILE`: JSON Lines, one record per
line, or one JSON array; a bad record refuses the whole file, naming its line) and/or from the
topic (`--rules-from-topic`: read to its end once, bounded by `TOPIC_READ_SECONDS`), later
records replacing earlier ones by id as on the topic (`replay_rules`).
"""

from __future__ import annotations

import hmac
import json
import logging
import threading
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, Producer, TopicPartition
from prometheus_client import CollectorRegistry, Counter

from pensu.errors import PensuError
from pensu.feedback import FeedbackFilter, FeedbackRejected, OfflineFeedback, Rule, parse_rule
from pensu.kafka_io import PARTITION_EOF, message_position
from pensu.settings import load_settings

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 64 * 1024
TOPIC_READ_SECONDS = 30.0  # pensu replay --rules-from-topic: longest wait for the topic's end
JSON_TYPE = "application/json; charset=utf-8"
HttpAnswer = tuple[int, str, bytes]


def _json(code: int, body: Any) -> HttpAnswer:
    return code, JSON_TYPE, (json.dumps(body, default=str) + "\n").encode()


class FeedbackLog:
    """Reads rules from the feedback topic into a `FeedbackFilter`; publishes accepted HTTP feedback."""

    def __init__(self, rules: FeedbackFilter, topic: str | None, consumer_conf: dict[str, Any] | None,
                 producer_conf: dict[str, Any] | None, registry: CollectorRegistry, token: str | None,
                 false_positive_seconds: float) -> None:
        self.rules = rules
        self.topic = topic
        self._consumer_conf = consumer_conf
        self._producer_conf = producer_conf
        self._token = token
        self._fp_seconds = false_positive_seconds
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._producer: Producer | None = None
        self._logged: set[str] = set()
        self.loaded = threading.Event()  # set once the topic was read up to its end once
        self.rejected = Counter("pensu_feedback_rejected", "Feedback records refused, by reason.", ["source"],
                                registry=registry)
        self.accepted = Counter("pensu_feedback_applied", "Feedback records applied (rules added, replaced or "
                                "deleted).", registry=registry)

    # -- topic -----------------------------------------------------------------------------
    def start(self) -> None:
        """Start reading the topic (nothing to do without one)."""
        if self.topic is None or self._consumer_conf is None:
            self.loaded.set()
            return
        self._thread = threading.Thread(target=self._run, name="pensu-feedback", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the reader thread and flush the publisher."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5.0)
        if self._producer is not None:
            self._producer.flush(5.0)

    def _run(self) -> None:
        assert self.topic is not None  # start() runs this thread only with a topic
        conf = {k: v for k, v in (self._consumer_conf or {}).items()
                if k not in ("group.instance.id", "partition.assignment.strategy")}
        conf.update({"group.id": f"pensu-feedback-{uuid.uuid4().hex}", "enable.auto.commit": False,
                     "enable.partition.eof": True})
        consumer = Consumer(conf)
        try:
            partitions = self._assign(consumer)
            at_end: set[int] = set()
            while not self._stop.is_set():
                message = consumer.poll(0.5)
                if message is None:
                    continue
                error = message.error()
                if error is not None:
                    if error.code() == PARTITION_EOF:
                        at_end.add(message_position(message)[1])
                        if at_end >= partitions and not self.loaded.is_set():
                            self.loaded.set()
                            log.info("feedback: %d rules loaded from %s", len(self.rules.rules()), self.topic)
                    continue
                _topic, partition, offset = message_position(message)
                self._apply_record(message.key(), message.value(), f"{partition}@{offset}")
        finally:
            consumer.close()

    def _assign(self, consumer: Consumer) -> set[int]:
        assert self.topic is not None
        while not self._stop.is_set():
            try:
                meta = consumer.list_topics(self.topic, timeout=5).topics.get(self.topic)
            except KafkaException as exc:
                log.warning("feedback: cannot read topic %s yet: %s", self.topic, exc)
                meta = None
            if meta is not None and meta.error is None and meta.partitions:
                consumer.assign([TopicPartition(self.topic, p, OFFSET_BEGINNING) for p in meta.partitions])
                return set(meta.partitions)
            self._stop.wait(1.0)
        return set()

    def _apply_record(self, key: bytes | None, value: bytes | None, where: str) -> None:
        try:
            if value is None or value == b"":
                if not key:
                    raise FeedbackRejected("a tombstone needs a key (the rule id)")
                self.rules.delete(key.decode("utf-8", "replace"))
            else:
                record = json.loads(value)
                self.rules.apply(parse_rule(record, key.decode("utf-8", "replace") if key else None,
                                            self._fp_seconds))
            self.accepted.inc()
        except (FeedbackRejected, ValueError) as exc:  # JSONDecodeError and bad UTF-8 are ValueErrors
            self.rejected.labels(source="topic").inc()
            reason = str(exc) if isinstance(exc, FeedbackRejected) else f"not JSON ({exc})"
            if reason not in self._logged:
                self._logged.add(reason)
                log.warning("feedback record at %s:%s refused: %s (further records refused for this reason are "
                            "only counted)", self.topic, where, reason)

    # -- HTTP ------------------------------------------------------------------------------
    def http(self, method: str, path: str, headers: Any, body: bytes) -> HttpAnswer | None:
        """Answer GET /rules and POST /feedback; None for any other request."""
        if path == "/rules" and method in ("GET", "HEAD"):
            return _json(200, {"rules": [r.as_dict() for r in self.rules.rules()],
                               "loaded": self.loaded.is_set(), "topic": self.topic})
        if path != "/feedback" or method != "POST":
            return None
        if self._token is None:
            return _json(403, {"error": "POST /feedback is off: set PENSU_FEEDBACK_TOKEN"})
        given = headers.get("Authorization", "") if headers is not None else ""
        if not hmac.compare_digest(given.encode(), f"Bearer {self._token}".encode()):
            return _json(401, {"error": "missing or wrong bearer token"})
        if self.topic is None or self._producer_conf is None:
            return _json(503, {"error": "rules need PENSU_FEEDBACK_KAFKA_TOPIC to persist"})
        try:
            record = json.loads(body)
            if isinstance(record, dict) and "id" not in record:
                record["id"] = uuid.uuid4().hex[:12]
            parsed = parse_rule(record, None, self._fp_seconds)
        except (FeedbackRejected, ValueError) as exc:
            self.rejected.labels(source="http").inc()
            return _json(400, {"error": str(exc) if isinstance(exc, FeedbackRejected) else f"not JSON ({exc})"})
        if not self._publish(record["id"], json.dumps(record).encode()):
            return _json(503, {"error": f"could not write the rule to {self.topic}"})
        self.rules.apply(parsed)
        self.accepted.inc()
        return _json(200, {"accepted": parsed if isinstance(parsed, str) else parsed.as_dict()})

    def _publish(self, key: str, value: bytes) -> bool:
        assert self.topic is not None  # POST /feedback publishes only when a topic is configured
        if self._producer is None:
            self._producer = Producer(dict(self._producer_conf or {}))
        delivered: list[bool] = []
        self._producer.produce(self.topic, key=key.encode(), value=value,
                               on_delivery=lambda err, _msg: delivered.append(err is None))
        deadline = time.monotonic() + 10.0
        while not delivered and time.monotonic() < deadline:
            self._producer.poll(0.1)
        return bool(delivered and delivered[0])



# -- pensu replay ------------------------------------------------------------------------------
class FeedbackUnavailable(PensuError):
    """The rules a command was asked to apply cannot be read."""


def read_rules_file(path: Path, false_positive_seconds: float) -> list[Rule | str]:
    """The records of a rules file, in order (rules and ids to delete); `FeedbackRejected` names the
    line of the first bad one. JSON Lines (blank and `#` lines skipped) or a single JSON array."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise FeedbackUnavailable(f"cannot read rules file {path}: {exc}") from None
    if text.lstrip().startswith("["):
        try:
            records = json.loads(text)
        except ValueError as exc:
            raise FeedbackRejected(f"{path}: not JSON ({exc})") from None
        numbered = [(f"{path} record {i}", r) for i, r in enumerate(records, start=1)]
    else:
        numbered = []
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            try:
                numbered.append((f"{path}:{number}", json.loads(line)))
            except ValueError as exc:
                raise FeedbackRejected(f"{path}:{number}: not JSON ({exc})") from None
    parsed = []
    for where, record in numbered:
        try:
            parsed.append(parse_rule(record, None, false_positive_seconds))
        except FeedbackRejected as exc:
            raise FeedbackRejected(f"{where}: {exc}") from None
    return parsed


def read_rules_topic(rules: FeedbackFilter, topic: str, consumer_conf: dict[str, Any],
                     false_positive_seconds: float, timeout: float = TOPIC_READ_SECONDS) -> None:
    """Apply the records of the feedback topic, read once to its end, to `rules`."""
    reader = FeedbackLog(rules, topic, consumer_conf, None, CollectorRegistry(), None, false_positive_seconds)
    reader.start()
    try:
        if not reader.loaded.wait(timeout):
            raise FeedbackUnavailable(f"could not read the feedback topic {topic} to its end within {timeout:g} s "
                                      "(does it exist? is the broker reachable?)")
    finally:
        reader.stop()


def replay_rules(path: Path | None, from_topic: bool, env: Mapping[str, str] | None = None,
                 timeout: float = TOPIC_READ_SECONDS) -> OfflineFeedback | None:
    """The rules `pensu replay` applies: the feedback topic's (PENSU_FEEDBACK_KAFKA_TOPIC and the Kafka
    settings of `env`, default os.environ) and then a file's; None when neither is asked for."""
    if path is None and not from_topic:
        return None
    settings = load_settings(env)
    rules = FeedbackFilter()
    sources = []
    if from_topic:
        topic = settings.feedback_kafka_topic
        if topic is None:
            raise FeedbackUnavailable("--rules-from-topic needs PENSU_FEEDBACK_KAFKA_TOPIC")
        started = str(int(time.time()))
        read_rules_topic(rules, topic, settings.consumer_config(settings.instance_id, started),
                         settings.feedback_false_positive_seconds, timeout)
        sources.append(f"topic {topic}")
    if path is not None:
        for parsed in read_rules_file(path, settings.feedback_false_positive_seconds):
            rules.apply(parsed)
        sources.append(str(path))
    return OfflineFeedback(rules, " and ".join(sources))
