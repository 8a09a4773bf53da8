"""`PensuService`: the composition root and the consume → process → close batch → commit loop.

Each pass of `_step`: consume a batch; enter each message in the ledger's open batch and run it
through the pipeline; queue its output records on the batch (the ledger produces them in
chunks, counted against the batch); close the batch (its last chunk is produced);
commit the acknowledged prefix; settle parked analyzers; throttle when too far ahead of the
broker. Deliver-then-commit (at least once, no double learning) is `pensu.delivery`'s job;
the registry asks that same ledger, never the service, whether outputs are delivered.
Checkpoints are written only after the outputs of the samples they record were acknowledged,
so a restart skips replayed samples instead of learning them twice, and loses no output.
docs/architecture.md walks a line through the files.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition
from prometheus_client import CollectorRegistry

from pensu import __version__
from pensu.alerting import AlertSender
from pensu.allocator import keep_large_buffers
from pensu.analyzer import Analysis
from pensu.analyzer_settings import metric_configs
from pensu.checkpoint import CheckpointStore, LocalCheckpointStore
from pensu.checkpoint_log import LogCheckpointStore
from pensu.delivery import Batch, DeliveryEvents, DeliveryLedger, source_key
from pensu.episode_notes import EpisodeHooks
from pensu.errors import ConfigurationError
from pensu.feedback import FeedbackFilter
from pensu.feedback_io import FeedbackLog
from pensu.health import HealthServer, HealthStatus
from pensu.kafka_checkpoint import KafkaCheckpointStore
from pensu.kafka_io import (
    ALL_BROKERS_DOWN,
    PARTITION_EOF,
    EmbeddedKafka,
    IncarnationCache,
    OutputProducer,
    admin_config,
    ensure_topics,
    message_position,
)
from pensu.namespaces import RATE_PREFIX, NamespaceTracker
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
        self._broker_down = False
        self._last_autosave = time.monotonic()
        self._last_topics_report = time.monotonic()
        self._last_lag = 0.0
        self._kafka_log = RateLimitedLog(log, 30.0)
        self._over_quota_log = RateLimitedLog(log, settings.min_seconds_between_over_quota_log_msg)
        # Deliver-then-commit: in-flight batches, the committable prefix, waiting on the broker.
        self.ledger = DeliveryLedger(self._stop.is_set, DeliveryEvents(
            waiting=self._on_waiting,
            commit_failed=lambda: self.metrics.kafka_errors.labels(code="commit").inc()))
        configs = metric_configs(settings)
        self.models = ModelRegistry(
            self.store, configs, capacity=settings.max_allowed_models, gate=self.ledger,
            max_checkpoints=settings.max_tracked_metrics,
            events=RegistryEvents(
                evicted=self._on_evicted,
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
            OutputTopics(settings.anomaly_scores_kafka_topic, settings.prediction_metrics_kafka_topic,
                         settings.anomaly_reports_kafka_topic),
            settings.metric_names_template, configs.thresholds, settings.instance_id,
            report_fields=self.namespaces.report_fields, other_output_prefixes=(RATE_PREFIX,))
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
        if self.settings.checkpoint_store == "log":
            return LogCheckpointStore(self.settings.models_dir, sync_interval_s=self.settings.checkpoint_sync_interval)
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

    def _on_evicted(self) -> None:
        self.metrics.model_evictions.inc()
        self.metrics.over_quota.inc()
        self._over_quota_log.log(logging.INFO,
                                 "over the model quota (%d resident): swapping least recently used models to disk",
                                 self.settings.max_allowed_models)

    def status(self) -> HealthStatus:
        """Liveness/readiness for the health endpoints."""
        live = not self._stop.is_set() or self.consumer is not None
        owned, waiting = self.ledger.owned, self.ledger.waiting
        ready = self.consumer is not None and bool(owned) and not waiting and not self._broker_down
        detail = (f"assigned={len(owned)} models={len(self.models)} "
                  f"broker={'down' if self._broker_down or waiting else 'up'}")
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
                "assigned_partitions": len(self.ledger.owned),
            },
        }

    # -- lifecycle ------------------------------------------------------------------------
    def request_stop(self) -> None:
        """Ask the loop to finish its batch, save state and exit."""
        self._stop.set()

    def start(self) -> None:
        """Start health servers, the embedded broker if asked for, and the Kafka clients."""
        problem = self.settings.missing_broker_problem()
        if problem is not None:
            raise ConfigurationError(problem)
        keep_large_buffers()  # swaps reuse their megabyte buffers instead of faulting them in again
        if isinstance(self.store, LocalCheckpointStore):
            try:
                removed = self.store.remove_stale_temp_files()  # left by a crash mid-write
            except OSError as exc:  # the store reports an unusable directory on its first save
                log.warning("could not look for stale temporary checkpoint files: %s", exc)
            else:
                if removed:
                    log.info("removed %d stale temporary checkpoint files from %s", removed,
                             self.settings.models_dir)
        self.health.start()
        if self.alerts is not None:
            self.alerts.start()
        instance, started = self.settings.instance_id, str(int(self.started_at))
        embedded = None
        if self.settings.embedded_broker:
            self._embedded = EmbeddedKafka()
            embedded = self._embedded.bootstrap_servers
            log.info("PENSU_KAFKA_BOOTSTRAP_SERVERS=embedded: started an in-process Kafka mock cluster at %s "
                     "(produce carbon lines to topic %r; its data is lost on exit)",
                     embedded, self.settings.metrics_kafka_topic)
        # Each client's librdkafka dict comes whole from settings (its docstring lists the layers);
        # only callables are added here. librdkafka's own log lines go through Python logging
        # (format, level, rate limit), served from the poll()/consume()/flush() the loop calls.
        consumer_conf = {**self.settings.consumer_config(instance, started, servers=embedded),
                         "logger": librdkafka_logger()}
        producer_conf = {**self.settings.producer_config(instance, started, servers=embedded),
                         "logger": librdkafka_logger()}
        self.bootstrap_servers = consumer_conf["bootstrap.servers"]
        if producer_conf["bootstrap.servers"] != consumer_conf["bootstrap.servers"]:
            log.info("input from %s, outputs to %s", consumer_conf["bootstrap.servers"],
                     producer_conf["bootstrap.servers"])
        # Topic creation is best effort and must not delay start-up (some clusters, like the mock
        # one, never answer CreateTopics): it runs in the background.
        threading.Thread(target=self._ensure_topics, args=(dict(consumer_conf), dict(producer_conf)),
                         name="pensu-topics", daemon=True).start()
        self._incarnations = IncarnationCache(dict(consumer_conf))
        if self.settings.repartition:
            # The repartition topic is consumed back, so it lives on the input (consumer) cluster.
            servers = consumer_conf["bootstrap.servers"]
            self.repartitioner = Repartitioner(
                {**self.settings.consumer_config(instance, started, servers=servers, group_suffix=".repartition"),
                 "logger": consumer_conf["logger"]},
                {**self.settings.producer_config(instance, started, servers=servers),
                 "logger": producer_conf["logger"]},
                self.settings.metrics_kafka_topic, self.settings.repartition_kafka_topic, self._on_kafka_error)
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
        self.producer = OutputProducer(producer_conf, self._on_delivery_error, self._on_delivered)
        self.consumer = Consumer(consumer_conf)
        self.ledger.attach(self.producer, self.consumer)
        self.consumer.subscribe([self._input_topic()], on_assign=self._on_assign,
                                on_revoke=self._on_revoke, on_lost=self._on_lost)
        self.metrics.ready.set(0)

    def _ensure_topics(self, consumer_conf: dict, producer_conf: dict) -> None:
        outputs = [self.settings.anomaly_scores_kafka_topic, self.settings.prediction_metrics_kafka_topic,
                   self.settings.anomaly_reports_kafka_topic]
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
        """consume → process → close batch → commit (steps of `pensu.delivery`)."""
        assert self.consumer is not None and self.producer is not None
        messages = self.consumer.consume(num_messages=BATCH_SIZE, timeout=CONSUME_TIMEOUT_SECONDS)
        batch = self.ledger.open_batch()
        for message in messages:
            err = message.error()
            if err is not None:
                if err.code() != PARTITION_EOF:
                    self._on_kafka_error(err)
                continue
            self._broker_down = False
            topic, partition, offset = message_position(message)
            source = batch.consume(topic, partition, offset)
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
            self._emit(self.pipeline.process(payload, source, offset, origin), batch)
        self.ledger.close_batch(batch)
        self.producer.poll(0)
        self._poll_warm_start()
        self.ledger.commit()
        if self.models.parked:
            self.models.settle()  # evicted analyzers whose outputs are now acknowledged
        self.ledger.throttle(self._poll_warm_start)  # a held batch at the head waits for the gate
        self.metrics.resident_models.set(len(self.models))
        self._periodic()

    def _emit(self, result: MessageResult, batch: Batch) -> None:
        """Queue a processed message's outputs on its batch (produced in chunks: `DeliveryLedger.send`)."""
        self.ledger.send(result.records, batch)

    def _poll_warm_start(self) -> None:
        if self.warm_start is not None:
            self.warm_start.poll(self._emit)

    def _on_waiting(self, waiting: bool) -> None:
        self.metrics.ready.set(0 if waiting else 1 if self.ledger.owned else 0)

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
        if not self.ledger.wait_all():
            return
        saved, failed = self.models.save_dirty()
        if saved or failed:
            log.info("autosave: %d checkpoints written, %d failed", saved, failed)
        self.models.trim()  # PENSU_MAX_TRACKED_METRICS

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
        owned = self.ledger.owned
        if not owned:
            return
        try:
            positions = self.consumer.position([TopicPartition(t, p) for t, p in owned])
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
        if code == ALL_BROKERS_DOWN:  # cleared by the next message consumed
            self._broker_down = True
        self._kafka_log.log(logging.WARNING, "kafka: %s", err)

    def _on_delivered(self, topic: str, count: int) -> None:
        self.metrics.outputs_produced.labels(topic=topic).inc(count)

    def _on_delivery_error(self, topic: str, err: KafkaError) -> None:
        self.metrics.kafka_delivery_errors.inc()
        self._kafka_log.log(logging.ERROR, "output to %s not delivered: %s", topic, err)

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self.ledger.assign((tp.topic, tp.partition) for tp in partitions)
        for tp in partitions:
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
        keys = [(tp.topic, tp.partition) for tp in partitions]
        if why == "lost":  # no longer ours: their offsets cannot be committed by us any more
            self.ledger.release(keys)
        # Finish in-flight outputs and commit their offsets before the partitions move on.
        self.ledger.wait_all()
        self.ledger.release(keys)
        # Batches still in flight after wait_all hold lines the warm-start gate keeps back; none
        # of their positions on these partitions may be committed (the new owner replays them).
        self.ledger.drop_positions(keys)
        for topic, partition in keys:
            self.metrics.forget_partition(topic, partition)
        # The analyzers record the partitions they learned from (and a model loaded for a
        # partition whose samples were all replays records it too): all of them go, or they
        # would be stale when the partition comes back after another owner learned more.
        sources = {source_key(topic, partition) for topic, partition in keys}
        if self.warm_start is not None:  # after the commit above: its held lines are replayed by the new owner
            self.warm_start.forget(sources)
        metrics = {metric for metric, analyzer in self.models.items() if sources & analyzer.positions.keys()}
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
            self.ledger.finish(10)
            saved, failed = self.models.save_dirty()
            log.info("saved %d models on shutdown (%d failed)", saved, failed)
            if self.consumer is not None:
                self.consumer.close()
            self.store.close()
        finally:
            self.ledger.detach()
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

