"""``python -m kestrel.tail metrics.aggregates alerts``: print Kestrel topics as they grow."""

from __future__ import annotations

import argparse
import sys
import uuid

import orjson
from confluent_kafka import Consumer

from kestrel.process import stop_on_signals
from kestrel.settings import get_settings


def _brief(topic: str, value: bytes) -> str:
    """A camera result in one line (the whole JSON is a screenful); anything else as is."""
    if topic.endswith(".camera.results"):
        try:
            result = orjson.loads(value)
            if result.get("kind") == "frame_dropped":
                return f"{result['camera_id']} frame {result['seq']}: dropped ({result['reason']})"
            data = result["data"]
            summary = data["post_processing_result"]["agg_summary"]
            return (
                f"{result['camera_id']} frame {data['metadata']['seq']}: "
                f"counts {summary['counts']} tracks {summary['active_tracks']} "
                f"lines {summary['line_crossings']} in {data['processing_time'] * 1000:.0f} ms"
            )
        except (ValueError, KeyError, TypeError):
            pass
    return value.decode(errors="replace")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="kestrel-tail", description=__doc__)
    parser.add_argument(
        "topics", nargs="+", help="topic names without the namespace, e.g. metrics.aggregates"
    )
    parser.add_argument("--from-beginning", action="store_true")
    args = parser.parse_args(argv)
    settings = get_settings()
    consumer = Consumer(
        {
            "bootstrap.servers": settings.bootstrap_servers,
            "group.id": f"{settings.namespace}-tail-{uuid.uuid4().hex[:8]}",
            "auto.offset.reset": "earliest" if args.from_beginning else "latest",
            "enable.auto.commit": False,
            # What Kestrel's transactions committed, as any downstream consumer should.
            "isolation.level": "read_committed",
        }
    )
    consumer.subscribe([settings.topic(name) for name in args.topics])
    stop = stop_on_signals()
    try:
        while not stop.is_set():
            msg = consumer.poll(0.5)
            if msg is None:
                continue
            topic = msg.topic() or ""
            if msg.error():
                print(f"[{topic}] error: {msg.error()}", file=sys.stderr)
                continue
            value = msg.value() or b""
            print(f"[{topic}] {_brief(topic, value)}", flush=True)
    finally:
        consumer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
