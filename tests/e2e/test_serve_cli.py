"""`bigmodel serve` as a user runs it: the real command, an embedded Ray with Serve, and HTTP requests to it.

Two servers start side by side once per module (digits from examples/service-digits.yaml, a tiny GPT by uri), since
starting Ray and Serve is most of the time these tests take.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import openai
import pytest
import torch
import tritonclient.http as triton
from sklearn.datasets import load_digits

from bigmodel.cli import main
from bigmodel.runtime.artifacts import load_model
from bigmodel.runtime.tasks import generate
from tests.support.models import export_decisive, tiny_gpt_config, train_digits

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
BIGMODEL = [sys.executable, "-m", "bigmodel.cli"]
STARTUP_SECONDS = 240
STOP_SECONDS = 60
# The server listens on the loopback interface; an HTTP_PROXY in the environment must not carry requests elsewhere.
NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))
GPT_CONFIG = tiny_gpt_config(context_length=32)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class Server:
    """A running `bigmodel serve`, its output collected by threads so that a full pipe never blocks it."""

    process: subprocess.Popen[str]
    url: str
    stdout: list[str] = field(default_factory=list)
    stderr: list[str] = field(default_factory=list)
    ready: queue.Queue[str] = field(default_factory=queue.Queue)

    def output(self) -> str:
        return "".join(self.stdout) + "\n--- stderr ---\n" + "".join(self.stderr)[-4000:]

    def stop(self, signum: int = signal.SIGINT) -> int:
        """Ctrl-C, as a user stops it, or another signal; the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signum)
        try:
            return self.process.wait(timeout=STOP_SECONDS)
        except subprocess.TimeoutExpired:
            self.process.kill()
            pytest.fail(f"bigmodel serve did not stop within {STOP_SECONDS} s of signal {signum}:\n{self.output()}")


def _collect(stream: Any, lines: list[str], ready: queue.Queue[str] | None) -> None:
    for line in stream:
        lines.append(line)
        if ready is not None and line.startswith("Ready at "):
            ready.put(line)


def start_server(manifest: Path, cwd: Path, *options: str, env: dict[str, str] | None = None) -> Server:
    port = free_port()
    env = os.environ | {"COLUMNS": "200", "NO_COLOR": "1"} | (env or {})
    process = subprocess.Popen(
        [*BIGMODEL, "serve", str(manifest), "--port", str(port), "--num-cpus", "2", *options],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    server = Server(process, f"http://127.0.0.1:{port}")
    for stream, lines, ready in ((process.stdout, server.stdout, server.ready), (process.stderr, server.stderr, None)):
        threading.Thread(target=_collect, args=(stream, lines, ready), daemon=True).start()
    return server


def wait_ready(server: Server) -> None:
    deadline = time.monotonic() + STARTUP_SECONDS
    while time.monotonic() < deadline:
        try:
            line = server.ready.get(timeout=0.5)
        except queue.Empty:
            if server.process.poll() is not None:
                pytest.fail(
                    f"bigmodel serve exited with {server.process.returncode} before it was ready:\n{server.output()}"
                )
            continue
        assert server.url in line, f"the printed URL is not the one asked for: {line}"
        return
    server.process.kill()
    pytest.fail(f"bigmodel serve printed no 'Ready at' line within {STARTUP_SECONDS} s:\n{server.output()}")


def call(url: str, body: Any = None, *, raw: bytes | None = None) -> tuple[int, Any]:
    """(status, parsed JSON) of a GET, or of a POST when there is a body."""
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    request = urllib.request.Request(url, data=data, method="GET" if data is None else "POST")
    try:
        with NO_PROXY.open(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


@dataclass
class Servers:
    workdir: Path
    digits: Server
    gpt: Server
    gpt_model: str


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Servers]:
    workdir = tmp_path_factory.mktemp("serve")
    # Where `bigmodel train examples/digits.yaml` run in workdir exports, and so where the service looks by jobName.
    train_digits(workdir / "bigmodel-runs" / "digits")
    gpt_model = export_decisive(workdir / "gpt-run", GPT_CONFIG)
    gpt_manifest = workdir / "gpt-service.yaml"
    gpt_manifest.write_text(
        "apiVersion: bigmodel.dev/v1alpha1\nkind: BigModelService\nmetadata: {name: tiny-gpt}\n"
        f"spec:\n  model: {{uri: {json.dumps(gpt_model)}, name: coder}}\n"
        # One sequence at a time: a stream a client leaves must free the only place for the next request to run.
        "  replicaResources: {cpu: 0.5}\n  batching: {maxBatchSize: 1}\n"
    )
    digits = start_server(ROOT / "examples/service-digits.yaml", workdir)
    gpt = start_server(gpt_manifest, workdir)
    try:
        wait_ready(digits)
        wait_ready(gpt)
        yield Servers(workdir, digits, gpt, gpt_model)
    finally:
        for server in (digits, gpt):
            if server.process.poll() is None:
                server.stop()


def expected_labels(model_dir: Path, instances: list[list[int]]) -> list[int]:
    model, _ = load_model(str(model_dir))
    with torch.no_grad():
        return model(torch.tensor(instances, dtype=torch.float32) / 16.0).argmax(dim=1).tolist()


def digit_images(count: int) -> list[list[int]]:
    return [[int(pixel) for pixel in image] for image in load_digits().data[:count]]


def test_v1_and_v2_predictions_equal_the_model_loaded_directly(servers: Servers) -> None:
    url = servers.digits.url
    instances = digit_images(24)
    expected = expected_labels(servers.workdir / "bigmodel-runs/digits/model", instances)
    assert sum(label == truth for label, truth in zip(expected, load_digits().target, strict=False)) > 18

    status, body = call(f"{url}/v1/models/digits:predict", {"instances": instances})
    assert (status, body) == (200, {"predictions": expected})

    tensor = {"name": "input", "shape": [24, 64], "datatype": "FP32", "data": [p for row in instances for p in row]}
    status, body = call(f"{url}/v2/models/digits/infer", {"id": "batch-1", "inputs": [tensor]})
    assert status == 200, body
    assert (body["model_name"], body["id"]) == ("digits", "batch-1")
    predictions, probabilities = body["outputs"]
    assert predictions == {"name": "predictions", "datatype": "INT64", "shape": [24], "data": expected}
    assert (probabilities["datatype"], probabilities["shape"]) == ("FP32", [24, 10])


def test_a_triton_client_gets_the_same_answer_in_binary_and_in_json(servers: Servers) -> None:
    instances = digit_images(8)
    pixels = np.array(instances, dtype=np.float32)
    # The client's own timeouts (60 s) bound every call; it reads no proxy from the environment.
    client = triton.InferenceServerClient(servers.digits.url.removeprefix("http://"))
    try:
        assert "binary_tensor_data" in client.get_server_metadata()["extensions"]
        binary_input = triton.InferInput("input", list(pixels.shape), "FP32")
        binary_input.set_data_from_numpy(pixels, binary_data=True)
        # No outputs named: the client asks for every output in binary, its default.
        binary = client.infer("digits", [binary_input])
        json_input = triton.InferInput("input", list(pixels.shape), "FP32")
        json_input.set_data_from_numpy(pixels, binary_data=False)
        outputs = [triton.InferRequestedOutput(name, binary_data=False) for name in ("predictions", "probabilities")]
        plain = client.infer("digits", [json_input], outputs=outputs)
    finally:
        client.close()
    assert binary.get_output("predictions")["parameters"] == {"binary_data_size": 8 * 8}, "not answered in binary"
    assert "data" in plain.get_output("probabilities"), "not answered in JSON"
    expected = expected_labels(servers.workdir / "bigmodel-runs/digits/model", instances)
    assert binary.as_numpy("predictions").tolist() == plain.as_numpy("predictions").tolist() == expected
    np.testing.assert_array_equal(binary.as_numpy("probabilities"), plain.as_numpy("probabilities"))


def test_concurrent_requests_each_get_their_own_answer(servers: Servers) -> None:
    # Requests arriving together share a batch in the replica; each must still get back its own prediction.
    instances = digit_images(16)
    expected = expected_labels(servers.workdir / "bigmodel-runs/digits/model", instances)
    url = f"{servers.digits.url}/v1/models/digits:predict"
    with ThreadPoolExecutor(max_workers=16) as pool:
        answers = list(pool.map(lambda instance: call(url, {"instances": [instance]}), instances))
    assert answers == [(200, {"predictions": [label]}) for label in expected]


def test_health_metadata_and_readiness(servers: Servers) -> None:
    url = servers.digits.url
    assert call(f"{url}/v2/health/live") == (200, {"live": True})
    assert call(f"{url}/v2/health/ready") == (200, {"ready": True})
    assert call(f"{url}/v2/models/digits/ready") == (200, {"name": "digits", "ready": True})
    status, model = call(f"{url}/v1/models/digits")
    assert status == 200 and (model["name"], model["ready"], model["id"], model["object"]) == (
        "digits",
        True,
        "digits",
        "model",
    ), model
    status, metadata = call(f"{url}/v2/models/digits")
    assert status == 200
    assert metadata["name"] == "digits" and metadata["platform"] == "pytorch"
    assert len(metadata["versions"]) == 1 and metadata["versions"][0]
    assert metadata["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 64]}]
    assert [output["name"] for output in metadata["outputs"]] == ["predictions", "probabilities"]


@pytest.mark.parametrize(
    ("path", "body", "status", "message"),
    [
        ("/v1/models/digits:predict", b'{"instances": [', 400, "request body is not valid JSON"),
        ("/v1/models/digits:predict", b'{"instances": []}', 400, "instances: must hold at least one instance"),
        (
            "/v1/models/digits:predict",
            b'{"instances": [[1, 2, 3]]}',
            400,
            "instances[0]: must be a list of 64 pixel values",
        ),
        ("/v1/models/digits:predict", b'{"rows": [[0]]}', 400, "instances: required field is missing"),
        (
            "/v2/models/digits/infer",
            b'{"inputs": [{"name": "input", "shape": [1, 64], "datatype": "BYTES", "data": ["x"]}]}',
            400,
            "inputs[0].datatype: must be a numeric datatype such as FP32",
        ),
        (
            "/v2/models/digits/infer",
            b'{"inputs": [{"name": "input", "shape": [1, 63], "datatype": "FP32", "data": [0]}]}',
            400,
            "inputs[0].shape: expected [N, 64], got [1, 63]",
        ),
        ("/v1/models/mnist:predict", b'{"instances": [[0]]}', 404, 'model "mnist" is not served here'),
        ("/v2/models/mnist/infer", b"{}", 404, 'model "mnist" is not served here'),
        ("/v2/models/mnist", None, 404, 'model "mnist" is not served here'),
        ("/v3/anything", None, 404, "GET /v3/anything: Not Found"),
    ],
    ids=[
        "bad-json",
        "empty",
        "short-instance",
        "no-instances",
        "v2-datatype",
        "v2-shape",
        "v1-unknown-model",
        "v2-unknown-model",
        "unknown-metadata",
        "unknown-path",
    ],  # fmt: skip
)
def test_malformed_requests_are_4xx_with_a_message_and_the_server_keeps_serving(
    servers: Servers, path: str, body: bytes | None, status: int, message: str
) -> None:
    url = servers.digits.url
    got_status, got = call(f"{url}{path}", raw=body)
    assert got_status == status and set(got) == {"error"} and got["error"].startswith(message), (got_status, got)
    assert call(f"{url}/v1/models/digits:predict", {"instances": digit_images(1)})[0] == 200


def openai_client(server: Server) -> openai.OpenAI:
    # No proxies from the environment, a bounded wait, and no retries that would hide a failed request.
    http = openai.DefaultHttpxClient(trust_env=False, timeout=60)
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, http_client=http)


def greedy(model_dir: str, prompt: str, count: int) -> str:
    return generate(load_model(model_dir)[0], prompt.encode(), count).decode("utf-8", errors="replace")


def test_the_openai_client_completes_and_chats_as_greedy_generate_would(servers: Servers) -> None:
    client = openai_client(servers.gpt)
    assert f"curl -sN {servers.gpt.url}/v1/completions" in "".join(servers.gpt.stdout), "no OpenAI sample was shown"
    assert [model.id for model in client.models.list()] == ["coder"]
    completion = client.completions.create(model="coder", prompt="def fibonacci(n):", max_tokens=12, temperature=0)
    assert completion.choices[0].text == greedy(servers.gpt_model, "def fibonacci(n):", 12)
    assert completion.choices[0].finish_reason == "length"
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (len("def fibonacci(n):"), 12)

    chat = client.chat.completions.create(
        model="coder", messages=[{"role": "user", "content": "hi"}], max_tokens=6, temperature=0
    )
    # The built-in GPT has no chat template: the conversation is a plain transcript ending in the assistant's turn.
    assert chat.choices[0].message.content == greedy(servers.gpt_model, "user: hi\nassistant:", 6)

    seeded = [
        client.completions.create(model="coder", prompt="import", max_tokens=10, temperature=1.0, seed=3)
        .choices[0]
        .text
        for _ in range(2)
    ]
    assert seeded[0] == seeded[1], "the same seed sampled different texts"


def test_openai_streams_arrive_piece_by_piece_and_equal_the_whole_answer(servers: Servers) -> None:
    client = openai_client(servers.gpt)
    whole = client.completions.create(model="coder", prompt="class A:", max_tokens=300, temperature=0)
    arrivals, pieces = [], []
    stream = client.completions.create(
        model="coder",
        prompt="class A:",
        max_tokens=300,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    usage = None
    for chunk in stream:
        arrivals.append(time.monotonic())
        if chunk.choices:
            pieces.append(chunk.choices[0].text)
        usage = chunk.usage or usage
    assert "".join(pieces) == whole.choices[0].text
    assert usage is not None and usage.completion_tokens == 300
    # Generated a token at a time, sent as made: the first piece came well before the last one was made.
    assert len(pieces) > 10 and arrivals[0] < arrivals[-1], f"{len(pieces)} pieces: the answer came all at once"

    chat = client.chat.completions.create(
        model="coder", messages=[{"role": "user", "content": "hi"}], max_tokens=6, temperature=0, stream=True
    )
    deltas = [chunk.choices[0].delta for chunk in chat]
    assert deltas[0].role == "assistant"
    assert "".join(delta.content or "" for delta in deltas) == greedy(servers.gpt_model, "user: hi\nassistant:", 6)


def test_a_client_that_leaves_a_stream_frees_its_place_at_once(servers: Servers) -> None:
    client = openai_client(servers.gpt)
    # Tens of thousands of tokens: minutes of generation if the stream's sequence stayed in the batch of one.
    stream = client.completions.create(model="coder", prompt="x", max_tokens=60000, temperature=0, stream=True)
    next(iter(stream))
    stream.close()
    answer = client.completions.create(model="coder", prompt="import", max_tokens=4, temperature=0)
    assert answer.choices[0].text == greedy(servers.gpt_model, "import", 4), "the next request found no place"


def test_openai_errors_are_in_openai_shape_with_the_field(servers: Servers) -> None:
    client = openai_client(servers.gpt)
    with pytest.raises(openai.NotFoundError, match="not served here"):
        client.completions.create(model="gpt-4", prompt="hi", max_tokens=2)
    with pytest.raises(openai.BadRequestError) as caught:
        client.completions.create(model="coder", prompt="hi", max_tokens=2, temperature=3)
    assert caught.value.body["param"] == "temperature", caught.value.body
    with pytest.raises(openai.NotFoundError, match="does not generate text"):
        openai_client(servers.digits).completions.create(model="digits", prompt="hi", max_tokens=2)


def test_gpt_generation_equals_greedy_generate_and_sigterm_finishes_the_stream_in_flight(servers: Servers) -> None:
    url, model = servers.gpt.url, load_model(servers.gpt_model)[0]
    prompts = [("def fibonacci(n):", 6), ("import", 10), ("a much longer prompt than the context of 32 bytes", 4)]
    instances = [{"prompt": prompt, "max_new_tokens": count} for prompt, count in prompts]
    expected = [generate(model, prompt.encode(), count).decode("utf-8", errors="replace") for prompt, count in prompts]

    assert call(f"{url}/v1/models/coder:predict", {"instances": instances}) == (200, {"predictions": expected})
    tensor = {"name": "text_input", "shape": [1], "datatype": "BYTES", "data": ["import"]}
    status, body = call(f"{url}/v2/models/coder/infer", {"inputs": [tensor], "parameters": {"max_new_tokens": 10}})
    assert status == 200 and body["outputs"][0]["data"] == [expected[1]], body
    assert body["id"], "a v2 response always carries an id"

    # SIGTERM, as a process manager stops a server, with a stream in flight: the server finishes it, then stops.
    stream = openai_client(servers.gpt).completions.create(
        model="coder", prompt="x", max_tokens=2000, temperature=0, stream=True, stream_options={"include_usage": True}
    )
    chunks = iter(stream)
    next(chunks)
    servers.gpt.process.send_signal(signal.SIGTERM)
    usage = [chunk.usage for chunk in chunks if chunk.usage is not None]
    assert usage and usage[0].completion_tokens == 2000, f"the stream in flight was cut: {usage}"
    code = servers.gpt.stop(signal.SIGTERM)
    assert code == 128 + signal.SIGTERM, f"exit code {code}:\n{servers.gpt.output()}"
    assert "Stopped." in "".join(servers.gpt.stdout)
    assert "Traceback" not in servers.gpt.output() and "SIGTERM received" not in servers.gpt.output()


def test_the_ready_output_shows_a_working_request(servers: Servers) -> None:
    shown = "".join(servers.digits.stdout)
    assert f"Ready at {servers.digits.url}" in shown
    curl = next(line.strip() for line in shown.splitlines() if line.strip().startswith("curl "))
    assert f"{servers.digits.url}/v1/models/digits:predict" in curl
    body = json.loads(curl.split(" -d ", 1)[1].strip("'"))
    assert call(f"{servers.digits.url}/v1/models/digits:predict", body)[0] == 200


def one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    return lines[0]


def test_a_job_manifest_is_refused_in_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", str(ROOT / "examples/digits.yaml")]) == 2
    line = one_error_line(capsys)
    assert "`bigmodel serve` runs a BigModelService, this file holds a BigModelJob" in line, line


def test_an_invalid_service_is_refused_naming_the_field(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    manifest = tmp_path / "service.yaml"
    manifest.write_text(
        "apiVersion: bigmodel.dev/v1alpha1\nkind: BigModelService\nmetadata: {name: s}\nspec: {model: {}}\n"
    )
    assert main(["serve", str(manifest)]) == 2
    assert "spec.model: set exactly one of jobName or uri" in one_error_line(capsys)


def test_a_missing_model_says_which_train_command_makes_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["serve", str(ROOT / "examples/service-digits.yaml")]) == 2
    line = one_error_line(capsys)
    assert "no exported model at bigmodel-runs/digits/model" in line, line
    assert f"run `bigmodel train {ROOT / 'examples/digits.yaml'}` first" in line, line

    assert main(["serve", str(ROOT / "examples/service-digits.yaml"), "--model", str(tmp_path / "elsewhere")]) == 2
    assert "check --model" in one_error_line(capsys)


def test_a_busy_port_is_refused_before_ray_starts(servers: Servers, capsys: pytest.CaptureFixture[str]) -> None:
    port = servers.digits.url.rsplit(":", 1)[1]
    manifest = ROOT / "examples/service-digits.yaml"
    model = servers.workdir / "bigmodel-runs/digits/model"
    assert main(["serve", str(manifest), "--model", str(model), "--port", port]) == 2
    assert f"port {port} is not free" in one_error_line(capsys)
