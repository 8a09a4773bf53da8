"""ModelRegistry: capped LRU swapping through a real on-disk CheckpointStore."""

from __future__ import annotations

import dataclasses
import logging
import shutil
from collections import Counter
from collections.abc import Mapping
from pathlib import Path

from pensu.analyzer import MetricAnalyzer, Thresholds
from pensu.checkpoint import LocalCheckpointStore, checkpoint_key
from pensu.registry import ModelRegistry, RegistryEvents
from tests.support import START_TS, fast_config, series

ALWAYS = Thresholds(anomaly_score=0.0, anomaly_likelihood=0.0)
METRICS = [f"host{i}.cpu" for i in range(10)]


def counting_events() -> tuple[RegistryEvents, Counter]:
    counts: Counter = Counter()
    events = RegistryEvents(
        evicted=lambda: counts.update(["evicted"]),
        loaded=lambda source: counts.update([f"loaded_{source}"]),
        saved=lambda: counts.update(["saved"]),
        save_failed=lambda: counts.update(["save_failed"]),
        load_failed=lambda: counts.update(["load_failed"]),
        quarantined=lambda: counts.update(["quarantined"]),
    )
    return events, counts


def interleaved(registry: ModelRegistry, samples: list[tuple[float, float]]) -> dict[str, list]:
    """Feed each sample to every metric in turn (the worst case for an LRU)."""
    out: dict[str, list] = {m: [] for m in METRICS}
    for i, (ts, value) in enumerate(samples):
        for k, metric in enumerate(METRICS):
            analysis = registry.get(metric).process(ts, value + k, f"metrics:{k % 4}", i, 0)
            out[metric].append(dataclasses.astuple(analysis))
    return out


def test_cap_of_three_with_ten_metrics_gives_identical_outputs(tmp_path: Path) -> None:
    config = fast_config(ALWAYS)
    samples = series(70)
    events, counts = counting_events()
    capped = ModelRegistry(LocalCheckpointStore(tmp_path / "capped"), config, capacity=3, events=events)
    uncapped = ModelRegistry(LocalCheckpointStore(tmp_path / "free"), config, capacity=100)
    got = interleaved(capped, samples)
    want = interleaved(uncapped, samples)
    assert len(capped) == 3
    assert got == want  # swapping never loses or repeats learning
    assert counts["evicted"] >= 7 * len(samples) - 10
    assert counts["loaded_checkpoint"] > 0 and counts["loaded_fresh"] == len(METRICS)
    files = list((tmp_path / "capped").rglob("*.ckpt"))
    assert len(files) >= 7


def test_checkpoint_file_names_never_contain_the_metric_name(tmp_path: Path) -> None:
    registry = ModelRegistry(LocalCheckpointStore(tmp_path), fast_config(), capacity=1)
    for metric in ("a.visible.name", "b.other"):
        registry.get(metric).process(1.0, 1.0)
    registry.save_dirty()
    names = [p.name for p in tmp_path.rglob("*") if p.is_file()]
    assert names and not any("visible" in n or "other" in n for n in names)


def test_release_saves_and_drops_and_reload_resumes(tmp_path: Path) -> None:
    store = LocalCheckpointStore(tmp_path)
    registry = ModelRegistry(store, fast_config(ALWAYS), capacity=10)
    samples = series(60)
    for ts, value in samples[:40]:
        registry.get("m").process(ts, value)
    assert registry.release(["m"]) == 1 and "m" not in registry
    other = ModelRegistry(store, fast_config(ALWAYS), capacity=10)
    resumed = [other.get("m").process(ts, v) for ts, v in samples[40:]]
    reference = MetricAnalyzer("m", fast_config(ALWAYS))
    expected = [reference.process(ts, v) for ts, v in samples][40:]
    assert resumed == expected


def test_corrupt_checkpoint_is_quarantined_and_a_fresh_model_starts(tmp_path: Path) -> None:
    store = LocalCheckpointStore(tmp_path)
    registry = ModelRegistry(store, fast_config(), capacity=10)
    for ts, value in series(20):
        registry.get("m").process(ts, value)
    registry.release(["m"])
    path = store.path_for("m")
    blob = bytearray(path.read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    path.write_bytes(bytes(blob))
    events, counts = counting_events()
    fresh = ModelRegistry(store, fast_config(), capacity=10, events=events)
    analyzer = fresh.get("m")
    assert analyzer.sample_count == 0
    assert counts["quarantined"] == 1 and counts["loaded_fresh"] == 1
    assert not path.exists()
    assert list((tmp_path / "quarantine").iterdir())


def test_failed_save_keeps_the_model_resident_and_a_later_save_catches_up(tmp_path: Path) -> None:
    models = tmp_path / "models"
    events, counts = counting_events()
    registry = ModelRegistry(LocalCheckpointStore(models), fast_config(), capacity=1, events=events)
    registry.get("a").process(1.0, 1.0)
    # A real fault: the models directory is replaced by a regular file, so writes fail.
    shutil.rmtree(models)
    models.write_bytes(b"not a directory")
    registry.get("b").process(1.0, 2.0)
    assert counts["save_failed"] >= 1
    assert "a" in registry and "b" in registry  # over the cap rather than losing "a"
    models.unlink()
    saved, failed = registry.save_dirty()
    assert (saved, failed) == (2, 0)
    assert LocalCheckpointStore(models).load("a") is not None


def _learn(registry: ModelRegistry, metric: str, samples: list[tuple[float, float]], first_offset: int) -> None:
    for i, (ts, value) in enumerate(samples):
        registry.get(metric).process(ts, value, "metrics:0", first_offset + i, 0)


def test_release_of_a_lost_partition_never_overwrites_a_newer_checkpoint(tmp_path: Path) -> None:
    store = LocalCheckpointStore(tmp_path)
    samples = series(60)
    old_owner = ModelRegistry(store, fast_config(), capacity=10)
    _learn(old_owner, "m", samples[:20], 0)
    old_owner.save_dirty()
    _learn(old_owner, "m", samples[20:30], 20)  # learned locally, not yet saved
    # Meanwhile the new owner resumed from the checkpoint and saved further progress.
    new_owner = ModelRegistry(store, fast_config(), capacity=10)
    _learn(new_owner, "m", samples[20:40], 20)
    assert new_owner.release(["m"]) == 1
    assert old_owner.release(["m"], unless_superseded=True) == 1 and "m" not in old_owner
    header, _payload = store.load("m")
    assert header.sample_count == 40 and header.last_offsets == {"metrics:0": 39}


def test_release_of_a_lost_partition_saves_when_nobody_advanced_the_checkpoint(tmp_path: Path) -> None:
    store = LocalCheckpointStore(tmp_path)
    registry = ModelRegistry(store, fast_config(), capacity=10)
    _learn(registry, "m", series(30)[:20], 0)
    registry.save_dirty()
    _learn(registry, "m", series(30)[20:], 20)
    assert registry.release(["m"], unless_superseded=True) == 1
    header, _payload = store.load("m")
    assert header.sample_count == 30  # nothing learned is thrown away


def test_unreadable_checkpoint_is_set_aside_not_overwritten_by_the_fresh_model(tmp_path: Path) -> None:
    store = LocalCheckpointStore(tmp_path)
    path = store.path_for("m")
    path.parent.mkdir(parents=True)
    # A read failure that says nothing about the content (root ignores permissions, so use
    # a symlink loop: ELOOP on open).
    path.symlink_to(path)
    events, counts = counting_events()
    registry = ModelRegistry(store, fast_config(), capacity=10, events=events)
    _learn(registry, "m", series(10), 0)
    assert counts["load_failed"] == 1 and counts["loaded_fresh"] == 1
    set_aside = list((tmp_path / "quarantine").iterdir())
    assert len(set_aside) == 1 and set_aside[0].is_symlink()
    registry.save_dirty()
    assert store.load("m")[0].sample_count == 10 and set_aside[0].is_symlink()  # both kept


class SourcesInFlight:
    """A DeliveryGate over a set of "topic:partition" sources whose outputs are unacknowledged."""

    def __init__(self) -> None:
        self.in_flight: set[str] = set()
        self.waits: list[int] = []

    def settled(self, positions: Mapping[str, tuple[int, int]]) -> bool:
        return not (positions.keys() & self.in_flight)

    def wait_all(self) -> bool:
        self.waits.append(len(self.in_flight))
        self.in_flight.clear()  # the broker acknowledged everything
        return True


def test_eviction_parks_models_with_unacknowledged_outputs_until_they_are_acknowledged(tmp_path: Path) -> None:
    store = LocalCheckpointStore(tmp_path)
    gate = SourcesInFlight()
    loads: Counter = Counter()

    def learn(name: str) -> None:
        registry.get(name).process(START_TS, 1.0, f"{name}:0", 0, 0)  # each metric on its own partition
        gate.in_flight.add(f"{name}:0")

    def saved() -> set[str]:
        return {entry.key for entry in store.entries()}

    registry = ModelRegistry(store, fast_config(), capacity=20, gate=gate,
                             events=RegistryEvents(loaded=lambda source: loads.update([source])))
    assert registry.write_behind == 2
    for i in range(20):  # the whole cap is usable: nothing saved, no waiting
        learn(f"m{i}")
    assert len(registry) == 20 and registry.parked == 0 and gate.waits == [] and saved() == set()
    # Over the cap with every older model's outputs in flight: m0..m2 are parked, the third
    # overflows the write-behind, and one wait lets all three be saved.
    learn("m20")
    assert gate.waits == [20] and registry.parked == 0 and len(registry) == 18
    assert saved() == {checkpoint_key(m) for m in ("m0", "m1", "m2")}
    gate.in_flight = {"m3:0"}  # only m3's outputs are still in flight
    learn("m21")
    learn("m22")
    learn("m23")  # over the cap: m3 is parked, m4 (acknowledged) is saved; no waiting
    assert len(gate.waits) == 1 and registry.parked == 1 and len(registry) == 20
    assert checkpoint_key("m4") in saved() and checkpoint_key("m3") not in saved()
    assert registry.get("m3").sample_count == 1 and registry.parked == 0  # back from the write-behind
    assert loads["checkpoint"] == 0


def test_an_analyzer_that_never_learned_is_not_written(tmp_path: Path) -> None:
    store = LocalCheckpointStore(tmp_path)
    registry = ModelRegistry(store, fast_config(), capacity=1)
    registry.get("idle")  # created, never fed (e.g. all its samples were replays)
    registry.get("busy").process(START_TS, 1.0)  # evicts "idle"
    assert "idle" not in registry and store.load("idle") is None
    registry.get("idle")  # evicts "busy", which learned: written
    assert store.load("busy")[0].sample_count == 1
    assert registry.save_dirty() == (0, 0)  # nothing learned since


def test_a_flood_of_new_names_trims_the_store_every_tenth_of_the_cap(tmp_path: Path) -> None:
    store = LocalCheckpointStore(tmp_path)
    trims: list[int] = []
    registry = ModelRegistry(store, fast_config(), capacity=2, max_checkpoints=20,
                             events=RegistryEvents(trimmed=trims.append))
    for i in range(60):
        registry.get(f"flood{i}").process(START_TS, 1.0)
        # Disk use stays within the cap plus a tenth of it, without any autosave.
        assert len(list(store.entries())) <= 20 + 2
    assert trims and sum(trims) >= 60 - 2 - 22
    assert registry.trim() >= 0 and len(list(store.entries())) <= 20


def test_a_failing_disk_logs_one_line_per_interval_not_one_per_model(tmp_path: Path, caplog) -> None:
    models = tmp_path / "models"
    events, counts = counting_events()
    registry = ModelRegistry(LocalCheckpointStore(models), fast_config(), capacity=10, events=events)
    for name in ("a", "b", "c", "d"):
        registry.get(name).process(1.0, 1.0)
    shutil.rmtree(models, ignore_errors=True)
    models.write_bytes(b"not a directory")  # every save fails
    with caplog.at_level(logging.WARNING, logger="pensu.registry"):
        assert registry.save_dirty() == (0, 4)
        assert registry.save_dirty() == (0, 4)
    assert counts["save_failed"] == 8
    lines = [r.getMessage() for r in caplog.records if "could not checkpoint" in r.getMessage()]
    assert len(lines) == 1 and "'a'" in lines[0]


def _learn_from(registry: ModelRegistry, metric: str, samples: list[tuple[float, float]], first_offset: int,
                origin: str) -> None:
    for i, (ts, value) in enumerate(samples):
        registry.get(metric).process(ts, value, "metrics:0", first_offset + i, 0, origin)


def test_lost_partition_superseded_check_compares_offsets_only_within_one_topic_incarnation(tmp_path: Path) -> None:
    """The topic was recreated (new topic id) while an instance stalled: the stored checkpoint's
    offsets belong to the old incarnation and prove nothing about the new one's, so the
    timestamps decide, as in the restart-safety check (bare offsets got both cases wrong)."""
    samples = series(80)
    old_topic, new_topic = "cluster-a/topic-1", "cluster-a/topic-2"
    # 1. Stored: learned samples 0..39 at offsets 1000.. of the old incarnation. The instance in
    #    memory continued on the recreated topic (offsets from 0) with samples 40..69: its state is
    #    newer, although its offsets are lower. It must be saved, not dropped.
    store = LocalCheckpointStore(tmp_path / "one")
    owner = ModelRegistry(store, fast_config(), capacity=10)
    _learn_from(owner, "m", samples[:40], 1000, old_topic)
    owner.save_dirty()
    _learn_from(owner, "m", samples[40:70], 0, new_topic)
    assert owner.release(["m"], unless_superseded=True) == 1
    assert store.load("m")[0].sample_count == 70  # type: ignore[index]
    # 2. The other way round: the stored checkpoint (another owner, recreated topic, low offsets)
    #    learned newer samples than the stalled instance's model (old incarnation, high offsets).
    store = LocalCheckpointStore(tmp_path / "two")
    stalled = ModelRegistry(store, fast_config(), capacity=10)
    _learn_from(stalled, "m", samples[:30], 1000, old_topic)
    new_owner = ModelRegistry(store, fast_config(), capacity=10)
    _learn_from(new_owner, "m", samples[:30], 1000, old_topic)
    _learn_from(new_owner, "m", samples[30:60], 0, new_topic)
    assert new_owner.release(["m"]) == 1
    assert stalled.release(["m"], unless_superseded=True) == 1 and "m" not in stalled
    assert store.load("m")[0].sample_count == 60  # type: ignore[index]  # not overwritten with 30


def test_lost_partition_superseded_check_uses_offsets_within_one_provable_incarnation(tmp_path: Path) -> None:
    """Same incarnation (cluster id and topic id known): offsets decide, even against timestamps."""
    samples = series(60)
    topic = "cluster-a/topic-1"
    store = LocalCheckpointStore(tmp_path)
    stalled = ModelRegistry(store, fast_config(), capacity=10)
    _learn_from(stalled, "m", samples[:30], 0, topic)  # offsets 0..29
    new_owner = ModelRegistry(store, fast_config(), capacity=10)
    # The new owner learned offsets 0..39 but of samples with older timestamps (a back-filled
    # stream): by timestamp it would look behind; by offset it is provably ahead.
    _learn_from(new_owner, "m", [(ts - 3600 * 24 * 365, v) for ts, v in samples[:40]], 0, topic)
    assert new_owner.release(["m"]) == 1
    assert stalled.release(["m"], unless_superseded=True) == 1
    assert store.load("m")[0].sample_count == 40  # type: ignore[index]
