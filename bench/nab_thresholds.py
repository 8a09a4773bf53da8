"""Print the NAB standard-profile score of a results directory at a grid of thresholds.

    python bench/nab_thresholds.py RESULTS_DIR
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from nab_scorer_lib import PROFILES, load_corpus, load_results, null_and_perfect, score_file  # noqa: E402

NAB = Path("/work/shared/nab")
THRESHOLDS = (0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.99, 0.999, 0.9999, 0.99999, 0.999999, 1.0)


def main() -> None:
    """Score RESULTS_DIR at each threshold of the grid."""
    corpus = load_corpus(NAB / "data", NAB / "combined_windows.json")
    results = load_results(Path(sys.argv[1]), corpus.keys())
    profile = PROFILES["standard"]
    null, perfect = null_and_perfect(corpus, profile)
    for threshold in THRESHOLDS:
        total = 0.0
        tp = fp = 0
        for name, labelled in corpus.items():
            counts = score_file(labelled, results[name], threshold, profile)
            total += counts.raw_score
            tp += counts.tp
            fp += counts.fp
        print(f"t={threshold:<9} score={100 * (total - null) / (perfect - null):6.2f} tp={tp} fp={fp}")


if __name__ == "__main__":
    main()
