"""Hugging Face causal LMs load from a local path, a file:// URI or an object store, and every incomplete or unsafe
directory is refused in one line that names what is wrong."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from bigmodel.runtime import huggingface
from bigmodel.runtime.huggingface import HuggingFaceModelError, is_huggingface_dir, load_causal_lm, load_tokenizer
from bigmodel.runtime.storage import Location, resolve
from tests.support.hf_models import write_tiny_causal_lm

PROMPT = "The quick brown fox ✓"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_causal_lm(tmp_path_factory.mktemp("models") / "tiny")


@pytest.fixture()
def copy_of_tiny(tiny: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(tiny, tmp_path / "model"))


def logits(model: torch.nn.Module, tokenizer: object, text: str = PROMPT) -> torch.Tensor:
    ids = torch.tensor([tokenizer(text)["input_ids"]])  # type: ignore[operator]
    with torch.no_grad():
        return model(input_ids=ids).logits


@pytest.mark.parametrize("architecture", ["llama", "gpt2"])
def test_a_model_directory_loads_in_eval_mode_with_its_tokenizer(tmp_path: Path, architecture: str) -> None:
    directory = write_tiny_causal_lm(tmp_path / architecture, architecture=architecture)  # type: ignore[arg-type]
    assert is_huggingface_dir(str(directory))
    model, tokenizer = load_causal_lm(str(directory), "cpu")
    assert not model.training and model.dtype == torch.float32
    assert tokenizer.decode(tokenizer(PROMPT)["input_ids"], skip_special_tokens=True) == PROMPT
    chat = tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}], add_generation_prompt=True, tokenize=False
    )
    assert chat == "<|user|>hi<|assistant|>"
    assert len(huggingface.decoder_layers(model)) == 2


def test_the_dtype_is_the_configs_unless_one_is_given(tmp_path: Path) -> None:
    directory = write_tiny_causal_lm(tmp_path / "bf16", dtype=torch.bfloat16)
    assert load_causal_lm(str(directory))[0].dtype == torch.bfloat16
    assert load_causal_lm(str(directory), "cpu", torch.float32)[0].dtype == torch.float32


def test_a_file_uri_loads_the_same_model_in_place(tiny: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(huggingface.CACHE_ENV, str(tmp_path / "cache"))
    expected = logits(*load_causal_lm(str(tiny)))
    assert torch.equal(logits(*load_causal_lm(f"file://{tiny}")), expected)
    assert not (tmp_path / "cache").exists(), "a local directory is read where it is"


def _uploaded(directory: Path, uri: str) -> Location:
    """The directory's files in pyarrow's in-memory object store, which, like S3, has no rename."""
    remote = resolve(uri)
    for path in directory.rglob("*"):
        if path.is_file():
            target = remote.child(str(path.relative_to(directory)))
            remote.filesystem.create_dir(target.path.rpartition("/")[0], recursive=True)
            with remote.filesystem.open_output_stream(target.path) as stream:
                stream.write(path.read_bytes())
    return remote


def test_an_object_store_directory_is_copied_to_the_cache_once(
    tiny: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    monkeypatch.setenv(huggingface.CACHE_ENV, str(cache))
    remote = _uploaded(tiny, "mock:///bucket/models/tiny")
    assert is_huggingface_dir(remote)

    assert load_tokenizer(remote)(PROMPT)["input_ids"] == load_tokenizer(str(tiny))(PROMPT)["input_ids"]
    (without_weights,) = cache.iterdir()
    assert not list(without_weights.glob("*.safetensors")), "the tokenizer alone needs no weights"

    assert torch.equal(logits(*load_causal_lm(remote)), logits(*load_causal_lm(str(tiny))))
    load_causal_lm(remote)
    copies = sorted(cache.iterdir())
    assert len(copies) == 2 and not [path for path in copies if path.name.startswith(".")]
    with_weights = next(path for path in copies if path != without_weights)
    assert sorted(path.name for path in with_weights.iterdir()) == sorted(path.name for path in tiny.iterdir())


def _without(*names: str) -> Callable[[Path], None]:
    def remove(directory: Path) -> None:
        for name in names:
            (directory / name).unlink()

    return remove


def _config_edit(**changes: object) -> Callable[[Path], None]:
    """Set keys of config.json; None removes one."""

    def edit(directory: Path) -> None:
        config = json.loads((directory / "config.json").read_text()) | changes
        (directory / "config.json").write_text(json.dumps({k: v for k, v in config.items() if v is not None}))

    return edit


def _pickled_weights(directory: Path) -> None:
    torch.save(load_file(directory / "model.safetensors"), directory / "pytorch_model.bin")
    (directory / "model.safetensors").unlink()


def _weights_without_the_head(directory: Path) -> None:
    weights = load_file(directory / "model.safetensors")
    del weights["lm_head.weight"]
    save_file(weights, directory / "model.safetensors", metadata={"format": "pt"})


def _truncated_weights(directory: Path) -> None:
    weights = directory / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])


BROKEN: list[tuple[str, Callable[[Path], None], str]] = [
    ("no-config", _without("config.json"), ": no config.json"),
    ("config-not-json", lambda d: (d / "config.json").write_text("{"), ": config.json is not JSON"),
    ("no-model-type", _config_edit(model_type=None), "config.json names no model_type"),
    ("not-a-causal-lm", _config_edit(model_type="t5"), "model_type 't5' is not a causal language model"),
    (
        "classifier-architecture",
        _config_edit(architectures=["LlamaForSequenceClassification"]),
        "the architectures of config.json, LlamaForSequenceClassification, are not a causal language model (for "
        "'llama': LlamaForCausalLM)",
    ),
    ("no-weights", _without("model.safetensors"), ": no weights (*.safetensors)"),
    ("pickle-weights", _pickled_weights, "weights in pickle files (pytorch_model.bin) are refused, since loading"),
    ("no-tokenizer", _without("tokenizer.json"), ": no tokenizer (none of tokenizer.json, tokenizer.model, vocab.json"),
    (
        "missing-tensor",
        _weights_without_the_head,
        "the weights lack 1 of the model's tensors (the first: lm_head.weight)",
    ),
    ("truncated-weights", _truncated_weights, ": transformers cannot load it: "),
]


@pytest.mark.parametrize(("breaks", "fragment"), [case[1:] for case in BROKEN], ids=[case[0] for case in BROKEN])
def test_a_broken_directory_is_refused_in_one_line(
    copy_of_tiny: Path, breaks: Callable[[Path], None], fragment: str
) -> None:
    breaks(copy_of_tiny)
    with pytest.raises(HuggingFaceModelError) as caught:
        load_causal_lm(str(copy_of_tiny))
    message = str(caught.value)
    assert "\n" not in message and message.startswith(f"{copy_of_tiny}: "), message
    assert fragment in message, message
    assert isinstance(caught.value, ValueError)


def test_only_a_config_with_a_model_type_makes_a_hugging_face_directory(tmp_path: Path) -> None:
    assert not is_huggingface_dir(str(tmp_path))
    (tmp_path / "config.json").write_text(json.dumps({"model": {"task": "gpt"}}))
    assert not is_huggingface_dir(str(tmp_path))
    (tmp_path / "config.json").write_text("[1, 2")
    assert not is_huggingface_dir(str(tmp_path))
