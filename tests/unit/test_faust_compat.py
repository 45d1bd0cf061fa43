from __future__ import annotations

import pytest

from kestrel.faust_compat import AutodiscoveryError, KestrelApp


def test_an_import_error_during_autodiscovery_stops_the_worker() -> None:
    app = KestrelApp("compat-test", broker="kafka://127.0.0.1:1", web_enabled=False)
    with pytest.raises(AutodiscoveryError, match=r"agents\.broken.*ModuleNotFoundError"):
        try:
            import agents.broken  # type: ignore[import-not-found]  # noqa: F401
        except ImportError:
            app._on_autodiscovery_error("agents.broken")


def test_the_worker_starts_no_web_server_whatever_the_cli_flag() -> None:
    app = KestrelApp("compat-web", broker="kafka://127.0.0.1:1")
    app.conf.web_enabled = True  # what `faust worker` does without --without-web
    assert app.boot_strategy._should_enable_web() is False
