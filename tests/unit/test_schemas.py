from __future__ import annotations

import json
import math

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kestrel.errors import InvalidMessage
from kestrel.schemas import check_event_time, parse_envelope
from kestrel.schemas.__main__ import HERE, SCHEMAS, render
from kestrel.schemas.metrics import MAX_FIELDS, MAX_MAGNITUDE


def test_a_digest_envelope_parses() -> None:
    raw = orjson.dumps(
        {
            "timestamp": 1_700_000_000_000,
            "source": "model:llama7b",
            "type": "metrics",
            "data": {"tokens_per_second": 41.5, "ttft_ms": None},
            "frame_budget_used_ms": 3.2,
            "energy_visual": {
                "ribbon_width": 0.5,
                "particle_density": 0.1,
                "animation_speed": 1.0,
                "lightning_intensity": 0.0,
            },
        }
    )
    envelope = parse_envelope(raw)
    assert envelope.source == "model:llama7b"
    assert envelope.data == {"tokens_per_second": 41.5, "ttft_ms": None}
    assert envelope.energy_visual is not None


@pytest.mark.parametrize(
    ("raw", "reason", "where"),
    [
        (b"\xff\xfe", "bad_json", "message"),
        (b'{"source": "ui", "type": "metrics", "data": {}}', "missing_field", "timestamp"),
        (
            b'{"timestamp": 1, "source": "ui", "type": "metrics", "data": {"a": "x"}}',
            "invalid_field",
            "data.a",
        ),
        (
            b'{"timestamp": 1, "source": "gpu", "type": "metrics", "data": {}}',
            "invalid_field",
            "source",
        ),
        (
            b'{"timestamp": 0, "source": "ui", "type": "metrics", "data": {}}',
            "invalid_field",
            "timestamp",
        ),
    ],
)
def test_a_bad_envelope_says_what_is_wrong(raw: bytes, reason: str, where: str) -> None:
    with pytest.raises(InvalidMessage) as info:
        parse_envelope(raw)
    assert info.value.reason == reason
    assert info.value.detail.startswith(where)


@pytest.mark.parametrize("filename", sorted(SCHEMAS))
def test_committed_json_schemas_match_the_models(filename: str) -> None:
    committed = (HERE / filename).read_text()
    assert committed == render(SCHEMAS[filename]), "run `make schemas` and commit the result"


# --- The parser never raises anything but InvalidMessage -----------------------------------

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats()
    | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)


def _json(value: object) -> bytes:
    """The standard library's JSON: big integers, NaN and Infinity included."""
    return json.dumps(value).encode()


hostile_numbers = st.sampled_from(
    [b"Infinity", b"-Infinity", b"NaN", b"1e400", b"-1e400", b"1e301", b"5e-324", b"0", b"-0"]
)


@st.composite
def envelopes(draw: st.DrawFn) -> bytes:
    """Envelopes that are nearly right: the hostile part is in the values and sizes."""
    number = draw(hostile_numbers)
    rows = draw(st.integers(min_value=0, max_value=3))
    ts = draw(st.integers(min_value=-5, max_value=2**60))
    samples = b""
    if rows:
        column = b"[" + b",".join([number] * rows) + b"]"
        stamps = b"[" + b",".join(str(ts + i).encode() for i in range(rows)) + b"]"
        samples = b', "samples": {"timestamp": ' + stamps + b', "data": {"x": ' + column + b"}}"
    return (
        b'{"timestamp": ' + str(ts).encode() + b', "source": "ui", "type": "metrics", '
        b'"data": {"x": ' + number + b"}" + samples + b"}"
    )


@settings(max_examples=400, deadline=None)
@given(st.one_of(st.binary(max_size=200), json_values.map(_json), envelopes()))
def test_any_bytes_parse_or_raise_invalid_message_and_accepted_values_are_in_range(
    raw: bytes,
) -> None:
    try:
        envelope = parse_envelope(raw)
    except InvalidMessage as exc:
        assert exc.reason in {
            "bad_json",
            "missing_field",
            "invalid_field",
            "empty_data",
            "oversize",
        }
        return
    values = list(envelope.data.values())
    if envelope.samples is not None:
        values += [v for column in envelope.samples.data.values() for v in column]
        assert envelope.samples.data, "a message carries at least one field"
    else:
        assert envelope.data
    for value in values:
        assert value is None or (math.isfinite(value) and abs(value) <= MAX_MAGNITUDE)
    assert 0 < envelope.newest_ms < 2**53


def test_a_sample_from_the_future_is_refused_with_the_setting_to_change() -> None:
    now = 1_700_000_000_000
    envelope = parse_envelope(
        orjson.dumps(
            {"timestamp": now + 61_000, "source": "ui", "type": "metrics", "data": {"x": 1}}
        )
    )
    with pytest.raises(InvalidMessage, match="KESTREL_MAX_FUTURE_S") as caught:
        check_event_time(envelope, now, 60_000)
    assert caught.value.reason == "future_timestamp"
    check_event_time(envelope, now + 1_000, 60_000)  # within the skew


def test_too_many_fields_is_oversize() -> None:
    data = {f"f{i}": 1.0 for i in range(MAX_FIELDS + 1)}
    raw = orjson.dumps({"timestamp": 1, "source": "ui", "type": "metrics", "data": data})
    with pytest.raises(InvalidMessage) as caught:
        parse_envelope(raw)
    assert caught.value.reason == "oversize"
