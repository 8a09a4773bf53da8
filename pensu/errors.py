"""The one exception hierarchy of Pensu: everything we raise derives from `PensuError`."""

from __future__ import annotations


class PensuError(Exception):
    """Base class of every error Pensu raises on purpose."""


class ConfigurationError(PensuError):
    """Settings are invalid; the message names the variable and the expected form."""


class LineRejected(PensuError):
    """A carbon line cannot be accepted; `reason` is a short machine-readable label."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class SerializationError(PensuError):
    """Bytes cannot be turned back into a model or model component."""


class UnsupportedFormatVersion(SerializationError):
    """Serialized data carries a format version this build does not read."""


class CorruptData(SerializationError):
    """Serialized data is truncated, malformed or fails its checksum."""


class CheckpointError(PensuError):
    """A checkpoint cannot be written or read."""


class KafkaUnavailable(PensuError):
    """The Kafka cluster cannot be reached or refused an operation."""
