"""Who may use the dashboard: one access model for WebSocket, SSE and REST.

With ``KESTREL_WEB_TOKEN`` set, every route but ``/healthz`` needs the token, given
one of these ways (compared in constant time):

* ``Authorization: Bearer <token>`` (scripts, Prometheus, ``curl``);
* the ``kestrel_token`` cookie, which the server sets when a browser opens
  ``/?token=<token>`` once (``HttpOnly``, ``SameSite=Strict``: a page on another site
  can neither read it nor send it);
* a ``token`` query parameter (``EventSource`` cannot send headers);
* on the WebSocket, also the ``hello`` message's ``token``.

Browsers name the page a request comes from in ``Origin``: a WebSocket handshake or an
SSE request from an Origin other than the server's own host, and not in
``KESTREL_WEB_ORIGINS``, is refused (403), with or without a token: that is what stops
cross-site WebSocket hijacking. Clients that are not browsers send no Origin.

Without a token the server may listen only on loopback, where everyone who can connect
is already on the machine: :func:`check_exposure` refuses anything else unless
``KESTREL_WEB_ALLOW_OPEN`` says so.
"""

from __future__ import annotations

import hmac
import ipaddress
from http.cookies import SimpleCookie
from urllib.parse import parse_qs, urlsplit

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from kestrel.errors import SettingsError
from kestrel.settings import Settings

COOKIE = "kestrel_token"
OPEN_PATHS = frozenset({"/healthz"})  # a load balancer's probe needs no secret
AUTHENTICATED = "kestrel.authenticated"  # the scope key a route reads the verdict from

LOGIN_PAGE = b"""<!doctype html><title>Kestrel: token required</title>
<p>This dashboard needs its token: open <code>/?token=&lt;KESTREL_WEB_TOKEN&gt;</code> once.
"""


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may resolve to anything
        return False


def check_exposure(settings: Settings) -> None:
    """Refuse to serve beyond loopback without a token, unless the operator opted in."""
    if settings.web_token or settings.web_allow_open or is_loopback(settings.web_host):
        return
    raise SettingsError(
        f"KESTREL_WEB_HOST={settings.web_host} is reachable from other machines and "
        "KESTREL_WEB_TOKEN is unset: set a token, or KESTREL_WEB_ALLOW_OPEN=true to "
        "serve the dashboard to anyone who can reach it"
    )


class Access:
    """The verdicts: does a request carry the token, and does its Origin belong here."""

    def __init__(self, settings: Settings) -> None:
        self.token = settings.web_token.encode() if settings.web_token else None
        self.origins = frozenset(
            o.strip().rstrip("/") for o in settings.web_origins.split(",") if o.strip()
        )
        # Without a token only loopback clients can connect (check_exposure): trust them.
        # An operator who opened the server to anyone trusts nobody's ux reports.
        self.anonymous_trusted = self.token is None and not settings.web_allow_open

    @property
    def required(self) -> bool:
        return self.token is not None

    def valid(self, given: str | bytes | None) -> bool:
        """Is ``given`` the token? (Constant time: no timing says how much matched.)"""
        if self.token is None:
            return self.anonymous_trusted
        if given is None:
            return False
        raw = given.encode() if isinstance(given, str) else given
        return hmac.compare_digest(raw, self.token)

    def credential(self, scope: Scope) -> str | None:
        """The token a request carries, by header, cookie or query parameter."""
        headers = Headers(scope=scope)
        scheme, _, value = headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and value:
            return value.strip()
        cookies = SimpleCookie()
        cookies.load(headers.get("cookie", ""))
        if COOKIE in cookies:
            return cookies[COOKIE].value
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        return query["token"][0] if query.get("token") else None

    def origin_allowed(self, scope: Scope) -> bool:
        headers = Headers(scope=scope)
        origin = headers.get("origin")
        if origin is None:  # not a browser, or a same-origin GET
            return True
        origin = origin.rstrip("/")
        if origin in self.origins:
            return True
        return urlsplit(origin).netloc.lower() == headers.get("host", "").lower()


class AccessMiddleware:
    """Applies :class:`Access` to every request before any route sees it."""

    def __init__(self, app: ASGIApp, access: Access) -> None:
        self.app = app
        self.access = access

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        given = self.access.credential(scope)
        ok = self.access.valid(given)
        scope.setdefault("state", {})[AUTHENTICATED] = ok
        if path in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        if not self.access.origin_allowed(scope):
            await self._refuse(scope, receive, send, 403, None)
            return
        if scope["type"] == "websocket":
            # The hello may still carry the token (scripts); the route decides.
            await self.app(scope, receive, send)
            return
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        if path == "/" and query.get("token") and self.access.required:
            # A login: the token in the address, not what the request carried else.
            if self.access.valid(query["token"][0]):
                await self._login(scope, send, query["token"][0])
            else:
                await self._refuse(scope, receive, send, 401, LOGIN_PAGE)
            return
        if not ok and self.access.required:
            await self._refuse(scope, receive, send, 401, LOGIN_PAGE if path == "/" else None)
            return
        await self.app(scope, receive, send)

    async def _login(self, scope: Scope, send: Send, token: str) -> None:
        """Trade ``/?token=`` for the cookie, and drop the token from the address bar."""
        secure = "; Secure" if scope.get("scheme") == "https" else ""
        cookie = f"{COOKIE}={token}; HttpOnly; SameSite=Strict; Path=/{secure}"
        headers = [(b"location", b"/"), (b"set-cookie", cookie.encode())]
        await send({"type": "http.response.start", "status": 303, "headers": headers})
        await send({"type": "http.response.body", "body": b""})

    async def _refuse(
        self, scope: Scope, receive: Receive, send: Send, status: int, page: bytes | None
    ) -> None:
        if scope["type"] == "websocket":
            await receive()  # websocket.connect
            # Closing before accepting answers the handshake with HTTP 403.
            await send({"type": "websocket.close", "code": 1008})
            return
        if page is not None:
            body, kind = page, b"text/html; charset=utf-8"
        else:
            reason = "a valid token is required" if status == 401 else "origin not allowed"
            body, kind = b'{"error": "' + reason.encode() + b'"}', b"application/json"
        headers: list[tuple[bytes, bytes]] = [
            (b"content-type", kind),
            (b"content-length", str(len(body)).encode()),
        ]
        if status == 401:
            headers.append((b"www-authenticate", b"Bearer"))
        start: Message = {"type": "http.response.start", "status": status, "headers": headers}
        await send(start)
        await send({"type": "http.response.body", "body": body})
