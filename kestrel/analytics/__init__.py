"""Stream analytics on collector samples: temporal rules, anomalies, patterns, energy.

Pure logic; ``agents/analytics.py`` runs it on the collector topics.
"""
