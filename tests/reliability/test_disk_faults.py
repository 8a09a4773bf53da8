"""Disk faults under a running service: a full filesystem (tiny tmpfs) and a models directory
replaced by a file. Autosaves fail, are counted and logged; processing goes on; a later save
catches up once the disk is back."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest

from pensu.checkpoint import LocalCheckpointStore
from tests.conftest import KafkaCluster
from tests.reliability.faults import mount_tmpfs, remount_tmpfs, umount, wait_until
from tests.service_harness import ServiceThread, lines_for, service_env
from tests.support import series

pytestmark = pytest.mark.kafka


def produce(kafka: KafkaCluster, topic: str, metric: str, samples: list[tuple[float, float]]) -> None:
    """Produce samples of one metric, ten lines per message, keyed by name."""
    lines = list(lines_for(metric, samples))
    kafka.produce(topic, [(metric.encode(), b"\n".join(lines[i:i + 10])) for i in range(0, len(lines), 10)])


def saved_count(models: Path, metric: str) -> int:
    """Sample count in the metric's checkpoint (-1 when unreadable or absent)."""
    try:
        loaded = LocalCheckpointStore(models).load(metric)
    except OSError:
        return -1
    except Exception:  # noqa: BLE001 - any failure to read means "not caught up yet"
        return -1
    return -1 if loaded is None else loaded[0].sample_count


def failures(running: ServiceThread) -> float:
    """pensu_checkpoint_failures_total{operation="save"} of the running service."""
    return running.service.prom.get_sample_value("pensu_checkpoint_failures_total", {"operation": "save"}) or 0.0


def run_disk_fault(kafka: KafkaCluster, models: Path, break_disk, repair_disk, caplog) -> None:
    """Learn, break the disk, keep learning (saves fail), repair it, see a save catch up."""
    env = service_env(kafka, models, PENSU_MODELS_AUTOSAVE_INTERVAL="0.5")
    samples = series(90)
    with ServiceThread(env) as running, caplog.at_level(logging.WARNING):
        topic, counter = env["PENSU_METRICS_KAFKA_TOPIC"], running.service.metrics.samples_processed

        def processed() -> float:
            if running.error is not None:  # the loop died: show why instead of timing out
                raise running.error
            return counter._value.get()
        produce(kafka, topic, "disk.m", samples[:40])
        wait_until(lambda: saved_count(models, "disk.m") == 40, 60, "the first checkpoint")
        break_disk()
        produce(kafka, topic, "disk.m", samples[40:70])
        wait_until(lambda: processed() >= 70, 60, "processing during the fault")
        wait_until(lambda: failures(running) >= 2, 30, "failed autosaves to be counted")
        assert running.thread.is_alive() and running.error is None
        produce(kafka, topic, "disk.m", samples[70:])  # still consuming while saves fail
        wait_until(lambda: processed() >= 90, 60, "processing after repeated failures")
        assert any("could not checkpoint 'disk.m'" in r.getMessage() for r in caplog.records)
        repair_disk()
        wait_until(lambda: saved_count(models, "disk.m") == 90, 30, "a later save to catch up")
        assert running.thread.is_alive() and running.error is None


def test_full_disk_fails_saves_then_catches_up(kafka: KafkaCluster, tmp_path: Path, caplog) -> None:
    models = tmp_path / "models"
    if not mount_tmpfs(models, "4m"):
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        ballast = models / "ballast"

        def fill() -> None:
            free = shutil.disk_usage(models).free
            with open(ballast, "wb") as handle:
                handle.write(b"\0" * free)  # tmpfs: exactly what is left, the next write gets ENOSPC

        run_disk_fault(kafka, models, fill, lambda: remount_tmpfs(models, "32m"), caplog)  # 4 MB: room for one model
        assert any("No space left" in r.getMessage() for r in caplog.records)
    finally:
        umount(models)


def test_models_dir_replaced_by_a_file(kafka: KafkaCluster, tmp_path: Path, caplog) -> None:
    models = tmp_path / "models"
    moved = tmp_path / "models.moved"

    def replace_with_file() -> None:
        models.rename(moved)
        models.write_bytes(b"not a directory")

    def restore() -> None:
        models.unlink()
        moved.rename(models)

    run_disk_fault(kafka, models, replace_with_file, restore, caplog)


def test_models_dir_dangling_symlink(kafka: KafkaCluster, tmp_path: Path, caplog) -> None:
    models, target = tmp_path / "models", tmp_path / "volume"
    target.mkdir()
    models.symlink_to(target)
    parked = tmp_path / "volume.parked"
    run_disk_fault(kafka, models, lambda: target.rename(parked), lambda: parked.rename(target), caplog)
