"""KServe's request and response formats, v1 and the Open Inference Protocol (v2), without any web framework.

Every malformed request becomes a ProtocolError with a 4xx status and one line that names the field and the reason,
so a client learns what to fix instead of reading a 500 and a traceback.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

BAD_REQUEST = 400
NOT_FOUND = 404
MODEL_FAILED = 500
"""The model itself failed a request it was given (an answer that is no number): the version is at fault, not the
client."""

PLATFORM = "pytorch"
NUMERIC_DATATYPES = frozenset(
    {"UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64", "FP16", "FP32", "FP64"}
)
_SHOWN = 40
_END = object()

Instance = TypeVar("Instance")


class ProtocolError(Exception):
    """A request the server refuses: the HTTP status and a one-line message for the client."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class InvalidInstance(ValueError):
    """One instance (or the request's parameters) a model cannot take; the caller adds where it was."""


@dataclass(frozen=True)
class TensorSpec:
    """A tensor in the v2 model metadata; -1 in shape is a dimension of any size (the batch)."""

    name: str
    datatype: str
    shape: tuple[int, ...]

    def metadata(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}


@dataclass(frozen=True)
class OutputTensor:
    name: str
    datatype: str
    shape: tuple[int, ...]
    data: list[Any]

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape), "data": self.data}


@dataclass(frozen=True)
class V2Request:
    id: str | None
    instances: list[Any]
    parameters: dict[str, Any]
    requested_outputs: tuple[str, ...] | None


def shown(value: Any) -> str:
    """A value as a message quotes it: short, so one huge field cannot flood the line."""
    text = json.dumps(value) if isinstance(value, (str, int, float, bool, type(None))) else repr(value)
    return text if len(text) <= _SHOWN else text[: _SHOWN - 3] + "..."


def type_name(value: Any) -> str:
    """The kind of a JSON value as a message names it ("a list", "null"), where quoting the value would say too little."""
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(value), "a number"
    )


def parse_json(body: bytes) -> Any:
    if not body.strip():
        raise ProtocolError(BAD_REQUEST, "request body is empty; expected a JSON object")
    try:
        return json.loads(body)
    except UnicodeDecodeError as error:
        raise ProtocolError(BAD_REQUEST, f"request body is not UTF-8 text: {error.reason}") from error
    except json.JSONDecodeError as error:
        raise ProtocolError(
            BAD_REQUEST, f"request body is not valid JSON: {error.msg} at line {error.lineno} column {error.colno}"
        ) from error
    except ValueError as error:
        # Python's own limit on the digits of an integer, which would otherwise surface as a 500.
        raise ProtocolError(BAD_REQUEST, f"request body is not valid JSON: {error}") from error
    except RecursionError as error:
        raise ProtocolError(BAD_REQUEST, "request body is nested too deeply") from error


def check_model_name(requested: str, served: str) -> None:
    if requested != served:
        raise ProtocolError(
            NOT_FOUND, f"model {shown(requested)} is not served here; this server serves {shown(served)}"
        )


def _object(document: Any, what: str) -> dict[str, Any]:
    if not isinstance(document, dict):
        raise ProtocolError(BAD_REQUEST, f"{what}: must be a JSON object, not {type_name(document)}")
    return document


def _unknown_fields(document: Mapping[str, Any], known: Sequence[str], where: str) -> None:
    # A misspelt field silently ignored would answer a different question than the client asked.
    for key in document:
        if key not in known:
            prefix = f"{where}." if where else ""
            name = key if len(key) <= _SHOWN else shown(key)
            raise ProtocolError(BAD_REQUEST, f"{prefix}{name}: unknown field; expected {', '.join(known)}")


def _check_count(count: int, field: str, max_instances: int) -> None:
    if count == 0:
        raise ProtocolError(BAD_REQUEST, f"{field}: must hold at least one instance")
    if count > max_instances:
        raise ProtocolError(
            BAD_REQUEST, f"{field}: at most {max_instances} instances per request, got {count}; split the request"
        )


def parse_instances(
    values: Sequence[Any], parse_one: Callable[[Any], Instance], location: Callable[[int], str]
) -> list[Instance]:
    """Each instance through the model's parser; the first bad one is reported with where it was."""
    parsed: list[Instance] = []
    for index, value in enumerate(values):
        try:
            parsed.append(parse_one(value))
        except InvalidInstance as error:
            raise ProtocolError(BAD_REQUEST, f"{location(index)}: {error}") from error
    return parsed


def parse_v1_request(document: Any, max_instances: int) -> list[Any]:
    """The instances of a v1 predict body `{"instances": [...]}`, not yet checked against the model."""
    body = _object(document, "request body")
    if "instances" not in body:
        found = f" (found: {', '.join(shown(key) for key in body)})" if body else ""
        raise ProtocolError(
            BAD_REQUEST, f'instances: required field is missing; expected {{"instances": [...]}}{found}'
        )
    _unknown_fields(body, ["instances"], "")
    instances = body["instances"]
    if not isinstance(instances, list):
        raise ProtocolError(BAD_REQUEST, f"instances: must be a list, not {type_name(instances)}")
    _check_count(len(instances), "instances", max_instances)
    return instances


def v1_location(index: int) -> str:
    return f"instances[{index}]"


def v1_response(predictions: list[Any]) -> dict[str, Any]:
    return {"predictions": predictions}


def _flatten(data: list[Any]) -> list[Any]:
    """Row-major values; KServe accepts nested lists as well as the flat list the protocol describes."""
    flat: list[Any] = []
    # A stack of iterators rather than recursion: the nesting depth is the client's choice.
    pending = [iter(data)]
    while pending:
        value = next(pending[-1], _END)
        if value is _END:
            pending.pop()
        elif isinstance(value, list):
            pending.append(iter(value))
        else:
            flat.append(value)
    return flat


def _shape(value: Any, field: str, expected: TensorSpec) -> list[int]:
    wanted = "[" + ", ".join("N" if size < 0 else str(size) for size in expected.shape) + "]"
    if not isinstance(value, list) or not all(isinstance(size, int) and not isinstance(size, bool) for size in value):
        raise ProtocolError(
            BAD_REQUEST, f"{field}: must be a list of whole numbers such as {wanted}, not {shown(value)}"
        )
    if len(value) != len(expected.shape) or any(
        want >= 0 and size != want for size, want in zip(value, expected.shape, strict=False)
    ):
        raise ProtocolError(BAD_REQUEST, f"{field}: expected {wanted}, got {shown(value)}")
    if any(size < 0 for size in value):
        raise ProtocolError(BAD_REQUEST, f"{field}: sizes must not be negative, got {shown(value)}")
    return value


def _check_datatype(value: Any, field: str, expected: TensorSpec) -> None:
    accepted = NUMERIC_DATATYPES if expected.datatype in NUMERIC_DATATYPES else frozenset({expected.datatype})
    if value not in accepted:
        kind = f"a numeric datatype such as {expected.datatype}" if len(accepted) > 1 else expected.datatype
        raise ProtocolError(BAD_REQUEST, f"{field}: must be {kind}, not {shown(value)}")


def _instances_of_tensor(tensor: Any, expected: TensorSpec, max_instances: int) -> list[Any]:
    """The tensor cut into instances along its first dimension: rows as lists, or scalars for a 1-D tensor."""
    field = "inputs[0]"
    tensor = _object(tensor, field)
    for required in ("name", "shape", "datatype", "data"):
        if required not in tensor:
            raise ProtocolError(BAD_REQUEST, f"{field}.{required}: required field is missing")
    _unknown_fields(tensor, ["name", "shape", "datatype", "data", "parameters"], field)
    if tensor["name"] != expected.name:
        raise ProtocolError(
            BAD_REQUEST, f"{field}.name: this model's input is {shown(expected.name)}, not {shown(tensor['name'])}"
        )
    _check_datatype(tensor["datatype"], f"{field}.datatype", expected)
    shape = _shape(tensor["shape"], f"{field}.shape", expected)
    if not isinstance(tensor["data"], list):
        raise ProtocolError(BAD_REQUEST, f"{field}.data: must be a list, not {type_name(tensor['data'])}")
    data = _flatten(tensor["data"])
    if len(data) != math.prod(shape):
        raise ProtocolError(
            BAD_REQUEST, f"{field}.data: shape {shown(shape)} needs {math.prod(shape)} values, got {len(data)}"
        )
    count, row = shape[0], math.prod(shape[1:])
    _check_count(count, f"{field}.shape[0]", max_instances)
    if len(shape) == 1:
        return data
    return [data[start : start + row] for start in range(0, count * row, row)]


def parse_v2_request(
    document: Any, expected: TensorSpec, outputs: Sequence[TensorSpec], max_instances: int
) -> V2Request:
    """An Open Inference Protocol infer body for a model with one input tensor, not yet checked against the model."""
    body = _object(document, "request body")
    _unknown_fields(body, ["id", "inputs", "outputs", "parameters"], "")
    request_id = body.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise ProtocolError(BAD_REQUEST, f"id: must be a string, not {shown(request_id)}")
    parameters = body.get("parameters", {})
    if not isinstance(parameters, dict):
        raise ProtocolError(BAD_REQUEST, f"parameters: must be a JSON object, not {type_name(parameters)}")
    if "inputs" not in body:
        raise ProtocolError(BAD_REQUEST, "inputs: required field is missing")
    inputs = body["inputs"]
    if not isinstance(inputs, list) or len(inputs) != 1:
        got = f"{len(inputs)} tensors" if isinstance(inputs, list) else type_name(inputs)
        raise ProtocolError(
            BAD_REQUEST, f"inputs: this model takes exactly one input tensor, {shown(expected.name)}; got {got}"
        )
    return V2Request(
        id=request_id,
        instances=_instances_of_tensor(inputs[0], expected, max_instances),
        parameters=parameters,
        requested_outputs=_requested_outputs(body.get("outputs"), outputs),
    )


def _requested_outputs(requested: Any, available: Sequence[TensorSpec]) -> tuple[str, ...] | None:
    """The output names a client asked for, checked before the model runs."""
    if requested is None:
        return None
    example = f'[{{"name": {shown(available[0].name)}}}]'
    if not isinstance(requested, list) or not requested:
        raise ProtocolError(BAD_REQUEST, f"outputs: must be a non-empty list such as {example}")
    known = [tensor.name for tensor in available]
    names: list[str] = []
    for index, output in enumerate(requested):
        if not isinstance(output, dict) or not isinstance(output.get("name"), str):
            raise ProtocolError(BAD_REQUEST, f"outputs[{index}]: must be an object with a name, such as {example}")
        if output["name"] not in known:
            raise ProtocolError(
                BAD_REQUEST,
                f"outputs[{index}].name: no output {shown(output['name'])}; this model has {', '.join(known)}",
            )
        names.append(output["name"])
    return tuple(names)


def v2_location(index: int) -> str:
    return f"inputs[0] instance {index}"


def select_outputs(tensors: Sequence[OutputTensor], requested: Sequence[str] | None) -> list[OutputTensor]:
    """The output tensors the client asked for (names parse_v2_request checked), in its order; all when it named none."""
    if requested is None:
        return list(tensors)
    by_name = {tensor.name: tensor for tensor in tensors}
    return [by_name[name] for name in requested]


def v2_response(
    model_name: str, model_version: str, request_id: str, outputs: Sequence[OutputTensor]
) -> dict[str, Any]:
    return {
        "model_name": model_name,
        "model_version": model_version,
        "id": request_id,
        "outputs": [tensor.to_json() for tensor in outputs],
    }


def model_metadata(
    model_name: str, model_version: str, inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec]
) -> dict[str, Any]:
    return {
        "name": model_name,
        "versions": [model_version],
        "platform": PLATFORM,
        "inputs": [tensor.metadata() for tensor in inputs],
        "outputs": [tensor.metadata() for tensor in outputs],
    }
