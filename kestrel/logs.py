"""Logging for workers: a broker outage is two log lines, not hundreds a second.

While the broker is away, every Kafka client in a worker retries and logs each try
(aiokafka, librdkafka, Faust's consumer): about 75 ERROR lines a second per worker,
which bury anything else that happens. :class:`OutageFilter` lets the first of them
through, saying that the next ones are counted, and logs one line when they stop
(nothing of the kind for ``quiet_s``), with the count and how long it lasted.
"""

from __future__ import annotations

import logging
import re
import threading
import time

log = logging.getLogger("kestrel.outage")

#: Where Kafka clients log from: aiokafka's modules, librdkafka through Kestrel's
#: clients, Faust's consumer and producer.
CLIENT_LOGGERS = ("aiokafka", "kafka", "kestrel.librdkafka", "faust.transport")
CONNECTION_TROUBLE = re.compile(
    r"connect|refused|disconnect|brokers? (are |is )?down|node ?not ?ready|unable to "
    r"(update|request)|not available|coordinator|timed ?out|transport|metadata|"
    r"heartbeat|rebalanc|resolve|no route|reset by peer|broken pipe|ALL_BROKERS_DOWN",
    re.IGNORECASE,
)


class OutageFilter(logging.Filter):
    """Counts connection errors from Kafka clients between an outage's start and end."""

    def __init__(self, quiet_s: float = 3.0) -> None:
        super().__init__()
        self.quiet_s = quiet_s
        self.count = 0
        self.since: float | None = None
        self.last = 0.0
        self._lock = threading.Lock()
        self._watcher: threading.Thread | None = None

    def filter(self, record: logging.LogRecord) -> bool:
        # Several handlers may share this filter: judge (and count) each record once.
        verdict: bool | None = getattr(record, "kestrel_outage", None)
        if verdict is None:
            verdict = self._judge(record)
            setattr(record, "kestrel_outage", verdict)  # noqa: B010
        return verdict

    def _judge(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING or not record.name.startswith(CLIENT_LOGGERS):
            return True
        if not CONNECTION_TROUBLE.search(record.getMessage()):
            return True
        with self._lock:
            now = time.monotonic()
            self.last = now
            if self.since is not None:
                self.count += 1
                return False
            self.since, self.count = now, 1
            self._watch()
        record.msg = (
            f"{record.getMessage()} [Kafka connection trouble: further connection errors "
            "are counted, and summed up when they stop]"
        )
        record.args = ()
        return True

    def _watch(self) -> None:
        if self._watcher is None or not self._watcher.is_alive():
            self._watcher = threading.Thread(target=self._run, name="outage-log", daemon=True)
            self._watcher.start()

    def _run(self) -> None:
        while True:
            time.sleep(0.5)  # a clock for the summary line, not a wait on anything
            with self._lock:
                if self.since is None:
                    return
                if time.monotonic() - self.last < self.quiet_s:
                    continue
                count, lasted = self.count, self.last - self.since
                self.since, self.count = None, 0
            log.warning(
                "Kafka connection trouble over: %d connection errors in %.1f s (counted, "
                "not logged one by one)",
                count,
                lasted,
            )
            return


_installed: OutageFilter | None = None


def quiet_outages() -> OutageFilter:
    """Put one :class:`OutageFilter` on every handler of the root logger (idempotent).

    Call it once logging is configured (Faust configures it when the worker starts).
    """
    global _installed
    if _installed is None:
        _installed = OutageFilter()
    for handler in logging.getLogger().handlers:
        if _installed not in handler.filters:
            handler.addFilter(_installed)
    return _installed
