"""The ASGI side of guard.py, shared by the Serve proxy's middleware and the replicas': answering a refusal, and
counting a body as it streams in."""

from __future__ import annotations

from collections.abc import Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from bigmodel.runtime.serving.guard import (
    PAYLOAD_TOO_LARGE,
    Headers,
    Policy,
    Refusal,
    admit,
    error_body,
    too_large,
)


class BodyTooLarge(Exception):
    """The body streamed in has passed the limit (a chunked body announces no length)."""


def header(scope: Scope, name: bytes) -> bytes | None:
    """A request header's value (ASGI names are lower case); the first when it is repeated."""
    return next((value for key, value in scope["headers"] if key == name), None)


async def send_json(send: Send, status: int, body: bytes, extra: Headers = ()) -> None:
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *extra]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def send_refusal(send: Send, refusal: Refusal, path: str) -> None:
    # A client still sending a body that is refused is cut off, not read to its end.
    close = ((b"connection", b"close"),) if refusal.status == PAYLOAD_TOO_LARGE else ()
    await send_json(send, refusal.status, error_body(refusal, path), (*refusal.headers, *close))


async def read_body(receive: Receive, limit: int) -> bytes | None:
    """A whole request body of at most `limit` bytes; None when it is longer or the client left."""
    body = b""
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return None
        body += message.get("body", b"")
        if len(body) > limit:
            return None
        if not message.get("more_body", False):
            return body


class BodyCap:
    """The bytes of a request body seen so far, against its limit."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.seen = 0

    def passed_by(self, message: Message) -> bool:
        if message["type"] == "http.request":
            self.seen += len(message.get("body", b""))
        return self.seen > self.limit


def under_prefix(scope: Scope, prefix: str) -> Scope:
    """The request sent to the application routed at `prefix` (the proxy's move; at_root undoes it in the
    replica), the same path behind it."""
    moved = {"path": prefix + scope["path"]}
    if scope.get("raw_path") is not None:
        moved["raw_path"] = prefix.encode() + scope["raw_path"]
    return {**scope, **moved}


def at_root(scope: Scope) -> Scope:
    """A request that came through a route prefix (the canary application's), as if it had come to the root: the
    app answers the same paths, and names them the same in its errors, under any prefix."""
    root = scope.get("root_path", "")
    if not root or not scope["path"].startswith(root + "/"):
        return scope
    raw = scope.get("raw_path")
    moved = {"path": scope["path"][len(root) :], "root_path": ""}
    if raw is not None and raw.startswith(root.encode()):
        moved["raw_path"] = raw[len(root) :]
    return {**scope, **moved}


class ReplicaGuard:
    """Every request to a replica: its API key and announced size before the app sees it, its streamed size as the
    app reads it. Paths added to the app later are guarded too, since this wraps the whole app."""

    def __init__(self, app: ASGIApp, policy: Callable[[], Policy]) -> None:
        self.app = app
        # Asked per request: the policy belongs to the replica object, built after this middleware.
        self.policy = policy

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        scope = at_root(scope)
        policy = self.policy()
        refusal = admit(policy, scope["path"], header(scope, b"authorization"), header(scope, b"content-length"))
        if refusal is not None:
            await send_refusal(send, refusal, scope["path"])
            return
        cap = BodyCap(policy.max_body_bytes)
        started = False

        async def capped_receive() -> Message:
            message = await receive()
            if cap.passed_by(message):
                raise BodyTooLarge
            return message

        async def watched_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, capped_receive, watched_send)
        except BodyTooLarge:
            if started:
                raise
            await send_refusal(send, too_large(policy.max_body_bytes), scope["path"])
