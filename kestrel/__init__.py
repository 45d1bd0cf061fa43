"""Kestrel's core: settings, errors, schemas, topics and the local broker.

The Faust side lives in ``faust_app.py``, ``agents/`` and ``tables/``; this package
has no Faust app in it and builds nothing at import time.
"""
