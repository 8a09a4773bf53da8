"""Score a directory of anomaly-score results with the NAB v1.1 rules (see nab_scorer_lib).

    python bench/nab_score.py RESULTS_DIR [--data /work/shared/nab/data]
                              [--windows /work/shared/nab/combined_windows.json]

RESULTS_DIR mirrors the data layout: `<results>/<category>/<file>.csv` with at least the columns
`timestamp` and `anomaly_score`, one row per data row. Files without results are left out of the
corpus (and listed). Prints each profile's normalised score and optimal threshold, then the
per-file TP/FP/FN counts at the standard profile's threshold.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from nab_scorer_lib import (  # noqa: E402
    PROFILES,
    load_corpus,
    load_results,
    score_corpus,
)

NAB = Path("/work/shared/nab")


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path)
    parser.add_argument("--data", type=Path, default=NAB / "data")
    parser.add_argument("--windows", type=Path, default=None,
                        help="labelled windows json (default: combined_windows.json next to --data)")
    args = parser.parse_args(argv)
    windows = args.windows or args.data.parent / "combined_windows.json"

    with windows.open() as fh:
        names = sorted(json.load(fh))
    results = load_results(args.results, names)
    if not results:
        print(f"no result files found under {args.results}", file=sys.stderr)
        return 1
    missing = [n for n in names if n not in results]
    corpus = load_corpus(args.data, windows, names=list(results))
    try:
        scores = score_corpus(results, corpus, PROFILES.values())
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1

    print(f"files scored: {len(results)} of {len(names)}"
          + (f" (missing: {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''})" if missing else ""))
    print(f"{'profile':<20} {'score':>7} {'threshold':>10} {'raw':>9} {'null':>8} {'perfect':>8}"
          f" {'TP':>4} {'FP':>5} {'FN':>4}")
    for name, result in scores.items():
        tp = sum(c.tp for c in result.files.values())
        fp = sum(c.fp for c in result.files.values())
        fn = sum(c.fn for c in result.files.values())
        print(f"{name:<20} {result.score:7.2f} {result.threshold:10.6g} {result.raw:9.3f} "
              f"{result.null:8.2f} {result.perfect:8.2f} {tp:4d} {fp:5d} {fn:4d}")
    standard = scores["standard"]
    print(f"\nper file at the standard threshold {standard.threshold:.6g}:")
    print(f"{'file':<60} {'TP':>3} {'FP':>4} {'FN':>3} {'raw':>8}")
    for name, counts in standard.files.items():
        print(f"{name:<60} {counts.tp:3d} {counts.fp:4d} {counts.fn:3d} {counts.raw_score:8.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
