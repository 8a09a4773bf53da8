import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

from nab_reports import episode_reports  # noqa: E402


def test_an_episode_is_reported_once_at_its_first_row():
    scores = np.array([0.1, 0.9, 0.95, 0.2, 0.9, 0.1, 0.1, 0.1, 0.8, 0.1])
    reported = episode_reports(scores, threshold=0.7, quiet=2)
    # rows 1 and 4 are one episode (row 4 is within 2 rows of row 2); row 8 opens a new one
    assert np.flatnonzero(reported).tolist() == [1, 8]


def test_quiet_zero_reports_every_row_at_or_above_the_threshold():
    scores = np.array([0.5, 0.49, 0.5, 0.5])
    assert np.flatnonzero(episode_reports(scores, 0.5, 0)).tolist() == [0, 2, 3]


def test_a_long_run_above_the_threshold_stays_one_episode():
    scores = np.ones(100)
    assert int(episode_reports(scores, 0.5, 5).sum()) == 1
