"""``kestrel-web``: the dashboard server (uvicorn), on KESTREL_WEB_HOST:KESTREL_WEB_PORT."""

from __future__ import annotations

import gc
import logging
import socket
import sys

import uvicorn
from starlette.applications import Starlette

from kestrel.errors import SettingsError
from kestrel.settings import Settings, get_settings
from web.access import check_exposure
from web.app import create_app

# Each connection's kernel send buffer. Linux would let it grow to net.ipv4.tcp_wmem's
# maximum (4 MiB here): a client that stops reading would then absorb ~25 s of full-rate
# updates before a write blocked and the hub coalesced its updates, costing as much as a
# reader. 128 KiB is about a second of a busy dashboard, and enough for a 100 ms path at
# several times the rate one dashboard receives. Accepted sockets inherit it from the
# listening socket.
SEND_BUFFER_BYTES = 128 * 1024


class DashboardServer(uvicorn.Server):
    """uvicorn listening on a socket of its own: a bounded send buffer, and a kernel
    deadline for data a client leaves untaken.

    A client that stops reading blocks the server's writes; the hub then closes it after
    ``stall_s`` (4009), but that close frame cannot go out either, and uvicorn's close
    waits for the socket to become writable first, for ever. ``TCP_USER_TIMEOUT`` makes
    the kernel reset a connection whose data has waited ``stall_s`` + 5 s for the peer's
    window (tcp(7)), which ends the stuck handler and frees the socket (SSE included).
    """

    def __init__(self, config: uvicorn.Config, stall_s: float) -> None:
        super().__init__(config)
        self.stall_s = stall_s

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        if sockets is None:
            user_timeout_ms = int((self.stall_s + 5.0) * 1000)
            sockets = [listening_socket(self.config.host, self.config.port, user_timeout_ms)]
            logging.getLogger("kestrel-web").info(
                "serving on http://%s:%d", self.config.host, self.config.port
            )
        await super().startup(sockets)
        # Everything alive now (modules, classes, schemas, the app) lives as long as the
        # process: the collector's full passes need not walk it again. Without this a
        # full pass took 33-46 ms here, a pause every client felt (make bench-web).
        gc.collect()
        gc.freeze()


def listening_socket(host: str, port: int, user_timeout_ms: int) -> socket.socket:
    """Accepted connections inherit these options from the listening socket."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER_BYTES)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, user_timeout_ms)
    sock.bind((host, port))
    return sock


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
    DashboardServer(config, settings.web_stall_s).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
