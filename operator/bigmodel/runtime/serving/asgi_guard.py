"""The ASGI side of guard.py, shared by the Serve proxy's middleware and the replicas': answering a refusal, and
counting a body as it streams in."""

from __future__ import annotations

from collections.abc import Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from bigmodel.runtime.serving.guard import PAYLOAD_TOO_LARGE, Policy, Refusal, admit, error_body, too_large


class BodyTooLarge(Exception):
    """The body streamed in has passed the limit (a chunked body announces no length)."""


def header(scope: Scope, name: bytes) -> bytes | None:
    """A request header's value (ASGI names are lower case); the first when it is repeated."""
    return next((value for key, value in scope["headers"] if key == name), None)


async def send_refusal(send: Send, refusal: Refusal, path: str) -> None:
    body = error_body(refusal, path)
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *refusal.headers]
    if refusal.status == PAYLOAD_TOO_LARGE:
        # A client still sending a body that is refused is cut off, not read to its end.
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": refusal.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class BodyCap:
    """The bytes of a request body seen so far, against its limit."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.seen = 0

    def passed_by(self, message: Message) -> bool:
        if message["type"] == "http.request":
            self.seen += len(message.get("body", b""))
        return self.seen > self.limit


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
