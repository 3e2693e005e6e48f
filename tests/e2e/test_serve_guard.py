"""The guarded endpoint of `bigmodel serve`: API keys, the body limit, the timeout and the bounded queue, as a
client meets them, against one server of a small GPT (its own, since its limits are tight on purpose).

A GPT is the model because its cost is the client's choice: a few bytes take milliseconds, and 16 instances of
256 bytes take seconds, so "a request that takes longer than the timeout" is an ordinary request, not a test hook.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest

from bigmodel.api.wire import API_KEYS_ENV
from tests.e2e.test_serve_cli import NO_PROXY, Server, free_port, start_server, wait_ready
from tests.support.models import export_decisive, tiny_gpt_config

pytestmark = pytest.mark.e2e

KEYS = ("first-key", "second-key")
# As a Secret may hold them: blank lines and whitespace around a key are not part of it.
KEYS_VALUE = f"{KEYS[0]}\n\n  {KEYS[1]}  \n"
LIMIT = 1024 * 1024
TIMEOUT_S = 1
MAX_QUEUED = 2
HUNDRED_MB = 100 * 1024 * 1024
# Without the proxy guard, a 100 MB body grew Serve's proxy by 153 MiB (peak 185 MiB). Between requests its RSS
# moves by well under 1 MiB; a body read even in part would show in whole megabytes.
RSS_MARGIN = 4 * 1024 * 1024
# Bigger than the tiny GPT of the other serving tests: one short request still takes milliseconds, while STALL takes
# about 5 s of one core (18 s for 64 instances), far past TIMEOUT_S even on an idle machine.
GPT_CONFIG = tiny_gpt_config(context_length=64) | {"layers": 4, "heads": 4, "embed_dim": 128}
SHORT = {"instances": [{"prompt": "import", "max_new_tokens": 4}]}
STALL = {"instances": [{"prompt": "def f(x):", "max_new_tokens": 256}] * 16}
FLOOD = 40
SAMPLE_S = 0.001


# The operator's Serve config for a service with spec.auth, deployed where the replicas' environment has no keys, as
# a pod whose Secret is empty would be (`bigmodel serve` itself refuses earlier, in the user's shell).
DEPLOY_WITHOUT_KEYS = """
import sys
from bigmodel.api.service import BigModelServiceSpec
from bigmodel.builders.serve_app import app_args, serve_deploy_config
from bigmodel.runtime.embedded import embedded_ray
from bigmodel.runtime.serving import local

model, port = sys.argv[1], int(sys.argv[2])
spec = BigModelServiceSpec.model_validate(
    {"model": {"uri": model}, "replicaResources": {"cpu": 0.5}, "auth": {"secretName": "empty"}}
)
config = serve_deploy_config("keyless", spec, app_args("keyless", spec, model, "v1"))
config, _ = local.local_deploy_config(config, port=port, cpus=2, gpus=0)
with embedded_ray(2):
    try:
        local.deploy(config, timeout_s=240)
    except local.DeployFailed as error:
        print(error)
        sys.exit(1)
"""


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: Any


def call(url: str, body: Any = None, key: str | None = None) -> Answer:
    headers = {"Authorization": f"Bearer {key}"} if key is not None else {}
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers=headers, method="GET" if data is None else "POST")
    try:
        with NO_PROXY.open(request, timeout=120) as response:
            return Answer(response.status, dict(response.headers), json.loads(response.read()))
    except urllib.error.HTTPError as error:
        return Answer(error.code, dict(error.headers), json.loads(error.read()))


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    workdir = tmp_path_factory.mktemp("serve-guard")
    model = export_decisive(workdir / "gpt-run", GPT_CONFIG)
    manifest = workdir / "guarded.yaml"
    manifest.write_text(
        "apiVersion: bigmodel.dev/v1alpha1\nkind: BigModelService\nmetadata: {name: guarded}\n"
        f"spec:\n  model: {{uri: {json.dumps(model)}, name: coder}}\n"
        # One replica taking one request at a time: max_ongoing_requests is then 4, and a flood queues at once.
        "  replicas: {min: 1, max: 1}\n  replicaResources: {cpu: 0.5}\n  batching: {maxBatchSize: 1, waitTimeoutMs: 0}\n"
        "  auth: {secretName: coder-keys}\n"
        f"  limits: {{maxBodyBytes: {LIMIT}, timeoutSeconds: {TIMEOUT_S}, maxQueuedRequests: {MAX_QUEUED}}}\n"
    )
    started = start_server(manifest, workdir, env={"BIGMODEL_API_KEYS": KEYS_VALUE})
    try:
        wait_ready(started)
        yield started
    finally:
        if started.process.poll() is None:
            started.stop()


def test_a_replica_that_requires_keys_and_has_none_fails_the_deploy_saying_so(tmp_path: Path) -> None:
    # First in the module: it runs before the module's server starts, so one Ray runs at a time.
    model = export_decisive(tmp_path / "run", tiny_gpt_config())
    env = {name: value for name, value in os.environ.items() if name != API_KEYS_ENV}
    command = [sys.executable, "-c", DEPLOY_WITHOUT_KEYS, model, str(free_port())]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1, result.stdout + result.stderr[-3000:]
    line = result.stdout.strip().splitlines()[-1]
    assert line.startswith("application keyless failed to deploy: "), line
    assert f"the service requires API keys (spec.auth) but {API_KEYS_ENV} holds none" in line, line


def proxy_process(server: Server) -> psutil.Process:
    """Serve's HTTP proxy among this server's own processes (Ray's are its descendants)."""
    for process in psutil.Process(server.process.pid).children(recursive=True):
        try:
            # Ray retitles a worker with the method it runs: ray::ProxyActor, ray::ProxyActor.receive_asgi_messages...
            if process.cmdline()[0].startswith("ray::ProxyActor"):
                return process
        except (psutil.Error, IndexError):
            continue
    pytest.fail("no ray::ProxyActor process under the server")


def predict_url(server: Server) -> str:
    return f"{server.url}/v1/models/coder:predict"


def test_model_endpoints_answer_only_a_valid_key_and_health_stays_open(server: Server) -> None:
    url = predict_url(server)
    for key, reason in ((None, "no API key"), ("wrong-key", "the API key is not valid"), ("", "the API key is not")):
        answer = call(url, SHORT, key)
        assert answer.status == 401, answer
        assert answer.headers["www-authenticate"] == "Bearer"
        assert set(answer.body) == {"error"} and answer.body["error"].startswith(reason), answer.body
    for key in KEYS:
        answer = call(url, SHORT, key)
        assert answer.status == 200 and len(answer.body["predictions"]) == 1, answer
    tensor = {"name": "text_input", "shape": [1], "datatype": "BYTES", "data": ["import"]}
    v2 = f"{server.url}/v2/models/coder/infer"
    assert call(v2, {"inputs": [tensor]}).status == 401
    assert call(v2, {"inputs": [tensor], "parameters": {"max_new_tokens": 4}}, KEYS[0]).status == 200
    # Metadata, and paths that do not exist, tell a stranger nothing either.
    assert call(f"{server.url}/v2/models/coder").status == 401
    assert call(f"{server.url}/v3/anything").status == 401
    assert call(f"{server.url}/v2/models/coder", key=KEYS[1]).status == 200
    for probe in ("/v2/health/live", "/v2/health/ready"):
        assert call(f"{server.url}{probe}").status == 200
    curl = next(line for line in "".join(server.stdout).splitlines() if line.strip().startswith("curl "))
    assert "-H 'Authorization: Bearer <one of your API keys>'" in curl


class RawPost:
    """A POST of a large body on a socket of its own: the body goes out from a thread while the answer is read, as
    a client must to hear a server that answers before the body ends."""

    def __init__(self, server: Server, size: int, *, chunked: bool) -> None:
        self.size, self.chunked, self.sent = size, chunked, 0
        port = int(server.url.rsplit(":", 1)[1])
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=60)
        framing = "Transfer-Encoding: chunked" if chunked else f"Content-Length: {size}"
        self.sock.sendall(
            f"POST /v1/models/coder:predict HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {KEYS[0]}\r\n"
            f"Content-Type: application/json\r\n{framing}\r\n\r\n".encode()
        )
        self.sender = threading.Thread(target=self._send_body, daemon=True)
        self.sender.start()

    def _send_body(self) -> None:
        block = b" " * (1024 * 1024)
        try:
            while self.sent < self.size:
                part = block[: self.size - self.sent]
                self.sock.sendall(f"{len(part):x}\r\n".encode() + part + b"\r\n" if self.chunked else part)
                self.sent += len(part)
            if self.chunked:
                self.sock.sendall(b"0\r\n\r\n")
        except OSError:
            pass  # The server closed the connection: what it answered is what the test reads.

    def answer(self) -> tuple[int, dict[str, str], Any]:
        data = b""
        while b"\r\n\r\n" not in data or len(data.split(b"\r\n\r\n", 1)[1]) < self._length(data):
            chunk = self.sock.recv(65536)
            if not chunk:
                break
            data += chunk
        self.sender.join(timeout=60)
        self.sock.close()
        head, body = data.split(b"\r\n\r\n", 1)
        status_line, *header_lines = head.decode().split("\r\n")
        headers = {name.lower(): value.strip() for name, value in (line.split(":", 1) for line in header_lines)}
        return int(status_line.split()[1]), headers, json.loads(body)

    @staticmethod
    def _length(data: bytes) -> int:
        for line in data.split(b"\r\n\r\n", 1)[0].split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                return int(line.split(b":", 1)[1])
        return 1 << 30


class PeakRss:
    """The highest RSS of a process while the block runs, sampled every millisecond or two (a body held for the
    tenths of a second the transfer takes cannot slip between samples)."""

    def __init__(self, process: psutil.Process) -> None:
        self.process = process
        self.before = self.peak = process.memory_info().rss
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._done.wait(SAMPLE_S):
            self.peak = max(self.peak, self.process.memory_info().rss)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join(timeout=10)
        self.peak = max(self.peak, self.process.memory_info().rss)

    def growth(self) -> int:
        return self.peak - self.before


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_a_100_mb_body_is_refused_413_and_the_proxy_does_not_hold_it(server: Server, chunked: bool) -> None:
    proxy = proxy_process(server)
    call(predict_url(server), SHORT, KEYS[0])  # the proxy's connection and route state exist before the baseline
    with PeakRss(proxy) as rss:
        post = RawPost(server, HUNDRED_MB, chunked=chunked)
        status, headers, body = post.answer()
    assert status == 413, (status, body)
    assert body == {"error": f"request body is larger than {LIMIT} bytes (spec.limits.maxBodyBytes)"}
    assert headers["connection"] == "close"
    assert post.sent < HUNDRED_MB, "the server read the whole body it refused"
    # An announced body is refused before a byte is read; a chunked one is read up to the limit, then cut off.
    allowed = RSS_MARGIN + (LIMIT if chunked else 0)
    print(
        f"proxy RSS {rss.before / 2**20:.1f} MiB, peak growth {rss.growth() / 2**20:.2f} MiB; client sent {post.sent}"
    )
    assert rss.growth() < allowed, f"the proxy grew by {rss.growth() / 2**20:.1f} MiB for a refused 100 MB body"
    assert call(predict_url(server), SHORT, KEYS[0]).status == 200


def test_a_flood_beyond_the_queue_is_answered_503_with_retry_after_and_the_rest_served(server: Server) -> None:
    url = predict_url(server)
    flood_body = {"instances": [{"prompt": "import", "max_new_tokens": 32}]}
    with ThreadPoolExecutor(max_workers=FLOOD) as pool:
        answers = list(pool.map(lambda _: call(url, flood_body, KEYS[1]), range(FLOOD)))
    statuses = sorted(answer.status for answer in answers)
    assert set(statuses) <= {200, 503}, statuses
    refused = [answer for answer in answers if answer.status == 503]
    # One replica runs at most 4 requests and MAX_QUEUED more may wait; 40 at once cannot all fit.
    assert refused and statuses.count(200) >= 1, statuses
    for answer in refused:
        assert int(answer.headers["retry-after"]) >= 1, answer.headers
        # Refused by the proxy's guard at the service's capacity, or by Serve's queue: both in the app's JSON form.
        message = answer.body["error"]
        assert set(answer.body) == {"error"} and ("at capacity" in message or "backpressure" in message), message
    assert call(url, SHORT, KEYS[0]).status == 200


def test_a_model_call_longer_than_the_timeout_is_answered_504(server: Server) -> None:
    # Last in this module: the forward pass it starts runs on in the replica's thread after the 504.
    answer = call(predict_url(server), STALL, KEYS[0])
    assert answer.status == 504, answer
    assert set(answer.body) == {"error"}, answer.body
    assert "timed out after" in answer.body["error"] or "did not answer within" in answer.body["error"], answer.body
    # The replica lives on: short requests are answered again, once the abandoned pass no longer crowds them out.
    statuses = []
    for _ in range(60):
        statuses.append(call(predict_url(server), SHORT, KEYS[0]).status)
        if statuses[-1] == 200:
            break
    assert statuses[-1] == 200, statuses
