"""LocalCheckpointStore against real files: round trips, hostile names, injected corruption and write faults."""

from __future__ import annotations

import errno
import hashlib
import os
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import msgpack
import pytest

from pensu.checkpoint import (
    FORMAT_VERSION,
    MAGIC,
    READABLE_VERSIONS,
    CheckpointCorrupt,
    CheckpointHeader,
    LocalCheckpointStore,
    checkpoint_key,
    decode_checkpoint,
    encode_checkpoint,
)
from pensu.errors import CheckpointError


def header(metric: str, count: int = 10, **kw: object) -> CheckpointHeader:
    fields: dict = {"last_timestamp": 1_700_000_000.5, "last_offsets": {"metrics:3": 41, "metrics:0": 7},
                    "saved_at": 1_700_000_100.0}
    fields.update(kw)
    return CheckpointHeader(metric=metric, sample_count=count, **fields)


@pytest.fixture
def store(tmp_path: Path) -> LocalCheckpointStore:
    return LocalCheckpointStore(tmp_path / "models")


def all_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


def quarantined(store: LocalCheckpointStore) -> list[Path]:
    q = store.quarantine_directory
    return sorted(q.iterdir()) if q.exists() else []


# --- round trip -------------------------------------------------------------------------

def test_save_then_load_round_trips_header_and_payload(store: LocalCheckpointStore) -> None:
    payload = os.urandom(5000)
    h = header("servers.web1.cpu.user", count=1234)
    store.save(h, payload)
    loaded = store.load("servers.web1.cpu.user")
    assert loaded is not None
    got_header, got_payload = loaded
    assert got_header == h
    assert got_payload == payload


def test_absent_metric_loads_as_none(store: LocalCheckpointStore) -> None:
    assert store.load("never.saved") is None


def test_none_timestamp_and_empty_payload_round_trip(store: LocalCheckpointStore) -> None:
    h = header("a.b", count=0, last_timestamp=None, last_offsets={})
    store.save(h, b"")
    assert store.load("a.b") == (h, b"")


def test_save_replaces_previous_checkpoint(store: LocalCheckpointStore) -> None:
    store.save(header("m", count=1), b"one")
    store.save(header("m", count=2), b"two")
    loaded = store.load("m")
    assert loaded is not None and loaded[0].sample_count == 2 and loaded[1] == b"two"
    assert len(all_files(store.directory)) == 1


def test_file_is_named_by_hash_and_fanned_out(store: LocalCheckpointStore) -> None:
    store.save(header("x.y.z"), b"p")
    digest = hashlib.sha256(b"x.y.z").hexdigest()
    [only] = all_files(store.directory)
    assert only == store.directory / digest[:2] / f"{digest}.ckpt"
    assert b"x.y.z" not in only.name.encode()


def test_delete_removes_and_tolerates_absent(store: LocalCheckpointStore) -> None:
    store.save(header("m"), b"p")
    store.delete("m")
    store.delete("m")
    assert store.load("m") is None


def test_writing_a_foreign_format_version_is_refused(store: LocalCheckpointStore) -> None:
    with pytest.raises(CheckpointError):
        store.save(header("m", format_version=max(READABLE_VERSIONS) + 1), b"p")


# --- hostile names ----------------------------------------------------------------------

HOSTILE = [
    "../../etc/x", "/etc/passwd", "..", ".", "", "a/../../b", "C:\\windows\\system32", "\x00nul",
    "x" * 10_000, "métrique.ünïcødé.日本", "Metric.Name", "metric.name", "quarantine",
    "a\nb", " ", "00/" + "0" * 62,
]


def test_hostile_names_stay_inside_the_directory_and_do_not_collide(store: LocalCheckpointStore) -> None:
    root = store.directory.resolve()
    for i, name in enumerate(HOSTILE):
        path = store.path_for(name).resolve()
        assert path.is_relative_to(root) and path.parent.parent == root
        store.save(header(name, count=i), name.encode("utf-8", "surrogatepass"))
    # Every file sits exactly two levels deep; nothing was written outside.
    files = all_files(store.directory)
    assert len(files) == len(HOSTILE)
    assert all(f.parent.parent == store.directory for f in files)
    assert [p for p in store.directory.parent.iterdir()] == [store.directory]
    for i, name in enumerate(HOSTILE):
        loaded = store.load(name)
        assert loaded is not None
        assert loaded[0].metric == name and loaded[0].sample_count == i
        assert loaded[1] == name.encode("utf-8", "surrogatepass")


def test_name_that_is_not_valid_unicode_is_refused_without_writing(store: LocalCheckpointStore) -> None:
    store.path_for("\ud800lone")  # hashing works for any str
    with pytest.raises(CheckpointError):
        store.save(header("\ud800lone"), b"p")
    assert all_files(store.directory) == []


def test_case_only_difference_gives_distinct_files(store: LocalCheckpointStore) -> None:
    assert store.path_for("Cpu") != store.path_for("cpu")
    assert store.path_for("Cpu").name.lower() != store.path_for("cpu").name.lower()


# --- corruption ---------------------------------------------------------------------------

def saved_file(store: LocalCheckpointStore, metric: str = "m", payload: bytes = b"payload-bytes" * 20) -> Path:
    store.save(header(metric), payload)
    return store.path_for(metric)


def assert_quarantined(store: LocalCheckpointStore, metric: str, original: bytes, reason_part: str) -> None:
    with pytest.raises(CheckpointCorrupt) as info:
        store.load(metric)
    assert reason_part in info.value.reason
    assert "\n" not in info.value.reason
    assert not store.path_for(metric).exists()
    [q] = quarantined(store)
    assert q.read_bytes() == original
    assert q.name.startswith(checkpoint_key(metric))
    # Once set aside, the metric simply has no checkpoint.
    assert store.load(metric) is None


def test_every_truncation_is_detected(store: LocalCheckpointStore) -> None:
    path = saved_file(store)
    good = path.read_bytes()
    for cut in [0, 3, 8, 13, 20, len(good) // 2, len(good) - 33, len(good) - 1]:
        path.write_bytes(good[:cut])
        with pytest.raises(CheckpointCorrupt) as info:
            store.load("m")
        assert "truncated" in info.value.reason
    assert len(quarantined(store)) == 8


def test_bit_flip_anywhere_is_detected(store: LocalCheckpointStore) -> None:
    path = saved_file(store)
    good = path.read_bytes()
    for position in range(len(good)):
        damaged = bytearray(good)
        damaged[position] ^= 0x10
        path.write_bytes(bytes(damaged))
        with pytest.raises(CheckpointCorrupt):
            store.load("m")
        assert not path.exists()


def test_payload_bit_flip_reports_checksum(store: LocalCheckpointStore) -> None:
    path = saved_file(store)
    good = path.read_bytes()
    damaged = bytearray(good)
    damaged[-40] ^= 0x01  # inside the payload, before the digest
    path.write_bytes(bytes(damaged))
    assert_quarantined(store, "m", bytes(damaged), "checksum")


def test_wrong_magic(store: LocalCheckpointStore) -> None:
    path = saved_file(store)
    bad = b"NOTPENSU" + path.read_bytes()[8:]
    path.write_bytes(bad)
    assert_quarantined(store, "m", bad, "magic")


def rebuild(version: int, header_bytes: bytes, payload: bytes) -> bytes:
    """Lay bytes out in the documented format with a valid checksum (tests the decoder, not the encoder)."""
    body = (struct.pack(">8sHI", MAGIC, version, len(header_bytes)) + header_bytes
            + struct.pack(">Q", len(payload)) + payload)
    return body + hashlib.sha256(body).digest()


def test_unknown_version_with_valid_checksum(store: LocalCheckpointStore) -> None:
    path = saved_file(store)
    header_bytes = msgpack.packb({"metric": "m", "sample_count": 1, "last_timestamp": None,
                                  "last_offsets": {}, "saved_at": 1.0})
    unknown = max(READABLE_VERSIONS) + 1
    bad = rebuild(unknown, header_bytes, b"p")
    assert rebuild(FORMAT_VERSION, header_bytes, b"p") != bad
    path.write_bytes(bad)
    assert_quarantined(store, "m", bad, f"version {unknown}")


def test_documented_layout_matches_the_encoder(store: LocalCheckpointStore) -> None:
    path = saved_file(store, payload=b"xyz")
    blob = path.read_bytes()
    _, _, header_len = struct.unpack_from(">8sHI", blob)
    header_bytes = blob[14:14 + header_len]
    assert rebuild(FORMAT_VERSION, header_bytes, b"xyz") == blob


@pytest.mark.parametrize("header_bytes", [
    b"\xc1\xc1\xc1",                                       # msgpack "never used" byte
    msgpack.packb([1, 2, 3]),                               # not a map
    msgpack.packb({"metric": 5, "sample_count": 1, "last_timestamp": None, "last_offsets": {}, "saved_at": 1.0}),
    msgpack.packb({"metric": "m", "sample_count": -1, "last_timestamp": None, "last_offsets": {}, "saved_at": 1.0}),
    msgpack.packb({"metric": "m", "sample_count": 1, "last_timestamp": "x", "last_offsets": {}, "saved_at": 1.0}),
    msgpack.packb({"metric": "m", "sample_count": 1, "last_timestamp": None, "last_offsets": {"t:0": "x"},
                   "saved_at": 1.0}),
    msgpack.packb({"metric": "m", "sample_count": 1, "last_timestamp": float("nan"), "last_offsets": {},
                   "saved_at": 1.0}),
    msgpack.packb({"metric": "m"}),
])
def test_undecodable_header(store: LocalCheckpointStore, header_bytes: bytes) -> None:
    path = saved_file(store)
    bad = rebuild(FORMAT_VERSION, header_bytes, b"p")
    path.write_bytes(bad)
    assert_quarantined(store, "m", bad, "undecodable header")


def test_file_of_another_metric_is_rejected(store: LocalCheckpointStore) -> None:
    other = saved_file(store, "other.metric").read_bytes()
    target = store.path_for("m")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(other)
    assert_quarantined(store, "m", other, "metric mismatch")
    # The real owner of those bytes is untouched.
    assert store.load("other.metric") is not None


def test_trailing_garbage_is_rejected(store: LocalCheckpointStore) -> None:
    path = saved_file(store)
    bad = path.read_bytes() + b"\x00"
    path.write_bytes(bad)
    assert_quarantined(store, "m", bad, "trailing")


def test_unreadable_path_is_quarantined(store: LocalCheckpointStore) -> None:
    path = store.path_for("m")
    path.mkdir(parents=True)  # a directory where the file should be: reading fails with EISDIR
    with pytest.raises(CheckpointCorrupt) as info:
        store.load("m")
    assert "unreadable" in info.value.reason
    assert not path.exists()
    assert store.load("m") is None


def test_explicit_quarantine(store: LocalCheckpointStore) -> None:
    original = saved_file(store).read_bytes()
    assert store.quarantine("m", "model payload would not decode") is True
    assert store.quarantine("m", "again") is False
    assert store.load("m") is None
    [q] = quarantined(store)
    assert q.read_bytes() == original


def test_repeated_quarantines_keep_every_file(store: LocalCheckpointStore) -> None:
    for i in range(3):
        path = saved_file(store, payload=bytes([i]) * 50)
        path.write_bytes(path.read_bytes()[:-1])
        with pytest.raises(CheckpointCorrupt):
            store.load("m")
    assert len(quarantined(store)) == 3


def test_decode_checkpoint_is_usable_on_raw_bytes() -> None:
    h = header("pure")
    assert decode_checkpoint(encode_checkpoint(h, b"abc"), expected_metric="pure") == (h, b"abc")
    with pytest.raises(CheckpointCorrupt):
        decode_checkpoint(encode_checkpoint(h, b"abc"), expected_metric="impure")


# --- write faults -------------------------------------------------------------------------

def test_disk_full_on_fsync_keeps_previous_and_leaves_no_temp(store: LocalCheckpointStore,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    store.save(header("m", count=1), b"old")
    before = all_files(store.directory)

    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(CheckpointError) as info:
        store.save(header("m", count=2), b"new" * 1000)
    assert not isinstance(info.value, CheckpointCorrupt)
    monkeypatch.undo()
    assert all_files(store.directory) == before
    loaded = store.load("m")
    assert loaded is not None and loaded[0].sample_count == 1 and loaded[1] == b"old"


def test_real_write_failure_from_file_size_limit(tmp_path: Path) -> None:
    # RLIMIT_FSIZE makes the kernel fail the write (EFBIG) in a child process: a real OS fault.
    directory = tmp_path / "models"
    LocalCheckpointStore(directory).save(header("m", count=1), b"old")
    script = textwrap.dedent(f"""
        import resource, sys
        from pathlib import Path
        from pensu.checkpoint import CheckpointHeader, LocalCheckpointStore
        from pensu.errors import CheckpointError
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))
        store = LocalCheckpointStore(Path({str(directory)!r}))
        try:
            store.save(CheckpointHeader("m", 2, None, {{}}, 0.0), b"x" * 100_000)
        except CheckpointError as exc:
            print("failed:", exc)
            sys.exit(0)
        sys.exit(3)
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert f"[Errno {errno.EFBIG}]" in result.stdout
    store = LocalCheckpointStore(directory)
    assert [p.name for p in all_files(directory)] == [store.path_for("m").name]
    loaded = store.load("m")
    assert loaded is not None and loaded[1] == b"old"


def test_target_path_is_a_directory_rename_fails_cleanly(store: LocalCheckpointStore) -> None:
    path = store.path_for("m")
    path.mkdir(parents=True)
    (path / "occupant").write_bytes(b"keep")
    with pytest.raises(CheckpointError):
        store.save(header("m"), b"p")
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]  # no temp file left
    assert (path / "occupant").read_bytes() == b"keep"


def test_file_where_subdirectory_should_be(store: LocalCheckpointStore) -> None:
    blocker = store.path_for("m").parent
    blocker.write_bytes(b"not a directory")
    with pytest.raises(CheckpointError):
        store.save(header("m"), b"p")
    assert blocker.read_bytes() == b"not a directory"


def test_directory_that_cannot_be_created(tmp_path: Path) -> None:
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(CheckpointError):
        LocalCheckpointStore(tmp_path / "file" / "models")


# --- listing and limits -------------------------------------------------------------------

def set_age(store: LocalCheckpointStore, metric: str, mtime: float) -> None:
    os.utime(store.path_for(metric), (mtime, mtime))


def test_entries_lists_checkpoints_only(store: LocalCheckpointStore) -> None:
    for name in ["a", "b", "c"]:
        store.save(header(name), b"p" * 10)
    saved_file(store, "bad").write_bytes(b"junk")
    with pytest.raises(CheckpointCorrupt):
        store.load("bad")
    # Debris that must not be listed: a stale temp file and a foreign file.
    sub = store.path_for("a").parent
    (sub / ".tmp-abc").write_bytes(b"x")
    (store.directory / "README").write_bytes(b"x")
    listed = {e.key: e for e in store.entries()}
    assert set(listed) == {checkpoint_key(n) for n in "abc"}
    assert all(listed[checkpoint_key(n)].size == store.path_for(n).stat().st_size for n in "abc")


def test_enforce_limit_deletes_oldest_idle_first(store: LocalCheckpointStore) -> None:
    names = [f"m{i}" for i in range(6)]
    for i, name in enumerate(names):
        store.save(header(name), b"p")
        set_age(store, name, 1_000_000 + 100 * ((i * 7) % 6))  # ages out of insertion order
    order = sorted(names, key=lambda n: store.path_for(n).stat().st_mtime)
    assert store.enforce_limit(4) == 2
    assert {n for n in names if store.load(n) is not None} == set(order[2:])
    assert store.enforce_limit(4) == 0


def test_enforce_limit_spares_protected_metrics(store: LocalCheckpointStore) -> None:
    for i, name in enumerate(["old", "older", "new", "newer"]):
        store.save(header(name), b"p")
    set_age(store, "older", 1_000)
    set_age(store, "old", 2_000)
    set_age(store, "new", 3_000)
    set_age(store, "newer", 4_000)
    assert store.enforce_limit(2, protect={"older"}) == 2
    assert sorted(n for n in ["old", "older", "new", "newer"] if store.load(n) is not None) == ["newer", "older"]
    # Only protected checkpoints remain beyond the limit: nothing more can go.
    assert store.enforce_limit(0, protect={"older", "newer"}) == 0
    assert store.enforce_limit(0) == 2
    assert list(store.entries()) == []


def test_remove_stale_temp_files(store: LocalCheckpointStore) -> None:
    store.save(header("m"), b"p")
    sub = store.path_for("m").parent
    stale, fresh = sub / ".tmp-stale", sub / ".tmp-fresh"
    stale.write_bytes(b"x")
    fresh.write_bytes(b"x")
    os.utime(stale, (1_000, 1_000))
    assert store.remove_stale_temp_files(older_than_s=3600) == 1
    assert not stale.exists() and fresh.exists() and store.load("m") is not None


# --- group commit ---------------------------------------------------------------------------

def test_group_commit_syncs_once_per_interval_not_per_save(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import pensu.checkpoint as checkpoint

    fsyncs: list[int] = []
    syncs: list[Path] = []
    monkeypatch.setattr(os, "fsync", lambda fd: fsyncs.append(fd))
    monkeypatch.setattr(checkpoint, "_sync_filesystem", lambda directory: syncs.append(directory))
    grouped = LocalCheckpointStore(tmp_path / "grouped", sync_interval_s=3600.0)
    for i in range(20):
        grouped.save(header(f"m{i}", count=i), b"payload %d" % i)
    assert fsyncs == [] and syncs == []  # within the interval: written and renamed, not synced
    loaded = grouped.load("m7")  # visible at once
    assert loaded is not None and loaded[1] == b"payload 7"
    grouped.close()  # shutdown makes them durable, with one file-system sync
    assert syncs == [grouped.directory] and fsyncs == []
    grouped.close()
    assert len(syncs) == 1  # nothing pending: no second sync

    every = LocalCheckpointStore(tmp_path / "every")  # default: each save durable before it returns
    every.save(header("m", count=1), b"x")
    assert len(fsyncs) >= 2  # the file and its directory


def test_group_commit_syncs_at_the_first_save_after_the_interval(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    import pensu.checkpoint as checkpoint

    syncs: list[Path] = []
    monkeypatch.setattr(checkpoint, "_sync_filesystem", lambda directory: syncs.append(directory))
    grouped = LocalCheckpointStore(tmp_path, sync_interval_s=1e-9)
    grouped.save(header("a"), b"1")
    grouped.save(header("b"), b"2")
    assert len(syncs) == 2


def test_group_commit_sync_failure_is_a_checkpoint_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import pensu.checkpoint as checkpoint

    def failing(directory: Path) -> None:
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(checkpoint, "_sync_filesystem", failing)
    grouped = LocalCheckpointStore(tmp_path, sync_interval_s=3600.0)
    grouped.save(header("a"), b"1")
    with pytest.raises(CheckpointError, match="cannot sync"):
        grouped.sync()
    with pytest.raises(ValueError):
        LocalCheckpointStore(tmp_path, sync_interval_s=-1.0)


def test_real_filesystem_sync_runs(tmp_path: Path) -> None:
    from pensu.checkpoint import _sync_filesystem

    _sync_filesystem(tmp_path)  # syncfs(2) on Linux (else os.sync): must not raise


# --- earlier analyzer formats ---------------------------------------------------------------

FIXTURES = Path(__file__).resolve().parent / "data"


def test_format_3_analyzer_checkpoint_still_loads_and_continues() -> None:
    """A checkpoint written by the format-3 build (tests/data, `small` preset, 170 samples) loads
    and continues as that build continued it: same raw anomaly scores and forecasts (its
    predictor keeps cell features), likelihoods equal to float32 precision (format 4 keeps the
    likelihood window as float32)."""
    import gzip
    import json

    from pensu.analyzer import FORMAT_VERSION as ANALYZER_FORMAT
    from pensu.analyzer import MetricAnalyzer, Thresholds

    blob = gzip.decompress((FIXTURES / "analyzer-format3-small.ckpt.gz").read_bytes())
    expected = json.loads((FIXTURES / "analyzer-format3-small.json").read_text())
    assert msgpack.unpackb(blob, raw=False)["version"] == 3 < ANALYZER_FORMAT
    analyzer = MetricAnalyzer.from_bytes(blob, Thresholds(), expected_metric="fixture.v3")
    assert analyzer.anomaly_model.predictor is not None
    assert analyzer.anomaly_model.predictor.params.features == "cells"
    ts = expected["first_timestamp"]
    for value, (raw, likelihood, final, forecast, lower, upper, reported) in zip(expected["values"],
                                                                                  expected["outputs"]):
        out = analyzer.process(ts, value)
        ts += expected["interval"]
        assert out.anomaly_score == raw
        assert (out.forecast, out.forecast_lower, out.forecast_upper) == (forecast, lower, upper)
        assert out.anomaly_likelihood == pytest.approx(likelihood, rel=1e-6, abs=1e-9)
        assert out.final_score == pytest.approx(final, rel=1e-6, abs=1e-9)
        assert out.reported == reported
    again = MetricAnalyzer.from_bytes(analyzer.to_bytes(), Thresholds())  # and re-saves as format 4
    assert msgpack.unpackb(analyzer.to_bytes(), raw=False)["version"] == ANALYZER_FORMAT
    assert again.sample_count == analyzer.sample_count


# --- checkpoint format 2 (XXH64 trailer; what the log store writes) ---------------------------

def test_format_2_round_trips_and_lays_out_an_xxh64_trailer() -> None:
    from pensu.checkpoint import FORMAT_XXH64
    from pensu.checksum import xxh64

    blob = encode_checkpoint(header("m"), b"payload", FORMAT_XXH64)
    assert struct.unpack_from(">8sH", blob) == (MAGIC, FORMAT_XXH64)
    head = encode_checkpoint(header("m"), b"payload")[:-32 - len(b"payload")].replace(
        struct.pack(">H", FORMAT_VERSION), struct.pack(">H", FORMAT_XXH64), 1)
    assert blob == head + b"payload" + struct.pack(">Q", xxh64(b"payload", xxh64(head)))
    read, payload = decode_checkpoint(blob, expected_metric="m")
    assert payload == b"payload" and read.format_version == FORMAT_XXH64
    assert read == CheckpointHeader(**{**header("m").__dict__, "format_version": FORMAT_XXH64})


@pytest.mark.parametrize("damage", ["flip", "truncate", "extend", "sha256 trailer"])
def test_damaged_format_2_checkpoints_are_refused(damage: str) -> None:
    from pensu.checkpoint import FORMAT_XXH64

    blob = bytearray(encode_checkpoint(header("m"), b"x" * 100, FORMAT_XXH64))
    if damage == "flip":
        blob[-50] ^= 0x04
    elif damage == "truncate":
        del blob[-1]
    elif damage == "extend":
        blob += b"\0"
    else:  # a format-1 checksum under a format-2 version: lengths no longer fit
        blob[-8:] = hashlib.sha256(bytes(blob[:-8])).digest()
    with pytest.raises(CheckpointCorrupt, match="checksum|truncated|trailing"):
        decode_checkpoint(bytes(blob), expected_metric="m")
