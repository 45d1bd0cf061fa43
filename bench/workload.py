"""The benchmark's input shape, shared by Kestrel's run and the Quix Streams job.

No imports: the Quix Streams job runs in its own virtualenv, without Kestrel's
dependencies.
"""

#: The digest's model-metric fields (section A), all in every sample.
FIELDS = [
    "tokens_per_second",
    "ttft_ms",
    "queue_wait_ms",
    "cache_hit_rate",
    "batch_size",
    "energy_normalized",
    "entropy_bits",
    "gpu_utilization",
    "vram_used_mb",
]
