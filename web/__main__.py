"""``kestrel-web``: the dashboard server (uvicorn), on KESTREL_WEB_HOST:KESTREL_WEB_PORT."""

from __future__ import annotations

import logging
import sys

import uvicorn

from kestrel.settings import get_settings
from web.app import create_app


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    settings = get_settings()
    uvicorn.run(
        create_app(settings),
        host=settings.web_host,
        port=settings.web_port,
        log_level="info",
        ws_max_size=64 * 1024,  # clients send small messages; a bigger one is refused
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
