"""Durable per-metric checkpoints: one checksummed file per metric, written atomically.

File layout (all integers big-endian):

    MAGIC (8 bytes) | format version (u16) | header length (u32) | msgpack header
    | payload length (u64) | payload | checksum

Format 1 (`FORMAT_VERSION`, files and Kafka): the checksum is the sha256 of everything before
it (32 bytes). Format 2 (`FORMAT_XXH64`, only the log store writes it): the checksum is 8 bytes,
XXH64(payload, seed=XXH64(head)) where head is everything before the payload (`pensu.checksum`).
Both load everywhere (the version is read before the checksum). Why a second format (issue #16):
sha256 ran twice per swap, on the save and on the load — ~2.6 ms of a mature analyzer's ~12 ms
swap — and the log's records need to catch torn writes and bad disks, not tampering; XXH64 runs
at 7.8-9.5 GB/s here against sha256's 1.5 GB/s. The file and Kafka stores keep format 1: other
instances of an older release may share their files or topic during a rolling upgrade, and an
older release quarantines a format it does not know. (A log is one instance's own, but rolling
back to a release before format 2 would quarantine its format-2 records, models restarting fresh.)

`encode_checkpoint_parts` returns the head, payload and checksum unjoined (a store writes them
with one `writev`), `checkpoint_layout` and `verify_checkpoint` check a checkpoint read in parts
(the payload into bytes of its own): the megabyte copies of joining and slicing are gone.

Files are named by the sha256 of the metric name and fanned out into 256 subdirectories
(first two hex digits), so no metric name, however hostile, can steer a path, and a million
files stay listable. A file that cannot be trusted is moved to `<dir>/quarantine/`.

Group commit (`LocalCheckpointStore(sync_interval_s=...)`, `PENSU_CHECKPOINT_SYNC_INTERVAL`):
by default every save is durable when it returns (fsync of the file, rename, fsync of its
directory: ~2 ms on the development machine, which alone capped swapping at ~500 models/s).
With an interval > 0 a save writes and renames at once (atomic and immediately visible to
`load`) and the file system is synced (`syncfs`) at the first save after the interval has
passed and at `close()` (service shutdown); the kernel writes dirty pages back by itself within
~30 s between. A process crash loses nothing (the page cache survives it); a host crash can
lose the saves of the last interval: such a file is then the previous checkpoint, or fails its
checksum and is quarantined (the model restarts fresh), as after any torn write.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import hashlib
import logging
import math
import os
import struct
import tempfile
import time
from abc import ABC, abstractmethod
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeGuard

import msgpack

from pensu.checksum import xxh64
from pensu.errors import CheckpointError

log = logging.getLogger(__name__)

FORMAT_VERSION = 1  # sha256 trailer: what every release reads (files, Kafka)
FORMAT_XXH64 = 2  # XXH64 trailer: the log store's records (pensu.checkpoint_log)
MAGIC = b"PENSUCKP"
_PREFIX = struct.Struct(">8sHI")  # magic, format version, header length
_PAYLOAD_LEN = struct.Struct(">Q")
_DIGEST_SIZE = hashlib.sha256().digest_size
_XXH64 = struct.Struct(">Q")
_TRAILER_SIZE = {FORMAT_VERSION: _DIGEST_SIZE, FORMAT_XXH64: _XXH64.size}
READABLE_VERSIONS = tuple(_TRAILER_SIZE)
_SUFFIX = ".ckpt"
_TEMP_PREFIX = ".tmp-"
QUARANTINE_DIR = "quarantine"


@dataclass(frozen=True)
class CheckpointHeader:
    """What a checkpoint says about its model, readable without decoding the payload."""

    metric: str
    sample_count: int
    last_timestamp: float | None
    last_offsets: dict[str, int]  # "topic:partition" -> last applied offset
    saved_at: float  # unix time of the save
    format_version: int = FORMAT_VERSION


@dataclass(frozen=True)
class CheckpointEntry:
    """One stored checkpoint as seen by a listing: opaque key, size in bytes, modification time."""

    key: str
    size: int
    mtime: float


class CheckpointCorrupt(CheckpointError):
    """A checkpoint exists but cannot be trusted; it has been quarantined. `reason` is one line."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def checkpoint_key(metric: str) -> str:
    """Return the storage key of `metric`: the sha256 hex digest of its UTF-8 name."""
    # surrogatepass: any Python str hashes, even one decoded from hostile bytes.
    return hashlib.sha256(metric.encode("utf-8", "surrogatepass")).hexdigest()


def encode_checkpoint(header: CheckpointHeader, payload: bytes, version: int = FORMAT_VERSION) -> bytes:
    """Serialize a header and payload into the checksummed checkpoint format `version`."""
    # One copy of the payload (a mature one is megabytes and this runs at every swap).
    return b"".join(encode_checkpoint_parts(header, payload, version))


def encode_checkpoint_parts(header: CheckpointHeader, payload: bytes,
                            version: int = FORMAT_VERSION) -> tuple[bytes, bytes, bytes]:
    """(head, payload, checksum): the pieces of `encode_checkpoint`, for a `writev` without joining them.

    `version` 1 (`FORMAT_VERSION`) ends in a sha256, `FORMAT_XXH64` (2) in an XXH64 (see the module
    docstring); `header.format_version` may be either (it tells what a loaded header was read from)."""
    if header.format_version not in _TRAILER_SIZE or version not in _TRAILER_SIZE:
        raise CheckpointError(f"this build writes checkpoint formats {sorted(_TRAILER_SIZE)}, not "
                              f"{version if version not in _TRAILER_SIZE else header.format_version}")
    try:
        header_bytes = msgpack.packb({
            "metric": header.metric,
            "sample_count": int(header.sample_count),
            "last_timestamp": None if header.last_timestamp is None else float(header.last_timestamp),
            "last_offsets": {str(k): int(v) for k, v in header.last_offsets.items()},
            "saved_at": float(header.saved_at),
        }, use_bin_type=True)
    except (UnicodeEncodeError, OverflowError, TypeError, ValueError) as exc:
        # e.g. a lone surrogate in the name or an offset beyond 64 bits: not storable as given.
        raise CheckpointError(_one_line(f"cannot encode checkpoint header: {type(exc).__name__}: {exc}")) from exc
    head = b"".join((_PREFIX.pack(MAGIC, version, len(header_bytes)), header_bytes,
                     _PAYLOAD_LEN.pack(len(payload))))
    return head, payload, _trailer(version, head, payload)


def _trailer(version: int, head: bytes, payload: bytes | memoryview) -> bytes:
    """The checksum that ends a checkpoint of format `version`: format 1 the sha256 of head and
    payload, format 2 the XXH64 of the payload seeded with the XXH64 of the head."""
    if version == FORMAT_XXH64:
        return _XXH64.pack(xxh64(payload, xxh64(head)))
    digest = hashlib.sha256(head)
    digest.update(payload)
    return digest.digest()


@dataclass(frozen=True)
class CheckpointLayout:
    """Where the parts of a checkpoint of `size` bytes lie, read from its first bytes (`checkpoint_layout`)."""

    version: int
    payload_at: int  # bytes before the payload: the head (prefix, header, payload length)
    payload_length: int
    checksum_size: int


def checkpoint_layout(first: bytes, size: int) -> CheckpointLayout:
    """The layout of a checkpoint of `size` bytes from its first bytes (enough for the prefix at least).

    Raises `CheckpointCorrupt` when the magic, version or lengths cannot be those of a checkpoint."""
    if len(first) < _PREFIX.size or size < _PREFIX.size:
        raise CheckpointCorrupt(f"truncated: {size} bytes")
    magic, version, header_len = _PREFIX.unpack_from(first)
    if magic != MAGIC:
        raise CheckpointCorrupt("bad magic bytes")
    # Version before checksum: another version may lay out (and checksum) its bytes differently.
    checksum_size = _TRAILER_SIZE.get(version)
    if checksum_size is None:
        raise CheckpointCorrupt(f"unsupported format version {version}")
    payload_len_at = _PREFIX.size + header_len
    payload_at = payload_len_at + _PAYLOAD_LEN.size
    if size < payload_at + checksum_size:
        raise CheckpointCorrupt(f"truncated: {size} bytes, header alone needs more")
    if len(first) < payload_at:
        return CheckpointLayout(version, payload_at, -1, checksum_size)  # caller reads the whole head
    (payload_len,) = _PAYLOAD_LEN.unpack_from(first, payload_len_at)
    expected_size = payload_at + payload_len + checksum_size
    if size != expected_size:
        kind = "truncated" if size < expected_size else "trailing bytes"
        raise CheckpointCorrupt(f"{kind}: {size} bytes, expected {expected_size}")
    return CheckpointLayout(version, payload_at, payload_len, checksum_size)


def verify_checkpoint(head: bytes, payload: bytes | memoryview, checksum: bytes, layout: CheckpointLayout,
                      expected_metric: str | None = None) -> CheckpointHeader:
    """Check the parts of a checkpoint laid out as `layout`; return its header or raise `CheckpointCorrupt`."""
    if _trailer(layout.version, head, payload) != checksum:
        raise CheckpointCorrupt("checksum mismatch")
    header = _decode_header(head[_PREFIX.size:layout.payload_at - _PAYLOAD_LEN.size], layout.version)
    if expected_metric is not None and header.metric != expected_metric:
        raise CheckpointCorrupt("metric mismatch: file holds another metric")
    return header


def decode_checkpoint(blob: bytes, expected_metric: str | None = None) -> tuple[CheckpointHeader, bytes]:
    """Parse checkpoint bytes (any readable format); raise `CheckpointCorrupt` (one-line reason) if untrustworthy."""
    layout = checkpoint_layout(blob, len(blob))
    end = layout.payload_at + layout.payload_length
    view = memoryview(blob)
    header = verify_checkpoint(blob[:layout.payload_at], view[layout.payload_at:end], blob[end:], layout,
                               expected_metric)
    return header, bytes(view[layout.payload_at:end])


def _decode_header(raw: bytes, version: int) -> CheckpointHeader:
    try:
        fields = msgpack.unpackb(raw, raw=False, strict_map_key=True)
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        raise CheckpointCorrupt(f"undecodable header: {type(exc).__name__}") from exc
    if not isinstance(fields, dict):
        raise CheckpointCorrupt("undecodable header: not a map")
    metric = fields.get("metric")
    count = fields.get("sample_count")
    last_ts = fields.get("last_timestamp")
    offsets = fields.get("last_offsets")
    saved_at = fields.get("saved_at")
    if not isinstance(metric, str):
        raise CheckpointCorrupt("undecodable header: metric is not a string")
    if not _is_int(count) or count < 0:
        raise CheckpointCorrupt("undecodable header: bad sample_count")
    if last_ts is not None and not _is_finite_number(last_ts):
        raise CheckpointCorrupt("undecodable header: bad last_timestamp")
    if not _is_finite_number(saved_at):
        raise CheckpointCorrupt("undecodable header: bad saved_at")
    if not isinstance(offsets, dict) or not all(isinstance(k, str) and _is_int(v) for k, v in offsets.items()):
        raise CheckpointCorrupt("undecodable header: bad last_offsets")
    return CheckpointHeader(
        metric=metric, sample_count=count, last_timestamp=None if last_ts is None else float(last_ts),
        last_offsets=dict(offsets), saved_at=float(saved_at), format_version=version)


def _is_int(value: Any) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_finite_number(value: Any) -> TypeGuard[int | float]:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)) and math.isfinite(value)


def _one_line(text: str) -> str:
    return " ".join(text.split())


class CheckpointStore(ABC):
    """Where checkpoints live; a local directory today, an object store later."""

    @abstractmethod
    def save(self, header: CheckpointHeader, payload: bytes) -> None:
        """Store (replace) the checkpoint of `header.metric`; raise `CheckpointError` on failure."""

    @abstractmethod
    def load(self, metric: str) -> tuple[CheckpointHeader, bytes] | None:
        """Return the metric's checkpoint, None if absent; quarantine and raise `CheckpointCorrupt` if bad."""

    @abstractmethod
    def delete(self, metric: str) -> None:
        """Remove the metric's checkpoint if there is one."""

    @abstractmethod
    def quarantine(self, metric: str, reason: str) -> bool:
        """Set the metric's checkpoint aside as untrustworthy; return whether there was one."""

    @abstractmethod
    def entries(self) -> Iterator[CheckpointEntry]:
        """List stored checkpoints (keys, sizes, modification times), in no particular order."""

    @abstractmethod
    def delete_key(self, key: str) -> None:
        """Remove the checkpoint stored under `key` (as listed by `entries`) if present."""

    # Hooks of stores whose content follows partition ownership (`pensu.kafka_checkpoint`); the
    # service calls them; a directory store needs none of them.
    def connect(self, client_config: dict) -> None:
        """Start using the Kafka cluster of `client_config` (called once, at service start)."""

    def partitions_assigned(self, topic: str, partitions: list[int]) -> None:
        """Input partitions now owned by this instance (before their first message is processed)."""

    def partitions_revoked(self, topic: str, partitions: list[int]) -> None:
        """Input partitions given up, after their analyzers were checkpointed and released."""

    def refresh(self, topic: str, partitions: list[int]) -> None:
        """Make `load` see other owners' latest checkpoints of these partitions (they were lost)."""

    def close(self) -> None:
        """Release connections (at service stop)."""

    def enforce_limit(self, max_entries: int, protect: Collection[str] = ()) -> int:
        """Delete the longest-idle checkpoints beyond `max_entries`, sparing metrics in `protect`."""
        if max_entries < 0:
            raise ValueError("max_entries must be >= 0")
        listed = list(self.entries())
        excess = len(listed) - max_entries
        if excess <= 0:
            return 0
        protected = {checkpoint_key(m) for m in protect}
        candidates = sorted((e for e in listed if e.key not in protected), key=lambda e: (e.mtime, e.key))
        for entry in candidates[:excess]:
            self.delete_key(entry.key)
        return min(excess, len(candidates))


class LocalCheckpointStore(CheckpointStore):
    """Checkpoints as files under one directory (fan-out by hash prefix)."""

    def __init__(self, directory: Path, durable: bool = True, sync_interval_s: float = 0.0) -> None:
        if not sync_interval_s >= 0.0:
            raise ValueError("sync_interval_s must be >= 0")
        self.directory = Path(directory)
        self.durable = durable  # False: no fsyncs (a cache of a store that is durable elsewhere)
        # > 0: group commit, one file-system sync per interval instead of two fsyncs per save
        self.sync_interval_s = float(sync_interval_s)
        self._unsynced = 0  # saves since the last sync (group commit)
        self._last_sync = time.monotonic()
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise CheckpointError(f"cannot create checkpoint directory {str(self.directory)!r}: {exc}") from exc
        self.quarantine_directory = self.directory / QUARANTINE_DIR

    def path_for(self, metric: str) -> Path:
        """Return the file path that holds (or would hold) the metric's checkpoint."""
        return self.key_path(checkpoint_key(metric))

    def key_path(self, key: str) -> Path:
        """Return the file path of the checkpoint listed under `key` (see `entries`)."""
        # Keys are 64 lowercase hex digits by construction; reject anything else defensively.
        if len(key) != 2 * _DIGEST_SIZE or key.strip("0123456789abcdef"):
            raise ValueError(f"not a checkpoint key: {key!r}")
        return self.directory / key[:2] / (key + _SUFFIX)

    def save(self, header: CheckpointHeader, payload: bytes) -> None:
        """Write the checkpoint atomically: temp file, fsync, rename, fsync the directory."""
        self.save_encoded(header.metric, encode_checkpoint(header, payload))

    def save_encoded(self, metric: str, blob: bytes) -> None:
        """Write already encoded checkpoint bytes of `metric` atomically."""
        try:
            self._write_atomically(self.path_for(metric), blob)
        except OSError as exc:
            raise CheckpointError(_one_line(f"cannot save checkpoint of {metric!r}: {exc}")) from exc

    def _write_atomically(self, path: Path, blob: bytes) -> None:
        parent = path.parent
        each = self.durable and self.sync_interval_s == 0.0  # durable before returning
        if not parent.is_dir():
            parent.mkdir(parents=True, exist_ok=True)  # parents: the root may have been recreated
            if each:
                fsync_directory(self.directory)  # make the new subdirectory itself durable
        fd, temp_name = tempfile.mkstemp(prefix=_TEMP_PREFIX, dir=parent)
        renamed = False
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(blob)
                handle.flush()
                if each:
                    os.fsync(handle.fileno())
            os.replace(temp_name, path)
            renamed = True
            if each:
                fsync_directory(parent)
            elif self.durable:
                self._unsynced += 1
                if time.monotonic() - self._last_sync >= self.sync_interval_s:
                    self.sync()
        finally:
            if not renamed:
                try:
                    os.unlink(temp_name)
                except OSError:
                    log.warning("could not remove temporary checkpoint file %s", temp_name)

    def sync(self) -> None:
        """Make every save so far durable (group commit; a no-op when nothing is pending)."""
        if not self._unsynced:
            return
        try:
            _sync_filesystem(self.directory)
        except OSError as exc:
            raise CheckpointError(_one_line(f"cannot sync checkpoint directory: {exc}")) from exc
        self._unsynced = 0
        self._last_sync = time.monotonic()

    def close(self) -> None:
        """Sync pending group-committed saves."""
        self.sync()

    def load(self, metric: str) -> tuple[CheckpointHeader, bytes] | None:
        """Read and verify the metric's checkpoint; quarantine it and raise if it is bad."""
        path = self.path_for(metric)
        try:
            blob = path.read_bytes()
        except (FileNotFoundError, NotADirectoryError):
            return None
        except IsADirectoryError as exc:
            reason = "unreadable: a directory stands where the checkpoint file belongs"
            self._quarantine_path(path, reason)
            raise CheckpointCorrupt(reason) from exc
        except OSError as exc:
            # An I/O problem says nothing about the file's content: do not quarantine it.
            raise CheckpointError(_one_line(f"cannot read checkpoint of {metric!r}: {exc}")) from exc
        try:
            return decode_checkpoint(blob, expected_metric=metric)
        except CheckpointCorrupt as exc:
            self._quarantine_path(path, exc.reason)
            raise

    def delete(self, metric: str) -> None:
        """Remove the metric's checkpoint; a missing file is not an error."""
        self.delete_key(checkpoint_key(metric))

    def delete_key(self, key: str) -> None:
        """Remove the checkpoint stored under `key`; a missing file is not an error."""
        try:
            os.unlink(self.key_path(key))
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise CheckpointError(_one_line(f"cannot delete checkpoint {key}: {exc}")) from exc

    def quarantine(self, metric: str, reason: str) -> bool:
        """Move the metric's checkpoint to the quarantine directory; return whether one existed."""
        path = self.path_for(metric)
        if not os.path.lexists(path):
            return False
        return self._quarantine_path(path, reason)

    def _quarantine_path(self, path: Path, reason: str) -> bool:
        try:
            target = quarantine_target(self.quarantine_directory, path.stem)
            os.replace(path, target)
        except OSError as exc:
            log.error("could not quarantine checkpoint %s (%s): %s", path.name, reason, exc)
            return False
        # Debug only: the caller logs the one operator-facing line, naming the metric.
        log.debug("quarantined checkpoint %s as %s: %s", path.name, target.name, reason)
        return True

    def entries(self) -> Iterator[CheckpointEntry]:
        """Yield every stored checkpoint; skips temp files, the quarantine and foreign files."""
        try:
            top = list(os.scandir(self.directory))
        except OSError as exc:
            raise CheckpointError(f"cannot list checkpoint directory: {exc}") from exc
        for sub in top:
            if len(sub.name) != 2 or sub.name.strip("0123456789abcdef") or not sub.is_dir(follow_symlinks=False):
                continue
            try:
                files = list(os.scandir(sub.path))
            except OSError as exc:
                raise CheckpointError(f"cannot list checkpoint directory {sub.name}: {exc}") from exc
            for item in files:
                key = item.name[:-len(_SUFFIX)]
                if not item.name.endswith(_SUFFIX) or not key.startswith(sub.name):
                    continue
                try:
                    stat = item.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue  # deleted since the listing; another instance may share the store
                yield CheckpointEntry(key=key, size=stat.st_size, mtime=stat.st_mtime)

    def remove_stale_temp_files(self, older_than_s: float = 3600.0) -> int:
        """Delete temp files left by crashed writers; young ones may belong to a live writer."""
        cutoff = time.time() - older_than_s
        removed = 0
        for sub in self.directory.iterdir():
            if len(sub.name) != 2 or not sub.is_dir():
                continue
            for item in sub.glob(_TEMP_PREFIX + "*"):
                try:
                    if item.stat().st_mtime < cutoff:
                        item.unlink()
                        removed += 1
                except FileNotFoundError:
                    continue
        return removed


def quarantine_target(directory: Path, stem: str) -> Path:
    """A free `<stem>.<UTC time>.<n>.ckpt` path in the quarantine `directory` (created); raises OSError."""
    directory.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    for attempt in range(1000):
        target = directory / f"{stem}.{stamp}.{attempt}{_SUFFIX}"
        if not os.path.lexists(target):
            break
    return target


_LIBC = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
_SYNCFS = getattr(_LIBC, "syncfs", None)  # Linux: sync one file system, not every one


def _sync_filesystem(directory: Path) -> None:
    """Flush the file system holding `directory` (all its files and directory entries)."""
    if _SYNCFS is None:
        os.sync()
        return
    fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        if _SYNCFS(fd) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))
    finally:
        os.close(fd)


def fsync_directory(directory: Path) -> None:
    """Make `directory`'s entries durable (tolerates file systems that cannot fsync a directory)."""
    fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    except OSError as exc:
        # Some filesystems cannot fsync a directory; the rename itself is still atomic.
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP):
            raise
    finally:
        os.close(fd)
