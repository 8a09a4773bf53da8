"""LogCheckpointStore against real files: round trips, restarts, torn tails, compaction, corruption, legacy files."""

from __future__ import annotations

import dataclasses
import gzip
import os
import struct
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from pensu.checkpoint import (
    FORMAT_XXH64,
    CheckpointCorrupt,
    CheckpointHeader,
    LocalCheckpointStore,
    checkpoint_key,
    encode_checkpoint,
)
from pensu.checkpoint_log import RECORD_HEADER_SIZE, SEGMENT_MAGIC, LogCheckpointStore
from pensu.checksum import xxh64
from pensu.errors import CheckpointError


def header(metric: str, count: int = 10) -> CheckpointHeader:
    return CheckpointHeader(metric=metric, sample_count=count, last_timestamp=1_700_000_000.5,
                            last_offsets={"metrics:3": 41}, saved_at=1_700_000_100.0)


def payload(metric: str, version: int, size: int = 3000) -> bytes:
    return (f"{metric}/{version}/".encode() * size)[:size]


@pytest.fixture
def directory(tmp_path: Path) -> Path:
    return tmp_path / "models"


@pytest.fixture
def store(directory: Path) -> LogCheckpointStore:
    opened = LogCheckpointStore(directory, segment_bytes=64 * 1024)
    yield opened
    opened.close()


def segments(directory: Path) -> list[Path]:
    return sorted((directory / "log").glob("*.seg"))


def test_save_load_replace_delete(store: LogCheckpointStore) -> None:
    assert store.load("a.b") is None
    store.save(header("a.b", 1), payload("a.b", 1))
    store.save(header("a.b", 2), payload("a.b", 2))
    loaded = store.load("a.b")
    assert loaded is not None and loaded[0].sample_count == 2 and loaded[1] == payload("a.b", 2)
    assert [e.key for e in store.entries()] == [checkpoint_key("a.b")]
    store.delete("a.b")
    store.delete("a.b")  # absent: no error
    assert store.load("a.b") is None and list(store.entries()) == []


def test_restart_sees_latest_records_and_deletes(directory: Path) -> None:
    first = LogCheckpointStore(directory, segment_bytes=64 * 1024)
    for version in range(5):
        for m in range(20):
            first.save(header(f"m{m}", version), payload(f"m{m}", version))
    first.delete("m3")
    first.close()
    again = LogCheckpointStore(directory, segment_bytes=64 * 1024)
    try:
        assert again.load("m3") is None
        for m in (0, 7, 19):
            loaded = again.load(f"m{m}")
            assert loaded is not None and loaded[0].sample_count == 4 and loaded[1] == payload(f"m{m}", 4)
        assert len(list(again.entries())) == 19
    finally:
        again.close()


def test_second_store_on_the_same_directory_is_refused_naming_the_variables(store: LogCheckpointStore,
                                                                            directory: Path) -> None:
    with pytest.raises(CheckpointError, match="PENSU_CHECKPOINT_STORE=log.*PENSU_MODELS_DIR"):
        LogCheckpointStore(directory)


def test_lock_is_held_against_another_process(store: LogCheckpointStore, directory: Path) -> None:
    code = textwrap.dedent(f"""
        from pensu.checkpoint_log import LogCheckpointStore
        from pensu.errors import CheckpointError
        try:
            LogCheckpointStore({str(directory)!r})
        except CheckpointError as exc:
            print("refused:", exc)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.startswith("refused:"), out.stdout + out.stderr


def test_torn_tail_is_cut_and_the_previous_checkpoint_stands(directory: Path,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    first = LogCheckpointStore(directory, segment_bytes=1 << 20)
    first.save(header("x", 1), payload("x", 1))
    first.save(header("y", 1), payload("y", 1))
    first.save(header("x", 2), payload("x", 2))
    first.close()
    newest = segments(directory)[-1]
    size = newest.stat().st_size
    for cut in (1, RECORD_HEADER_SIZE - 1, RECORD_HEADER_SIZE + 10, 500):
        with open(newest, "r+b") as fh:
            fh.truncate(size - cut)
        again = LogCheckpointStore(directory, segment_bytes=1 << 20)
        try:
            loaded = again.load("x")
            assert loaded is not None and loaded[0].sample_count == 1 and loaded[1] == payload("x", 1)
            assert again.load("y") is not None
            # appending after the cut keeps everything readable
            again.save(header("z", 1), payload("z", 1))
        finally:
            again.close()
        assert "torn record" in caplog.text
        caplog.clear()
        third = LogCheckpointStore(directory, segment_bytes=1 << 20)
        try:
            assert third.load("z") is not None and third.load("x")[0].sample_count == 1  # type: ignore[index]
            third.delete("z")
            third.save(header("x", 2), payload("x", 2))  # the newest record is x's again
        finally:
            third.close()
        size = newest.stat().st_size
    assert "torn record" not in caplog.text


def test_corrupt_body_is_quarantined_and_stays_deleted_after_restart(directory: Path) -> None:
    first = LogCheckpointStore(directory, segment_bytes=1 << 20)
    first.save(header("bad", 1), payload("bad", 1))
    first.save(header("good", 1), payload("good", 1))
    first.close()
    seg = segments(directory)[-1]
    data = bytearray(seg.read_bytes())
    at = len(SEGMENT_MAGIC) + RECORD_HEADER_SIZE + 200  # inside the first record's body
    data[at] ^= 0x40
    seg.write_bytes(bytes(data))
    again = LogCheckpointStore(directory, segment_bytes=1 << 20)
    try:
        with pytest.raises(CheckpointCorrupt, match="checksum"):
            again.load("bad")
        assert again.load("bad") is None
        assert again.load("good") is not None
        quarantined = list((directory / "quarantine").iterdir())
        assert len(quarantined) == 1 and quarantined[0].name.startswith(checkpoint_key("bad"))
    finally:
        again.close()
    third = LogCheckpointStore(directory, segment_bytes=1 << 20)
    try:
        assert third.load("bad") is None and third.load("good") is not None
    finally:
        third.close()


def test_explicit_quarantine(store: LogCheckpointStore, directory: Path) -> None:
    assert not store.quarantine("nothing", "why")
    store.save(header("q", 1), payload("q", 1))
    assert store.quarantine("q", "unusable model")
    assert store.load("q") is None
    assert len(list((directory / "quarantine").iterdir())) == 1


def test_damage_inside_an_older_segment_keeps_what_is_before_it(directory: Path,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    first = LogCheckpointStore(directory, segment_bytes=12_000, durable=False)
    for m in range(6):
        first.save(header(f"d{m}"), payload(f"d{m}", 0, size=2000))
    first.close()
    oldest = segments(directory)[0]
    assert len(segments(directory)) >= 2
    data = bytearray(oldest.read_bytes())
    (first_body,) = struct.unpack_from(">I", data, len(SEGMENT_MAGIC) + RECORD_HEADER_SIZE - 8)
    second = len(SEGMENT_MAGIC) + RECORD_HEADER_SIZE + first_body
    data[second + 10] ^= 0xFF  # inside the second record's key: its crc no longer matches
    oldest.write_bytes(bytes(data))
    again = LogCheckpointStore(directory, segment_bytes=12_000, durable=False)
    try:
        found = [again.load(f"d{m}") is not None for m in range(6)]
        assert found[0] and not found[1], found  # before the damage: read; at it: not
        assert found[-1]  # later segments: read
        assert "is damaged at byte" in caplog.text
    finally:
        again.close()


def test_compaction_bounds_the_disk_and_keeps_every_latest_checkpoint(directory: Path) -> None:
    store = LogCheckpointStore(directory, segment_bytes=64 * 1024, sync_interval_s=1.0)
    try:
        metrics = [f"c{m}" for m in range(30)]
        for version in range(40):
            for metric in metrics:
                store.save(header(metric, version), payload(metric, version))
            if version == 10:
                store.delete("c0")
        live = store.live_bytes()
        assert store.disk_bytes() <= 2 * live + 2 * 64 * 1024, (store.disk_bytes(), live)
        on_disk = sum(seg.stat().st_size for seg in segments(directory))  # compacted ones may await deletion
        assert on_disk <= store.disk_bytes() + 2 * 64 * 1024
        store.sync()  # waits for the background deletions too
        assert len(segments(directory)) == store.segment_count()
        for metric in metrics:
            loaded = store.load(metric)
            assert loaded is not None and loaded[0].sample_count == 39 and loaded[1] == payload(metric, 39)
    finally:
        store.close()
    again = LogCheckpointStore(directory, segment_bytes=64 * 1024)
    try:
        assert all(again.load(m)[0].sample_count == 39 for m in metrics)  # type: ignore[index]
        assert len(list(again.entries())) == 30
    finally:
        again.close()


def test_a_delete_survives_compaction_of_its_segment_while_an_older_put_remains(directory: Path) -> None:
    store = LogCheckpointStore(directory, segment_bytes=16 * 1024, durable=False)
    try:
        for k in range(4):  # keep the first segment mostly live, so it is never compacted
            store.save(header(f"kept-{k}"), payload(f"kept-{k}", 0))
        # "gone" fills the first segment but for 10 bytes: its delete record must start the second
        empty = encode_checkpoint(header("gone"), b"", FORMAT_XXH64)
        fill = 16 * 1024 - store._active.size - RECORD_HEADER_SIZE - len(empty) - 10
        store.save(header("gone"), payload("gone", 0, size=fill))
        first = segments(directory)[0]
        store.delete("gone")
        assert len(segments(directory)) == 2  # the delete record went to the second segment
        # churn until the segments after the first one have been compacted away several times
        for version in range(60):
            store.save(header("churn"), payload("churn", version))
        assert first.exists()
    finally:
        store.close()
    again = LogCheckpointStore(directory, segment_bytes=16 * 1024)
    try:
        assert again.load("gone") is None
        assert all(again.load(f"kept-{k}") is not None for k in range(4))
    finally:
        again.close()


def test_write_failure_leaves_no_partial_record(directory: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = LogCheckpointStore(directory, segment_bytes=1 << 20, durable=False)
    store.save(header("w", 1), payload("w", 1))
    real_write = os.write

    def half_then_fail(fd: int, parts: list[bytes]) -> int:  # the short write of a nearly full disk
        return real_write(fd, b"".join(parts)[: sum(map(len, parts)) // 2])

    def no_space(fd: int, data: bytes) -> int:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "writev", half_then_fail)
    monkeypatch.setattr(os, "write", no_space)
    with pytest.raises(CheckpointError, match="No space left"):
        store.save(header("w", 2), payload("w", 2))
    monkeypatch.undo()
    store.save(header("v", 1), payload("v", 1))
    assert store.load("w")[0].sample_count == 1  # type: ignore[index]
    store.close()
    again = LogCheckpointStore(directory, segment_bytes=1 << 20)
    try:
        assert again.load("w")[0].sample_count == 1 and again.load("v") is not None  # type: ignore[index]
    finally:
        again.close()


def test_checkpoints_of_the_file_store_are_read_then_replaced(directory: Path) -> None:
    files = LocalCheckpointStore(directory)
    files.save(header("old.one", 7), payload("old.one", 7))
    files.save(header("old.two", 3), payload("old.two", 3))
    files.save(header("old.three", 3), payload("old.three", 3))
    store = LogCheckpointStore(directory)
    try:
        assert {e.key for e in store.entries()} == {checkpoint_key(m) for m in ("old.one", "old.two", "old.three")}
        loaded = store.load("old.one")
        assert loaded is not None and loaded[0].sample_count == 7
        store.save(header("old.one", 8), payload("old.one", 8))
        assert not files.path_for("old.one").exists()
        store.delete("old.two")
        assert not files.path_for("old.two").exists() and store.load("old.two") is None
        assert len(list(store.entries())) == 2
    finally:
        store.close()
    again = LogCheckpointStore(directory)
    try:
        assert again.load("old.one")[0].sample_count == 8  # type: ignore[index]
        assert again.load("old.three")[0].sample_count == 3  # type: ignore[index]
    finally:
        again.close()


def test_enforce_limit_deletes_the_longest_idle(store: LogCheckpointStore) -> None:
    for m in range(5):
        store.save(header(f"e{m}"), payload(f"e{m}", 0))
    assert store.enforce_limit(3, protect=["e0"]) == 2
    assert store.load("e0") is not None and store.load("e1") is None and store.load("e2") is None
    assert store.load("e4") is not None


def test_saving_after_close_is_a_checkpoint_error(directory: Path) -> None:
    store = LogCheckpointStore(directory)
    store.close()
    with pytest.raises(CheckpointError, match="closed or read-only"):
        store.save(header("late"), b"x")


def test_read_only_view_reads_while_the_writer_holds_the_lock(store: LogCheckpointStore, directory: Path) -> None:
    store.save(header("r", 1), payload("r", 1))
    view = LogCheckpointStore(directory, read_only=True)
    assert view.load("r")[0].sample_count == 1  # type: ignore[index]
    with pytest.raises(CheckpointError, match="read-only"):
        view.save(header("r", 2), payload("r", 2))
    view.close()
    store.save(header("r", 3), payload("r", 3))  # the writer is unaffected
    assert LogCheckpointStore(directory, read_only=True).load("r")[0].sample_count == 3  # type: ignore[index]


def test_service_uses_the_log_store_and_a_second_instance_on_its_directory_is_refused(directory: Path) -> None:
    from pensu.service import PensuService
    from pensu.settings import load_settings

    env = {"PENSU_CHECKPOINT_STORE": "log", "PENSU_MODELS_DIR": str(directory),
           "PENSU_KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:9"}
    first = PensuService(load_settings(env))
    try:
        assert isinstance(first.store, LogCheckpointStore)
        with pytest.raises(CheckpointError, match="PENSU_MODELS_DIR"):
            PensuService(load_settings(env))
    finally:
        first.store.close()
    again = PensuService(load_settings(env))  # the lock went with the first store
    again.store.close()


# --- record bodies: checkpoint format 2 (XXH64), format 1 (sha256) still read ------------------

FIXTURES = Path(__file__).resolve().parent / "data"


def test_records_are_checkpoints_of_format_2_with_an_xxh64(store: LogCheckpointStore, directory: Path) -> None:
    store.save(header("f2", 3), payload("f2", 3))
    data = segments(directory)[-1].read_bytes()
    body = data[len(SEGMENT_MAGIC) + RECORD_HEADER_SIZE:]
    assert body == encode_checkpoint(header("f2", 3), payload("f2", 3), FORMAT_XXH64)
    assert struct.unpack_from(">8sH", body) == (b"PENSUCKP", FORMAT_XXH64)
    head_size = len(body) - len(payload("f2", 3)) - 8
    assert struct.unpack(">Q", body[-8:])[0] == xxh64(payload("f2", 3), xxh64(body[:head_size]))


def as_read(saved: CheckpointHeader) -> CheckpointHeader:
    """A header as the log store reads it back (its records are checkpoints of format 2)."""
    return dataclasses.replace(saved, format_version=FORMAT_XXH64)


def fixture_log(directory: Path) -> None:
    """The segment written by the build before checkpoint format 2 (tests/data/checkpoint-log-format1.md)."""
    (directory / "log").mkdir(parents=True)
    (directory / "log" / "0000000001.seg").write_bytes(
        gzip.decompress((FIXTURES / "checkpoint-log-format1.seg.gz").read_bytes()))


def fixture_header(metric: str, count: int) -> CheckpointHeader:
    return CheckpointHeader(metric=metric, sample_count=count, last_timestamp=1_700_000_000.5,
                            last_offsets={"metrics:3": 40 + count}, saved_at=1_700_000_100.0 + count)


def test_a_log_written_with_sha256_checkpoints_still_loads_compacts_and_mixes(directory: Path) -> None:
    fixture_log(directory)
    # Segments smaller than the fixture's: it is sealed at open, and less than half of it is live.
    store = LogCheckpointStore(directory, segment_bytes=12 * 1024, durable=False)
    try:
        assert store.load("fixture.a") == (fixture_header("fixture.a", 2), payload("fixture.a", 2))
        assert store.load("fixture.b") == (fixture_header("fixture.b", 1), payload("fixture.b", 1))
        assert store.load("fixture.gone") is None
        store.save(header("new", 1), payload("new", 1))  # a format-2 record next to format-1 ones
        store.sync()  # compaction deletes the segment in the background
        assert not (directory / "log" / "0000000001.seg").exists()
    finally:
        store.close()
    again = LogCheckpointStore(directory, segment_bytes=12 * 1024)
    try:
        assert again.load("fixture.a") == (fixture_header("fixture.a", 2), payload("fixture.a", 2))
        assert again.load("fixture.b") == (fixture_header("fixture.b", 1), payload("fixture.b", 1))
        assert again.load("fixture.gone") is None
        assert again.load("new") == (as_read(header("new", 1)), payload("new", 1))
    finally:
        again.close()


def test_a_corrupt_sha256_checkpoint_of_the_old_format_is_quarantined(directory: Path) -> None:
    fixture_log(directory)
    seg = directory / "log" / "0000000001.seg"
    data = bytearray(seg.read_bytes())
    data[len(SEGMENT_MAGIC) + RECORD_HEADER_SIZE + 500] ^= 0x01  # inside fixture.a's first (superseded) payload
    (first_body,) = struct.unpack_from(">I", data, len(SEGMENT_MAGIC) + RECORD_HEADER_SIZE - 8)
    second = len(SEGMENT_MAGIC) + RECORD_HEADER_SIZE + first_body
    data[second + RECORD_HEADER_SIZE + 2000] ^= 0x01  # inside fixture.b's payload
    seg.write_bytes(bytes(data))
    store = LogCheckpointStore(directory, segment_bytes=1 << 20)
    try:
        assert store.load("fixture.a") == (fixture_header("fixture.a", 2), payload("fixture.a", 2))
        store.save(header("appended", 1), payload("appended", 1))  # format 2 behind format 1 in one segment
        with pytest.raises(CheckpointCorrupt, match="checksum"):
            store.load("fixture.b")
        assert store.load("fixture.b") is None
        assert len(list((directory / "quarantine").iterdir())) == 1
    finally:
        store.close()
    again = LogCheckpointStore(directory, segment_bytes=1 << 20)
    try:
        assert again.load("fixture.b") is None and again.load("appended") == (as_read(header("appended", 1)),
                                                                               payload("appended", 1))
    finally:
        again.close()


@pytest.mark.parametrize("where", ["head", "payload", "checksum"])
def test_any_flipped_bit_of_a_format_2_body_is_caught(directory: Path, where: str) -> None:
    store = LogCheckpointStore(directory, segment_bytes=1 << 20)
    store.save(header("flip", 1), payload("flip", 1))
    store.close()
    seg = segments(directory)[-1]
    data = bytearray(seg.read_bytes())
    body_at = len(SEGMENT_MAGIC) + RECORD_HEADER_SIZE
    at = {"head": body_at + 30, "payload": len(data) - 100, "checksum": len(data) - 2}[where]
    data[at] ^= 0x10
    seg.write_bytes(bytes(data))
    again = LogCheckpointStore(directory, segment_bytes=1 << 20)
    try:
        with pytest.raises(CheckpointCorrupt):
            again.load("flip")
        assert again.load("flip") is None
        quarantined = list((directory / "quarantine").iterdir())
        assert [q.read_bytes() for q in quarantined] == [bytes(data[body_at:])]  # the whole record body
    finally:
        again.close()


def test_a_header_longer_than_the_first_read_loads(store: LogCheckpointStore) -> None:
    long_name = "long." + "x" * 3000
    many = CheckpointHeader(metric=long_name, sample_count=4, last_timestamp=None,
                            last_offsets={f"metrics:{p}": p for p in range(200)}, saved_at=1.0)
    store.save(many, payload(long_name, 4))
    assert store.load(long_name) == (as_read(many), payload(long_name, 4))
    store.save(header("empty", 1), b"")
    assert store.load("empty") == (as_read(header("empty", 1)), b"")


# --- background work: group-commit syncs and compaction's deletions -----------------------------

def test_a_failed_background_sync_is_logged_and_retried(directory: Path, monkeypatch: pytest.MonkeyPatch,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    store = LogCheckpointStore(directory, segment_bytes=1 << 20, sync_interval_s=0.001)
    calls: list[int] = []
    real = os.fdatasync

    def fail_first(fd: int) -> None:
        calls.append(fd)
        if len(calls) == 1:
            raise OSError(5, "Input/output error")
        real(fd)

    monkeypatch.setattr(os, "fdatasync", fail_first)
    try:
        store.save(header("s", 1), payload("s", 1))
        time.sleep(0.01)
        store.save(header("s", 2), payload("s", 2))  # the interval has passed: a sync in the background
        store._background.drain()
        assert "cannot sync a segment" in caplog.text
        store.sync()  # the failure left the store unsynced: this syncs again, in the caller
        assert len(calls) >= 2
        assert store.load("s")[0].sample_count == 2  # type: ignore[index]
    finally:
        store.close()


def test_group_commit_saves_do_not_wait_for_the_sync(directory: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import threading

    store = LogCheckpointStore(directory, segment_bytes=1 << 20, sync_interval_s=0.001)
    release = threading.Event()
    real = os.fdatasync

    def slow(fd: int) -> None:
        release.wait(10)
        real(fd)

    monkeypatch.setattr(os, "fdatasync", slow)
    try:
        store.save(header("g", 1), payload("g", 1))
        time.sleep(0.01)
        for version in range(2, 5):  # each returns while the first sync is still held
            store.save(header("g", version), payload("g", version))
        assert store.load("g")[0].sample_count == 4  # type: ignore[index]
    finally:
        release.set()
        store.close()
    again = LogCheckpointStore(directory, segment_bytes=1 << 20)
    try:
        assert again.load("g")[0].sample_count == 4  # type: ignore[index]
    finally:
        again.close()


def open_descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc")
def test_segment_readers_are_closed_with_the_store_and_with_compacted_segments(directory: Path) -> None:
    before = open_descriptors()
    store = LogCheckpointStore(directory, segment_bytes=16 * 1024, durable=False)
    for version in range(30):  # rolls and compacts; every save is also loaded back
        store.save(header(f"r{version % 3}"), payload("r", version))
        assert store.load(f"r{version % 3}") is not None
    store.sync()
    assert open_descriptors() - before <= store.segment_count() + 2  # readers, the active segment, the lock
    view = LogCheckpointStore(directory, read_only=True)
    assert view.load("r0") is not None
    view.close()
    store.close()
    assert open_descriptors() == before


def test_a_compacted_segment_whose_copies_cannot_be_synced_is_kept(directory: Path, monkeypatch: pytest.MonkeyPatch,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    store = LogCheckpointStore(directory, segment_bytes=16 * 1024, sync_interval_s=3600.0)

    def failing(fd: int) -> None:
        raise OSError(5, "Input/output error")

    try:
        for version in range(3):
            store.save(header(f"k{version}"), payload("k", version))
        first = segments(directory)[0]
        monkeypatch.setattr(os, "fdatasync", failing)
        for version in range(12):  # rolls; the first segment becomes sparse and is compacted
            store.save(header("k0"), payload("k0", version))
            store.save(header("k1"), payload("k1", version))
        store._background.drain()
        assert "kept (its copies could not be synced)" in caplog.text
        assert first.exists()
        assert store._background.unlinks_pending == 0
        monkeypatch.undo()
    finally:
        store.close()
    again = LogCheckpointStore(directory, segment_bytes=16 * 1024)
    try:  # the kept segment is read again; the later copies and saves win
        assert again.load("k0") == (as_read(header("k0")), payload("k0", 11))
        assert again.load("k2") == (as_read(header("k2")), payload("k", 2))
    finally:
        again.close()
