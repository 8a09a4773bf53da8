"""`LogCheckpointStore`: every metric's checkpoint in a few append-only segment files.

Why (issue #16, swapping at disk speed). With ten times more metrics than the resident cap every
sample evicts one analyzer and loads another, so the store's cost per save is paid per sample.
The file-per-metric store writes a temporary file and renames it over the old one; on ext4 that
pattern makes the kernel allocate the new file's blocks at once (`auto_da_alloc`), and creating
and unlinking a file per save costs the same again: 0.46-0.60 ms per 100 kB save on the
development machine, against 0.056 ms for appending the same bytes to one open file and 0.014 ms
for reading them back with one `pread` (measured side by side; docs/scaling.md "Swapping").

Swap cost after format 2, the unjoined parts and the background thread (`bench/log_store.py`,
one save and one load per swapped metric, CPU µs, medians of 5 rounds; 6 runs per size, main
15145b2/f7146ca and this code alternating on the 2-core VM at load 1.2-4.5; `--root /work/main`
runs the same script on main's code):

    checkpoint                 save: main -> now             load: main -> now
    110 kB (young analyzer)    175-210 -> 120-155            127-159 -> 62-94
    2.2 MB (mature analyzer)   4,590-5,430 -> 3,300-3,770    2,300-2,560 -> 830-995

and `bench/swap_registry.py --store log --mature 20000 --metrics 400 --cap 40`: 36-40 -> 62-67
samples/s, p99 latency 206-212 -> 89-99 ms (the saves no longer wait for `fdatasync`/`unlink`).

Design (a Bitcask-style log):
    * `<dir>/log/<id>.seg`: segment files, `SEGMENT_MAGIC` then records. A record is a fixed
      header — magic, kind (put / delete), the raw sha256 key of the metric, the time it was
      written, the body length, and a crc32 of those fields — followed for a put by the body,
      a checkpoint of `pensu.checkpoint` (its checksum and metric name are verified at every load,
      as for the file store). Saves write format 2 (an XXH64 checksum instead of sha256), in one
      `writev` of record header, checkpoint head, payload and checksum; a load reads the head, then
      the payload into its own bytes, then the checksum (no copy of the payload out of a blob).
      Records of format 1 (sha256, written before) load as before and are copied as they are
      by compaction.
    * In memory, a key directory maps each metric's key to the segment, offset and length of its
      latest record; it is rebuilt at open by reading the record headers only (not the bodies).
      A later record wins, a delete record removes the key.
    * A torn record at the end of the newest segment (a crash or a full disk during a save) is cut
      off at open, logged once; the metric's previous record, if any, stands. Damage inside an
      older segment ends the reading of that segment, logged with the bytes skipped.
    * Compaction: once a sealed segment holds less than half live bytes, its live records are
      copied to the end of the log, made durable, and the segment is deleted; so the disk holds
      at most about twice the live checkpoints plus one segment. A delete record is carried
      forward while an older segment might still hold a put it has to hide.
    * Durability as `LocalCheckpointStore`: `sync_interval_s=0` makes every save durable before
      it returns (`fdatasync` of the segment); above 0 the segment is synced once the interval
      has passed and at `close()` (group commit). Slow file-system calls run on one background
      thread, in submission order: the group-commit `fdatasync` (a save does not wait for it; a
      host crash can lose the saves of the last interval plus that sync's duration), the sync of
      a sealed segment, and compaction's sync of the copies followed by the unlink of the
      original (50-80 ms for a 64 MB segment on the development VM). `sync()` and `close()` wait
      for that thread; compaction waits for it when two deletions are pending.
    * One writer: the directory is locked (`flock`) for the life of the store; a second process
      is refused with one message. Several instances therefore need separate directories, unlike
      the file store, which a shared volume can serve to all of them.
    * Checkpoints of the file store found in the same directory (switching `PENSU_CHECKPOINT_STORE`
      from `local` to `log`) are read when the log has none for a metric, and removed once the log
      holds a newer one, so nothing learned is lost in the switch.
"""

from __future__ import annotations

import fcntl
import logging
import os
import queue
import struct
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from pensu.checkpoint import (
    FORMAT_XXH64,
    QUARANTINE_DIR,
    CheckpointCorrupt,
    CheckpointEntry,
    CheckpointHeader,
    CheckpointStore,
    LocalCheckpointStore,
    checkpoint_key,
    checkpoint_layout,
    encode_checkpoint_parts,
    fsync_directory,
    quarantine_target,
    verify_checkpoint,
)
from pensu.errors import CheckpointError

log = logging.getLogger(__name__)

LOG_DIR = "log"
SEGMENT_MAGIC = b"PENSULG1"
SEGMENT_SUFFIX = ".seg"
DEFAULT_SEGMENT_BYTES = 64 * 1024 * 1024
_RECORD_MAGIC = 0x50524543  # "PREC"
_PUT, _DELETE = 1, 2
# magic, kind, key (raw sha256), written_at (unix s), body length
_FIELDS = struct.Struct(">IB32sdI")
_CRC = struct.Struct(">I")
RECORD_HEADER_SIZE = _FIELDS.size + _CRC.size
_LIVE_FRACTION = 0.5  # compact a sealed segment once less than this share of it is live
_UNLINKS_PENDING_MAX = 2  # compacted segments waiting for their background deletion before compaction waits
_HEAD_READ = 1024  # a load's first read: a checkpoint's head (prefix, header, payload length) fits in most


@dataclass(frozen=True)
class _Location:
    segment: int
    offset: int  # of the record header
    body_length: int
    written_at: float


@dataclass
class _Segment:
    ident: int
    path: Path
    size: int
    live: int = 0  # bytes of records the key directory points at
    read_fd: int = -1  # opened at the first load from it, closed when the segment goes or the store closes

    def reader(self) -> int:
        """A descriptor to `pread` records from (kept open: opening per load cost ~10 µs). Raises OSError."""
        if self.read_fd < 0:
            self.read_fd = os.open(self.path, os.O_RDONLY)
        return self.read_fd

    def close_reader(self) -> None:
        if self.read_fd >= 0:
            fd, self.read_fd = self.read_fd, -1
            os.close(fd)


class _Background:
    """One daemon thread running the store's slow file-system jobs (syncs, unlinks) in submission order.

    `fdatasync` of a segment and `unlink` of a compacted 64 MB one block for 50-80 ms each on the
    development VM's disk; both release the GIL, so the thread lets the service go on with its
    samples meanwhile. Jobs run in order, so a job that syncs copies runs before the unlink of
    their originals, and `drain` waits for everything submitted."""

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[Callable[[], object] | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        # Compacted segments handed over for deletion and deleted: each counter has one writer thread.
        self.unlinks_submitted = 0
        self.unlinks_done = 0

    @property
    def unlinks_pending(self) -> int:
        """Compacted segments not yet deleted (the disk holds them meanwhile)."""
        return self.unlinks_submitted - self.unlinks_done

    def submit(self, job: Callable[[], object]) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="pensu-checkpoint-log", daemon=True)
            self._thread.start()
        self._jobs.put(job)

    def drain(self) -> None:
        """Wait until every job submitted so far has run."""
        if self._thread is None:
            return
        done = threading.Event()
        self._jobs.put(done.set)
        done.wait()

    def stop(self) -> None:
        if self._thread is None:
            return
        self._jobs.put(None)
        self._thread.join()
        self._thread = None

    def _run(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            try:
                job()
            except Exception:  # a job logs its own failures; this keeps the thread alive regardless
                log.exception("checkpoint log: background job failed")


def _record_header(kind: int, key: bytes, written_at: float, body_length: int) -> bytes:
    fields = _FIELDS.pack(_RECORD_MAGIC, kind, key, written_at, body_length)
    return fields + _CRC.pack(zlib.crc32(fields))


class LogCheckpointStore(CheckpointStore):
    """Checkpoints of one instance as records in append-only segment files under `directory/log`."""

    def __init__(self, directory: Path, durable: bool = True, sync_interval_s: float = 0.0,
                 segment_bytes: int = DEFAULT_SEGMENT_BYTES, read_only: bool = False) -> None:
        """Open (creating) the log of `directory`; `read_only` reads a log another process may be
        writing (no lock, nothing cut or written: for inspection tools and tests)."""
        if not sync_interval_s >= 0.0:
            raise ValueError("sync_interval_s must be >= 0")
        if segment_bytes < 4096:
            raise ValueError("segment_bytes must be >= 4096")
        self.directory = Path(directory)
        self.durable = durable
        self.sync_interval_s = float(sync_interval_s)
        self.segment_bytes = int(segment_bytes)
        self.log_directory = self.directory / LOG_DIR
        self.quarantine_directory = self.directory / QUARANTINE_DIR
        self._mutex = threading.RLock()
        self._background = _Background()  # group-commit syncs, sealed segments, compaction's unlinks
        self._unsynced = False  # appended since the last sync (or its submission to the background)
        self._last_sync = time.monotonic()
        self._keys: dict[bytes, _Location] = {}
        self._segments: dict[int, _Segment] = {}
        self._active: _Segment | None = None
        self._active_fd = -1
        self._lock_fd = -1
        self.read_only = read_only
        self._next_ident = 1
        self._sparse: set[int] = set()  # sealed segments below the live fraction (compaction candidates)
        self._compaction_failures: set[int] = set()
        if not read_only:
            self._lock()
        # Checkpoints of the file store in the same directory (read until the log holds newer ones).
        self._files = LocalCheckpointStore(self.directory, durable=durable, sync_interval_s=sync_interval_s)
        self._legacy = {entry.key for entry in self._files.entries()}
        self._open_segments()

    # -- opening ---------------------------------------------------------------------------
    def _lock(self) -> None:
        try:
            self.log_directory.mkdir(parents=True, exist_ok=True)
            self._lock_fd = os.open(self.log_directory / "LOCK", os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise CheckpointError(f"cannot create checkpoint log directory {str(self.log_directory)!r}: {exc}") from exc
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(self._lock_fd)
            self._lock_fd = -1
            raise CheckpointError(
                f"checkpoint log {str(self.log_directory)!r} is in use by another process: with "
                f"PENSU_CHECKPOINT_STORE=log every instance needs its own PENSU_MODELS_DIR") from exc

    def _open_segments(self) -> None:
        listed = self.log_directory.iterdir() if self.log_directory.is_dir() else iter(())
        idents = sorted(int(p.name[:-len(SEGMENT_SUFFIX)]) for p in listed
                        if p.name.endswith(SEGMENT_SUFFIX) and p.name[:-len(SEGMENT_SUFFIX)].isdigit())
        for position, ident in enumerate(idents):
            try:
                self._read_segment(ident, newest=position == len(idents) - 1)
            except FileNotFoundError:
                if not self.read_only:
                    raise
                continue  # compacted away by the writer since the listing
        self._next_ident = (idents[-1] + 1) if idents else 1
        if self.read_only:
            return
        newest = self._segments.get(idents[-1]) if idents else None
        if newest is not None and newest.size < self.segment_bytes:
            self._reopen_for_append(newest)
        else:
            self._roll()
        self._sparse = {s.ident for s in self._segments.values() if self._is_sparse(s)}

    def _read_segment(self, ident: int, newest: bool) -> None:
        path = self._segment_path(ident)
        try:
            fd = os.open(path, os.O_RDWR if newest and not self.read_only else os.O_RDONLY)
        except FileNotFoundError:
            raise
        except OSError as exc:
            raise CheckpointError(f"cannot open checkpoint log segment {path.name}: {exc}") from exc
        try:
            size = os.fstat(fd).st_size
            if os.pread(fd, len(SEGMENT_MAGIC), 0) != SEGMENT_MAGIC:
                log.error("checkpoint log segment %s is not a Pensu log segment (%d bytes); ignored", path.name, size)
                return
            segment = _Segment(ident, path, size)
            self._segments[ident] = segment
            offset = len(SEGMENT_MAGIC)
            while offset < size:
                raw = os.pread(fd, RECORD_HEADER_SIZE, offset)
                parsed = self._parse_header(raw)
                if parsed is None or offset + RECORD_HEADER_SIZE + parsed[3] > size:
                    self._damaged(fd, segment, offset, newest)
                    break
                kind, key, written_at, length = parsed
                self._apply(kind, key, _Location(ident, offset, length, written_at))
                offset += RECORD_HEADER_SIZE + length
        finally:
            os.close(fd)

    @staticmethod
    def _parse_header(raw: bytes) -> tuple[int, bytes, float, int] | None:
        if len(raw) < RECORD_HEADER_SIZE:
            return None
        fields = raw[:_FIELDS.size]
        if _CRC.unpack_from(raw, _FIELDS.size)[0] != zlib.crc32(fields):
            return None
        magic, kind, key, written_at, length = _FIELDS.unpack(fields)
        if magic != _RECORD_MAGIC or kind not in (_PUT, _DELETE) or (kind == _DELETE and length):
            return None
        return kind, key, written_at, length

    def _damaged(self, fd: int, segment: _Segment, offset: int, newest: bool) -> None:
        lost = segment.size - offset
        if newest and self.read_only:
            return  # a save in progress, or a torn end the writer cuts off when it opens
        if newest:
            # The tail of the newest segment: a save that a crash or a full disk cut short.
            log.warning("checkpoint log: cut a torn record (%d bytes) off the end of %s; the metric keeps its "
                        "previous checkpoint", lost, segment.path.name)
            try:
                os.ftruncate(fd, offset)
                segment.size = offset
            except OSError as exc:
                log.error("checkpoint log: cannot cut the torn end of %s: %s", segment.path.name, exc)
                segment.size = self.segment_bytes  # sealed: never append behind the damage
        else:
            log.error("checkpoint log: segment %s is damaged at byte %d; its last %d bytes are not read (metrics "
                      "whose newest checkpoint was there restart from an older one or fresh)",
                      segment.path.name, offset, lost)

    def _apply(self, kind: int, key: bytes, where: _Location) -> None:
        old = self._keys.pop(key, None)
        if old is not None:
            segment = self._segments[old.segment]
            segment.live -= RECORD_HEADER_SIZE + old.body_length
            if self._is_sparse(segment):
                self._sparse.add(segment.ident)
        if kind == _PUT:
            self._keys[key] = where
            self._segments[where.segment].live += RECORD_HEADER_SIZE + where.body_length

    def _is_sparse(self, segment: _Segment) -> bool:
        return segment is not self._active and segment.live < _LIVE_FRACTION * segment.size

    def _segment_path(self, ident: int) -> Path:
        return self.log_directory / f"{ident:010d}{SEGMENT_SUFFIX}"

    def _reopen_for_append(self, segment: _Segment) -> None:
        try:
            self._active_fd = os.open(segment.path, os.O_WRONLY | os.O_APPEND)
        except OSError as exc:
            raise CheckpointError(f"cannot open checkpoint log segment {segment.path.name}: {exc}") from exc
        self._active = segment

    def _roll(self) -> None:
        """Seal the active segment and start a new one."""
        self._seal()
        sealed = self._active
        ident = self._next_ident
        self._next_ident += 1
        path = self._segment_path(ident)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_EXCL, 0o644)
        except OSError as exc:
            raise CheckpointError(f"cannot create checkpoint log segment {path.name}: {exc}") from exc
        try:
            _write_all(fd, SEGMENT_MAGIC)
            if self.durable:
                os.fsync(fd)
                fsync_directory(self.log_directory)
        except OSError as exc:
            os.close(fd)
            raise CheckpointError(f"cannot create checkpoint log segment {path.name}: {exc}") from exc
        segment = _Segment(ident, path, len(SEGMENT_MAGIC))
        self._segments[ident] = segment
        self._active, self._active_fd = segment, fd
        if sealed is not None and sealed.ident in self._segments and self._is_sparse(sealed):
            self._sparse.add(sealed.ident)

    def _seal(self, wait: bool = False) -> None:
        """Close the active segment, synced first when durable (in the background under group commit)."""
        if self._active_fd < 0:
            return
        fd, self._active_fd = self._active_fd, -1
        sync = self.durable and self._unsynced
        self._unsynced = False
        if sync and self.sync_interval_s > 0.0 and not wait:
            self._background.submit(lambda: self._sync_fd(fd, close=True))
            return
        try:
            if sync:
                os.fdatasync(fd)
        finally:
            os.close(fd)

    def _sync_fd(self, fd: int, close: bool) -> bool:
        """(Background) `fdatasync(fd)`; True when it succeeded, else logged and the store marked unsynced."""
        try:
            os.fdatasync(fd)
            return True
        except OSError as exc:
            log.error("checkpoint log: cannot sync a segment (its latest saves may not survive a host crash; the "
                      "next sync tries the active segment again): %s", exc)
            self._unsynced = True
            return False
        finally:
            if close:
                os.close(fd)

    def _sync_in_background(self, then: Callable[[bool], None] | None = None) -> None:
        """Sync the active segment in the background (a duplicate of its descriptor), then run
        `then(synced)`."""
        fd = os.dup(self._active_fd)
        self._unsynced = False
        self._last_sync = time.monotonic()

        def job() -> None:
            synced = self._sync_fd(fd, close=True)
            if then is not None:
                then(synced)

        self._background.submit(job)

    # -- writing ---------------------------------------------------------------------------
    def _append(self, head: bytes, *body: bytes) -> _Location:
        """Append one record (its header, then its body in parts) to the log; return where it went. Raises OSError."""
        if self._active is None or self._active_fd < 0:
            raise OSError("the checkpoint log is closed or read-only")
        size = len(head) + sum(len(part) for part in body)
        if self._active.size + size > self.segment_bytes and self._active.size > len(SEGMENT_MAGIC):
            self._roll()
        segment = self._active
        assert segment is not None
        offset = segment.size
        try:
            _write_all(self._active_fd, head, *body)
        except OSError:
            # Leave no partial record behind it: later appends must stay readable.
            try:
                os.ftruncate(self._active_fd, offset)
            except OSError:
                segment.size = self.segment_bytes  # cannot cut it: seal, the next append starts a segment
                self._roll()
            raise
        segment.size += size
        self._unsynced = True
        _, _, _, written_at, length = _FIELDS.unpack_from(head)
        return _Location(segment.ident, offset, length, written_at)

    def _commit(self) -> None:
        """Make the appends durable as the sync policy says: before returning (interval 0), or in the
        background once the interval has passed (group commit: the save does not wait for the disk)."""
        if not self.durable:
            self._unsynced = False
            return
        if self.sync_interval_s == 0.0:
            self.sync()
        elif self._unsynced and time.monotonic() - self._last_sync >= self.sync_interval_s:
            self._sync_in_background()

    def sync(self) -> None:
        """Make every append so far durable and finish background work (a no-op when nothing is pending)."""
        with self._mutex:
            self._background.drain()
            if not self._unsynced or self._active_fd < 0:
                return
            try:
                os.fdatasync(self._active_fd)
            except OSError as exc:
                raise CheckpointError(f"cannot sync checkpoint log: {exc}") from exc
            self._unsynced = False
            self._last_sync = time.monotonic()

    def save(self, header: CheckpointHeader, payload: bytes) -> None:
        """Append the metric's checkpoint (format `FORMAT_XXH64`); it replaces the previous one."""
        parts = encode_checkpoint_parts(header, payload, FORMAT_XXH64)
        key_hex = checkpoint_key(header.metric)
        key = bytes.fromhex(key_hex)
        with self._mutex:
            try:
                where = self._append(_record_header(_PUT, key, time.time(), sum(len(p) for p in parts)), *parts)
                self._apply(_PUT, key, where)
                self._commit()
            except OSError as exc:
                raise CheckpointError(" ".join(f"cannot save checkpoint of {header.metric!r}: {exc}".split())) from exc
            if key_hex in self._legacy:
                self._legacy.discard(key_hex)
                self._files.delete_key(key_hex)
            self._compact_one()

    def _delete_raw(self, key: bytes) -> None:
        if key not in self._keys:
            return
        try:
            self._append(_record_header(_DELETE, key, time.time(), 0))
            self._commit()
        except OSError as exc:
            raise CheckpointError(f"cannot delete checkpoint {key.hex()}: {exc}") from exc
        self._apply(_DELETE, key, _Location(0, 0, 0, 0.0))

    # -- compaction ------------------------------------------------------------------------
    def _compact_one(self) -> None:
        """Rewrite the live records of one mostly dead sealed segment, then delete it."""
        while self._sparse:
            victim = self._segments.get(self._sparse.pop())
            if victim is not None and self._is_sparse(victim):
                break
        else:
            return
        try:
            self._compact(victim)
        except OSError as exc:
            self._sparse.add(victim.ident)
            if victim.ident not in self._compaction_failures:  # once per segment: it is retried every save
                self._compaction_failures.add(victim.ident)
                log.error("checkpoint log: compaction of %s failed (it stays; retried at every save): %s",
                          victim.path.name, exc)

    def _compact(self, victim: _Segment) -> None:
        if self._background.unlinks_pending >= _UNLINKS_PENDING_MAX:
            self._background.drain()  # a slow disk: bound the segments waiting for deletion
        older_exists = any(ident < victim.ident for ident in self._segments)
        fd = os.open(victim.path, os.O_RDONLY)
        try:
            offset = len(SEGMENT_MAGIC)
            while offset < victim.size:
                raw = os.pread(fd, RECORD_HEADER_SIZE, offset)
                parsed = self._parse_header(raw)
                if parsed is None:
                    break  # damage was reported at open; nothing behind it is in the key directory
                kind, key, written_at, length = parsed
                current = self._keys.get(key)
                if kind == _PUT and current is not None and (current.segment, current.offset) == (victim.ident, offset):
                    self._apply(_PUT, key, self._append(raw, os.pread(fd, length, offset + RECORD_HEADER_SIZE)))
                elif kind == _DELETE and current is None and older_exists:
                    self._append(raw)  # still hides a put in an older segment
                offset += RECORD_HEADER_SIZE + length
        finally:
            os.close(fd)
        # The copies are durable before the original goes; both in the background, in that order
        # (a crash before the unlink leaves the original, whose records the copies supersede).
        if self.durable:
            self._sync_in_background(then=lambda synced: self._unlink_segment(victim, synced))  # may raise OSError
        else:
            self._background.submit(lambda: self._unlink_segment(victim, True))
        self._background.unlinks_submitted += 1
        del self._segments[victim.ident]  # the key directory points at the copies already
        victim.close_reader()

    def _unlink_segment(self, victim: _Segment, synced: bool) -> None:
        """(Background) delete a compacted segment, once its copies are durable, and make that durable."""
        self._background.unlinks_done += 1
        if not synced:
            log.error("checkpoint log: compacted segment %s kept (its copies could not be synced); it is read "
                      "again at the next start, its records superseded", victim.path.name)
            return
        try:
            os.unlink(victim.path)
            if self.durable:
                fsync_directory(self.log_directory)
        except OSError as exc:
            log.error("checkpoint log: cannot delete the compacted segment %s (it is read again at the next start, "
                      "its records superseded): %s", victim.path.name, exc)

    # -- reading ---------------------------------------------------------------------------
    def load(self, metric: str) -> tuple[CheckpointHeader, bytes] | None:
        """Read and verify the metric's checkpoint; quarantine it and raise if it is bad."""
        key_hex = checkpoint_key(metric)
        key = bytes.fromhex(key_hex)
        with self._mutex:
            where = self._keys.get(key)
            if where is None:
                return self._files.load(metric) if key_hex in self._legacy else None
            try:
                return self._read_checkpoint(where, metric)
            except OSError as exc:
                raise CheckpointError(" ".join(f"cannot read checkpoint of {metric!r}: {exc}".split())) from exc
            except CheckpointCorrupt as exc:
                try:
                    blob = self._read_body(where)  # the whole record, for the quarantine
                except OSError:
                    blob = b""
                self._quarantine_key(key, blob, exc.reason)
                raise

    def _read_checkpoint(self, where: _Location, metric: str) -> tuple[CheckpointHeader, bytes]:
        """Read and verify a record's checkpoint in its parts: the payload is read into its own bytes
        (no copy of it out of one blob). Raises OSError, or `CheckpointCorrupt` (nothing quarantined)."""
        body_at = where.offset + RECORD_HEADER_SIZE
        size = where.body_length
        fd = self._segments[where.segment].reader()
        head = _pread_exactly(fd, min(size, _HEAD_READ), body_at)
        layout = checkpoint_layout(head, size)
        if layout.payload_length < 0:  # a head longer than the first read (a long name, many offsets)
            head = _pread_exactly(fd, layout.payload_at, body_at)
            layout = checkpoint_layout(head, size)
        payload_end = body_at + layout.payload_at + layout.payload_length
        payload = _pread_exactly(fd, layout.payload_length, body_at + layout.payload_at)
        checksum = _pread_exactly(fd, layout.checksum_size, payload_end)
        header = verify_checkpoint(head[:layout.payload_at], payload, checksum, layout, expected_metric=metric)
        return header, payload

    def _read_body(self, where: _Location) -> bytes:
        return _pread_exactly(self._segments[where.segment].reader(), where.body_length,
                              where.offset + RECORD_HEADER_SIZE)

    # -- deleting, quarantine, listing -----------------------------------------------------
    def delete(self, metric: str) -> None:
        """Remove the metric's checkpoint; a missing one is not an error."""
        self.delete_key(checkpoint_key(metric))

    def delete_key(self, key: str) -> None:
        """Remove the checkpoint listed under `key`; a missing one is not an error."""
        raw = _raw_key(key)
        with self._mutex:
            self._delete_raw(raw)
            if key in self._legacy:
                self._legacy.discard(key)
                self._files.delete_key(key)

    def quarantine(self, metric: str, reason: str) -> bool:
        """Set the metric's checkpoint aside in `quarantine/`; return whether there was one."""
        key_hex = checkpoint_key(metric)
        key = bytes.fromhex(key_hex)
        with self._mutex:
            where = self._keys.get(key)
            if where is None:
                if key_hex in self._legacy:
                    self._legacy.discard(key_hex)
                    return self._files.quarantine(metric, reason)
                return False
            try:
                blob = self._read_body(where)
            except OSError as exc:
                blob = b""
                reason = f"{reason}; unreadable: {exc}"
            return self._quarantine_key(key, blob, reason)

    def _quarantine_key(self, key: bytes, blob: bytes, reason: str) -> bool:
        """Copy the record's bytes to the quarantine directory and delete the key from the log."""
        try:
            target = quarantine_target(self.quarantine_directory, key.hex())
            target.write_bytes(blob)
        except OSError as exc:
            log.error("could not copy checkpoint %s to the quarantine (%s): %s", key.hex(), reason, exc)
        else:
            log.debug("quarantined checkpoint %s as %s: %s", key.hex(), target.name, reason)
        self._delete_raw(key)
        return True

    def entries(self) -> Iterator[CheckpointEntry]:
        """Every stored checkpoint (key, body size, time written), legacy files included."""
        with self._mutex:
            listed = [CheckpointEntry(key=k.hex(), size=w.body_length, mtime=w.written_at)
                      for k, w in self._keys.items()]
            legacy = bool(self._legacy)
        yield from listed
        if legacy:
            in_log = {entry.key for entry in listed}
            yield from (e for e in self._files.entries() if e.key not in in_log)

    # -- figures and lifecycle -------------------------------------------------------------
    def disk_bytes(self) -> int:
        """Bytes of all segment files."""
        with self._mutex:
            return sum(s.size for s in self._segments.values())

    def live_bytes(self) -> int:
        """Bytes of the records the key directory points at."""
        with self._mutex:
            return sum(s.live for s in self._segments.values())

    def segment_count(self) -> int:
        with self._mutex:
            return len(self._segments)

    def close(self) -> None:
        """Finish background work, sync pending saves, close the active segment and release the directory lock."""
        with self._mutex:
            if self._lock_fd < 0:  # closed already, or a read-only view
                for segment in self._segments.values():
                    segment.close_reader()
                return
            try:
                self._background.stop()
                self._seal(wait=True)
            finally:
                for segment in self._segments.values():
                    segment.close_reader()
                os.close(self._lock_fd)
                self._lock_fd = -1


def _raw_key(key: str) -> bytes:
    if len(key) != 64 or key.strip("0123456789abcdef"):
        raise ValueError(f"not a checkpoint key: {key!r}")
    return bytes.fromhex(key)


def _pread_exactly(fd: int, length: int, offset: int) -> bytes:
    data = os.pread(fd, length, offset)
    if len(data) != length:
        raise OSError(f"short read: {len(data)} of {length} bytes")
    return data


def _write_all(fd: int, *parts: bytes) -> None:
    """Write the parts in order (one `writev`, no joined copy of a megabyte body)."""
    written = os.writev(fd, parts) if len(parts) > 1 else os.write(fd, parts[0])
    total = sum(len(part) for part in parts)
    if written < total:  # short write (a signal, a nearly full disk): finish it plainly
        rest = memoryview(b"".join(parts))[written:]
        while rest:
            rest = rest[os.write(fd, rest):]
