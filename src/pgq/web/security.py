"""Who may do what: the token, the dashboard's session cookie, CSRF, read-only, loopback.

With a token, the API wants ``Authorization: Bearer <token>`` and the dashboard a
session cookie that its login form sets. Without one, anyone who can reach the
port may do anything: ``pgq web`` allows that only on a loopback address, and the
app then answers only requests addressed to a loopback host name, so that a web
page elsewhere cannot reach it by pointing a DNS name at 127.0.0.1.

Cookies are signed (HMAC-SHA256), not stored: the key is derived from the token,
so sessions survive a restart and work across processes that share the token,
and changing the token ends them all. Without a token the key is random per
process. The trade-off: a session cannot be revoked before it expires, except by
changing the token.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import secrets
import time
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode, urlsplit

from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response

SESSION_COOKIE = "pgq_session"
CSRF_COOKIE = "pgq_csrf"
CSRF_FIELD = "csrf_token"
SESSION_SECONDS = 12 * 3600
LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost"})

Scope = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Callable[[], Awaitable[Any]], Callable[[Any], Awaitable[None]]],
                   Awaitable[None]]  # fmt: skip


def is_loopback(host: str) -> bool:
    """Is ``host`` (a name or an address, IPv6 in brackets or not) this machine only?"""
    host = host.strip().strip("[]").lower()
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class Access:
    """The app's access rules: its token (None: no auth) and whether it may change jobs."""

    token: str | None
    read_only: bool
    key: bytes

    @classmethod
    def build(cls, token: str | None, read_only: bool) -> Access:
        if token is not None and not token.strip():
            raise ValueError("the token is empty: give a long random one, or none on loopback")
        key = (
            hmac.new(token.encode(), b"pgq-web cookie key", hashlib.sha256).digest()
            if token
            else secrets.token_bytes(32)
        )
        return cls(token, read_only, key)

    def _sign(self, purpose: str, value: str) -> str:
        return hmac.new(self.key, f"{purpose}:{value}".encode(), hashlib.sha256).hexdigest()

    def token_matches(self, given: str) -> bool:
        assert self.token is not None
        return hmac.compare_digest(given.encode(), self.token.encode())

    def bearer_ok(self, request: Request) -> bool:
        if self.token is None:
            return True
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        return scheme.lower() == "bearer" and self.token_matches(given.strip())

    def new_session(self) -> str:
        expires = str(int(time.time()) + SESSION_SECONDS)
        return f"{expires}.{self._sign('session', expires)}"

    def session_ok(self, request: Request) -> bool:
        if self.token is None:
            return True
        expires, _, mac = request.cookies.get(SESSION_COOKIE, "").partition(".")
        if not expires.isdigit() or int(expires) < time.time():
            return False
        return hmac.compare_digest(mac, self._sign("session", expires))

    def csrf_token(self, nonce: str) -> str:
        """The form field that goes with the CSRF cookie ``nonce`` (signed double submit)."""
        return self._sign("csrf", nonce)

    def csrf_ok(self, request: Request, submitted: str) -> bool:
        nonce = request.cookies.get(CSRF_COOKIE, "")
        return bool(nonce) and hmac.compare_digest(submitted, self.csrf_token(nonce))


def local_path(scope: Scope) -> str:
    """The request's path inside this app, whatever prefix it is mounted under."""
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    return path[len(root) :] if root and path.startswith(root) else path


def is_api(scope: Scope) -> bool:
    return local_path(scope).startswith(("/api/", "/metrics"))


#: On every response: no framing by another site (a hidden "Yes, delete" under a decoy
#: button), scripts and styles from this app only, no guessing of content types.
SECURITY_HEADERS = [
    (b"content-security-policy",
     b"default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; form-action 'self'; "
     b"base-uri 'none'"),
    (b"x-frame-options", b"DENY"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"same-origin"),
]  # fmt: skip

# Paths anyone may read: what a load balancer probes, the login form and its assets.
_PUBLIC = ("/health", "/login", "/static/")
# State-changing paths that read-only mode still allows: they change no job.
_READ_ONLY_ALLOWED = ("/login", "/logout")


class Guard:
    """ASGI middleware: refuses what ``Access`` does not allow before any route runs.

    Pure ASGI rather than Starlette's BaseHTTPMiddleware: it is on the path of
    every POST /api/jobs, and adds no task or stream per request.
    """

    def __init__(self, app: ASGIApp, access: Access) -> None:
        self.app = app
        self.access = access

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Any) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *SECURITY_HEADERS]
            await send(message)

        refusal = self.refusal(Request(scope))
        if refusal is None:
            await self.app(scope, receive, send_with_headers)
        else:
            await refusal(scope, receive, send_with_headers)

    def refusal(self, request: Request) -> Response | None:
        scope = request.scope
        path = local_path(scope)
        api = is_api(scope)
        if self.access.token is None and not is_loopback(request.url.hostname or ""):
            # No auth is safe only for requests a local client addressed to this machine.
            return _refuse(api, 403, "without a token, pgq web answers loopback host names only")
        if request.method not in ("GET", "HEAD") and _cross_site(request):
            return _refuse(api, 403, "cross-site request refused")
        if not path.startswith(_PUBLIC):
            if api and not self.access.bearer_ok(request):
                return JSONResponse(
                    {"error": "authentication required: send Authorization: Bearer <token>"},
                    status_code=401,
                    headers={"WWW-Authenticate": 'Bearer realm="pgq"'},
                )
            if not api and not self.access.session_ok(request):
                if request.method in ("GET", "HEAD"):
                    login = (
                        request.url_for("login").path + "?" + urlencode({"next": _next(request)})
                    )
                    return RedirectResponse(login, status_code=303)
                return _refuse(api, 401, "log in first")
        if (
            self.access.read_only
            and request.method not in ("GET", "HEAD")
            and not path.startswith(_READ_ONLY_ALLOWED)
        ):
            return _refuse(api, 403, "pgq web runs read-only (--read-only): nothing can change")
        return None


def _cross_site(request: Request) -> bool:
    """Did a browser send this from another site? (Origin, else Sec-Fetch-Site, say so.)

    Beside the form tokens: without a token the API has no credential at all, and a
    page elsewhere must not be able to POST to it from a local browser.
    """
    origin = request.headers.get("origin")
    if origin is not None:  # "null" (a sandboxed frame, a file) is another site too
        return urlsplit(origin).netloc.lower() != request.headers.get("host", "").lower()
    return request.headers.get("sec-fetch-site") == "cross-site"


def _next(request: Request) -> str:
    query = f"?{request.url.query}" if request.url.query else ""
    return local_path(request.scope) + query


def safe_next(value: str) -> str:
    """A post-login destination inside this app ("/jobs?x=1"), never another site's."""
    if value.startswith("/") and not value.startswith(("//", "/\\")):
        return value
    return "/"


def _refuse(api: bool, status: int, message: str) -> Response:
    if api:
        return JSONResponse({"error": message}, status_code=status)
    return Response(message + "\n", status_code=status, media_type="text/plain")
