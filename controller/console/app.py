"""The console's HTTP side: one operator's session, request checks and security headers.

The console listens on loopback, where every local user and every web page the
operator's browser opens can reach it; it holds an operator credential. So:

- every request needs the session cookie, which only the login URL printed at start
  sets (`/login?token=…`, compared in constant time; HttpOnly, SameSite=Strict);
- the Host header must name the console itself (a DNS-rebinding page cannot use it);
- every state-changing request is a POST carrying the session's CSRF token, from the
  console's own origin;
- pages carry a strict Content-Security-Policy (scripts and styles from /static only),
  templates escape everything a device or operator wrote, and nothing is cached.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web

from edgefleet.errors import (
    AuthenticationError,
    ConfigError,
    ConflictError,
    EdgefleetError,
    MalformedInputError,
    NotFoundError,
    PermissionDeniedError,
    TransportError,
)

COOKIE = "edgefleet_console"
STATIC = Path(__file__).resolve().parent / "static"
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
PUBLIC = ("/login", "/static/")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class Session:
    """The one operator session of this console process."""

    secret: str = field(default_factory=lambda: secrets.token_urlsafe(32))
    hosts: frozenset[str] = frozenset()  # Host headers that name this console
    origin_host: str = ""  # HOST:PORT as a URL writes it

    @property
    def csrf(self) -> str:
        """The token every form carries (derived from the secret, never the secret)."""
        return hmac.new(self.secret.encode(), b"csrf", hashlib.sha256).hexdigest()

    def admits(self, cookie: str | None) -> bool:
        return cookie is not None and hmac.compare_digest(cookie, self.secret)

    def serve(self, address: str) -> None:
        """Accept requests addressed to ``address`` (HOST:PORT as bound)."""
        host, _, port = address.rpartition(":")
        names = {_url_host(host)}
        if host.startswith("127.") or host == "::1":
            names.add("localhost")
        self.hosts = frozenset(f"{name}:{port}" for name in names)
        self.origin_host = f"{_url_host(host)}:{port}"

    def login_url(self) -> str:
        return f"http://{self.origin_host}/login?token={self.secret}"


def _url_host(host: str) -> str:
    """An address as a URL's host: IPv6 in brackets."""
    return f"[{host}]" if ":" in host else host


SESSION = web.AppKey("session", Session)
ErrorPage = Callable[[web.Request, int, str], web.Response]
ERROR_PAGE: web.AppKey[ErrorPage] = web.AppKey("error_page")


def status_of(error: EdgefleetError) -> int:
    """The HTTP status a controller's or the console's refusal maps to."""
    for kind, status in (
        (NotFoundError, 404),
        (PermissionDeniedError, 403),
        (AuthenticationError, 403),
        (ConflictError, 409),
        (MalformedInputError, 400),
        (ConfigError, 400),
        (TransportError, 502),
    ):
        if isinstance(error, kind):
            return status
    return 500


@web.middleware
async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Host, session and CSRF checks before the handler; security headers after."""
    session = request.app[SESSION]
    if request.host not in session.hosts:
        return _headers(web.Response(status=421, text="this console answers to its own address"))
    public = request.path == "/login" or request.path.startswith("/static/")
    if not public and not session.admits(request.cookies.get(COOKIE)):
        return _headers(
            web.Response(
                status=401,
                text="open the console with the login URL `edgefleetctl console` printed",
            )
        )
    if request.method == "POST":
        refusal = await _forged(request, session)
        if refusal:
            return _headers(web.Response(status=403, text=f"refused: {refusal}"))
    elif request.method not in ("GET", "HEAD"):
        return _headers(web.Response(status=405, text="method not allowed"))
    try:
        response = await handler(request)
    except web.HTTPException as e:  # a redirect or a plain refusal
        response = web.Response(status=e.status, text=e.text, headers=e.headers)
    except EdgefleetError as e:  # the controller's answer, or bad input: a page saying so
        response = request.app[ERROR_PAGE](request, status_of(e), str(e))
    return _headers(response)


async def _forged(request: web.Request, session: Session) -> str:
    """Why a POST is not the console's own form, or ""."""
    origin = request.headers.get("Origin")
    if origin is not None and origin.removeprefix("http://") not in session.hosts:
        return f"a form from {origin} may not act here"
    if request.headers.get("Sec-Fetch-Site", "same-origin") not in ("same-origin", "none"):
        return "a form from another site may not act here"
    form = await request.post()
    token = form.get("csrf")
    if not isinstance(token, str) or not hmac.compare_digest(token, session.csrf):
        return "this form did not come from this console (missing or wrong CSRF token)"
    return ""


def _headers(response: web.StreamResponse) -> web.StreamResponse:
    response.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
    response.headers["X-Content-Type-Options"] = "nosniff"
    # same-origin, not no-referrer: with no-referrer a browser sends `Origin: null` on
    # the console's own forms, which the CSRF check would (rightly) refuse
    response.headers["Referrer-Policy"] = "same-origin"
    response.headers["X-Frame-Options"] = "DENY"
    response.headers.setdefault("Cache-Control", "no-store")
    return response


async def login(request: web.Request) -> web.StreamResponse:
    """GET /login?token=…: the login URL sets the session cookie."""
    session = request.app[SESSION]
    if not session.admits(request.query.get("token")):
        raise web.HTTPForbidden(text="this login link is not this console's")
    response = web.Response(status=303, headers={"Location": "/fleet"})
    response.set_cookie(COOKIE, session.secret, httponly=True, samesite="Strict", path="/")
    return response


def build(
    session: Session, routes: Callable[[web.Application], None], error_page: ErrorPage
) -> web.Application:
    """The application: the guard, /login, /static and the pages ``routes`` adds."""
    app = web.Application(middlewares=[guard], client_max_size=64 * 1024)
    app[SESSION] = session
    app[ERROR_PAGE] = error_page
    app.router.add_get("/login", login)
    app.router.add_static("/static/", STATIC, append_version=True)
    routes(app)
    return app
