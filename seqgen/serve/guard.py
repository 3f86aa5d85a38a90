"""What `seqgen serve` checks before every route (the API key, the Host header, other sites'
pages), and the JSON errors every route answers with."""

from __future__ import annotations

import hmac
from urllib.parse import urlsplit

from fastapi.responses import JSONResponse

from seqgen.serve.config import RequestError, ServeConfig

LOOPBACK = {"127.0.0.1", "localhost", "::1"}


class Guard:
    """Before every route: the API key (all but /health and the page), the Host header on a
    loopback address (against DNS rebinding), and no requests from other sites' pages."""

    def __init__(self, app, config: ServeConfig) -> None:
        self.app, self.config = app, config
        self.loopback = config.host in LOOPBACK

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http":
            headers = {
                k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]
            }
            refusal = self.refusal(scope["path"], scope["method"], headers)
            if refusal is not None:
                status, message = refusal
                await error_response(scope["path"], RequestError(message, None, status))(
                    scope, receive, send
                )
                return
        await self.app(scope, receive, send)

    def refusal(self, path: str, method: str, headers: dict[str, str]) -> tuple[int, str] | None:
        host = headers.get("host", "")
        if self.loopback and _hostname(host) not in LOOPBACK:
            return 403, f"Host {host!r} is not this server's (it listens on loopback only)"
        if headers.get("sec-fetch-site") == "cross-site":
            return 403, "requests from another site's page are refused"
        origin = headers.get("origin")
        if method not in ("GET", "HEAD") and origin and urlsplit(origin).netloc != host:
            return 403, f"requests from {origin} are refused"
        key = self.config.api_key
        if key and path not in ("/health", "/"):
            given = headers.get("authorization", "").removeprefix("Bearer ").strip()
            if not hmac.compare_digest(given.encode(), key.encode()):
                return 401, "a valid API key is needed: Authorization: Bearer KEY"
        return None


def _hostname(host: str) -> str:
    """The name in a Host header, without its port ([::1]:8000 -> ::1)."""
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def error_response(path: str, err: RequestError) -> JSONResponse:
    """A JSON error: OpenAI's shape under /v1/, else {"error", "field"}."""
    if path.startswith("/v1/"):
        kind = "invalid_request_error" if err.status < 500 else "server_error"
        body = {
            "error": {"message": str(err), "type": kind, "param": err.field, "code": err.status}
        }
    else:
        body = {"error": str(err), "field": err.field}
    return JSONResponse(body, status_code=err.status)
