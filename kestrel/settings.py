"""Kestrel's settings: the one module that reads the environment.

Every value comes from a ``KESTREL_*`` environment variable, then from a ``.env``
file in the working directory, then from the default below (chosen for the local
stack that ``make demo`` starts). A value that does not parse raises
:class:`~kestrel.errors.SettingsError` naming the variable, so a typo in a deployment
fails at start with the key to fix rather than deep inside a worker.

Everything else receives a :class:`Settings` object; nothing else reads ``os.environ``.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from kestrel.errors import SettingsError

ENV_PREFIX = "KESTREL_"


class Settings(BaseSettings):
    """Typed configuration for every Kestrel process."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_file=".env",
        extra="ignore",
        frozen=True,
    )

    # --- Kafka -------------------------------------------------------------------------
    broker_url: str = Field(
        "kafka://127.0.0.1:9092",
        description="Kafka bootstrap servers as a Faust URL (kafka://host:port;host:port).",
    )
    namespace: str = Field(
        "kestrel",
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,100}$",
        description="Prefix of every topic name and consumer group; one per deployment.",
    )
    topic_partitions: int = Field(4, ge=1, le=1024, description="Partitions of input topics.")
    topic_replication: int = Field(1, ge=1, description="Replication factor of new topics.")

    # --- The local broker (kestrel.broker) ----------------------------------------------
    kafka_version: str = Field("4.3.1", pattern=r"^4\.\d+\.\d+$")
    kafka_port: int = Field(9092, ge=1, le=65535)
    kafka_controller_port: int = Field(9093, ge=1, le=65535)
    kafka_heap_mb: int = Field(512, ge=128)

    # --- Local state --------------------------------------------------------------------
    data_dir: Path = Field(Path(".kestrel/data"), description="Broker logs and worker state.")
    cache_dir: Path = Field(Path(".kestrel/cache"), description="Broker jars and models.")

    # --- Stream workers -----------------------------------------------------------------
    window_grace_s: float = Field(
        1.0,
        ge=0,
        description="How long after its end a window still accepts out-of-order samples.",
    )
    flush_interval_s: float = Field(
        1.0,
        gt=0,
        description="How often window state is persisted and closed windows are emitted.",
    )
    batch_messages: int = Field(
        2000,
        ge=1,
        le=100_000,
        description="Collector messages the windows stage takes at once at most: one "
        "vectorised pass over a batch costs about what a few messages do alone.",
    )
    session_timeout_s: float = Field(
        10.0,
        ge=6,
        description="How long the group waits for a silent worker before moving its partitions.",
    )
    commit_interval_s: float = Field(
        2.8, gt=0, description="How often a worker commits its consumer offsets (Faust's)."
    )
    max_future_s: float = Field(
        60.0,
        ge=0,
        description="How far ahead of the worker's clock a sample's timestamp may be; "
        "later ones go to the dead letters (they would close every window of their partition).",
    )
    result_commit_ms: float = Field(
        20.0,
        gt=0,
        description="How long camera results and alerts wait at most for their transaction "
        "to commit (read_committed consumers see them then); each commit costs the broker a write.",
    )
    source_max_hz: float = Field(
        60.0,
        gt=0,
        description="Samples per second one source may send; more goes to the dead letters.",
    )
    max_sources: int = Field(
        1000,
        ge=1,
        description="Sources with open windows per collector topic partition; a message "
        "of one more goes to the dead letters (too_many_sources): producers choose names.",
    )
    max_fields: int = Field(
        256,
        ge=1,
        description="Fields with open windows per source; a message that would add one "
        "more goes to the dead letters (too_many_fields).",
    )

    # --- Cameras and inference ----------------------------------------------------------
    detector: Literal["ssd", "yolo", "centerface"] = Field(
        "ssd",
        description="Output format of the detector: models/ssd_tf.py, yolo.py, centerface.py.",
    )
    model_path: Path | None = Field(
        None, description="The ONNX detector; unset: the converted SSDLite in the cache dir."
    )
    score_threshold: float = Field(0.4, gt=0, lt=1, description="Lowest detection score kept.")
    inference_threads: int = Field(
        0, ge=0, description="ONNX Runtime intra-op threads per worker; 0: its default (cores)."
    )
    inference_spin: bool = Field(
        False,
        description="Let ONNX Runtime's intra-op threads spin between runs: a little "
        "faster back to back, much more CPU a frame when frames come paced.",
    )
    max_batch: int = Field(8, ge=1, le=256, description="Largest inference batch.")
    max_queue_delay_ms: float = Field(
        10.0, ge=0, description="How long a frame may wait for its batch to fill."
    )
    latency_target_ms: float = Field(
        100.0, gt=0, description="Batches grow while their mean latency is under this."
    )
    latency_max_ms: float = Field(
        200.0, gt=0, description="Batches shrink while their mean latency is over this."
    )
    camera_queue_frames: int = Field(
        4, ge=1, description="Frames held per camera; a camera behind drops its oldest."
    )
    frame_max_age_s: float = Field(
        30.0,
        gt=0,
        description="A frame older than this (capture to batch) is not detected: it gets "
        "a frame_dropped record (expired) instead; a live camera's backlog is stale.",
    )
    max_frame_bytes: int = Field(
        4 * 1024 * 1024, ge=1024, description="Larger frames go to the dead letters."
    )
    worker_memory_mb: float = Field(
        3_000.0,
        gt=0,
        description="An inference worker's memory budget: it warns at 60 % of it, halves "
        "its batches at 80 %, sheds the low lane at 100 % (or the host at 80/90/95 %).",
    )

    # --- The dashboard (web/) ------------------------------------------------------------
    web_host: str = Field("127.0.0.1", description="Where the dashboard listens.")
    web_port: int = Field(8000, ge=1, le=65535)
    web_token: str | None = Field(
        None,
        description="If set, every route but /healthz needs it (web/access.py); the "
        "WebSocket, SSE and REST alike.",
    )
    web_allow_open: bool = Field(
        False,
        description="Serve beyond loopback without a token (anyone who can reach the "
        "port sees everything); without it the server refuses to start that way.",
    )
    web_origins: str = Field(
        "",
        description="Comma-separated Origins (https://host:port) whose pages may open "
        "the WebSocket and SSE besides the server's own.",
    )
    web_stall_s: float = Field(
        10.0,
        gt=0,
        description="A client that takes no data for this long is closed (4009): a "
        "stalled client costs one coalesced slot per key, and only this long.",
    )
    web_compression: bool = Field(
        False,
        description="permessage-deflate on WebSockets: less bandwidth, but the server "
        "compresses every message once per client (43 % of its CPU at 100 clients).",
    )

    # --- On-demand analysis uploads (web/analyze.py) ---------------------------------------
    upload_concurrency: int = Field(
        5, ge=1, le=64, description="Uploads prepared (decoded, compressed) at once."
    )
    upload_max_bytes: int = Field(
        10 * 1024 * 1024, ge=1024, le=64 * 1024 * 1024, description="Larger uploads get 413."
    )
    upload_max_pixels: int = Field(
        40_000_000, ge=1, description="Larger images get 413 (a decompression bomb costs this)."
    )
    upload_target_bytes: int = Field(
        512 * 1024,
        ge=8 * 1024,
        le=8 * 1024 * 1024,
        description="The quality search compresses an upload to at most this.",
    )
    upload_quality_floor: int = Field(
        40, ge=1, le=95, description="The lowest quality the search goes to."
    )
    upload_format: Literal["jpeg", "webp"] = Field("jpeg", description="The format it encodes.")
    clip_max_bytes: int = Field(
        4 * 1024 * 1024,
        ge=1024,
        le=6 * 1024 * 1024,
        description="Larger clips get 413 (a clip travels whole, base64, in its request "
        "record: the request topics take 12 MB records).",
    )
    clip_max_s: float = Field(10.0, gt=0, le=120, description="Longer clips get 413.")
    clip_fps: float = Field(
        4.0, gt=0, le=30, description="Frames of a clip analysed per second of it."
    )

    rules_path: Path | None = Field(
        None,
        description="The analytics rules file (YAML); unset: kestrel/analytics/default_rules.yaml.",
    )

    stats_path: Path | None = Field(
        None, description="If set, each stage writes its own counters and latencies here (JSON)."
    )

    @field_validator("broker_url")
    @classmethod
    def _kafka_url(cls, value: str) -> str:
        if not value.startswith("kafka://") or not value.removeprefix("kafka://"):
            raise ValueError("expected kafka://host:port[;host:port...]")
        return value

    @property
    def bootstrap_servers(self) -> str:
        """The broker list in the form plain Kafka clients (confluent-kafka) take."""
        hosts = self.broker_url.removeprefix("kafka://").split(";")
        return ",".join(h.strip() for h in hosts if h.strip())

    def topic(self, suffix: str) -> str:
        """Full name of one of Kestrel's topics in this deployment's namespace."""
        return f"{self.namespace}.{suffix}"

    @property
    def detector_path(self) -> Path:
        """The ONNX model the inference workers load."""
        return self.model_path or self.cache_dir / "models" / "ssdlite_person.onnx"

    def app_id(self, role: str) -> str:
        """Faust app id (and so consumer group) of one worker role in this namespace."""
        return f"{self.namespace}-{role}"

    def as_env(self) -> dict[str, str]:
        """These settings as ``KESTREL_*`` variables, for a child process to read back."""
        env: dict[str, str] = {}
        for name, value in self.model_dump().items():
            if value is not None:
                env[ENV_PREFIX + name.upper()] = str(value)
        return env


def load_settings(**overrides: Any) -> Settings:
    """Read the settings, raising :class:`SettingsError` that names the bad variable."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            field = ".".join(str(part) for part in error["loc"])
            problems.append(
                f"{ENV_PREFIX}{field.upper()}: {error['msg']} (got {error.get('input')!r})"
            )
        raise SettingsError("invalid settings: " + "; ".join(problems)) from None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once."""
    return load_settings()


def child_environment(settings: Settings, **extra: str) -> dict[str, str]:
    """Environment for a child process: ours, with ``settings`` and ``extra`` on top.

    Supervisors (the demo, the tests) use it so that every child reads the same
    settings through this module rather than each building its own.
    """
    env = dict(os.environ)
    env.update(settings.as_env())
    env.update(extra)
    return env
