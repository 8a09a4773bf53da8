"""`PensuService`: the consume → pipeline → produce → commit loop, with health and autosave.

Delivery guarantee (at least once, no double learning):
1. a batch of messages is consumed and processed; their output records are queued;
2. the producer is flushed until every record is acknowledged (a broker outage blocks here,
   with readiness off, instead of consuming more: back-pressure and bounded memory);
3. only then are the batch's offsets committed.
Checkpoints are written only after a flush, so a checkpoint never holds a sample whose outputs
were not delivered; it records the last (offset, line) applied per partition, and replayed
samples at or before it are skipped instead of learned twice.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections import deque
from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition
from prometheus_client import CollectorRegistry

from pensu import __version__
from pensu.alerting import AlertSender
from pensu.analyzer import Analysis
from pensu.analyzer_settings import RangeAwareConfig, analyzer_config
from pensu.checkpoint import CheckpointStore, LocalCheckpointStore
from pensu.episode_notes import EpisodeHooks
from pensu.errors import CheckpointError, ConfigurationError
from pensu.feedback import FeedbackFilter
from pensu.feedback_io import FeedbackLog
from pensu.health import HealthServer, HealthStatus
from pensu.kafka_checkpoint import KafkaCheckpointStore
from pensu.kafka_io import (DeliveryTracker, EmbeddedKafka, IncarnationCache, OutputProducer, admin_config,
                            ensure_topics, wait_for_delivery)
from pensu.namespaces import NamespaceTracker
from pensu.outputs import OutputFormatter, OutputRecord, OutputTopics
from pensu.pipeline import MessageResult, Pipeline, PipelineEvents
from pensu.registry import ModelRegistry, RegistryEvents
from pensu.repartition import Repartitioner
from pensu.settings import Settings
from pensu.telemetry import RateLimitedLog, ServiceMetrics, librdkafka_logger
from pensu.warm_start_gate import WarmStartGate

log = logging.getLogger(__name__)

BATCH_SIZE = 500
CONSUME_TIMEOUT_SECONDS = 0.05  # consume() waits this long for a full batch; keeps latency low
MAX_INFLIGHT_BATCHES = 64  # consumed batches whose outputs await the broker's acknowledgement
DELIVERY_WAIT_WARNING_SECONDS = 5.0  # not ready while the oldest batch waits longer than this
LAG_REFRESH_SECONDS = 5.0


class PensuService:
    """One Pensu instance: a consumer-group member with its models, outputs and health."""

    def __init__(self, settings: Settings, store: CheckpointStore | None = None,
                 registry: CollectorRegistry | None = None) -> None:
        self.settings = settings
        self.started_at = time.time()
        self.prom = registry or CollectorRegistry()
        self.metrics = ServiceMetrics(self.prom, version=__version__)
        self.store = store or self._default_store()
        self._stop = threading.Event()
        self._embedded: EmbeddedKafka | None = None
        self._assigned: set[tuple[str, int]] = set()
        self._source_of: dict[str, str] = {}  # resident metric -> "topic:partition" it came from
        self._inflight: deque[DeliveryTracker] = deque()
        self._last_batch: dict[str, DeliveryTracker] = {}  # metric -> batch of its latest outputs
        self._waiting_for_broker = False
        self._broker_down = False
        self._last_autosave = time.monotonic()
        self._evictions_since_trim = 0
        self._last_topics_report = time.monotonic()
        self._last_lag = 0.0
        self._kafka_log = RateLimitedLog(log, 30.0)
        self._over_quota_log = RateLimitedLog(log, settings.min_seconds_between_over_quota_log_msg)
        config = analyzer_config(settings)
        self.models = ModelRegistry(
            self.store, config, capacity=settings.max_allowed_models,
            config_for=RangeAwareConfig(config, settings.metric_ranges).for_metric,
            events=RegistryEvents(
                evicted=self._on_evicted,
                outputs_pending=self._outputs_pending,
                flush_outputs=self._deliver_all_and_commit,
                dropped=self._forget,
                loaded=lambda source: self.metrics.model_loads.labels(source=source).inc(),
                saved=self.metrics.checkpoint_saves.inc,
                save_failed=lambda: self.metrics.checkpoint_failures.labels(operation="save").inc(),
                load_failed=lambda: self.metrics.checkpoint_failures.labels(operation="load").inc(),
                quarantined=self.metrics.checkpoints_quarantined.inc,
            ))
        # Namespace anomaly rates, incident ids and Alertmanager alerts (README "Alerting").
        self.namespaces = NamespaceTracker(settings.namespace_depth, settings.incident_window_seconds,
                                           instance=settings.instance_id, rate_interval=settings.anomaly_rate_interval)
        self.alerts = (None if settings.alertmanager_url is None else
                       AlertSender(settings.alertmanager_url, self.prom, settings.instance_id,
                                   settings.alertmanager_resend_interval))
        self._last_rates = time.monotonic()
        self.feedback = FeedbackFilter()  # rules from PENSU_FEEDBACK_KAFKA_TOPIC and POST /feedback
        self.episodes = EpisodeHooks(self.feedback, self.namespaces, self.alerts)
        self.feedback_log: FeedbackLog | None = None
        self.formatter = OutputFormatter(
            OutputTopics(settings.reported_anomalies_kafka_topic, settings.prediction_metrics_kafka_topic,
                         settings.anomalies_metrics_kafka_topic),
            settings.metric_names_template, config.thresholds, settings.instance_id,
            report_fields=self.namespaces.report_fields)
        self.pipeline = Pipeline(
            self.models, self.formatter, re.compile(settings.allowed_to_work_on_metrics),
            dead_letter_topic=settings.dead_letter_kafka_topic,
            events=PipelineEvents(
                sample=self._on_sample,
                rejected=lambda reason: self.metrics.rejected_lines.labels(reason=reason).inc(),
                skipped=self._on_skipped,
                reported=self.metrics.reports_emitted.inc,
                analysed=self._on_analysed,
                learns=self.feedback.learns,
            ))
        # New metrics learn their Graphite history first (README "Warm start"); None: off.
        self.warm_start = WarmStartGate.from_settings(settings, self.models, self.pipeline, self.prom,
                                                      self.feedback.learns)
        self.health = HealthServer(
            ping_host=settings.ping_listen_host, ping_port=settings.ping_listen_port,
            http_host=settings.http_host, http_port=settings.http_port or None,
            registry=self.prom, status=self.status, info=self.ping_info, route=self._http_route)
        self.consumer: Consumer | None = None
        self.producer: OutputProducer | None = None
        self.repartitioner: Repartitioner | None = None
        self.bootstrap_servers: str | None = settings.consumer_servers()
        self._incarnations = IncarnationCache.disabled()
        self._last_offset: dict[tuple[str, int], int] = {}  # offset last consumed per partition, this run

    def _default_store(self) -> CheckpointStore:
        if self.settings.checkpoint_store == "kafka":
            # A subdirectory: the cache is emptied at start, files of the directory store stay.
            return KafkaCheckpointStore(self.settings.models_dir / "kafka-cache", self.settings.checkpoint_kafka_topic,
                                        self._input_topic(), self.settings.checkpoint_kafka_quarantine_topic,
                                        on_quarantined=self.metrics.checkpoints_quarantined.inc)
        return LocalCheckpointStore(self.settings.models_dir, sync_interval_s=self.settings.checkpoint_sync_interval)

    # -- events ---------------------------------------------------------------------------
    def _on_sample(self, seconds: float) -> None:
        self.metrics.samples_processed.inc()
        self.metrics.model_step_seconds.observe(seconds)

    def _on_analysed(self, analysis: Analysis) -> Analysis:
        # The analyzer is resident (it just learned the sample): its checkpoint keeps the episode notes.
        return self.episodes.analysed(analysis, self.models.get(analysis.metric))

    def _http_route(self, method: str, path: str, headers: object, body: bytes) -> tuple[int, str, bytes] | None:
        return None if self.feedback_log is None else self.feedback_log.http(method, path, headers, body)

    def _on_skipped(self, reason: str) -> None:
        if reason == "replayed":
            self.metrics.duplicate_samples_skipped.inc()

    def _outputs_pending(self, metric: str) -> bool:
        """True while outputs of the metric's last batch are not all acknowledged."""
        batch = self._last_batch.get(metric)
        return batch is not None and batch.pending > 0

    def _forget(self, metric: str) -> None:
        self._source_of.pop(metric, None)
        self._last_batch.pop(metric, None)

    def _on_evicted(self) -> None:
        self.metrics.model_evictions.inc()
        self.metrics.over_quota.inc()
        # A flood of new names evicts (writes) a checkpoint per name, possibly for longer than an
        # autosave interval within one batch: trim every tenth of the quota too, so disk use stays
        # within PENSU_MAX_TRACKED_METRICS plus that tenth.
        self._evictions_since_trim += 1
        if self._evictions_since_trim >= max(1, self.settings.max_tracked_metrics // 10):
            self._trim_checkpoints()
        self._over_quota_log.log(logging.INFO,
                                 "over the model quota (%d resident): swapping least recently used models to disk",
                                 self.settings.max_allowed_models)

    def status(self) -> HealthStatus:
        """Liveness/readiness for the health endpoints."""
        live = not self._stop.is_set() or self.consumer is not None
        ready = (self.consumer is not None and bool(self._assigned) and not self._waiting_for_broker
                 and not self._broker_down)
        detail = (f"assigned={len(self._assigned)} models={len(self.models)} "
                  f"broker={'down' if self._broker_down or self._waiting_for_broker else 'up'}")
        return HealthStatus(live=live, ready=ready, detail=detail)

    def ping_info(self) -> dict[str, object]:
        """What GET /ping reports besides PONG, like the original Pensu: identity and counters."""
        def total(name: str) -> int:
            return int(sum(sample.value for metric in self.prom.collect() for sample in metric.samples
                           if sample.name == name))

        status = self.status()
        return {
            "instance_id": self.settings.instance_id,
            "version": __version__,
            "uptime_seconds": round(time.time() - self.started_at, 1),
            "ready": status.ready,
            "live": status.live,
            "service_specific_info": {
                "samples_processed": total("pensu_samples_processed_total"),
                "rejected_lines": total("pensu_rejected_lines_total"),
                "duplicate_samples_skipped": total("pensu_duplicate_samples_skipped_total"),
                "reports_emitted": total("pensu_reports_emitted_total"),
                "outputs_produced": total("pensu_outputs_produced_total"),
                "kafka_errors": total("pensu_kafka_errors_total"),
                "resident_models": len(self.models),
                "assigned_partitions": len(self._assigned),
            },
        }

    # -- lifecycle ------------------------------------------------------------------------
    def request_stop(self) -> None:
        """Ask the loop to finish its batch, save state and exit."""
        self._stop.set()

    @property
    def stopping(self) -> bool:
        """True once a stop was requested."""
        return self._stop.is_set()

    def start(self) -> None:
        """Start health servers, the embedded broker if asked for, and the Kafka clients."""
        problem = self.settings.missing_broker_problem()
        if problem is not None:
            raise ConfigurationError(problem)
        self.health.start()
        if self.alerts is not None:
            self.alerts.start()
        instance, started = self.settings.instance_id, str(int(self.started_at))
        consumer_conf = self.settings.consumer_config(instance, started)
        producer_conf = self.settings.producer_config(instance, started)
        if self.settings.embedded_broker:
            self._embedded = EmbeddedKafka()
            consumer_conf["bootstrap.servers"] = producer_conf["bootstrap.servers"] = self._embedded.bootstrap_servers
            log.info("PENSU_KAFKA_BOOTSTRAP_SERVERS=embedded: started an in-process Kafka mock cluster at %s "
                     "(produce carbon lines to topic %r; its data is lost on exit)",
                     self._embedded.bootstrap_servers, self.settings.metrics_kafka_topic)
        self.bootstrap_servers = consumer_conf["bootstrap.servers"]
        if producer_conf["bootstrap.servers"] != consumer_conf["bootstrap.servers"]:
            log.info("input from %s, outputs to %s", consumer_conf["bootstrap.servers"],
                     producer_conf["bootstrap.servers"])
        # librdkafka's own log lines go through Python logging (format, level, rate limit); they are
        # served from poll()/consume()/flush(), which the loop calls continuously.
        consumer_conf["logger"] = producer_conf["logger"] = librdkafka_logger()
        consumer_conf.setdefault("partition.assignment.strategy", "cooperative-sticky")
        consumer_conf.setdefault("auto.offset.reset", "earliest")
        # An input topic created after start-up is noticed within this (librdkafka: 5 min).
        consumer_conf.setdefault("topic.metadata.refresh.interval.ms", 30000)
        consumer_conf["enable.auto.commit"] = "false"
        consumer_conf["enable.auto.offset.store"] = "false"
        # Topic creation is best effort and must not delay start-up (some clusters, like the mock
        # one, never answer CreateTopics): it runs in the background.
        threading.Thread(target=self._ensure_topics, args=(dict(consumer_conf), dict(producer_conf)),
                         name="pensu-topics", daemon=True).start()
        self._incarnations = IncarnationCache(dict(consumer_conf))
        if self.settings.repartition:
            # The repartition topic is consumed back, so it lives on the input (consumer) cluster.
            repartition_producer = dict(producer_conf, **{"bootstrap.servers": consumer_conf["bootstrap.servers"]})
            self.repartitioner = Repartitioner(consumer_conf, repartition_producer, self.settings.metrics_kafka_topic,
                                               self.settings.repartition_kafka_topic, self._on_kafka_error)
            self.repartitioner.start()
            log.info("repartition stage: %s (any keys) -> %s (keyed by metric name)",
                     self.settings.metrics_kafka_topic, self.settings.repartition_kafka_topic)
        self.store.connect(admin_config(consumer_conf))  # a Kafka store lives on the input cluster
        token = self.settings.feedback_token
        self.feedback_log = FeedbackLog(
            self.feedback, self.settings.feedback_kafka_topic, dict(consumer_conf), dict(producer_conf), self.prom,
            None if token is None else token.get_secret_value(), self.settings.feedback_false_positive_seconds)
        self.feedback_log.start()
        consumer_conf["error_cb"] = self._on_kafka_error
        producer_conf["error_cb"] = self._on_kafka_error
        self.producer = OutputProducer(producer_conf, self._on_delivery_error,
                                       lambda topic: self.metrics.outputs_produced.labels(topic=topic).inc())
        self.consumer = Consumer(consumer_conf)
        self.consumer.subscribe([self._input_topic()], on_assign=self._on_assign,
                                on_revoke=self._on_revoke, on_lost=self._on_lost)
        self.metrics.ready.set(0)

    def _ensure_topics(self, consumer_conf: dict, producer_conf: dict) -> None:
        outputs = [self.settings.reported_anomalies_kafka_topic, self.settings.prediction_metrics_kafka_topic,
                   self.settings.anomalies_metrics_kafka_topic]
        inputs = [self.settings.metrics_kafka_topic, self._input_topic()]
        same = consumer_conf.get("bootstrap.servers") == producer_conf.get("bootstrap.servers")
        for config, topics in ([(producer_conf, inputs + outputs)] if same
                               else [(consumer_conf, inputs), (producer_conf, outputs)]):
            try:
                ensure_topics(config, topics, timeout=10.0)
            except Exception as exc:  # noqa: BLE001 - best effort; the loop survives missing topics and outages
                log.warning("could not check topics on %s at start (%s); continuing",
                            config.get("bootstrap.servers"), exc)

    def _input_topic(self) -> str:
        if self.settings.repartition:
            return self.settings.repartition_kafka_topic
        return self.settings.metrics_kafka_topic

    def run(self) -> int:
        """Run until `request_stop`; returns the process exit code."""
        if self.consumer is None:
            self.start()
        assert self.consumer is not None and self.producer is not None
        try:
            while not self._stop.is_set():
                self._step()
        finally:
            self._shutdown()
        return 0

    def _step(self) -> None:
        assert self.consumer is not None and self.producer is not None
        messages = self.consumer.consume(num_messages=BATCH_SIZE, timeout=CONSUME_TIMEOUT_SECONDS)
        batch = DeliveryTracker({})
        for message in messages:
            err = message.error()
            if err is not None:
                if err.code() != KafkaError._PARTITION_EOF:
                    self._on_kafka_error(err)
                continue
            self._broker_down = False
            topic, partition, offset = message.topic(), message.partition(), message.offset()
            source = f"{topic}:{partition}"
            previous = self._last_offset.get((topic, partition))
            if previous is not None and offset <= previous:
                # Offsets went backwards: the topic may have been deleted and recreated. Until its
                # incarnation is looked up again, replays are judged by timestamp.
                log.warning("offsets of %s went back from %d to %d; checking the topic's incarnation again",
                            source, previous, offset)
                self._incarnations.refresh(topic)
            self._last_offset[(topic, partition)] = offset
            origin, payload = self._incarnations.get(topic), message.value()
            if self.warm_start is not None:
                payload = self.warm_start.admit(payload, source, offset, origin, batch)
            self._emit(self.pipeline.process(payload, source, offset, origin), source, batch)
            self.producer.poll(0)
            batch.positions[(topic, partition)] = offset + 1
        if batch.positions:
            # Time the wait for acknowledgements from the end of processing, not its start: a
            # long batch on a busy core is not a broker problem.
            batch.created = time.monotonic()
            self._inflight.append(batch)
        self.producer.poll(0)
        self._poll_warm_start()
        self._commit_delivered()
        if self.models.parked:
            self.models.settle()  # evicted analyzers whose outputs are now acknowledged
        # Back-pressure: never run more than MAX_INFLIGHT_BATCHES ahead of the broker's acks.
        while len(self._inflight) > MAX_INFLIGHT_BATCHES and not self._stop.is_set():
            self.producer.poll(0.1)
            self._poll_warm_start()  # a held batch at the head waits for it
            self._commit_delivered()
        self.metrics.resident_models.set(len(self.models))
        self._periodic()

    def _emit(self, result: MessageResult, source: str, batch: DeliveryTracker) -> None:
        """Queue a processed message's outputs on its batch."""
        assert self.producer is not None
        for metric in result.metrics:
            self._source_of[metric] = source
            self._last_batch[metric] = batch
        for record in result.records:
            self.producer.send(record, self._stop.is_set, batch)

    def _poll_warm_start(self) -> None:
        if self.warm_start is not None:
            self.warm_start.poll(self._emit)

    def _commit_delivered(self, asynchronous: bool = True) -> None:
        """Commit the offsets of the oldest batches whose outputs are all answered.

        Batches complete in order per partition; committing only a prefix of the in-flight
        queue keeps "offsets committed ⇒ outputs delivered" (at least once).
        """
        assert self.consumer is not None
        merged: dict[tuple[str, int], int] = {}
        while self._inflight and self._inflight[0].pending == 0:
            merged.update(self._inflight.popleft().positions)
        oldest = self._inflight[0].created if self._inflight else None
        waiting = oldest is not None and time.monotonic() - oldest > DELIVERY_WAIT_WARNING_SECONDS
        if waiting != self._waiting_for_broker:
            self._set_waiting(waiting)
            if waiting:
                log.warning("waiting for the broker to acknowledge outputs (%d batches in flight)",
                            len(self._inflight))
            else:
                log.info("outputs acknowledged again")
        offsets = [TopicPartition(t, p, o) for (t, p), o in merged.items() if (t, p) in self._assigned]
        if not offsets:
            return
        try:
            self.consumer.commit(offsets=offsets, asynchronous=asynchronous)
        except KafkaException as exc:
            # Not fatal: the outputs were delivered; the next owner may replay and skip them.
            self._kafka_log.log(logging.WARNING, "offset commit failed: %s", exc)
            self.metrics.kafka_errors.labels(code="commit").inc()

    def _deliver_all_and_commit(self) -> bool:
        """Wait until every queued output is answered, then commit synchronously."""
        assert self.producer is not None
        if not wait_for_delivery(self.producer, self._stop.is_set, self._set_waiting):
            return False  # stopping with undelivered outputs: their offsets stay uncommitted
        self._commit_delivered(asynchronous=False)
        return True

    def _set_waiting(self, waiting: bool) -> None:
        self._waiting_for_broker = waiting
        self.metrics.ready.set(0 if waiting else 1 if self._assigned else 0)

    def _periodic(self) -> None:
        now = time.monotonic()
        interval = self.settings.models_autosave_interval
        if interval and now - self._last_autosave >= interval:
            self._last_autosave = now
            self.autosave()
        interval = self.settings.topics_report_interval
        if interval and now - self._last_topics_report >= interval:
            self._last_topics_report = now
            self._report_topics()
        interval = self.settings.anomaly_rate_interval
        if interval and now - self._last_rates >= interval:
            self._last_rates = now
            self._report_rates()
        if now - self._last_lag >= LAG_REFRESH_SECONDS:
            self._last_lag = now
            self._refresh_lag()
        self.metrics.ready.set(1 if self.status().ready else 0)

    def autosave(self) -> None:
        """Checkpoint every analyzer that learned since its last save, then trim old checkpoints."""
        assert self.producer is not None
        if not self._deliver_all_and_commit():
            return
        saved, failed = self.models.save_dirty()
        if saved or failed:
            log.info("autosave: %d checkpoints written, %d failed", saved, failed)
        self._trim_checkpoints()

    def _trim_checkpoints(self) -> None:
        """Delete the longest-idle checkpoints beyond PENSU_MAX_TRACKED_METRICS (never resident ones)."""
        self._evictions_since_trim = 0
        try:
            removed = self.store.enforce_limit(self.settings.max_tracked_metrics,
                                               protect=self.models.resident_metrics())
            if removed:
                log.info("removed %d idle checkpoints beyond PENSU_MAX_TRACKED_METRICS=%d",
                         removed, self.settings.max_tracked_metrics)
        except (CheckpointError, OSError) as exc:  # an unlistable models dir must not end the loop
            log.warning("could not trim checkpoints: %s", exc)

    def _report_topics(self) -> None:
        assert self.producer is not None
        metrics = sorted(self.models.resident_metrics())
        payload = {"pensu_instance": self.settings.instance_id, "timestamp": int(time.time()),
                   "metrics": metrics, "count": len(metrics)}
        self.producer.send(OutputRecord(self.settings.topics_kafka_topic, self.settings.instance_id.encode(),
                                        json.dumps(payload).encode()), self._stop.is_set)
        self.metrics.tracked_metrics.set(len(metrics))

    def _report_rates(self) -> None:
        assert self.producer is not None
        topic = self.formatter.topics.anomaly_metrics
        for namespace, line in self.namespaces.rate_lines(int(time.time())):
            self.producer.send(OutputRecord(topic, namespace.encode(), line, self.formatter.headers),
                               self._stop.is_set)

    def _refresh_lag(self) -> None:
        assert self.consumer is not None
        if not self._assigned:
            return
        try:
            positions = self.consumer.position([TopicPartition(t, p) for t, p in self._assigned])
        except KafkaException:
            return
        for tp in positions:
            try:
                _low, high = self.consumer.get_watermark_offsets(tp, timeout=0.5, cached=True)
            except KafkaException:
                continue
            if tp.offset >= 0 and high >= 0:
                self.metrics.consumer_lag.labels(topic=tp.topic, partition=str(tp.partition)).set(
                    max(0, high - tp.offset))

    # -- Kafka callbacks -------------------------------------------------------------------
    def _on_kafka_error(self, err: KafkaError) -> None:
        code = err.code()
        self.metrics.kafka_errors.labels(code=err.name() if hasattr(err, "name") else str(code)).inc()
        if code in (KafkaError._ALL_BROKERS_DOWN, KafkaError._TRANSPORT, KafkaError._RESOLVE):
            self._broker_down = code == KafkaError._ALL_BROKERS_DOWN or self._broker_down
        self._kafka_log.log(logging.WARNING, "kafka: %s", err)

    def _on_delivery_error(self, topic: str, err: KafkaError) -> None:
        self.metrics.kafka_delivery_errors.inc()
        self._kafka_log.log(logging.ERROR, "output to %s not delivered: %s", topic, err)

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        for tp in partitions:
            self._assigned.add((tp.topic, tp.partition))
            self._last_offset.pop((tp.topic, tp.partition), None)
        log.info("assigned %s", sorted(f"{tp.topic}:{tp.partition}" for tp in partitions))
        for topic, numbers in _by_topic(partitions).items():
            self.store.partitions_assigned(topic, numbers)

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._hand_over(partitions, "revoked")

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._hand_over(partitions, "lost")

    def _hand_over(self, partitions: list[TopicPartition], why: str) -> None:
        """Checkpoint and drop the analyzers of partitions this instance no longer owns."""
        assert self.producer is not None
        if why == "lost":  # no longer ours: their offsets cannot be committed by us any more
            for tp in partitions:
                self._assigned.discard((tp.topic, tp.partition))
        # Finish in-flight outputs and commit their offsets before the partitions move on.
        self._deliver_all_and_commit()
        sources = {f"{tp.topic}:{tp.partition}" for tp in partitions}
        for tp in partitions:
            self._assigned.discard((tp.topic, tp.partition))
        if self.warm_start is not None:  # after the commit above: its held lines are replayed by the new owner
            self.warm_start.forget(sources, self._inflight)
        metrics = {metric for metric, source in self._source_of.items() if source in sources}
        # A model loaded for a partition whose samples were all replays (skipped, so never
        # tracked above) must go too: kept resident, it would be stale when the partition
        # comes back after another owner learned more.
        metrics.update(metric for metric, analyzer in self.models.items() if sources & analyzer.positions.keys())
        # Lost (not revoked): a new owner may already have checkpointed past us; never overwrite that.
        if why == "lost":
            for topic, numbers in _by_topic(partitions).items():
                self.store.refresh(topic, numbers)
        released = self.models.release(metrics, unless_superseded=why == "lost")
        for metric in metrics:  # another instance rates and alerts on them now
            self.namespaces.forget(metric)
            if self.alerts is not None:
                self.alerts.forget(metric)
        log.info("partitions %s %s: %d models checkpointed and released",
                 sorted(f"{tp.topic}:{tp.partition}" for tp in partitions), why, released)
        for topic, numbers in _by_topic(partitions).items():
            self.store.partitions_revoked(topic, numbers)

    def _shutdown(self) -> None:
        log.info("stopping: delivering outputs and saving models")
        try:
            if self.repartitioner is not None:
                self.repartitioner.stop()
            if self.producer is not None and self.consumer is not None:
                if self.producer.flush(10) == 0:
                    self._commit_delivered(asynchronous=False)
            saved, failed = self.models.save_dirty()
            log.info("saved %d models on shutdown (%d failed)", saved, failed)
            if self.consumer is not None:
                self.consumer.close()
            self.store.close()
        finally:
            self.consumer = None
            self.producer = None  # drop the client so it stops reconnecting to a gone cluster
            self.health.stop()
            if self.alerts is not None:
                self.alerts.stop()
            if self.feedback_log is not None:
                self.feedback_log.stop()
            self._incarnations.close()
            if self.warm_start is not None:
                self.warm_start.close()
            if self._embedded is not None:
                self._embedded.close()


def _by_topic(partitions: list[TopicPartition]) -> dict[str, list[int]]:
    grouped: dict[str, list[int]] = {}
    for tp in partitions:
        grouped.setdefault(tp.topic, []).append(tp.partition)
    return grouped


def install_signal_handlers(service: PensuService) -> None:
    """SIGTERM/SIGINT ask the service to stop cleanly (save state, exit 0)."""
    import signal

    def handler(signum: int, _frame: object) -> None:
        log.info("signal %d received", signum)
        service.request_stop()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)

