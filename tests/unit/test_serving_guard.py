"""The endpoint's guards without Ray: API keys, body limits, and the ASGI middlewares of the proxy and the replicas
driven by a stand-in app, so that what each reads of a body, and answers, is seen exactly."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from bigmodel.api.wire import API_KEYS_ENV, MAX_BODY_BYTES_ENV, MAX_IN_FLIGHT_ENV, PROXY_REQUIRES_KEYS_ENV
from bigmodel.runtime.serving.asgi_guard import ReplicaGuard
from bigmodel.runtime.serving.guard import (
    MissingApiKeys,
    Policy,
    admit,
    admit_load,
    api_keys_from_env,
    authorized,
    check_content_length,
    counts_toward_capacity,
    parse_api_keys,
    serve_error_status,
)
from bigmodel.runtime.serving.proxy_guard import ProxyGuard, middlewares

Message = dict[str, Any]
LIMIT = 1000
CAPACITY = 2
KEYS = (b"first-key", b"second-key")


def test_keys_are_lines_without_blanks_or_surrounding_whitespace() -> None:
    assert parse_api_keys("first-key\n\n  second-key \r\n\t\n") == KEYS
    assert parse_api_keys("") == parse_api_keys(" \n \n") == ()


def test_a_replica_that_requires_keys_and_has_none_refuses_to_start() -> None:
    assert api_keys_from_env({}, required=False) == ()
    assert api_keys_from_env({API_KEYS_ENV: "k\n"}, required=True) == (b"k",)
    for environ in ({}, {API_KEYS_ENV: "\n  \n"}):
        with pytest.raises(MissingApiKeys) as caught:
            api_keys_from_env(environ, required=True)
        message = str(caught.value)
        assert "\n" not in message and API_KEYS_ENV in message and "spec.auth" in message


@pytest.mark.parametrize(
    ("header", "accepted"),
    [
        (b"Bearer first-key", True),
        (b"Bearer second-key", True),
        (b"bearer  second-key ", True),
        (None, False),
        (b"", False),
        (b"Bearer ", False),
        (b"Bearer first", False),
        (b"Bearer first-key2", False),
        (b"Basic first-key", False),
        (b"first-key", False),
    ],
)
def test_authorization_takes_a_bearer_token_equal_to_one_of_the_keys(header: bytes | None, accepted: bool) -> None:
    assert authorized(header, KEYS) is accepted


def test_no_keys_accept_no_one() -> None:
    assert not authorized(b"Bearer ", ())
    assert not authorized(b"Bearer anything", ())


def test_admit_checks_the_key_before_the_size_and_leaves_health_open() -> None:
    policy = Policy(max_body_bytes=LIMIT, api_keys=KEYS, auth_required=True)
    refused = admit(policy, "/v1/models/m:predict", None, b"999999")
    assert refused is not None and refused.status == 401 and refused.message.startswith("no API key")
    assert refused.headers == ((b"www-authenticate", b"Bearer"),)
    wrong = admit(policy, "/v2/models/m/infer", b"Bearer nope", None)
    assert wrong is not None and (wrong.status, wrong.message.split(":")[0]) == (401, "the API key is not valid")
    # Any path, including ones the app may add later, needs the key; only the probes' paths do not.
    assert admit(policy, "/v2", None, None) is not None
    assert admit(policy, "/v2/health/live", None, None) is None
    assert admit(policy, "/v2/health/ready", None, None) is None
    too_big = admit(policy, "/v1/models/m:predict", b"Bearer first-key", b"1001")
    assert too_big is not None and too_big.status == 413
    assert admit(policy, "/v1/models/m:predict", b"Bearer first-key", b"1000") is None
    assert admit(Policy(max_body_bytes=LIMIT), "/v1/models/m:predict", None, b"10") is None


CONTENT_LENGTHS = [
    (None, None),
    (b"0", None),
    (b"1000", None),
    (b"1001", 413),
    (b"104857600", 413),
    (b"-1", 400),
    (b"ten", 400),
    (b"", 400),
    (b"\xb2", 400),
]


@pytest.mark.parametrize(("value", "status"), CONTENT_LENGTHS)
def test_content_length(value: bytes | None, status: int | None) -> None:
    refusal = check_content_length(value, LIMIT)
    assert (refusal.status if refusal else None) == status


def test_only_serves_own_plain_text_errors_are_rewritten() -> None:
    assert serve_error_status(408, b"text/plain; charset=utf-8") == 504
    assert serve_error_status(503, b"text/plain; charset=utf-8") == 503
    assert serve_error_status(503, b"application/json") is None
    assert serve_error_status(500, b"text/plain") is None
    assert serve_error_status(408, None) is None


def test_capacity_is_refused_503_with_retry_after_and_probes_take_none() -> None:
    assert admit_load(1, 2) is None
    refusal = admit_load(2, 2)
    assert refusal is not None and refusal.status == 503 and dict(refusal.headers)[b"retry-after"] == b"1"
    assert counts_toward_capacity("/v1/models/m:predict") and counts_toward_capacity("/v2")
    assert not counts_toward_capacity("/v2/health/ready") and not counts_toward_capacity("/-/healthz")


# The ASGI middlewares, driven by a stand-in app.


class Client:
    """One request: its body parts as the server reads them, and what the server answered."""

    def __init__(self, parts: list[bytes], headers: list[tuple[bytes, bytes]], path: str = "/v1/models/m:predict"):
        self.scope = {"type": "http", "method": "POST", "path": path, "headers": headers}
        self.pending = [
            {"type": "http.request", "body": part, "more_body": index < len(parts) - 1}
            for index, part in enumerate(parts)
        ]
        self.read = 0
        self.sent: list[Message] = []

    async def receive(self) -> Message:
        if not self.pending:
            return {"type": "http.disconnect"}
        self.read += 1
        return self.pending.pop(0)

    async def send(self, message: Message) -> None:
        self.sent.append(message)

    def status(self) -> int:
        return next(message["status"] for message in self.sent if message["type"] == "http.response.start")

    def headers(self) -> dict[bytes, bytes]:
        return dict(next(m for m in self.sent if m["type"] == "http.response.start")["headers"])

    def json(self) -> Any:
        return json.loads(b"".join(m.get("body", b"") for m in self.sent if m["type"] == "http.response.body"))


App = Callable[
    [dict[str, Any], Callable[[], Awaitable[Message]], Callable[[Message], Awaitable[None]]], Awaitable[None]
]


def reading_app(seen: list[Message]) -> App:
    """Reads the whole body as the Serve proxy and the app do, then answers 200."""

    async def app(scope: Any, receive: Any, send: Any) -> None:
        while True:
            message = await receive()
            seen.append(message)
            if message["type"] == "http.disconnect" or not message.get("more_body", False):
                break
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": b"{}"})

    return app


def run(guard: Any, client: Client) -> Client:
    asyncio.run(guard(client.scope, client.receive, client.send))
    return client


def test_proxy_refuses_an_announced_large_body_without_reading_a_byte() -> None:
    seen: list[Message] = []
    client = run(ProxyGuard(reading_app(seen), LIMIT, CAPACITY), Client([b"x" * 2000], [(b"content-length", b"2000")]))
    assert (client.status(), client.read, seen) == (413, 0, [])
    assert client.headers()[b"connection"] == b"close"
    assert client.json() == {"error": f"request body is larger than {LIMIT} bytes (spec.limits.maxBodyBytes)"}


def test_proxy_cuts_off_a_chunked_body_once_it_passes_the_limit() -> None:
    seen: list[Message] = []
    parts = [b"x" * 400] * 10
    client = run(ProxyGuard(reading_app(seen), LIMIT, CAPACITY), Client(parts, [(b"transfer-encoding", b"chunked")]))
    # The third part passes 1000 bytes: the app behind sees a client gone, and nothing after it is read.
    assert client.read == 3
    assert [message["type"] for message in seen] == ["http.request", "http.request", "http.disconnect"]
    assert client.status() == 413 and [m["type"] for m in client.sent].count("http.response.start") == 1


def test_proxy_passes_a_body_within_the_limit() -> None:
    seen: list[Message] = []
    client = run(ProxyGuard(reading_app(seen), LIMIT, CAPACITY), Client([b"x" * 500, b"x" * 500], []))
    assert (client.status(), client.read, len(seen)) == (200, 2, 2)


def serve_answer(status: int, text: bytes, headers: list[tuple[bytes, bytes]]) -> App:
    """Serve's own error answer, as its proxy sends it: plain text."""

    async def app(scope: Any, receive: Any, send: Any) -> None:
        start_headers = [(b"content-type", b"text/plain; charset=utf-8"), *headers]
        await send({"type": "http.response.start", "status": status, "headers": start_headers})
        await send({"type": "http.response.body", "body": text})

    return app


def test_proxy_answers_its_timeout_504_and_a_full_queue_503_with_retry_after_in_the_apps_json() -> None:
    timed_out = serve_answer(408, b"Request abc timed out after 1.0s.", [(b"x-request-id", b"abc")])
    client = run(ProxyGuard(timed_out, LIMIT, CAPACITY), Client([b"{}"], []))
    assert (client.status(), client.json()) == (504, {"error": "Request abc timed out after 1.0s."})
    assert client.headers()[b"x-request-id"] == b"abc"

    full = serve_answer(503, b"Request dropped due to backpressure.", [(b"retry-after", b"1")])
    client = run(ProxyGuard(full, LIMIT, CAPACITY), Client([b"{}"], []))
    assert (client.status(), client.json()) == (503, {"error": "Request dropped due to backpressure."})
    assert client.headers()[b"retry-after"] == b"1"
    assert client.headers()[b"content-type"] == b"application/json"


def test_refusals_on_the_openai_endpoints_are_in_openais_error_shape() -> None:
    # OpenAI's clients read the message from this shape; KServe's paths keep their one line.
    policy = Policy(max_body_bytes=LIMIT, api_keys=KEYS, auth_required=True)
    client = run(ReplicaGuard(reading_app([]), lambda: policy), Client([b"{}"], [], path="/v1/chat/completions"))
    assert client.status() == 401
    assert client.json()["error"]["type"] == "authentication_error" and client.json()["error"]["message"]
    client = run(
        ProxyGuard(reading_app([]), LIMIT, CAPACITY),
        Client([b"x" * 2000], [(b"content-length", b"2000")], path="/v1/completions"),
    )
    assert client.json() == {
        "error": {
            "message": f"request body is larger than {LIMIT} bytes (spec.limits.maxBodyBytes)",
            "type": "invalid_request_error",
            "param": None,
            "code": None,
        }
    }
    full = serve_answer(503, b"Request dropped due to backpressure.", [(b"retry-after", b"1")])
    client = run(ProxyGuard(full, LIMIT, CAPACITY), Client([b"{}"], [], path="/v1/completions"))
    assert (client.status(), client.json()["error"]["type"]) == (503, "server_error")
    assert client.headers()[b"retry-after"] == b"1"


def test_replica_guard_refuses_before_the_app_and_caps_a_streamed_body() -> None:
    policy = Policy(max_body_bytes=LIMIT, api_keys=KEYS, auth_required=True)
    seen: list[Message] = []
    guard = ReplicaGuard(reading_app(seen), lambda: policy)

    client = run(guard, Client([b"{}"], []))
    assert (client.status(), client.read, seen) == (401, 0, [])
    assert client.headers()[b"www-authenticate"] == b"Bearer"

    health = run(guard, Client([b""], [], path="/v2/health/ready"))
    assert health.status() == 200

    key = (b"authorization", b"Bearer second-key")
    client = run(guard, Client([b"x" * 400] * 10, [key]))
    assert (client.status(), client.read) == (413, 3)
    assert run(guard, Client([b"x" * 1000], [key, (b"content-length", b"1000")])).status() == 200


def test_proxy_lets_in_its_capacity_and_answers_the_rest_at_once() -> None:
    release = asyncio.Event()

    async def slow_app(scope: Any, receive: Any, send: Any) -> None:
        await release.wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    async def scenario() -> tuple[list[Client], Client, Client, list[Client]]:
        guard = ProxyGuard(slow_app, LIMIT, CAPACITY)
        held = [Client([b"{}"], []) for _ in range(CAPACITY)]
        tasks = [asyncio.create_task(guard(c.scope, c.receive, c.send)) for c in held]
        await asyncio.sleep(0)
        refused = Client([b"{}"], [])
        await guard(refused.scope, refused.receive, refused.send)
        probe = Client([b""], [], path="/v2/health/live")
        probe_task = asyncio.create_task(guard(probe.scope, probe.receive, probe.send))
        release.set()
        await asyncio.gather(*tasks, probe_task)
        after = Client([b"{}"], [])
        await guard(after.scope, after.receive, after.send)
        return held, refused, probe, [after]

    held, refused, probe, (after,) = asyncio.run(scenario())
    assert [client.status() for client in held] == [200, 200]
    assert (refused.status(), refused.read) == (503, 0)
    assert refused.headers()[b"retry-after"] == b"1" and refused.json()["error"].startswith(
        "the service is at capacity"
    )
    assert probe.status() == 200, "a probe is never refused for load"
    assert after.status() == 200, "the places are given back when requests end"


def test_a_probe_path_still_has_its_body_limited() -> None:
    client = run(
        ProxyGuard(reading_app([]), LIMIT, CAPACITY), Client([b""], [(b"content-length", b"5000")], "/v2/health/live")
    )
    assert (client.status(), client.read) == (413, 0)


@pytest.mark.parametrize(
    ("authorization", "status"),
    [(None, 401), (b"Bearer wrong", 401), (b"Bearer k1", 200)],
)
def test_the_proxy_of_a_service_with_keys_reads_no_strangers_body(authorization: bytes | None, status: int) -> None:
    """A stranger's body, within the limit or not, costs the head nothing: it is refused before a byte is read."""
    seen: list[Message] = []
    headers = [(b"content-length", b"500")] + ([(b"authorization", authorization)] if authorization else [])
    client = run(ProxyGuard(reading_app(seen), LIMIT, CAPACITY, api_keys=(b"k1",)), Client([b"x" * 500], headers))
    assert client.status() == status
    assert (client.read > 0) == (status == 200)
    probe = run(ProxyGuard(reading_app([]), LIMIT, CAPACITY, api_keys=(b"k1",)), Client([b""], [], "/v2/health/ready"))
    assert probe.status() == 200, "probes carry no key"


def test_the_proxy_takes_its_keys_from_the_pods_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(MAX_BODY_BYTES_ENV, "1024")
    monkeypatch.setenv(MAX_IN_FLIGHT_ENV, "4")
    monkeypatch.setenv(API_KEYS_ENV, "k1\nk2\n")
    monkeypatch.setenv(PROXY_REQUIRES_KEYS_ENV, "1")
    (middleware,) = middlewares()
    assert middleware.kwargs["api_keys"] == (b"k1", b"k2")
    monkeypatch.setenv(API_KEYS_ENV, "")
    (middleware,) = middlewares()
    assert middleware.kwargs["api_keys"] == (), "keys required and none given: no one is let in"
    monkeypatch.setenv(PROXY_REQUIRES_KEYS_ENV, "0")
    (middleware,) = middlewares()
    assert middleware.kwargs["api_keys"] is None
