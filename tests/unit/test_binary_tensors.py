"""The binary tensor data extension of the v2 infer endpoint, driven by the stock Triton client's own encoder and
decoder: a client in binary mode gets the numbers it gets in JSON, and a malformed binary body one line naming the
field."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
import torch
from tritonclient.http import InferenceServerClient, InferInput, InferRequestedOutput, InferResult

from bigmodel.runtime.artifacts import load_model
from bigmodel.runtime.serving.binary_tensors import check_content_encoding, decode_request, encode_response
from bigmodel.runtime.serving.predictor import DigitsPredictor, Predictor, TextPredictor, build_predictor
from bigmodel.runtime.serving.protocol import ProtocolError, parse_v2_request, select_outputs, v2_location, v2_response
from tests.support.models import digits_pixels, export_decisive, tiny_gpt_config

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CPU = torch.device("cpu")
PIXELS = np.array(digits_pixels(5), dtype=np.float32)
PROMPTS = np.array(["def fibonacci(n):", "héllo ✓", "import"], dtype=np.object_)


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> DigitsPredictor:
    model, config = load_model(
        export_decisive(tmp_path_factory.mktemp("digits"), {"task": "digits", "hidden_size": 16})
    )
    predictor = build_predictor(model, config, CPU)
    assert isinstance(predictor, DigitsPredictor)
    return predictor


@pytest.fixture(scope="module")
def gpt(tmp_path_factory: pytest.TempPathFactory) -> TextPredictor:
    model, config = load_model(export_decisive(tmp_path_factory.mktemp("gpt"), tiny_gpt_config(context_length=16)))
    predictor = build_predictor(model, config, CPU)
    assert isinstance(predictor, TextPredictor)
    return predictor


def infer(predictor: Predictor[Any, Any], body: bytes, header_length: int | None) -> InferResult:
    """What the v2 infer endpoint answers (app.py, without HTTP), read back by the client's own decoder."""
    request = decode_request(body, None if header_length is None else str(header_length))
    parsed = parse_v2_request(request.document, predictor.input, predictor.outputs, predictor.max_instances)
    results = predictor.run(predictor.checked(parsed.instances, parsed.parameters, v2_location))
    outputs = select_outputs(predictor.output_tensors(results), parsed.requested_outputs)
    answer = v2_response("served", "1", parsed.id or "made-up", outputs)
    encoded = encode_response(answer, request.outputs)
    if encoded is None:
        return InferenceServerClient.parse_response_body(json.dumps(answer).encode())
    return InferenceServerClient.parse_response_body(encoded.body, header_length=encoded.header_length)


def tensor(name: str, array: np.ndarray, datatype: str, *, binary: bool) -> InferInput:
    value = InferInput(name, list(array.shape), datatype)
    value.set_data_from_numpy(array, binary_data=binary)
    return value


def test_the_clients_default_binary_mode_gets_the_numbers_of_json_mode(digits: DigitsPredictor) -> None:
    # No outputs named: tritonclient asks for every output in binary (parameters.binary_data_output).
    body, length = InferenceServerClient.generate_request_body([tensor("input", PIXELS, "FP32", binary=True)])
    assert length is not None and json.loads(body[:length])["parameters"] == {"binary_data_output": True}
    binary = infer(digits, body, length)

    outputs = [InferRequestedOutput(name, binary_data=False) for name in ("predictions", "probabilities")]
    body, length = InferenceServerClient.generate_request_body(
        [tensor("input", PIXELS, "FP32", binary=False)], outputs=outputs
    )
    assert length is None, "a request without binary data is plain JSON"
    plain = infer(digits, body, length)

    assert all("data" in output for output in plain.get_response()["outputs"]), "JSON mode answers JSON"
    assert all("data" not in output for output in binary.get_response()["outputs"])
    assert binary.as_numpy("predictions").tolist() == digits.predict(PIXELS.tolist())
    np.testing.assert_array_equal(binary.as_numpy("predictions"), plain.as_numpy("predictions"))
    np.testing.assert_array_equal(binary.as_numpy("probabilities"), plain.as_numpy("probabilities"))
    assert binary.as_numpy("probabilities").shape == (5, 10)


def test_each_output_is_binary_or_json_as_asked_in_the_order_asked(digits: DigitsPredictor) -> None:
    outputs = [InferRequestedOutput("probabilities", binary_data=False), InferRequestedOutput("predictions")]
    body, length = InferenceServerClient.generate_request_body(
        [tensor("input", PIXELS, "FP32", binary=True)], outputs=outputs, request_id="mixed"
    )
    result = infer(digits, body, length)
    answer = result.get_response()
    assert answer["id"] == "mixed"
    assert [output["name"] for output in answer["outputs"]] == ["probabilities", "predictions"]
    assert answer["outputs"][1]["parameters"] == {"binary_data_size": 5 * 8}, "five INT64 labels"
    assert len(answer["outputs"][0]["data"]) == 5 * 10
    assert result.as_numpy("predictions").tolist() == digits.predict(PIXELS.tolist())


@pytest.mark.parametrize(
    ("datatype", "dtype"),
    [("FP16", np.float16), ("FP64", np.float64), ("UINT8", np.uint8), ("INT32", np.int32), ("INT64", np.int64)],
)
def test_pixels_in_any_numeric_datatype_give_the_same_labels(
    digits: DigitsPredictor, datatype: str, dtype: type[np.generic]
) -> None:
    pixels = PIXELS.astype(dtype)
    body, length = InferenceServerClient.generate_request_body([tensor("input", pixels, datatype, binary=True)])
    assert infer(digits, body, length).as_numpy("predictions").tolist() == digits.predict(PIXELS.tolist())


def test_bytes_prompts_in_binary_generate_what_json_prompts_do(gpt: TextPredictor) -> None:
    parameters = {"max_new_tokens": 5}
    body, length = InferenceServerClient.generate_request_body(
        [tensor("text_input", PROMPTS, "BYTES", binary=True)], parameters=parameters
    )
    binary = infer(gpt, body, length).as_numpy("text_output")
    body, length = InferenceServerClient.generate_request_body(
        [tensor("text_input", PROMPTS, "BYTES", binary=False)],
        outputs=[InferRequestedOutput("text_output", binary_data=False)],
        parameters=parameters,
    )
    plain = infer(gpt, body, length).as_numpy("text_output")
    assert [text.decode() for text in binary] == list(plain)
    assert list(plain) == gpt.predict([{"prompt": str(prompt), "max_new_tokens": 5} for prompt in PROMPTS])


def body_of(inputs: list[dict[str, Any]], binary: bytes, **fields: Any) -> tuple[bytes, int]:
    header = json.dumps({"inputs": inputs, **fields}).encode()
    return header + binary, len(header)


def pixels_input(rows: int = 1, **changes: Any) -> dict[str, Any]:
    return {
        "name": "input",
        "shape": [rows, 64],
        "datatype": "FP32",
        "parameters": {"binary_data_size": rows * 256},
    } | changes


ONE_IMAGE = PIXELS[:1].tobytes()
SIZE = "inputs[0].parameters.binary_data_size"


def prompt_bytes(*elements: bytes) -> bytes:
    return b"".join(len(element).to_bytes(4, "little") + element for element in elements)


def prompts_input(count: int, size: int) -> dict[str, Any]:
    return {"name": "text_input", "shape": [count], "datatype": "BYTES", "parameters": {"binary_data_size": size}}


@pytest.mark.parametrize(
    ("body", "header_length", "expected"),
    [
        (
            body_of([pixels_input()], ONE_IMAGE)[0],
            "64 bytes",
            'Inference-Header-Content-Length: must be a whole number of bytes, not "64 bytes"',
        ),
        (b"{}", "3", 'Inference-Header-Content-Length: "3" is more than the body\'s 2 bytes'),
        (
            b"{}",
            "9" * 5000,
            "Inference-Header-Content-Length: \"999999999999999999999999999999999999... is more than the body's 2 bytes",
        ),
        (
            b'{"inputs": [1]}xyz',
            "12",
            "request body is not valid JSON: Expecting value at line 1 column 13 "
            "(the first 12 bytes of the body, as Inference-Header-Content-Length says)",
        ),
        (
            body_of([pixels_input()], b"")[0],
            None,
            f"{SIZE}: 256 bytes, but without the header Inference-Header-Content-Length the whole body is JSON "
            "and holds no binary data",
        ),
        (
            *body_of([pixels_input()], ONE_IMAGE[:-4]),
            f"{SIZE}: 256 bytes, but only 252 bytes of binary data are left for it",
        ),
        (
            *body_of([pixels_input()], ONE_IMAGE + b"\0" * 4),
            "Inference-Header-Content-Length: 4 bytes after the JSON header belong to no input; "
            "the inputs' parameters.binary_data_size add up to 256",
        ),
        (
            *body_of([pixels_input(2, parameters={"binary_data_size": 256})], ONE_IMAGE),
            f"{SIZE}: shape [2, 64] of FP32 needs 512 bytes, got 256",
        ),
        (
            *body_of([pixels_input(parameters={"binary_data_size": "256"})], ONE_IMAGE),
            f'{SIZE}: must be a whole number of bytes, not "256"',
        ),
        (
            *body_of([pixels_input(data=[0] * 64)], ONE_IMAGE),
            f"{SIZE}: the tensor is in the binary data, so inputs[0].data must be left out",
        ),
        (
            *body_of([pixels_input(datatype="BF16")], ONE_IMAGE),
            'inputs[0].datatype: "BF16" has no binary form; expected BOOL, UINT8, UINT16, UINT32, UINT64, INT8, INT16, '
            "INT32, INT64, FP16, FP32, FP64, BYTES",
        ),
        (
            *body_of([pixels_input(shape="1x64")], ONE_IMAGE),
            'inputs[0].shape: must be a list of sizes (whole numbers, not negative), not "1x64"',
        ),
        (
            *body_of([prompts_input(3, 8)], prompt_bytes(b"", b"")),
            f"{SIZE}: 3 BYTES elements need at least 12 bytes, got 8",
        ),
        (
            *body_of([prompts_input(1, 6)], (5).to_bytes(4, "little") + b"ab"),
            f"{SIZE}: element 0 is 5 bytes long but only 2 bytes are left",
        ),
        (
            *body_of([prompts_input(2, 9)], prompt_bytes(b"abcd") + b"\0"),
            f"{SIZE}: the data ends before element 1's length",
        ),
        (
            *body_of([prompts_input(1, 6)], prompt_bytes(b"\xff\xfe")),
            "inputs[0] element 0: not UTF-8 text: invalid start byte",
        ),
        (
            *body_of([prompts_input(1, 7)], prompt_bytes(b"a") + b"zz"),
            f"{SIZE}: 2 bytes are left over after the elements of shape [1]",
        ),
        (
            *body_of([pixels_input()], ONE_IMAGE, parameters={"binary_data_output": "yes"}),
            'parameters.binary_data_output: must be true or false, not "yes"',
        ),
        (
            *body_of([pixels_input()], ONE_IMAGE, outputs=[{"name": "predictions", "parameters": {"binary_data": 1}}]),
            "outputs[0].parameters.binary_data: must be true or false, not 1",
        ),
        (
            *body_of([pixels_input()], ONE_IMAGE, outputs=[{"name": "predictions", "parameters": []}]),
            "outputs[0].parameters: must be a JSON object, not a list",
        ),
    ],
    ids=[
        "header-length-not-a-number",
        "header-length-past-the-body",
        "header-length-huge",
        "header-not-json",
        "binary-without-header",
        "too-few-bytes",
        "leftover-bytes",
        "size-not-the-shape",
        "size-not-a-number",
        "binary-and-data",
        "no-binary-datatype",
        "shape-not-a-list",
        "bytes-shape-past-the-data",
        "bytes-element-past-the-data",
        "bytes-length-cut",
        "bytes-not-utf8",
        "bytes-left-over",
        "binary-data-output-not-bool",
        "binary-data-not-bool",
        "output-parameters-not-object",
    ],
)
def test_a_malformed_binary_request_is_400_naming_the_field(
    body: bytes, header_length: int | str | None, expected: str
) -> None:
    with pytest.raises(ProtocolError) as caught:
        decode_request(body, None if header_length is None else str(header_length))
    assert caught.value.status == 400 and caught.value.message == expected, caught.value.message
    assert "\n" not in caught.value.message


def test_a_compressed_body_is_415_not_read_as_garbage() -> None:
    check_content_encoding(None)
    check_content_encoding("identity")
    with pytest.raises(ProtocolError) as caught:
        check_content_encoding("gzip")
    assert caught.value.status == 415
    assert caught.value.message == 'Content-Encoding: "gzip" is not supported; send the body uncompressed'


def test_the_extension_leaves_the_model_no_parameter_of_its_own() -> None:
    # binary_data_output and binary_data belong to the wire format: a model that takes no parameters must not see them.
    body, length = body_of(
        [pixels_input()],
        ONE_IMAGE,
        parameters={"binary_data_output": True},
        outputs=[{"name": "predictions", "parameters": {"binary_data": False}}],
    )
    request = decode_request(body, str(length))
    assert request.document["parameters"] == {}
    assert request.document["outputs"] == [{"name": "predictions"}]
    assert request.document["inputs"][0]["data"] == PIXELS[0].tolist()
    assert "parameters" not in request.document["inputs"][0]
    assert not request.outputs.wants("predictions") and request.outputs.wants("probabilities")
