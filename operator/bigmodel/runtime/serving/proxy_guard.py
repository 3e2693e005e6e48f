"""The Serve HTTP proxy's guard: Ray loads middlewares() into every proxy it starts (wire.PROXY_CALLBACK_ENV), on
the head and on each worker node that hosts a replica; each guards its own requests.

For a service with API keys, a request without a valid one is refused here, before its body is read: the replicas
check keys too, but a body the proxy has already read has cost its node the memory by then.

Serve's proxy reads a request's whole body into memory as fast as the client sends it, whether or not a replica
has taken the request yet (a 100 MB body grew the proxy by 150 MB), so a limit enforced only in the replicas would
come too late for the proxy's node. Here a body announced too large is refused before a byte of it is read, and a chunked
one is cut off once it passes the limit.

Under overload, Serve's own refusal of a request its queue has no room for (max_queued_requests) costs the proxy a
trip through its router (and a logged warning) for each; at ten times what one replica sustains on a small machine,
that saturated the proxy's core and requests waited in its socket backlog, outside any bound. So the guard counts
the requests in flight through its proxy and refuses those beyond what one proxy may hold (its queue and every
replica's room: builders.serve_app.proxy_in_flight_limit) itself, for a fraction of that.
The proxy's own error answers are also put into the app's JSON form.

During a canary, the guard sends the canary's share of the requests to the canary application and counts what each
version answers (canary_split.py); the operator sets the share and reads the counts on wire.TRAFFIC_PATH, with the
cluster's Ray token (traffic_store.py shares both among the proxies).
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from dataclasses import dataclass

from pydantic import ValidationError
from starlette.middleware import Middleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from bigmodel.api.traffic import TrafficReport, TrafficSetting
from bigmodel.api.wire import (
    API_KEYS_ENV,
    CANARY_ROUTE_PREFIX,
    MAX_BODY_BYTES_ENV,
    MAX_IN_FLIGHT_ENV,
    POD_NAME_ENV,
    PROXY_REQUIRES_KEYS_ENV,
    RAY_AUTH_TOKEN_ENV,
    TRAFFIC_PATH,
)
from bigmodel.runtime.serving.asgi_guard import BodyCap, header, read_body, send_json, send_refusal, under_prefix
from bigmodel.runtime.serving.canary_split import CanarySplit
from bigmodel.runtime.serving.guard import (
    BAD_REQUEST,
    UNAUTHORIZED,
    Policy,
    Refusal,
    admit,
    admit_load,
    authorized,
    counts_toward_capacity,
    parse_api_keys,
    serve_error_status,
    too_large,
)
from bigmodel.runtime.serving.traffic_store import RayKvStore, TrafficStore, TrafficSync, current_reports

_DISCONNECT: Message = {"type": "http.disconnect"}
_MAX_SETTING_BYTES = 64 * 1024
METHOD_NOT_ALLOWED = 405
_KEPT_HEADERS = frozenset({b"retry-after", b"x-request-id"})


class ServeErrors:
    """A send that rewrites Serve's own plain-text errors (serve_error_status) as JSON; the rest passes as it is."""

    def __init__(self, send: Send, path: str) -> None:
        self.send = send
        self.path = path
        self.started = False
        self._held: Message | None = None
        self._body = b""

    async def __call__(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.started = True
            headers = dict(message.get("headers", []))
            if serve_error_status(message["status"], headers.get(b"content-type")) is not None:
                self._held = message
                return
        if self._held is not None and message["type"] == "http.response.body":
            # Serve's error bodies are one short sentence.
            self._body += message.get("body", b"")
            if not message.get("more_body", False):
                held, self._held = self._held, None
                headers = dict(held.get("headers", []))
                status = serve_error_status(held["status"], headers.get(b"content-type"))
                kept = tuple((key, value) for key, value in held.get("headers", []) if key in _KEPT_HEADERS)
                text = self._body.decode("utf-8", errors="replace").strip()
                await send_refusal(self.send, Refusal(status or held["status"], text, kept), self.path)
            return
        await self.send(message)


@dataclass(frozen=True)
class TrafficDesk:
    """A proxy's part in canary traffic: its split, the store every proxy of the cluster shares, and the cluster's
    Ray token, which the operator shows to read and set them (None: nobody may)."""

    split: CanarySplit
    store: TrafficStore
    token: bytes | None

    def report(self) -> TrafficReport:
        return TrafficReport(setting=self.store.setting(), proxies=current_reports(self.store))


class ProxyGuard:
    def __init__(
        self,
        app: ASGIApp,
        max_body_bytes: int,
        max_in_flight: int,
        api_keys: tuple[bytes, ...] | None = None,
        traffic: TrafficDesk | None = None,
    ) -> None:
        """api_keys: those accepted, when the service requires one (an empty tuple then lets no one in)."""
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.max_in_flight = max_in_flight
        self.policy = Policy(max_body_bytes, api_keys or (), auth_required=api_keys is not None)
        self.traffic = traffic
        # One event loop runs the proxy's HTTP server, so a plain count is exact.
        self.in_flight = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if scope["path"] == TRAFFIC_PATH and self.traffic is not None:
            await traffic_endpoint(self.traffic, scope, receive, send)
            return
        # Every path's body is limited (a POST to a probe's path is read as much as any); probes take no capacity.
        counted = counts_toward_capacity(scope["path"])
        refusal = admit(self.policy, scope["path"], header(scope, b"authorization"), header(scope, b"content-length"))
        if refusal is None and counted:
            refusal = admit_load(self.in_flight, self.max_in_flight)
        if refusal is not None:
            await send_refusal(send, refusal, scope["path"])
            return
        self.in_flight += counted
        try:
            # Without a canary there is nothing to split, and nothing anyone reads counts of.
            if counted and self.traffic is not None and self.traffic.split.setting.canary is not None:
                await self._split(self.traffic.split, scope, receive, send)
            else:
                await self._guarded(scope, receive, send)
        finally:
            self.in_flight -= counted

    async def _split(self, split: CanarySplit, scope: Scope, receive: Receive, send: Send) -> None:
        """The request to the version whose turn it is, its answer counted for that version."""
        if split.route(scope["path"]):
            scope = under_prefix(scope, CANARY_ROUTE_PREFIX)
        started = time.monotonic()
        path = scope["path"]

        async def counted_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                split.record(path, message["status"], time.monotonic() - started)
            await send(message)

        await self._guarded(scope, receive, counted_send)

    async def _guarded(self, scope: Scope, receive: Receive, send: Send) -> None:
        cap = BodyCap(self.max_body_bytes)
        passed = False

        async def capped_receive() -> Message:
            nonlocal passed
            if passed:
                return _DISCONNECT
            message = await receive()
            if cap.passed_by(message):
                # To Serve this is a client gone: it stops reading, cancels the request and answers nothing.
                passed = True
                return _DISCONNECT
            return message

        answer = ServeErrors(send, scope["path"])

        async def guarded_send(message: Message) -> None:
            # Whatever comes after the body was cut off answers a request the client did not make; 413 says why.
            if not (passed and not answer.started):
                await answer(message)

        await self.app(scope, capped_receive, guarded_send)
        if passed and not answer.started:
            await send_refusal(send, too_large(self.max_body_bytes), scope["path"])


async def traffic_endpoint(desk: TrafficDesk, scope: Scope, receive: Receive, send: Send) -> None:
    """GET: the setting and every proxy's report; PUT a TrafficSetting: applied here at once, by every other proxy
    within traffic_store.SYNC_INTERVAL_S. The operator's alone: it shows the cluster's Ray token."""
    path = scope["path"]
    if desk.token is None or not authorized(header(scope, b"authorization"), (desk.token,)):
        refusal = Refusal(UNAUTHORIZED, f"{path} is the operator's: it takes the cluster's Ray token")
        await send_refusal(send, refusal, path)
        return
    if scope["method"] == "PUT":
        body = await read_body(receive, _MAX_SETTING_BYTES)
        try:
            setting = TrafficSetting.model_validate_json(body or b"")
        except ValidationError as error:
            await send_refusal(send, Refusal(BAD_REQUEST, f"not a traffic setting: {error.errors()[0]['msg']}"), path)
            return
        await asyncio.to_thread(desk.store.put_setting, setting)
        desk.split.apply(setting)
    elif scope["method"] != "GET":
        await send_refusal(send, Refusal(METHOD_NOT_ALLOWED, f"{path} takes GET and PUT"), path)
        return
    report = await asyncio.to_thread(desk.report)
    await send_json(send, 200, report.model_dump_json().encode())


def middlewares() -> list[Middleware]:
    """What Ray's proxy callback returns: the guard with the service's limits from its Ray pod's environment, and
    this proxy's part in canary traffic, kept in step with the other proxies' by a thread of its own."""
    limits = {
        "max_body_bytes": int(os.environ[MAX_BODY_BYTES_ENV]),
        "max_in_flight": int(os.environ[MAX_IN_FLIGHT_ENV]),
    }
    keys = parse_api_keys(os.environ.get(API_KEYS_ENV, "")) if os.environ.get(PROXY_REQUIRES_KEYS_ENV) == "1" else None
    return [Middleware(ProxyGuard, **limits, api_keys=keys, traffic=traffic_desk())]


def traffic_desk() -> TrafficDesk | None:
    """This proxy's part in canary traffic, kept in step with the cluster's other proxies by a thread of its own;
    None outside a Ray process (nothing to share with)."""
    if not RayKvStore.reachable():
        return None
    token = os.environ.get(RAY_AUTH_TOKEN_ENV)
    # A proxy started again on the same pod is a new proxy: the old one's report is left to go stale.
    split = CanarySplit(f"{os.environ.get(POD_NAME_ENV) or socket.gethostname()}/{os.getpid()}")
    store = RayKvStore()
    TrafficSync(split, store).start()
    return TrafficDesk(split, store, token.encode() if token else None)
