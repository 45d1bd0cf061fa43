from __future__ import annotations

import orjson
import pytest

from kestrel.errors import InvalidMessage
from kestrel.schemas import parse_envelope
from kestrel.schemas.__main__ import HERE, SCHEMAS, render


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
