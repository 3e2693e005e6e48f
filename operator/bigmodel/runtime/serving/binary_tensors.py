"""The Open Inference Protocol's binary tensor data extension: tensors as raw bytes after the JSON of a v2 infer
request or answer, as Triton's and KServe's HTTP clients send them (tritonclient asks for binary outputs by default).

A binary request is turned into the plain JSON request it stands for, and the JSON answer into its binary form, so
protocol.py parses and builds one format and both modes give the same numbers. Binary data is little-endian and row
major; a BOOL element is one byte, a BYTES element a 4-byte little-endian length and then its bytes.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bigmodel.runtime.serving.protocol import BAD_REQUEST, ProtocolError, parse_json, shown, type_name

EXTENSION = "binary_tensor_data"
HEADER_LENGTH = "Inference-Header-Content-Length"
OCTET_STREAM = "application/octet-stream"
UNSUPPORTED_MEDIA_TYPE = 415
BINARY_DATA_SIZE = "binary_data_size"
BINARY_DATA = "binary_data"
BINARY_DATA_OUTPUT = "binary_data_output"

BYTES = "BYTES"
_FIXED_SIZE = {
    name: np.dtype(code)
    for name, code in {
        "BOOL": "?",
        "UINT8": "<u1",
        "UINT16": "<u2",
        "UINT32": "<u4",
        "UINT64": "<u8",
        "INT8": "<i1",
        "INT16": "<i2",
        "INT32": "<i4",
        "INT64": "<i8",
        "FP16": "<f2",
        "FP32": "<f4",
        "FP64": "<f8",
    }.items()
}
_LENGTH = struct.Struct("<I")


@dataclass(frozen=True)
class BinaryOutputs:
    """Which outputs the client wants as binary data: each output's `binary_data`, else the request's
    `binary_data_output`."""

    default: bool = False
    by_name: Mapping[str, bool] = field(default_factory=dict)

    def wants(self, name: str) -> bool:
        return self.by_name.get(name, self.default)


@dataclass(frozen=True)
class InferBody:
    """A v2 infer body: the plain JSON request it stands for, and how the client wants its outputs."""

    document: Any
    outputs: BinaryOutputs


@dataclass(frozen=True)
class EncodedAnswer:
    """A v2 answer with binary outputs: the JSON header and the tensors' bytes, and the header's length."""

    body: bytes
    header_length: int


def check_content_encoding(value: str | None) -> None:
    # A compressed body read as it is would be refused as malformed JSON, which says nothing of the real cause.
    if value is not None and value.strip().lower() not in ("", "identity"):
        raise ProtocolError(
            UNSUPPORTED_MEDIA_TYPE, f"Content-Encoding: {shown(value)} is not supported; send the body uncompressed"
        )


def decode_request(body: bytes, header_length: str | None) -> InferBody:
    """A v2 infer body, with or without binary inputs, as the JSON request it stands for."""
    header, binary = _split(body, header_length)
    try:
        document = parse_json(header)
    except ProtocolError as error:
        if header_length is None:
            raise
        raise ProtocolError(
            error.status, f"{error.message} (the first {len(header)} bytes of the body, as {HEADER_LENGTH} says)"
        ) from error
    # A document that is no object, or has no list of inputs, is left for protocol.py to name what is wrong.
    if not isinstance(document, dict):
        return InferBody(document, BinaryOutputs())
    if isinstance(document.get("inputs"), list):
        document = {**document, "inputs": _with_binary_inputs(document["inputs"], binary, header_length is not None)}
    document, default = _without_binary_output(document)
    document, by_name = _without_binary_data(document)
    return InferBody(document, BinaryOutputs(default, by_name))


def encode_response(answer: Mapping[str, Any], outputs: BinaryOutputs) -> EncodedAnswer | None:
    """A v2 answer (protocol.v2_response) with the outputs the client wants in binary as bytes after its JSON, or
    None when it wants none that way and the JSON answer stands."""
    tensors: list[Mapping[str, Any]] = []
    chunks: list[bytes] = []
    for tensor in answer["outputs"]:
        if outputs.wants(tensor["name"]):
            raw = _encode(tensor["datatype"], tensor["data"])
            chunks.append(raw)
            tensor = {key: value for key, value in tensor.items() if key != "data"}
            tensor["parameters"] = {BINARY_DATA_SIZE: len(raw)}
        tensors.append(tensor)
    if not chunks:
        return None
    # As Starlette's JSONResponse writes the JSON answer.
    header = json.dumps(
        {**answer, "outputs": tensors}, ensure_ascii=False, allow_nan=False, separators=(",", ":")
    ).encode()
    return EncodedAnswer(header + b"".join(chunks), len(header))


def _split(body: bytes, header_length: str | None) -> tuple[bytes, bytes]:
    """The JSON header of a body and the binary data after it."""
    if header_length is None:
        return body, b""
    text = header_length.strip()
    # isascii: str.isdigit() also takes digits int() refuses, such as the superscript two of Latin-1.
    if not (text.isascii() and text.isdigit()):
        raise ProtocolError(BAD_REQUEST, f"{HEADER_LENGTH}: must be a whole number of bytes, not {shown(text)}")
    # A number with more digits than the body's size is larger than it, and int() refuses very long ones.
    digits = text.lstrip("0") or "0"
    if len(digits) > len(str(len(body))) or int(digits) > len(body):
        raise ProtocolError(BAD_REQUEST, f"{HEADER_LENGTH}: {shown(text)} is more than the body's {len(body)} bytes")
    length = int(digits)
    return body[:length], body[length:]


def _with_binary_inputs(inputs: Sequence[Any], binary: bytes, has_header: bool) -> list[Any]:
    """The inputs with each binary tensor's bytes, taken in input order, as its `data`."""
    decoded: list[Any] = []
    offset = 0
    for index, tensor in enumerate(inputs):
        parameters = tensor.get("parameters") if isinstance(tensor, dict) else None
        if not isinstance(parameters, dict) or BINARY_DATA_SIZE not in parameters:
            decoded.append(tensor)
            continue
        where = f"inputs[{index}].parameters.{BINARY_DATA_SIZE}"
        size = parameters[BINARY_DATA_SIZE]
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise ProtocolError(BAD_REQUEST, f"{where}: must be a whole number of bytes, not {shown(size)}")
        if "data" in tensor:
            raise ProtocolError(
                BAD_REQUEST, f"{where}: the tensor is in the binary data, so inputs[{index}].data must be left out"
            )
        if offset + size > len(binary):
            raise ProtocolError(BAD_REQUEST, f"{where}: {size} bytes, {_left(len(binary) - offset, has_header)}")
        data = _decode(tensor, index, binary[offset : offset + size])
        offset += size
        rest = {key: value for key, value in parameters.items() if key != BINARY_DATA_SIZE}
        tensor = {key: value for key, value in tensor.items() if key != "parameters"} | {"data": data}
        decoded.append(tensor | {"parameters": rest} if rest else tensor)
    if offset < len(binary):
        raise ProtocolError(
            BAD_REQUEST,
            f"{HEADER_LENGTH}: {len(binary) - offset} bytes after the JSON header belong to no input; "
            f"the inputs' parameters.{BINARY_DATA_SIZE} add up to {offset}",
        )
    return decoded


def _left(count: int, has_header: bool) -> str:
    if not has_header:
        return f"but without the header {HEADER_LENGTH} the whole body is JSON and holds no binary data"
    return f"but only {count} bytes of binary data are left for it"


def _decode(tensor: Mapping[str, Any], index: int, raw: bytes) -> list[Any]:
    """The flat, row-major values of one input tensor's binary data."""
    where = f"inputs[{index}]"
    datatype = tensor.get("datatype")
    if not isinstance(datatype, str) or (datatype != BYTES and datatype not in _FIXED_SIZE):
        if "datatype" not in tensor:
            raise ProtocolError(BAD_REQUEST, f"{where}.datatype: required field is missing")
        known = ", ".join([*_FIXED_SIZE, BYTES])
        raise ProtocolError(BAD_REQUEST, f"{where}.datatype: {shown(datatype)} has no binary form; expected {known}")
    count = _element_count(tensor.get("shape"), f"{where}.shape")
    size = f"{where}.parameters.{BINARY_DATA_SIZE}"
    if datatype == BYTES:
        return _decode_bytes(raw, tensor["shape"], where, size)
    dtype = _FIXED_SIZE[datatype]
    if len(raw) != count * dtype.itemsize:
        raise ProtocolError(
            BAD_REQUEST,
            f"{size}: shape {shown(tensor['shape'])} of {datatype} needs {count * dtype.itemsize} bytes, got {len(raw)}",
        )
    return np.frombuffer(raw, dtype=dtype).tolist()


def _element_count(shape: Any, where: str) -> int:
    # The shape sizes the binary data; protocol.py checks it against the model afterwards.
    if not isinstance(shape, list) or not all(
        isinstance(size, int) and not isinstance(size, bool) and size >= 0 for size in shape
    ):
        raise ProtocolError(
            BAD_REQUEST, f"{where}: must be a list of sizes (whole numbers, not negative), not {shown(shape)}"
        )
    return math.prod(shape)


def _decode_bytes(raw: bytes, shape: list[int], where: str, size: str) -> list[str]:
    count = math.prod(shape)
    # Every element takes at least its 4-byte length: a shape the bytes cannot hold is refused before any is read.
    if count * _LENGTH.size > len(raw):
        raise ProtocolError(
            BAD_REQUEST, f"{size}: {count} BYTES elements need at least {count * _LENGTH.size} bytes, got {len(raw)}"
        )
    elements: list[str] = []
    offset = 0
    for element in range(count):
        if offset + _LENGTH.size > len(raw):
            raise ProtocolError(BAD_REQUEST, f"{size}: the data ends before element {element}'s length")
        (length,) = _LENGTH.unpack_from(raw, offset)
        offset += _LENGTH.size
        if offset + length > len(raw):
            raise ProtocolError(
                BAD_REQUEST,
                f"{size}: element {element} is {length} bytes long but only {len(raw) - offset} bytes are left",
            )
        try:
            elements.append(raw[offset : offset + length].decode())
        except UnicodeDecodeError as error:
            raise ProtocolError(BAD_REQUEST, f"{where} element {element}: not UTF-8 text: {error.reason}") from error
        offset += length
    if offset != len(raw):
        raise ProtocolError(
            BAD_REQUEST, f"{size}: {len(raw) - offset} bytes are left over after the elements of shape {shown(shape)}"
        )
    return elements


def _without_binary_output(document: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    """The request without `parameters.binary_data_output`, which is the extension's, not the model's."""
    parameters = document.get("parameters")
    if not isinstance(parameters, dict) or BINARY_DATA_OUTPUT not in parameters:
        return document, False
    default = _flag(parameters[BINARY_DATA_OUTPUT], f"parameters.{BINARY_DATA_OUTPUT}")
    rest = {key: value for key, value in parameters.items() if key != BINARY_DATA_OUTPUT}
    return {**document, "parameters": rest}, default


def _without_binary_data(document: dict[str, Any]) -> tuple[dict[str, Any], dict[str, bool]]:
    """The request without each output's `parameters.binary_data`, and what each asked for."""
    outputs = document.get("outputs")
    if not isinstance(outputs, list):
        return document, {}
    plain: list[Any] = []
    by_name: dict[str, bool] = {}
    for index, output in enumerate(outputs):
        parameters = output.get("parameters") if isinstance(output, dict) else None
        if parameters is None:
            plain.append(output)
            continue
        where = f"outputs[{index}].parameters"
        if not isinstance(parameters, dict):
            raise ProtocolError(BAD_REQUEST, f"{where}: must be a JSON object, not {type_name(parameters)}")
        # An output without a name string is protocol.py's to refuse.
        if BINARY_DATA in parameters and isinstance(output.get("name"), str):
            by_name[output["name"]] = _flag(parameters[BINARY_DATA], f"{where}.{BINARY_DATA}")
        rest = {key: value for key, value in parameters.items() if key != BINARY_DATA}
        output = {key: value for key, value in output.items() if key != "parameters"}
        plain.append(output | {"parameters": rest} if rest else output)
    return {**document, "outputs": plain}, by_name


def _flag(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise ProtocolError(BAD_REQUEST, f"{where}: must be true or false, not {shown(value)}")
    return value


def _encode(datatype: str, data: Sequence[Any]) -> bytes:
    if datatype == BYTES:
        encoded = [value.encode() for value in data]
        return b"".join(_LENGTH.pack(len(value)) + value for value in encoded)
    return np.asarray(data, dtype=_FIXED_SIZE[datatype]).tobytes()
