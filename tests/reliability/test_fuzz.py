"""Hostile input through `Pipeline.process`: nothing raises, every line is accepted or rejected
with a reason exactly as `parse_line` (README "Input and output") and the per-metric order rules say.

Message-level properties run on arbitrary bytes and on line soups built from a nasty alphabet;
`FUZZED` counts every line that went through, for docs/reliability.md.
"""

from __future__ import annotations

import json
import math
import random
import re
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pensu.carbon import MAX_LINE_BYTES, OUTPUT_KINDS, REASONS, parse_line, parse_message
from pensu.checkpoint import LocalCheckpointStore
from pensu.errors import LineRejected
from pensu.outputs import OutputFormatter, OutputTopics
from pensu.pipeline import Pipeline
from pensu.registry import ModelRegistry
from tests.support import fast_config

# Reasons decided by the metric's model state rather than by the line alone.
OWN_PREFIXES = tuple(f"pensu.{kind}.metrics_analyzer." for kind in OUTPUT_KINDS)
ORDER_REASONS = ("out_of_order", "duplicate", "value_out_of_range")
FUZZED = {"lines": 0}
OUTPUT_NAME = re.compile(r"[A-Za-z0-9_\-:]+(\.[A-Za-z0-9_\-:]+)*")


def make_pipeline(models: Path, capacity: int = 8) -> Pipeline:
    """A real pipeline over a real checkpoint directory, with fast models and a small cap."""
    config = fast_config()
    registry = ModelRegistry(LocalCheckpointStore(models), config, capacity=capacity)
    formatter = OutputFormatter(OutputTopics(), "pensu.{{#anomaly_metric}}.metrics_analyzer", config.thresholds, "t")
    return Pipeline(registry, formatter, re.compile(".*"), dead_letter_topic="dead")


def oracle(line: bytes) -> str | None:
    """None for a line `parse_line` accepts, else its rejection reason; "" for a skipped blank."""
    if len(line) <= MAX_LINE_BYTES and not line.strip(b" \t\r"):
        return ""
    try:
        parse_line(line)
    except LineRejected as exc:
        return exc.reason
    return None


def check_message(pipeline: Pipeline, payload: bytes, offset: int) -> None:
    """Process one message and check every line's fate against the oracle."""
    lines = payload.split(b"\n")
    FUZZED["lines"] += len(lines)
    result = pipeline.process(payload, "in:0", offset)  # must not raise
    expected_rejects = [r for r in (oracle(line) for line in lines) if r]
    accepted = [line for line in lines if oracle(line) is None]
    parse_reasons = [r.reason for r in result.rejections if r.reason not in ORDER_REASONS]
    order_rejects = [r for r in result.rejections if r.reason in ORDER_REASONS]
    assert sorted(parse_reasons) == sorted(expected_rejects)
    assert all(r in REASONS for r in parse_reasons)
    assert not [r for r in result.rejections if r.reason == "model_error"], result.rejections
    # Accepted lines are learned, or rejected for order or range, or skipped as own outputs: the
    # names the template "pensu.{{#anomaly_metric}}.metrics_analyzer" renders (other "pensu."
    # names are ordinary metrics).
    own = sum(1 for line in accepted if parse_line(line).metric.startswith(OWN_PREFIXES))
    assert result.samples + len(order_rejects) + own == len(accepted)
    for rejection in result.rejections:
        assert len(rejection.raw) <= MAX_LINE_BYTES and rejection.detail
    check_records(result.records)


def check_records(records: list) -> None:
    """Every output is one well-formed carbon line or one JSON object with the contract's keys."""
    for record in records:
        if record.topic == "dead":
            continue
        if record.topic == OutputTopics().anomaly_reports:
            report = json.loads(record.value)
            assert report["metric"].encode() == record.key
            continue
        assert record.value.endswith(b"\n") and record.value.count(b"\n") == 1
        # Output names may exceed the input's 255 bytes (prefix + name), so no parse_line here.
        name, value, ts = record.value[:-1].decode("ascii").split(" ")
        assert name.endswith("." + record.key.decode()) and OUTPUT_NAME.fullmatch(name)
        assert math.isfinite(float(value)) and math.isfinite(float(ts))


NASTY_LINES: list[bytes] = [
    b"", b" ", b"\t\t", b"\r", b" \t\r ", b"a.b 1 1700000000\r", b"a.b\t1\t1700000000", b"\ta.b 1 1700000000 ",
    b"a.b 1\x00 1700000000", b"\x00", b"a.\xff\xfe 1 1700000000", b"\xc3\x28 1 1700000000", b"a.b \xed\xa0\x80 1",
    b"x" * (10 * 1024 * 1024), b"a.b " + b"1" * 5000 + b" 1700000000",
    b"a.b nan 1700000000", b"a.b NaN 1700000000", b"a.b inf 1700000000", b"a.b -Infinity 1700000000",
    b"a.b 1e400 1700000000", b"a.b -1e400 1700000000", b"a.b 1 1e400", b"a.b 1 nan",
    b"a.b 1 -1700000000", b"a.b 1 0", b"a.b 1 946684799", b"a.b 1 99999999999", b"a.b 1 1700000000000",
    b"a.b 1", b"a.b 1 1700000000 extra", b"a.b", b"1 2 3 4 5",
    "m\u00e9trique.\u6e29\u5ea6 1 1700000000".encode(), "a.b \u0661 1700000000".encode(),
    b"a." + b"n" * 10 * 1024 + b" 1 1700000000", b"a" * 255 + b" 1 1700000000", b"a" * 256 + b" 1 1700000000",
    b"../../etc/x 1 1700000000", b"/etc/passwd 1 1700000000", b"a..b 1 1700000000", b".a 1 1700000000",
    b"a.b 0x10 1700000000", b"a.b 1_000 1700000000", b"a.b 1,5 1700000000", b"a.b 1\x0b 1700000000",
    b"a.b 1 1700000000.5", b"a.b -0 1700000001", b"a.b +.5e3 1700000002", b"a.b 1 1700000002",
    b"a.b 1 1600000000", b"pensu.anomaly_score.metrics_analyzer.a.b 1 1700000003",
]


def test_corpus_of_nasty_lines_one_per_message(tmp_path: Path) -> None:
    pipeline = make_pipeline(tmp_path / "models")
    for offset, line in enumerate(NASTY_LINES):
        check_message(pipeline, line, offset)


def test_corpus_of_nasty_lines_in_one_message(tmp_path: Path) -> None:
    pipeline = make_pipeline(tmp_path / "models")
    check_message(pipeline, b"\n".join(NASTY_LINES), 0)
    check_message(pipeline, b"\r\n".join(NASTY_LINES[:30]), 1)


def test_non_bytes_payloads_never_raise(tmp_path: Path) -> None:
    pipeline = make_pipeline(tmp_path / "models")
    assert pipeline.process(None, "in:0", 0).samples == 0
    assert pipeline.process(bytearray(b"a.b 1 1700000000"), "in:0", 1).samples == 1
    assert pipeline.process(memoryview(b"a.c 1 1700000000"), "in:0", 2).samples == 1


_NAME_PARTS = st.sampled_from(["a", "b", "Web", "x-1", "y_2", "p:q", "..", "/", "\u00e9", "pensu", "", "\x00"])
_NUM_PARTS = st.sampled_from(["1", "-2.5", "1e3", "1e400", "nan", "inf", "-0", ".5", "0x1", "1_0", "\u0662", ""])
_TS_PARTS = st.sampled_from(["1700000000", "1700000300", "1600000000", "0", "-5", "1e12", "nan", "1700000000.25"])
_SEPS = st.sampled_from([" ", "\t", "  ", " \t", "\r", "\x0b", "\u00a0"])


@st.composite
def carbonish_line(draw: st.DrawFn) -> bytes:
    """A line that is often valid and often broken in one field."""
    name = ".".join(draw(st.lists(_NAME_PARTS, min_size=1, max_size=4)))
    fields = [name, draw(_NUM_PARTS), draw(_TS_PARTS)]
    fields += draw(st.lists(_NUM_PARTS, max_size=1)) if draw(st.booleans()) else []
    if draw(st.integers(0, 9)) == 0:
        fields = fields[:2]
    text = draw(_SEPS).join(fields) if draw(st.booleans()) else " ".join(fields)
    raw = text.encode("utf-8", "surrogatepass")
    if draw(st.integers(0, 15)) == 0:
        raw += draw(st.binary(max_size=4))
    return raw


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(payload=st.binary(max_size=400))
def test_arbitrary_bytes_never_raise(tmp_path: Path, payload: bytes) -> None:
    check_message(make_pipeline(tmp_path / "models"), payload, 0)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lines=st.lists(carbonish_line(), min_size=1, max_size=30), crlf=st.booleans())
def test_carbonish_messages_follow_the_contract(tmp_path: Path, lines: list[bytes], crlf: bool) -> None:
    # A directory per example: tmp_path outlives hypothesis examples, and a checkpoint left by an
    # earlier example would (rightly) make this one's samples replays.
    pipeline = make_pipeline(Path(tempfile.mkdtemp(dir=tmp_path)), capacity=2)
    check_message(pipeline, (b"\r\n" if crlf else b"\n").join(lines), 0)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(max_size=200))
def test_arbitrary_text_never_raises(tmp_path: Path, text: str) -> None:
    pipeline = make_pipeline(Path(tempfile.mkdtemp(dir=tmp_path)))
    payload = text.encode("utf-8", "surrogatepass")
    check_message(pipeline, payload, 0)
    samples, rejections = parse_message(text)  # the str path too (lone surrogates included)
    FUZZED["lines"] += len(text.split("\n"))
    assert all(r.reason in REASONS for r in rejections)


@pytest.fixture(scope="module", autouse=True)
def report_lines_fuzzed() -> object:
    """Print how many lines went through (collected for docs/reliability.md with -s)."""
    yield
    print(f"\nlines fuzzed through Pipeline.process: {FUZZED['lines']}")


def mutate(line: bytes, rng: random.Random) -> bytes:
    """Flip, insert or delete a few bytes of a valid line."""
    data = bytearray(line)
    for _ in range(rng.randint(1, 3)):
        op, at = rng.randint(0, 2), rng.randrange(len(data) + 1)
        if op == 0 and at < len(data):
            data[at] = rng.randrange(256)
        elif op == 1:
            data.insert(at, rng.choice(b" \t\r\x00.\xff-e9"))
        elif at < len(data):
            del data[at]
    return bytes(data)


def test_mutation_soup_of_thirty_thousand_lines(tmp_path: Path) -> None:
    import random

    rng = random.Random(5)
    pipeline = make_pipeline(tmp_path / "models", capacity=64)
    for offset in range(60):
        lines = []
        for i in range(500):
            ts = 1_700_000_000 + 60 * (offset * 500 + i)
            valid = f"soup.m{rng.randrange(40)} {rng.uniform(-1e6, 1e6)!r} {ts}".encode()
            lines.append(valid if rng.random() < 0.5 else mutate(valid, rng))
        check_message(pipeline, b"\n".join(lines), offset)


def test_huge_values_are_rejected_not_fatal(tmp_path: Path) -> None:
    """Found by the soup: 1e19 after a fine-grained warm-up overflowed inside the model and raised."""
    pipeline = make_pipeline(tmp_path / "models")
    ts = 1_700_000_000
    warm = b"\n".join(f"big.m {i % 3} {ts + 60 * i}".encode() for i in range(40))
    assert pipeline.process(warm, "in:0", 0).samples == 40
    resolution = pipeline.registry.get("big.m").anomaly_model.resolution
    assert resolution is not None and resolution < 1
    hostile = [1e19, -1e19, 1.7e308, -1.7e308, 9.3e18 * resolution]
    payload = b"\n".join(f"big.m {v!r} {ts + 60 * (41 + i)}".encode() for i, v in enumerate(hostile))
    result = pipeline.process(payload, "in:0", 1)
    assert [r.reason for r in result.rejections] == ["value_out_of_range"] * len(hostile)
    ok = pipeline.process(f"big.m 1e6 {ts + 60 * 50}\nbig.m 2 {ts + 60 * 51}".encode(), "in:0", 2)
    assert ok.samples == 2 and not ok.rejections  # large but encodable values still learn
    # During warm-up the finest possible resolution bounds what is accepted.
    warmup = pipeline.process(f"fresh.m 1e300 {ts}\nfresh.m 1e15 {ts + 1}".encode(), "in:0", 3)
    assert [r.reason for r in warmup.rejections] == ["value_out_of_range"] and warmup.samples == 1
