"""The `pensu` command line: run, demo, generate, replay, config."""

from __future__ import annotations

import argparse
import sys


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of the `pensu` command."""
    parser = argparse.ArgumentParser(prog="pensu", description=__doc__)
    parser.add_subparsers(dest="command", required=True)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `pensu` console script."""
    args = build_parser().parse_args(argv)
    print(f"pensu: command {args.command!r} is not available yet", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
