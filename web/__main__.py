"""``kestrel-web``: the dashboard server (uvicorn), on KESTREL_WEB_HOST:KESTREL_WEB_PORT."""

from __future__ import annotations

import logging
import sys

import uvicorn
from starlette.applications import Starlette

from kestrel.errors import SettingsError
from kestrel.settings import Settings, get_settings
from web.access import check_exposure
from web.app import create_app


def server_config(
    app: Starlette, settings: Settings, port: int | None = None, log_level: str = "info"
) -> uvicorn.Config:
    """How ``kestrel-web`` serves ``app`` (the tests serve it the same way)."""
    check_exposure(settings)
    return uvicorn.Config(
        app,
        host=settings.web_host,
        port=settings.web_port if port is None else port,
        log_level=log_level,
        ws_max_size=64 * 1024,  # clients send small messages; a bigger one is refused
        ws_per_message_deflate=settings.web_compression,
    )


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    settings = get_settings()
    try:
        config = server_config(create_app(settings), settings)
    except SettingsError as exc:
        logging.getLogger("kestrel-web").error("%s", exc)
        return 2
    uvicorn.Server(config).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
