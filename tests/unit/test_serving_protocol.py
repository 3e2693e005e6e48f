"""KServe v1 and v2 request parsing: what a client may send, and the one-line 4xx answer to everything else."""

from __future__ import annotations

import json
from typing import Any

import pytest

from bigmodel.runtime.serving.protocol import (
    InvalidInstance,
    OutputTensor,
    ProtocolError,
    TensorSpec,
    check_model_name,
    model_metadata,
    parse_instances,
    parse_json,
    parse_v1_request,
    parse_v2_request,
    select_outputs,
    v1_location,
    v2_location,
    v2_response,
)

PIXELS = TensorSpec("input", "FP32", (-1, 4))
TEXT = TensorSpec("text_input", "BYTES", (-1,))
OUTPUTS = (TensorSpec("predictions", "INT64", (-1,)), TensorSpec("probabilities", "FP32", (-1, 3)))


def refused(call: Any, *args: Any) -> ProtocolError:
    with pytest.raises(ProtocolError) as caught:
        call(*args)
    assert "\n" not in caught.value.message, "the message must stay on one line"
    return caught.value


def v2_body(**tensor: Any) -> dict[str, Any]:
    return {"inputs": [{"name": "input", "shape": [2, 4], "datatype": "FP32", "data": list(range(8))} | tensor]}


def test_json_body_is_parsed() -> None:
    assert parse_json(b'{"instances": [1]}') == {"instances": [1]}


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b"", "request body is empty"),
        (b"  \n", "request body is empty"),
        (b'{"instances": ', "not valid JSON: Expecting value at line 1 column 15"),
        (b"\xff\xfe{", "not UTF-8"),
        (b"[" * 100_000, "request body is nested too deeply"),
        (b"[" + b"9" * 5000 + b"]", "not valid JSON: Exceeds the limit (4300 digits)"),
    ],
)
def test_a_body_that_is_not_json_is_400(body: bytes, expected: str) -> None:
    error = refused(parse_json, body)
    assert error.status == 400 and expected in error.message, error.message


def test_an_unknown_model_is_404_naming_both_models() -> None:
    check_model_name("digits", "digits")
    error = refused(check_model_name, "mnist", "digits")
    assert error.status == 404
    assert error.message == 'model "mnist" is not served here; this server serves "digits"'


def test_v1_instances_come_back_as_sent() -> None:
    assert parse_v1_request({"instances": [[1, 2], "x", {"prompt": "y"}]}, 8) == [[1, 2], "x", {"prompt": "y"}]


@pytest.mark.parametrize(
    ("document", "expected"),
    [
        ([1, 2], "request body: must be a JSON object, not a list"),
        ({}, 'instances: required field is missing; expected {"instances": [...]}'),
        (
            {"instance": [[1]]},
            'instances: required field is missing; expected {"instances": [...]} (found: "instance")',
        ),
        ({"instances": [[1]], "inputs": 1}, "inputs: unknown field; expected instances"),
        ({"instances": {"a": 1}}, "instances: must be a list, not an object"),
        ({"instances": []}, "instances: must hold at least one instance"),
        ({"instances": [0] * 9}, "instances: at most 8 instances per request, got 9; split the request"),
    ],
    ids=["not-an-object", "empty-object", "misspelt", "extra-field", "not-a-list", "empty-list", "too-many"],
)
def test_malformed_v1_requests_are_400_naming_the_field(document: Any, expected: str) -> None:
    error = refused(parse_v1_request, document, 8)
    assert error.status == 400 and error.message == expected, error.message


def test_a_bad_instance_is_reported_with_its_position() -> None:
    def parse(value: Any) -> int:
        if not isinstance(value, int):
            raise InvalidInstance(f"must be a whole number, not {json.dumps(value)}")
        return value

    assert parse_instances([1, 2], parse, v1_location) == [1, 2]
    error = refused(parse_instances, [1, 2, "three"], parse, v1_location)
    assert error.status == 400 and error.message == 'instances[2]: must be a whole number, not "three"'
    error = refused(parse_instances, [1, "two"], parse, v2_location)
    assert error.message == 'inputs[0] instance 1: must be a whole number, not "two"'


def test_v2_tensor_is_cut_into_instances_along_its_first_dimension() -> None:
    flat = parse_v2_request(v2_body(), PIXELS, OUTPUTS, 8)
    assert flat.instances == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert flat.id is None and flat.parameters == {} and flat.requested_outputs is None
    # KServe's clients also send nested rows; both mean the same tensor.
    nested = parse_v2_request(v2_body(data=[[0, 1, 2, 3], [4, 5, 6, 7]]), PIXELS, OUTPUTS, 8)
    assert nested.instances == flat.instances
    deep = parse_v2_request(v2_body(data=[[[0, [1]], 2, [[3]]], [4, 5, [6, 7]]]), PIXELS, OUTPUTS, 8)
    assert deep.instances == flat.instances
    # Any numeric datatype carries pixel values; a client need not convert to FP32 first.
    assert parse_v2_request(v2_body(datatype="INT64"), PIXELS, OUTPUTS, 8).instances == flat.instances


def test_v2_one_dimensional_bytes_tensor_gives_one_instance_per_element() -> None:
    body = {
        "id": "req-1",
        "inputs": [{"name": "text_input", "shape": [2], "datatype": "BYTES", "data": ["def f", "import"]}],
        "parameters": {"max_new_tokens": 4},
        "outputs": [{"name": "text_output"}],
    }
    request = parse_v2_request(body, TEXT, (TensorSpec("text_output", "BYTES", (-1,)),), 8)
    assert request.instances == ["def f", "import"]
    assert request.id == "req-1" and request.parameters == {"max_new_tokens": 4}
    assert request.requested_outputs == ("text_output",)


@pytest.mark.parametrize(
    ("document", "expected"),
    [
        ("[]", "request body: must be a JSON object, not a string"),
        ({}, "inputs: required field is missing"),
        ({"inputs": [], "extra": 1}, "extra: unknown field; expected id, inputs, outputs, parameters"),
        ({"id": 7, "inputs": []}, "id: must be a string, not 7"),
        ({"inputs": [], "parameters": [1]}, "parameters: must be a JSON object, not a list"),
        ({"inputs": []}, 'inputs: this model takes exactly one input tensor, "input"; got 0 tensors'),
        ({"inputs": {"name": "input"}}, 'inputs: this model takes exactly one input tensor, "input"; got an object'),
        ({"inputs": ["x"]}, "inputs[0]: must be a JSON object, not a string"),
        (
            {"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32"}]},
            "inputs[0].data: required field is missing",
        ),
        (v2_body(name="pixels"), 'inputs[0].name: this model\'s input is "input", not "pixels"'),
        (v2_body(datatype="BYTES"), 'inputs[0].datatype: must be a numeric datatype such as FP32, not "BYTES"'),
        (v2_body(shape=[8]), "inputs[0].shape: expected [N, 4], got [8]"),
        (v2_body(shape=[2, 5]), "inputs[0].shape: expected [N, 4], got [2, 5]"),
        (v2_body(shape="2x4"), 'inputs[0].shape: must be a list of whole numbers such as [N, 4], not "2x4"'),
        (v2_body(shape=[-2, 4]), "inputs[0].shape: sizes must not be negative, got [-2, 4]"),
        (v2_body(data=list(range(7))), "inputs[0].data: shape [2, 4] needs 8 values, got 7"),
        (v2_body(data="0123"), "inputs[0].data: must be a list, not a string"),
        (v2_body(shape=[0, 4], data=[]), "inputs[0].shape[0]: must hold at least one instance"),
        (
            v2_body(shape=[9, 4], data=[0] * 36),
            "inputs[0].shape[0]: at most 8 instances per request, got 9; split the request",
        ),
        (v2_body(unknown=1), "inputs[0].unknown: unknown field; expected name, shape, datatype, data, parameters"),
        (v2_body() | {"outputs": []}, 'outputs: must be a non-empty list such as [{"name": "predictions"}]'),
        (
            v2_body() | {"outputs": ["predictions"]},
            'outputs[0]: must be an object with a name, such as [{"name": "predictions"}]',
        ),
        (
            v2_body() | {"outputs": [{"name": "logits"}]},
            'outputs[0].name: no output "logits"; this model has predictions, probabilities',
        ),
    ],
)
def test_malformed_v2_requests_are_400_naming_the_field(document: Any, expected: str) -> None:
    error = refused(parse_v2_request, document, PIXELS, OUTPUTS, 8)
    assert error.status == 400 and error.message == expected, error.message


def test_a_bytes_input_refuses_numbers_datatypes() -> None:
    body = {"inputs": [{"name": "text_input", "shape": [1], "datatype": "FP32", "data": [1.0]}]}
    error = refused(parse_v2_request, body, TEXT, OUTPUTS, 8)
    assert error.message == 'inputs[0].datatype: must be BYTES, not "FP32"'


def test_long_values_are_shortened_in_messages() -> None:
    error = refused(check_model_name, "m" * 500, "digits")
    assert len(error.message) < 120, error.message


def test_requested_outputs_are_selected_in_the_order_asked() -> None:
    tensors = [
        OutputTensor("predictions", "INT64", (1,), [3]),
        OutputTensor("probabilities", "FP32", (1, 3), [0, 1, 0]),
    ]
    assert select_outputs(tensors, None) == tensors
    assert select_outputs(tensors, ("probabilities", "predictions")) == tensors[::-1]


def test_v2_response_and_metadata_follow_the_open_inference_protocol() -> None:
    response = v2_response("digits", "abc", "req-1", [OutputTensor("predictions", "INT64", (2,), [3, 4])])
    assert response == {
        "model_name": "digits",
        "model_version": "abc",
        "id": "req-1",
        "outputs": [{"name": "predictions", "datatype": "INT64", "shape": [2], "data": [3, 4]}],
    }
    metadata = model_metadata("digits", "abc", [PIXELS], OUTPUTS)
    assert metadata == {
        "name": "digits",
        "versions": ["abc"],
        "platform": "pytorch",
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 4]}],
        "outputs": [
            {"name": "predictions", "datatype": "INT64", "shape": [-1]},
            {"name": "probabilities", "datatype": "FP32", "shape": [-1, 3]},
        ],
    }
    json.dumps(metadata)
