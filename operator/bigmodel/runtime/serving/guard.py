"""What guards the endpoint, decided without a web framework or Ray: API keys, and the size of a request body.

The Serve proxy (proxy_guard.py) and every replica (asgi_guard.py) ask the same questions here, so a request is
refused for the same reason, in the same words, wherever it is caught.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Mapping
from dataclasses import dataclass

from bigmodel.api.wire import API_KEYS_ENV, HEALTH_PATHS, OPENAI_PATHS, RETRY_AFTER_SECONDS
from bigmodel.runtime.serving.openai_protocol import error_document_for

BAD_REQUEST = 400
UNAUTHORIZED = 401
PAYLOAD_TOO_LARGE = 413
SERVICE_UNAVAILABLE = 503
GATEWAY_TIMEOUT = 504
_BEARER = b"bearer "
# Serve's own endpoints on the proxy (/-/healthz, /-/routes): probes, never refused for load.
_SERVE_PATHS = "/-/"
Headers = tuple[tuple[bytes, bytes], ...]


class MissingApiKeys(RuntimeError):
    """A replica of a service with spec.auth has no key to accept: it must not start (and so serve no one)."""


@dataclass(frozen=True)
class Refusal:
    """A request answered before it reaches the model: the status, one line for the client, extra headers."""

    status: int
    message: str
    headers: Headers = ()


@dataclass(frozen=True)
class Policy:
    """One replica's (or the proxy's) rules: the keys it accepts, if it requires one, and the largest body."""

    max_body_bytes: int
    api_keys: tuple[bytes, ...] = ()
    auth_required: bool = False


def no_answer_within(timeout_s: float) -> str:
    """Why a request was answered 504 by a replica: the model ran past the service's limit."""
    return f"the model did not answer within {timeout_s:g} s (spec.limits.timeoutSeconds)"


def error_body(refusal: Refusal, path: str) -> bytes:
    """The JSON error of a refusal in the shape of the path's protocol, byte for byte as the app's own (Starlette's
    JSONResponse): OpenAI's on its endpoints, so that its clients read the message; KServe's one line elsewhere."""
    document = (
        error_document_for(refusal.status, refusal.message) if path in OPENAI_PATHS else {"error": refusal.message}
    )
    return json.dumps(document, ensure_ascii=False, separators=(",", ":")).encode()


def parse_api_keys(text: str) -> tuple[bytes, ...]:
    """The keys of a Secret's value: one a line; blank lines and the whitespace around a key are not part of it."""
    return tuple(line.strip().encode() for line in text.splitlines() if line.strip())


def api_keys_from_env(environ: Mapping[str, str], required: bool) -> tuple[bytes, ...]:
    """The keys a replica accepts; raises MissingApiKeys, one line, when it requires keys and has none."""
    if not required:
        return ()
    keys = parse_api_keys(environ.get(API_KEYS_ENV, ""))
    if not keys:
        raise MissingApiKeys(
            f"the service requires API keys (spec.auth) but {API_KEYS_ENV} holds none in this replica's "
            "environment: check the Secret and key that spec.auth names"
        )
    return keys


def authorized(authorization: bytes | None, keys: tuple[bytes, ...]) -> bool:
    """Whether `Authorization: Bearer <key>` names one of keys. Every key is compared in constant time, and all of
    them each time, so the answer's timing tells nothing about a key or where it is in the list."""
    if authorization is None or authorization[: len(_BEARER)].lower() != _BEARER:
        return False
    token = authorization[len(_BEARER) :].strip()
    matched = False
    for key in keys:
        matched |= hmac.compare_digest(token, key)
    return matched and bool(token)


def check_content_length(value: bytes | None, limit: int) -> Refusal | None:
    """A body announced larger than limit is refused before a byte of it is read."""
    if value is None:
        return None
    text = value.decode("latin-1").strip()
    # isascii: str.isdigit() also takes digits int() refuses, such as the superscript two of Latin-1.
    if not (text.isascii() and text.isdigit()):
        return Refusal(BAD_REQUEST, f"Content-Length: must be a whole number of bytes, not {text[:40]!r}")
    if int(text) > limit:
        return too_large(limit)
    return None


def too_large(limit: int) -> Refusal:
    return Refusal(PAYLOAD_TOO_LARGE, f"request body is larger than {limit} bytes (spec.limits.maxBodyBytes)")


def admit(policy: Policy, path: str, authorization: bytes | None, content_length: bytes | None) -> Refusal | None:
    """Whether a request may go on to be read: its key first (a stranger learns nothing else), then its size."""
    if policy.auth_required and path not in HEALTH_PATHS and not authorized(authorization, policy.api_keys):
        reason = "no API key" if authorization is None else "the API key is not valid"
        return Refusal(
            UNAUTHORIZED,
            f"{reason}: send the header 'Authorization: Bearer <key>'",
            ((b"www-authenticate", b"Bearer"),),
        )
    return check_content_length(content_length, policy.max_body_bytes)


def serve_error_status(status: int, content_type: bytes | None) -> int | None:
    """The status to give one of Serve's own answers, or None for any other. Serve's proxy answers a request it
    timed out with 408 and one it could not queue (or route) with 503, in plain text; the app answers JSON only."""
    if content_type is None or not content_type.startswith(b"text/plain"):
        return None
    # Serve's 408 is its timeout of the whole request (http_options.request_timeout_s), which HTTP calls a 504 when
    # a server waiting on another gives up; 408 would tell the client that it was the slow one.
    return {408: GATEWAY_TIMEOUT, SERVICE_UNAVAILABLE: SERVICE_UNAVAILABLE}.get(status)


def counts_toward_capacity(path: str) -> bool:
    """Whether a request takes a place in the service's capacity; probes must answer however busy it is, or an
    overloaded service would also be taken out of its Service's endpoints."""
    return path not in HEALTH_PATHS and not path.startswith(_SERVE_PATHS)


def admit_load(in_flight: int, limit: int) -> Refusal | None:
    """A request beyond what the service can hold (its queue and its replicas' room) is refused at once."""
    if in_flight < limit:
        return None
    return Refusal(
        SERVICE_UNAVAILABLE,
        f"the service is at capacity ({limit} requests in flight: spec.limits.maxQueuedRequests and its replicas); "
        f"retry after {RETRY_AFTER_SECONDS} s",
        ((b"retry-after", str(RETRY_AFTER_SECONDS).encode()),),
    )
