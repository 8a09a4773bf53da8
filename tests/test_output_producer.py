"""OutputProducer: per-tracker pending counts, delivered counts reported in sums per poll/flush."""

from __future__ import annotations

from collections import Counter

from confluent_kafka import KafkaError

from pensu.delivery import Batch
from pensu.kafka_io import EmbeddedKafka, OutputProducer
from pensu.outputs import OutputRecord


def test_pending_counts_per_tracker_and_delivered_counts_per_topic() -> None:
    delivered: Counter[str] = Counter()
    reports: list[tuple[str, int]] = []
    errors: list[tuple[str, KafkaError]] = []

    def on_delivered(topic: str, count: int) -> None:
        delivered[topic] += count
        reports.append((topic, count))

    with EmbeddedKafka() as kafka:
        producer = OutputProducer({"bootstrap.servers": kafka.bootstrap_servers}, lambda t, e: errors.append((t, e)),
                                  on_delivered)
        first, second = Batch(), Batch()
        h = (("pensu-instance", b"i"),)
        producer.send_all([OutputRecord("out.a", b"k", b"1", h), OutputRecord("out.b", b"k", b"2", h)],
                          tracker=first)
        producer.send_all([OutputRecord("out.a", b"k", b"3", h)] * 3, tracker=second)
        producer.send(OutputRecord("out.a", b"k", b"4", h), tracker=first)  # back to the first batch
        producer.send(OutputRecord("out.b", None, b"5"))  # untracked (e.g. the topics report)
        assert (first.pending, second.pending) == (3, 3)
        assert delivered == Counter()  # nothing reported before the broker answered and callbacks ran
        assert producer.flush(30) == 0
    assert (first.pending, second.pending) == (0, 0)
    assert errors == []
    assert delivered == Counter({"out.a": 5, "out.b": 2})
    assert len(reports) == len({topic for topic, _ in reports}) == 2  # one report per topic per flush


def test_a_failed_delivery_releases_its_tracker_and_names_its_topic() -> None:
    errors: list[tuple[str, int]] = []
    delivered: list[tuple[str, int]] = []
    with EmbeddedKafka() as kafka:
        producer = OutputProducer({"bootstrap.servers": kafka.bootstrap_servers},
                                  lambda topic, err: errors.append((topic, err.code())),
                                  lambda topic, count: delivered.append((topic, count)))
        batch = Batch()
        batch.pending = 2
        # The callbacks librdkafka would run for two records of the batch: one failed for good.
        callback = producer._callback("out.x", batch)  # noqa: SLF001 - driving the callback directly
        assert producer._callback("out.x", batch) is callback  # noqa: SLF001 - one per (batch, topic)
        callback(KafkaError(KafkaError.MSG_SIZE_TOO_LARGE), None)  # type: ignore[arg-type]
        callback(None, None)  # type: ignore[arg-type]
        assert batch.pending == 0
        assert errors == [("out.x", KafkaError.MSG_SIZE_TOO_LARGE)]
        assert delivered == []
        producer.poll(0)
        assert delivered == [("out.x", 1)]
