"""A downstream consumer of ``camera.results``: plain confluent-kafka, no Kestrel code.

    python scripts/consume_results.py --bootstrap 127.0.0.1:9092 --topic kestrel.camera.results

Reads only committed records (Kestrel writes results in transactions), validates each
record against its committed JSON Schema (a result, or a frame that was dropped) and
prints one line per frame.
Needs only ``confluent-kafka`` and ``jsonschema``: a consumer in another service or
language follows the same steps with its own client.
"""

from __future__ import annotations

import argparse
import json
import sys
import uuid
from pathlib import Path

import jsonschema
from confluent_kafka import Consumer

SCHEMAS = Path(__file__).resolve().parent.parent / "kestrel" / "schemas"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bootstrap", default="127.0.0.1:9092")
    parser.add_argument("--topic", default="kestrel.camera.results")
    parser.add_argument("--count", type=int, default=0, help="stop after this many (0: never)")
    args = parser.parse_args()
    validators = {
        kind: jsonschema.Draft202012Validator(json.loads((SCHEMAS / f"{kind}.json").read_text()))
        for kind in ("camera_result", "frame_dropped")
    }
    consumer = Consumer(
        {
            "bootstrap.servers": args.bootstrap,
            "group.id": f"results-example-{uuid.uuid4().hex[:6]}",
            "auto.offset.reset": "latest",
            "isolation.level": "read_committed",
        }
    )
    consumer.subscribe([args.topic])
    seen = 0
    try:
        while args.count == 0 or seen < args.count:
            msg = consumer.poll(1.0)
            if msg is None or msg.error() is not None:
                continue
            result = json.loads(msg.value() or b"{}")
            validator = validators.get(result.get("kind"))
            errors = (
                ["unknown kind"]
                if validator is None
                else sorted((e.message for e in validator.iter_errors(result)), key=str)
            )
            if errors:
                print(f"invalid record at offset {msg.offset()}: {errors[0]}")
                continue
            seen += 1
            if result["kind"] == "frame_dropped":
                print(f"{result['camera_id']} {result['frame_id']}: dropped ({result['reason']})")
                continue
            data = result["data"]
            summary = data["post_processing_result"]["agg_summary"]
            print(
                f"{result['camera_id']} {result['frame_id']}: {summary['counts']}, "
                f"{len(data['post_processing_result']['tracked_objects'])} tracked, "
                f"{data['processing_time'] * 1000:.0f} ms after capture"
            )
    finally:
        consumer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
