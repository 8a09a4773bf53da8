"""Where the NAB corpus lives and how to read one of its series (shared by the benchmarks)."""

from __future__ import annotations

import csv
import os
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NAB_DATA = Path(os.environ.get("PENSU_NAB_DATA", ROOT.parent / "shared" / "nab" / "data"))


def load_rows(path: Path) -> list[tuple[str, float, float]]:
    """(timestamp text, unix ts, value) rows of a NAB csv."""
    rows = []
    with path.open() as fh:
        for row in csv.DictReader(fh):
            ts = datetime.strptime(row["timestamp"], "%Y-%m-%d %H:%M:%S").replace(tzinfo=UTC)
            rows.append((row["timestamp"], ts.timestamp(), float(row["value"])))
    return rows


def load_series(path: Path) -> list[tuple[float, float]]:
    """(unix ts, value) rows of a NAB csv."""
    return [(ts, value) for _, ts, value in load_rows(path)]
