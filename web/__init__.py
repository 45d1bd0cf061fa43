"""The Starlette dashboard (filled in by the live-dashboard work)."""
