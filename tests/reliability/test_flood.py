"""Cardinality flood and back-pressure through the real service (`python -m pensu run`), with
its resident memory read from /proc and its checkpoint directory measured as it runs.

The full 1,000,000-name flood is `bench/flood.py` (figures in docs/reliability.md); here a
scaled-down flood asserts the same bounds."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from tests.conftest import KafkaCluster

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from flood import run_flood  # noqa: E402

pytestmark = [pytest.mark.kafka, pytest.mark.slow]


def rss_at(result, fraction: float) -> int:
    """VmRSS (kB) at the first reading past `fraction` of the work."""
    target = fraction * result.rss_kb[-1][0]
    return next(kb for done, kb in result.rss_kb if done >= target)


def test_flood_of_distinct_names_keeps_memory_disk_and_logs_bounded(kafka: KafkaCluster, tmp_path: Path) -> None:
    names, cap, tracked, quota_log = 20_000, 500, 2_000, 5.0
    result = run_flood(kafka.bootstrap_servers, tmp_path / "models", names, cap, tracked, autosave=1.0,
                       quota_log_seconds=quota_log, timeout=900)
    assert result.exit_code == 0, result.log_tail
    assert result.processed == names  # no name dropped: each one's sample was learned
    # Memory: flat once the cap is reached (measured +11 MiB over the last three quarters).
    growth_mib = (result.rss_kb[-1][1] - rss_at(result, 0.25)) / 1024
    assert growth_mib < 48, growth_mib
    # Disk: at most the quota plus the tenth of it written between trims, plus resident models.
    assert result.max_files <= tracked + tracked // 10 + cap, result.max_files
    assert result.final_files <= tracked + cap
    # The over-quota message is rate limited (one per quota_log seconds).
    assert 1 <= result.over_quota_lines <= result.seconds / quota_log + 2, result.over_quota_lines
    print(f"\nflood of {names} names: {result.rate:.0f} names/s, RSS {rss_at(result, 0.25) / 1024:.0f} → "
          f"{result.rss_kb[-1][1] / 1024:.0f} MiB (peak {result.peak_rss_kb / 1024:.0f}), at most "
          f"{result.max_files} checkpoint files, {result.over_quota_lines} over-quota log lines")


@pytest.mark.timeout(1200)
def test_burst_of_200k_lines_is_absorbed_with_bounded_memory(kafka: KafkaCluster, tmp_path: Path) -> None:
    # 200 metrics × 1,000 samples, all queued before the service starts; models stay in warm-up
    # so the burst measures the Kafka edges (600,000 outputs) rather than HTM steps.
    result = run_flood(kafka.bootstrap_servers, tmp_path / "models", 200, 1000, 1000, autosave=5.0,
                       timeout=1000, samples_per_name=1000, extra_env={"PENSU_WARMUP_SAMPLES": "5000"})
    assert result.exit_code == 0, result.log_tail
    assert result.processed == 200_000
    growth_mib = (result.peak_rss_kb - rss_at(result, 0.1)) / 1024
    assert growth_mib < 160, growth_mib  # producer queue, consumer prefetch and in-flight batches are capped
    print(f"\nburst of 200,000 lines: {result.rate:.0f} lines/s, RSS {rss_at(result, 0.1) / 1024:.0f} MiB at 10%, "
          f"peak {result.peak_rss_kb / 1024:.0f} MiB")
