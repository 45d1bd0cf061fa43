"""Kestrel's exceptions: one root, each error saying what was wrong and how to fix it."""

from __future__ import annotations


class KestrelError(Exception):
    """Root of every error Kestrel raises on purpose.

    ``retriable`` tells a caller whether the same call may succeed later (a broker
    still starting) or never will (a malformed message, a bad setting).
    """

    retriable: bool = False


class SettingsError(KestrelError):
    """A ``KESTREL_*`` setting is missing or does not parse."""


class BrokerError(KestrelError):
    """The local Kafka broker could not be fetched, started or reached."""


class BrokerNotReady(BrokerError):
    """The broker is not accepting clients yet."""

    retriable = True


class InvalidMessage(KestrelError):
    """A message on a Kestrel topic does not match its schema.

    ``reason`` is short and machine-sortable (``bad_json``, ``missing_field`` ...);
    the message text says what exactly was wrong. Such a message goes to the
    dead-letter topic with both.
    """

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
