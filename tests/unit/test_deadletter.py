from __future__ import annotations

from kestrel.deadletter import DeadLetter


def test_headers_round_trip() -> None:
    letter = DeadLetter(
        "bad_json", "message: Invalid JSON", "window_metrics", "ns.metrics.ui", 3, 1234
    )
    headers = letter.headers()
    assert ("kestrel.offset", b"1234") in headers
    assert DeadLetter.from_headers(dict(headers)) == letter
