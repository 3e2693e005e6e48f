"""Predictors of exported models: a batch gives exactly what one instance at a time and the bare model give."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from sklearn.datasets import load_digits

from bigmodel.runtime.artifacts import load_model
from bigmodel.runtime.serving.predictor import (
    DEFAULT_NEW_TOKENS,
    DigitsPredictor,
    TextPredictor,
    build_predictor,
    predictor_class,
)
from bigmodel.runtime.serving.protocol import ProtocolError, v1_location, v2_location
from bigmodel.runtime.tasks import generate
from tests.support.models import diverged_digits, export_decisive, tiny_gpt_config

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CPU = torch.device("cpu")
DIGITS_CONFIG = {"task": "digits", "hidden_size": 16}
# Context 16, so that prompts longer than the context (which slide) are covered by short strings.
GPT_CONFIG = tiny_gpt_config(context_length=16)


def exported(tmp_path: Path, config: dict[str, Any]) -> tuple[torch.nn.Module, dict[str, Any]]:
    """A model of config, through export and load as a replica reads it."""
    return load_model(export_decisive(tmp_path / "run", config))




@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> DigitsPredictor:
    predictor = build_predictor(*exported(tmp_path_factory.mktemp("digits"), DIGITS_CONFIG), CPU)
    assert isinstance(predictor, DigitsPredictor)
    return predictor


@pytest.fixture(scope="module")
def gpt(tmp_path_factory: pytest.TempPathFactory) -> TextPredictor:
    predictor = build_predictor(*exported(tmp_path_factory.mktemp("gpt"), GPT_CONFIG), CPU)
    assert isinstance(predictor, TextPredictor)
    return predictor


def images(count: int) -> list[list[int]]:
    return [[int(pixel) for pixel in row] for row in load_digits().data[:count]]


def test_digits_batch_equals_one_at_a_time_and_the_bare_model(digits: DigitsPredictor) -> None:
    instances = images(40)
    batched = digits.predict(instances)
    assert batched == [digits.predict([instance])[0] for instance in instances]
    with torch.no_grad():
        direct = digits.model(torch.tensor(instances, dtype=torch.float32) / 16.0).argmax(dim=1).tolist()
    assert batched == direct
    assert all(isinstance(label, int) for label in batched)


def test_digits_v2_outputs_are_labels_and_probabilities(digits: DigitsPredictor) -> None:
    instances = images(3)
    results = digits.run(digits.checked(instances, {}, v2_location))
    labels, probabilities = digits.output_tensors(results)
    assert (labels.name, labels.datatype, labels.shape) == ("predictions", "INT64", (3,))
    assert labels.data == digits.predict(instances)
    assert (probabilities.name, probabilities.datatype, probabilities.shape) == ("probabilities", "FP32", (3, 10))
    rows = [probabilities.data[start : start + 10] for start in range(0, 30, 10)]
    for label, row in zip(labels.data, rows, strict=True):
        assert sum(row) == pytest.approx(1.0, abs=1e-5)
        assert max(range(10), key=row.__getitem__) == label
    assert [spec.name for spec in digits.outputs] == ["predictions", "probabilities"]


@pytest.mark.parametrize(
    ("instance", "expected"),
    [
        ([0] * 63, "instances[1]: must be a list of 64 pixel values (an 8x8 image, row by row), got 63 values"),
        ("0" * 64, "instances[1]: must be a list of 64 pixel values (an 8x8 image, row by row), got"),
        ([0] * 10 + ["7"] + [0] * 53, 'instances[1]: value 10 must be a number from 0 to 16, not "7"'),
        ([True] + [0] * 63, "instances[1]: value 0 must be a number from 0 to 16, not true"),
        ([0] * 63 + [17], "instances[1]: value 63 must be a number from 0 to 16, not 17"),
        ([-1] + [0] * 63, "instances[1]: value 0 must be a number from 0 to 16, not -1"),
        ([float("nan")] + [0] * 63, "instances[1]: value 0 must be a number from 0 to 16, not NaN"),
        ([float("inf")] + [0] * 63, "instances[1]: value 0 must be a number from 0 to 16, not Infinity"),
        ([10**400] + [0] * 63, "instances[1]: value 0 must be a number from 0 to 16, not 10000"),
    ],
    ids=["short", "string", "string-pixel", "boolean", "too-bright", "negative", "nan", "infinity", "huge"],
)
def test_bad_digits_instances_are_400_with_position_and_reason(
    digits: DigitsPredictor, instance: Any, expected: str
) -> None:
    with pytest.raises(ProtocolError) as caught:
        digits.checked([[0] * 64, instance], {}, v1_location)
    assert caught.value.status == 400 and caught.value.message.startswith(expected), caught.value.message


def test_a_diverged_model_answers_a_server_error_not_label_zero(tmp_path: Path) -> None:
    predictor = build_predictor(*load_model(diverged_digits(tmp_path)), CPU)
    with pytest.raises(ProtocolError) as failed:
        predictor.predict(images(2))
    assert failed.value.status == 500 and "not finite" in failed.value.message


def test_digits_take_no_parameters(digits: DigitsPredictor) -> None:
    with pytest.raises(ProtocolError) as caught:
        digits.checked([[0] * 64], {"temperature": 1}, v2_location)
    assert caught.value.message == 'parameters: unknown parameter "temperature"; this model takes none'


def test_gpt_batch_of_mixed_prompts_equals_greedy_generation_one_at_a_time(gpt: TextPredictor) -> None:
    # Equal and different lengths, longer than the context, multi-byte text, and different lengths to generate.
    instances: list[Any] = [
        {"prompt": "def f(x):", "max_new_tokens": 9},
        "hello",
        {"prompt": "world", "max_new_tokens": 3},
        {"prompt": "a", "max_new_tokens": 20},
        {"prompt": "x" * 40, "max_new_tokens": 12},
        {"prompt": "import os, sys # 17+", "max_new_tokens": 5},
        {"prompt": "größer", "max_new_tokens": 7},
        "hello",
    ]
    batched = gpt.predict(instances)
    assert batched == [gpt.predict([instance])[0] for instance in instances]
    for instance, text in zip(instances, batched, strict=True):
        prompt, count = (instance, DEFAULT_NEW_TOKENS) if isinstance(instance, str) else instance.values()
        assert text == generate(gpt.generator.model.model, prompt.encode(), count).decode("utf-8", errors="replace")
    assert len({*batched}) > 3, "the test model should continue different prompts differently"


def test_gpt_parameters_set_the_default_length(gpt: TextPredictor) -> None:
    checked = gpt.checked(["ab", {"prompt": "cd", "max_new_tokens": 2}], {"max_new_tokens": 5}, v2_location)
    assert [prepared.request.max_tokens for prepared in checked] == [5, 2]
    (tensor,) = gpt.output_tensors(gpt.run(checked))
    assert (tensor.name, tensor.datatype, tensor.shape) == ("text_output", "BYTES", (2,))
    assert tensor.data == [
        generate(gpt.generator.model.model, b"ab", 5).decode("utf-8", errors="replace"),
        generate(gpt.generator.model.model, b"cd", 2).decode("utf-8", errors="replace"),
    ]


@pytest.mark.parametrize(
    ("instance", "parameters", "expected"),
    [
        ("", {}, "instances[0]: the prompt must not be empty"),
        (42, {}, 'instances[0]: must be a prompt string or {"prompt": ..., "max_new_tokens": ...}, not 42'),
        ({"text": "hi"}, {}, 'instances[0]: unknown field "text"; expected prompt and max_new_tokens'),
        ({"max_new_tokens": 3}, {}, "instances[0]: prompt is missing"),
        (
            {"prompt": "hi", "max_new_tokens": 0},
            {},
            "instances[0]: max_new_tokens must be a whole number from 1 to 256, not 0",
        ),
        (
            {"prompt": "hi", "max_new_tokens": 257},
            {},
            "instances[0]: max_new_tokens must be a whole number from 1 to 256",
        ),
        (
            {"prompt": "hi", "max_new_tokens": "8"},
            {},
            'instances[0]: max_new_tokens must be a whole number from 1 to 256, not "8"',
        ),
        ({"prompt": "hi", "max_new_tokens": True}, {}, "instances[0]: max_new_tokens must be a whole number"),
        ("hi", {"max_new_tokens": 2.5}, "parameters: max_new_tokens must be a whole number from 1 to 256, not 2.5"),
        ("hi", {"temperature": 0.7}, 'parameters: unknown parameter "temperature"; this model takes max_new_tokens'),
    ],
)
def test_bad_gpt_instances_are_400_with_the_reason(
    gpt: TextPredictor, instance: Any, parameters: dict[str, Any], expected: str
) -> None:
    with pytest.raises(ProtocolError) as caught:
        gpt.checked([instance], parameters, v1_location)
    assert caught.value.status == 400 and caught.value.message.startswith(expected), caught.value.message


def test_a_model_of_another_task_is_refused() -> None:
    with pytest.raises(ValueError, match="cannot serve a model of task 'resnet'"):
        predictor_class("resnet")
    assert predictor_class("digits").sample == images(1)[0], "the sample shown to users is a real digit"
    assert isinstance(predictor_class("gpt").sample, str)
