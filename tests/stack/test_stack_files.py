"""The small parsers the stack tests rely on: they must reject what they cannot read."""

from __future__ import annotations

import pytest

from tests.stack.stack_files import (
    dockerignored,
    graphite_glob_matches,
    graphite_series_paths,
    parse_dockerfile,
)


def test_graphite_paths_skip_functions_and_literals() -> None:
    assert graphite_series_paths("alias(a.b.c, 'x')") == ["a.b.c"]
    assert graphite_series_paths("summarize(absolute(a.b), '1h', 'sum', false)") == ["a.b"]
    assert graphite_series_paths("sumSeries(a.{b,c}.d, x.*, #A)") == ["a.{b,c}.d", "x.*"]
    assert graphite_series_paths("highestMax(p.**, 5)") == ["p.**"]
    for broken in ("alias(a.b, 'x'", "alias(a.b 'x')", "a.{b,c", "f(a,)"):
        with pytest.raises((ValueError, IndexError)):
            graphite_series_paths(broken)


def test_graphite_globs_respect_nodes() -> None:
    assert graphite_glob_matches("a.*.c", "a.b.c")
    assert not graphite_glob_matches("a.*", "a.b.c")  # `*` does not cross a dot
    assert graphite_glob_matches("a.**", "a.b.c")
    assert graphite_glob_matches("a.{x,b}.c", "a.b.c")
    assert not graphite_glob_matches("a.b", "a.b.c")


def test_dockerfile_parser_joins_lines_and_reads_heredocs() -> None:
    text = "FROM x AS a\nRUN one \\\n    two\n# comment\nFROM y\nRUN python - <<'EOF'\nprint(1)\nEOF\nCMD [\"z\"]\n"
    instructions = parse_dockerfile(text)
    assert [(i.keyword, i.stage) for i in instructions] == [
        ("FROM", 0), ("RUN", 0), ("FROM", 1), ("RUN", 1), ("CMD", 1)]
    assert instructions[1].args == "one  two"
    assert instructions[3].heredocs == ["print(1)\n"]
    assert instructions[4].exec_form() == ["z"]
    with pytest.raises(ValueError):
        parse_dockerfile("FROM x\nRUN python - <<EOF\nprint(1)\n")


def test_dockerignore_rules() -> None:
    patterns = ["**/__pycache__", ".venv", "docs", "!docs/keep.md", "*.log"]
    assert dockerignored("pkg/__pycache__/m.pyc", patterns)
    assert dockerignored(".venv/bin/python", patterns)
    assert dockerignored("docs/a.md", patterns)
    assert not dockerignored("docs/keep.md", patterns)
    assert dockerignored("x.log", patterns) and not dockerignored("sub/x.log", patterns)
    assert not dockerignored("pkg/m.py", patterns)
