"""Tests of carbon line parsing and formatting (pensu/carbon.py)."""

from __future__ import annotations

import json
import math
import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pensu.carbon import (
    DEFAULT_NAME_TEMPLATE,
    MAX_LINE_BYTES,
    MAX_NAME_BYTES,
    MIN_TIMESTAMP,
    OUTPUT_KINDS,
    REASONS,
    Rejection,
    Sample,
    _format_number_general,
    format_line,
    format_number,
    format_report,
    output_metric_name,
    own_output_prefixes,
    parse_line,
    parse_message,
    validate_name_template,
)
from pensu.errors import ConfigurationError, LineRejected

NOW = 1_700_000_000.0
TS = b"1700000000"

GOOD = [
    (b"a.b.c 59 1700000000", Sample("a.b.c", 59.0, 1_700_000_000.0)),
    (b"a -1.5e3 1700000000", Sample("a", -1500.0, 1_700_000_000.0)),
    (b"a +.5 1700000000.25", Sample("a", 0.5, 1_700_000_000.25)),
    (b"a 7. 1.7e9", Sample("a", 7.0, 1.7e9)),
    (b"a 1E-3 1700000000", Sample("a", 0.001, 1_700_000_000.0)),
    (b"Host-01.cpu_0:idle 0 1700000000", Sample("Host-01.cpu_0:idle", 0.0, 1_700_000_000.0)),
    (b"a 1 1700000000\r", Sample("a", 1.0, 1_700_000_000.0)),
    (b"  a\t1 \t 1700000000  ", Sample("a", 1.0, 1_700_000_000.0)),
    (b"a 1 946684800", Sample("a", 1.0, MIN_TIMESTAMP)),
    (b"a 1.7976931348623157e308 1700000000", Sample("a", 1.7976931348623157e308, 1_700_000_000.0)),
    (b"a 1 " + str(int(NOW + 86_400)).encode(), Sample("a", 1.0, NOW + 86_400)),
    ("a.b 2 1700000000", Sample("a.b", 2.0, 1_700_000_000.0)),
]

BAD = [
    (b"a 1 1700000000 extra", "arity"),
    (b"a 1", "arity"),
    (b"a", "arity"),
    (b"a 1\v1700000000", "arity"),
    (b"\xff\xfe 1 1700000000", "decode"),
    (b"a 1\x00 1700000000", "decode"),
    ("a 1 1700000000\udc80", "decode"),
    (b"a" * (MAX_NAME_BYTES + 1) + b" 1 " + TS, "name_too_long"),
    (b"a..b 1 " + TS, "name_illegal"),
    (b".a 1 " + TS, "name_illegal"),
    (b"a. 1 " + TS, "name_illegal"),
    (b"a/b 1 " + TS, "name_illegal"),
    (b"a;b=c 1 " + TS, "name_illegal"),
    ("caf\u00e9 1 1700000000".encode(), "name_illegal"),
    (b"a\x0bb 1 " + TS, "name_illegal"),
    (b"a 0x10 " + TS, "value_not_numeric"),
    (b"a 1_000 " + TS, "value_not_numeric"),
    (b"a abc " + TS, "value_not_numeric"),
    (b"a 1e " + TS, "value_not_numeric"),
    (b"a . " + TS, "value_not_numeric"),
    ("a \uff11\uff12 1700000000".encode(), "value_not_numeric"),
    (b"a nan " + TS, "value_not_finite"),
    (b"a -Infinity " + TS, "value_not_finite"),
    (b"a inf " + TS, "value_not_finite"),
    (b"a 1e400 " + TS, "value_not_finite"),
    (b"a 1 abc", "timestamp_invalid"),
    (b"a 1 -1", "timestamp_invalid"),
    (b"a 1 0", "timestamp_invalid"),
    (b"a 1 946684799.9", "timestamp_invalid"),
    (b"a 1 nan", "timestamp_invalid"),
    (b"a 1 1e400", "timestamp_invalid"),
    (b"a 1 1700000000000", "timestamp_invalid"),  # milliseconds
    (b"a 1 " + str(int(NOW + 366 * 86_400)).encode(), "timestamp_invalid"),
    (b"a 1 " + b"1" * (MAX_LINE_BYTES + 1), "line_too_long"),
]


@pytest.mark.parametrize(("line", "expected"), GOOD)
def test_good_lines_parse(line: bytes | str, expected: Sample) -> None:
    assert parse_line(line, now=NOW) == expected


@pytest.mark.parametrize(("line", "reason"), BAD)
def test_bad_lines_are_rejected_with_reason(line: bytes | str, reason: str) -> None:
    with pytest.raises(LineRejected) as info:
        parse_line(line, now=NOW)
    assert info.value.reason == reason
    assert info.value.reason in REASONS
    assert info.value.detail


def test_future_check_uses_now_and_can_be_disabled() -> None:
    line = b"a 1 1800000000"
    with pytest.raises(LineRejected):
        parse_line(line, now=NOW)
    assert parse_line(line, now=NOW, max_future_seconds=None).timestamp == 1.8e9
    assert parse_line(line, now=NOW, max_future_seconds=1e8).timestamp == 1.8e9
    with pytest.raises(LineRejected):
        parse_line(b"a 1 1700000001", now=NOW, max_future_seconds=0)


def test_name_at_the_byte_limit_is_accepted() -> None:
    name = ".".join(["abc"] * 64)[:MAX_NAME_BYTES]
    name = name.rstrip(".")
    assert parse_line(f"{name} 1 1700000000", now=NOW).metric == name
    exact = "x" * MAX_NAME_BYTES
    assert parse_line(f"{exact} 1 1700000000", now=NOW).metric == exact


def test_line_at_the_length_limit_is_scanned_and_one_byte_more_is_not() -> None:
    base = b"a 1 1700000000"
    padded = base + b" " * (MAX_LINE_BYTES - len(base))
    assert parse_line(padded, now=NOW).metric == "a"
    with pytest.raises(LineRejected) as info:
        parse_line(padded + b" ", now=NOW)
    assert info.value.reason == "line_too_long"


def test_ten_megabyte_line_is_rejected_as_too_long() -> None:
    huge = b"a" * 10_000_000 + b" 1 1700000000"
    with pytest.raises(LineRejected) as info:
        parse_line(huge, now=NOW)
    assert info.value.reason == "line_too_long"
    samples, rejections = parse_message(b"x 1 1700000000\n" + huge + b"\ny 2 1700000000", now=NOW)
    assert [s.metric for s in samples] == ["x", "y"]
    assert [r.reason for r in rejections] == ["line_too_long"]
    assert len(rejections[0].raw) == MAX_LINE_BYTES
    with pytest.raises(LineRejected) as info:
        parse_line("é" * 10_000_000, now=NOW)
    assert info.value.reason == "line_too_long"


def test_parse_message_splits_crlf_and_skips_blank_lines() -> None:
    payload = b"a 1 1700000000\r\n\r\n \t \nb 2 1700000001\r\nbad line\r\n\n"
    samples, rejections = parse_message(payload, now=NOW)
    assert samples == [Sample("a", 1.0, 1_700_000_000.0), Sample("b", 2.0, 1_700_000_001.0)]
    assert rejections == [Rejection("arity", rejections[0].detail, b"bad line\r")]


def test_parse_message_of_nothing() -> None:
    assert parse_message(None) == ([], [])
    assert parse_message(b"") == ([], [])
    assert parse_message(b"\n\n\r\n") == ([], [])


def test_parse_message_keeps_line_order_and_raw_bytes() -> None:
    lines = [b"m.1 1 1700000000", b"m.2 x 1700000000", b"m.3 3 1700000000", b"\xff 1 2"]
    samples, rejections = parse_message(b"\n".join(lines), now=NOW)
    assert [s.metric for s in samples] == ["m.1", "m.3"]
    assert [(r.reason, r.raw) for r in rejections] == [
        ("value_not_numeric", lines[1]),
        ("decode", lines[3]),
    ]


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600) | st.lists(st.sampled_from(
    [b"a.b", b" ", b"\t", b"\r", b"\n", b"1", b"-2.5e3", b"1700000000", b"nan", b"\x00", b"\xc3", b"..", b"x" * 300]
), max_size=30).map(b"".join))
def test_parse_message_never_raises_and_accounts_for_every_line(payload: bytes) -> None:
    samples, rejections = parse_message(payload, now=NOW)
    non_blank = [ln for ln in payload.split(b"\n") if ln.strip(b" \t\r")]
    assert len(samples) + len(rejections) == len(non_blank)
    for rejection in rejections:
        assert rejection.reason in REASONS
        assert rejection.raw in non_blank
    for sample in samples:
        assert math.isfinite(sample.value) and math.isfinite(sample.timestamp)


_segment = st.text(alphabet="abcXYZ019_-:", min_size=1, max_size=20)
_names = st.lists(_segment, min_size=1, max_size=12).map(".".join).filter(
    lambda n: len(n) <= MAX_NAME_BYTES
)
_values = st.floats(allow_nan=False, allow_infinity=False) | st.integers(-(2**53) + 1, 2**53 - 1)
_stamps = st.floats(min_value=MIN_TIMESTAMP, max_value=NOW + 86_400) | st.integers(
    int(MIN_TIMESTAMP), int(NOW)
)


def _bits(x: float) -> bytes:
    return struct.pack("<d", float(x))


@settings(max_examples=500, deadline=None)
@given(_names, _values, _stamps)
def test_format_then_parse_round_trips_exactly(name: str, value: float, ts: float) -> None:
    line = format_line(name, value, ts)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    sample = parse_line(line.rstrip(b"\n"), now=NOW)
    assert sample.metric == name
    assert _bits(sample.value) == _bits(value)
    assert _bits(sample.timestamp) == _bits(ts)


def test_format_line_number_text() -> None:
    assert format_line("a", -1, 1_700_000_000) == b"a -1 1700000000\n"
    assert format_line("a", 1.0, 1_700_000_000.0) == b"a 1 1700000000\n"
    assert format_line("a", 0.1, 1_700_000_000.5) == b"a 0.1 1700000000.5\n"
    assert format_line("a", -0.0, 1.7e9) == b"a -0 1700000000\n"
    assert format_line("a", 1e300, 1.7e9) == b"a 1e+300 1700000000\n"
    assert format_line("a", np.float64(0.25), np.int64(1_700_000_000)) == b"a 0.25 1700000000\n"
    assert format_line("a", True, 1.7e9) == b"a 1 1700000000\n"


@pytest.mark.parametrize(
    ("name", "value", "ts", "reason"),
    [
        ("a\nb 1 2", 1.0, 1.7e9, "name_illegal"),
        ("a b", 1.0, 1.7e9, "name_illegal"),
        ("", 1.0, 1.7e9, "name_illegal"),
        ("a..b", 1.0, 1.7e9, "name_illegal"),
        ("x" * 2000, 1.0, 1.7e9, "name_too_long"),
        ("a", math.nan, 1.7e9, "value_not_finite"),
        ("a", math.inf, 1.7e9, "value_not_finite"),
        ("a", 10**400, 1.7e9, "value_not_finite"),
        ("a", 1.0, math.nan, "timestamp_invalid"),
        ("a", 1.0, -5, "timestamp_invalid"),
    ],
)
def test_format_line_refuses_injection_and_non_finite(
    name: str, value: float, ts: float, reason: str
) -> None:
    with pytest.raises(LineRejected) as info:
        format_line(name, value, ts)
    assert info.value.reason == reason


def test_output_metric_names() -> None:
    names = [output_metric_name(DEFAULT_NAME_TEMPLATE, k, "some.metric.name") for k in OUTPUT_KINDS]
    assert names[0] == "pensu.anomaly_score.metrics_analyzer.some.metric.name"
    assert len(set(names)) == len(OUTPUT_KINDS)
    assert all(n.startswith(own_output_prefixes(DEFAULT_NAME_TEMPLATE)) for n in names)
    assert not any("pensu.a".startswith(p) for p in own_output_prefixes(DEFAULT_NAME_TEMPLATE))
    assert output_metric_name("x.{{#anomaly_metric}}", "prediction", "m") == "x.prediction.m"
    assert output_metric_name("{{#anomaly_metric}}.{{#anomaly_metric}}", "p", "m") == "p.p.m"
    # the longest legal input name still produces a formattable output line
    longest = "m" * MAX_NAME_BYTES
    out = output_metric_name(DEFAULT_NAME_TEMPLATE, "prediction_confidence", longest)
    assert format_line(out, 0.5, 1.7e9).startswith(out.encode())


def test_output_metric_name_rejects_bad_input() -> None:
    with pytest.raises(ConfigurationError):
        output_metric_name("pensu.metrics_analyzer", "prediction", "m")
    with pytest.raises(LineRejected):
        output_metric_name("pensu/{{#anomaly_metric}}", "prediction", "m")
    with pytest.raises(LineRejected):
        output_metric_name(DEFAULT_NAME_TEMPLATE, "a.b", "m")
    with pytest.raises(LineRejected):
        output_metric_name(DEFAULT_NAME_TEMPLATE, "prediction", "m x")


def test_validate_name_template() -> None:
    validate_name_template(DEFAULT_NAME_TEMPLATE)
    validate_name_template("{{#anomaly_metric}}")
    for bad in ("pensu.analyzer", "pensu..{{#anomaly_metric}}", "pensu {{#anomaly_metric}}", ""):
        with pytest.raises(ConfigurationError):
            validate_name_template(bad)


def test_format_report_keeps_key_order_and_refuses_nan() -> None:
    report = {"metric": "a.b", "timestamp": 1_700_000_000, "value": np.float64(2.5),
              "direction": np.int64(-1), "thresholds": {"score": 0.5}, "pensu_instance": "h\u00f6st"}
    raw = format_report(report)
    decoded = json.loads(raw)
    assert list(decoded) == list(report)
    assert decoded["value"] == 2.5 and decoded["direction"] == -1
    assert decoded["pensu_instance"] == "h\u00f6st"
    assert b"\n" not in raw
    with pytest.raises(ValueError):
        format_report({"value": math.nan})
    with pytest.raises(TypeError):
        format_report({"value": object()})


def _reference_parse(line: bytes) -> Sample | tuple[str, str]:
    """What `parse_line` alone says about a line: its sample, or its rejection's reason and detail."""
    try:
        return parse_line(line, now=NOW)
    except LineRejected as exc:
        return exc.reason, exc.detail


_canonical_names = st.one_of(_names, st.sampled_from(["a" * MAX_NAME_BYTES, "a" * (MAX_NAME_BYTES + 1), "a:b-c_d.0"]))
_number_texts = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False).map(repr),
    st.integers(-(10**20), 10**20).map(str),
    st.sampled_from(["1e400", "-1e400", "+.5", "7.", "0", "-0", "946684800", "946684799.9", "1700000000",
                     str(int(NOW + 366 * 86_400)), "1e309", "00012", "1E5", "2.5e-3"]),
)


@settings(max_examples=1000, deadline=None)
@given(_canonical_names, _number_texts, _number_texts)
def test_the_fast_path_of_parse_message_agrees_with_parse_line(name: str, value: str, ts: str) -> None:
    line = f"{name} {value} {ts}".encode()
    samples, rejections = parse_message(line, now=NOW)
    expected = _reference_parse(line)
    if isinstance(expected, Sample):
        assert samples == [expected] and rejections == []
        assert _bits(samples[0].value) == _bits(expected.value)
    else:
        assert samples == [] and [(r.reason, r.detail) for r in rejections] == [expected]


def test_non_canonical_lines_still_parse_through_the_full_rules() -> None:
    payload = b"a.b  1 1700000000\n\ta.c 2 1700000000\r\na.d\t3\t1700000000 \na.e 4 1700000000"
    samples, rejections = parse_message(payload, now=NOW)
    assert [(s.metric, s.value) for s in samples] == [("a.b", 1.0), ("a.c", 2.0), ("a.d", 3.0), ("a.e", 4.0)]
    assert rejections == []


@settings(max_examples=1000, deadline=None)
@given(st.floats() | st.integers(-(2**70), 2**70) | st.sampled_from([-0.0, 2.0**53, -(2.0**53), 2.0**53 - 1,
                                                                   2**53, -(2**53), 2**53 - 1, True, False]))
def test_format_number_fast_branches_match_the_general_rule(x: float) -> None:
    try:
        expected = _format_number_general(x)
    except LineRejected as exc:
        with pytest.raises(LineRejected) as info:
            format_number(x)
        assert (info.value.reason, info.value.detail) == (exc.reason, exc.detail)
    else:
        assert format_number(x) == expected
