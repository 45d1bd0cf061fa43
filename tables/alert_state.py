"""The analytics worker's active alerts, in a changelog-backed Faust table.

Keyed by ``alert_id`` (``"<rule>|<source>|<field>"``), valued with the alert as it
was raised (JSON). The analytics agent writes it while processing a message of that
source, so Faust puts the record in the changelog partition of the source's input
partition: whichever worker owns the source later recovers its active alerts and can
clear them.
"""

from __future__ import annotations

from faust_app import analytics, settings
from tables import json_table

active_alerts = json_table(analytics, "active-alerts", settings.topic_partitions)
