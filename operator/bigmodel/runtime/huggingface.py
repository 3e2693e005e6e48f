"""Hugging Face causal language models in a directory: config.json, *.safetensors weights and tokenizer files, named by
a local path or an object-store URI.

Nothing comes from the Hugging Face Hub (`local_files_only`), and no weights are unpickled: unpickling runs code, so a
directory with only pytorch_model.bin is refused. transformers reads local directories only, so a remote one is copied
to a cache on this machine first. transformers is imported inside the functions: the operator process never loads a
model and does not install it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from bigmodel.runtime.storage import (
    Location,
    Writer,
    copy_to_local,
    exists,
    files_in,
    local_file_writer,
    read_json,
    resolve,
)

if TYPE_CHECKING:
    from transformers import PretrainedConfig, PreTrainedModel, PreTrainedTokenizerBase

CONFIG_FILE = "config.json"
WEIGHTS_SUFFIX = ".safetensors"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
# Any one of these makes a tokenizer transformers can load (with tokenizer_config.json and its other files).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "vocab.txt", "spiece.model")
# A tokenizer's named chat templates sit in this subdirectory; others (a release's original/ pickles) are not copied.
COPIED_SUBDIRECTORY = "additional_chat_templates"
CACHE_ENV = "BIGMODEL_MODEL_CACHE"


class HuggingFaceModelError(ValueError):
    """A directory that is not a loadable Hugging Face causal LM; str() is one line: the directory and what is wrong."""


def _location(directory: Location | str) -> Location:
    return directory if isinstance(directory, Location) else resolve(directory)


def is_huggingface_dir(directory: Location | str) -> bool:
    """Whether the directory holds a Hugging Face model's config.json (one that names its model_type)."""
    config = _location(directory).child(CONFIG_FILE)
    try:
        return exists(config) and "model_type" in read_json(config)
    except (ValueError, TypeError):  # not JSON, or JSON but not an object
        return False


def check_causal_lm_dir(directory: Location | str) -> dict[str, Any]:
    """The directory's config.json, once its files are found to make a causal LM: a causal-LM architecture,
    safetensors weights and a tokenizer. Reads the file names and config.json only."""
    location = _location(directory)
    config = _config(location)
    _check_architecture(location, config)
    names = {info.base_name for info in files_in(location)}
    _check_weights(location, names)
    if not names & set(TOKENIZER_FILES):
        raise HuggingFaceModelError(f"{location.uri}: no tokenizer (none of {', '.join(TOKENIZER_FILES)})")
    return config


def _config(location: Location) -> dict[str, Any]:
    if not exists(location.child(CONFIG_FILE)):
        raise HuggingFaceModelError(f"{location.uri}: no {CONFIG_FILE}")
    try:
        config = read_json(location.child(CONFIG_FILE))
    except ValueError as error:
        raise HuggingFaceModelError(f"{location.uri}: {CONFIG_FILE} is not JSON ({error})") from None
    if not isinstance(config, dict) or "model_type" not in config:
        raise HuggingFaceModelError(f"{location.uri}: {CONFIG_FILE} names no model_type: not a Hugging Face model")
    return config


def _check_architecture(location: Location, config: dict[str, Any]) -> None:
    from transformers import __version__
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    model_type = config["model_type"]
    if model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        raise HuggingFaceModelError(
            f"{location.uri}: model_type {model_type!r} is not a causal language model that transformers "
            f"{__version__} knows (models that need their own code are not run)"
        )
    architectures = config.get("architectures") or []
    if architectures and not set(architectures) & set(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values()):
        raise HuggingFaceModelError(
            f"{location.uri}: the architectures of {CONFIG_FILE}, {', '.join(architectures)}, are not a causal "
            f"language model (for {model_type!r}: {MODEL_FOR_CAUSAL_LM_MAPPING_NAMES[model_type]})"
        )


def _check_weights(location: Location, names: set[str]) -> None:
    if any(name.endswith(WEIGHTS_SUFFIX) for name in names):
        return
    pickles = sorted(name for name in names if name.endswith(PICKLE_SUFFIXES))
    if pickles:
        raise HuggingFaceModelError(
            f"{location.uri}: weights in pickle files ({', '.join(pickles)}) are refused, since loading them runs "
            f"code: convert them to *{WEIGHTS_SUFFIX}"
        )
    raise HuggingFaceModelError(f"{location.uri}: no weights (*{WEIGHTS_SUFFIX})")


def cache_root() -> Path:
    """Where remote model directories are copied: $BIGMODEL_MODEL_CACHE, or a directory under the system's temp."""
    return Path(os.environ.get(CACHE_ENV) or Path(tempfile.gettempdir()) / "bigmodel-models")


def local_directory(directory: Location | str, *, with_weights: bool = True) -> Path:
    """A local directory with the model's files: the directory itself, or a cached copy of a remote one.

    A copy is keyed by the URI and each file's name, size and modification time, so a changed model is copied again,
    and is renamed into place whole, so processes on one machine that copy the same model at once all end up with
    a complete copy. Without weights, for the tokenizer and config alone, the copy leaves the large files out.
    """
    location = _location(directory)
    if location.is_local:
        return Path(location.path)
    prefix = location.path.rstrip("/") + "/"
    wanted = [
        info
        for info in files_in(location, recursive=True)
        if _copied(info.path.removeprefix(prefix), with_weights=with_weights)
    ]
    listing = [location.uri, sorted((info.path, info.size, info.mtime_ns) for info in wanted)]
    key = hashlib.sha256(json.dumps(listing).encode()).hexdigest()[:32]
    cached = cache_root() / key
    if cached.is_dir():
        return cached
    staging = cache_root() / f".{key}.tmp-{uuid.uuid4().hex}"
    for info in wanted:
        relative = info.path.removeprefix(prefix)
        (staging / relative).parent.mkdir(parents=True, exist_ok=True)
        copy_to_local(location.child(relative), staging / relative)
    try:
        staging.rename(cached)
    except OSError:  # another process copied it first: the same files
        shutil.rmtree(staging)
    return cached


def _copied(relative: str, *, with_weights: bool) -> bool:
    folder, _, name = relative.rpartition("/")
    if folder not in ("", COPIED_SUBDIRECTORY) or name.endswith(PICKLE_SUFFIXES):
        return False
    return with_weights or not name.endswith(WEIGHTS_SUFFIX)


def load_causal_lm(
    uri: Location | str, device: torch.device | str = "cpu", dtype: torch.dtype | None = None
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The model (in eval mode, on device, in dtype or else the one its config names) and its tokenizer."""
    from safetensors import SafetensorError
    from transformers import AutoModelForCausalLM

    location = _location(uri)
    check_causal_lm_dir(location)
    local = local_directory(location)
    try:
        model, loading = AutoModelForCausalLM.from_pretrained(
            local, local_files_only=True, use_safetensors=True, dtype=dtype or "auto", output_loading_info=True
        )
    except (OSError, ValueError, SafetensorError) as error:
        reason = " ".join(str(error).split())
        raise HuggingFaceModelError(f"{location.uri}: transformers cannot load it: {reason}") from error
    # transformers would initialise them at random, with a warning; a fine-tune or a service must not start from that.
    missing = sorted(loading["missing_keys"])
    if missing:
        raise HuggingFaceModelError(
            f"{location.uri}: the weights lack {len(missing)} of the model's tensors (the first: {missing[0]})"
        )
    return model.to(device).eval(), _tokenizer_from(local)


def load_tokenizer(uri: Location | str) -> PreTrainedTokenizerBase:
    """The model's tokenizer, without copying its weights."""
    location = _location(uri)
    check_causal_lm_dir(location)
    return _tokenizer_from(local_directory(location, with_weights=False))


def _tokenizer_from(local: Path) -> PreTrainedTokenizerBase:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(local, local_files_only=True)


def load_config(uri: Location | str) -> PretrainedConfig:
    """The model's config as transformers reads it, without copying its weights."""
    from transformers import AutoConfig

    location = _location(uri)
    check_causal_lm_dir(location)
    return AutoConfig.from_pretrained(local_directory(location, with_weights=False), local_files_only=True)


def meta_model(uri: Location | str) -> PreTrainedModel:
    """The model's architecture without its weights, on the meta device: for counting its parameters."""
    from transformers import AutoModelForCausalLM

    config = load_config(uri)
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config)


def decoder_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The model's repeated decoder layers: the modules transformers says not to split over devices
    (_no_split_modules), which Hugging Face's own Trainer wraps as FSDP units too."""
    names = set(getattr(model, "_no_split_modules", None) or ())
    return [module for module in model.modules() if type(module).__name__ in names]


def directory_files(model: PreTrainedModel, base: Location | str, scratch: Path) -> list[tuple[str, Writer]]:
    """The files of a Hugging Face directory of model (its weights as safetensors, its config) with the tokenizer of
    base, written by transformers into scratch, a local directory that must outlive the writers returned.

    config.json comes last: on an object store, where files appear one by one, a directory without it is no model.
    """
    model.save_pretrained(scratch)
    load_tokenizer(base).save_pretrained(scratch)
    names = sorted(str(path.relative_to(scratch)) for path in scratch.rglob("*") if path.is_file())
    names.sort(key=lambda name: name == CONFIG_FILE)
    return [(name, local_file_writer(scratch / name)) for name in names]
