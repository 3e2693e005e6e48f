"""The causal-lm task fine-tunes a Hugging Face model single-process on the CPU, and its export is a Hugging Face
directory that loads back to the model it trained."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from bigmodel.api.job import BuiltinWorkload
from bigmodel.runtime.artifacts import ModelDescription, describe_model, export_model, load_model
from bigmodel.runtime.huggingface import load_causal_lm, load_tokenizer
from bigmodel.runtime.tasks import CausalLmTask, build_model_from_config, make_task
from bigmodel.runtime.tasks.windows import held_out_tokens
from tests.support.hf_models import DOCUMENTS, write_text_dataset, write_tiny_causal_lm
from tests.unit.test_tasks import train

CONTEXT = 16


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    return {name: write_tiny_causal_lm(root / name, architecture=name) for name in ("llama", "gpt2")}  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def jsonl(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_text_dataset(tmp_path_factory.mktemp("data") / "docs.jsonl")


def causal_lm(model: Path, dataset: Path | str, **options: Any) -> CausalLmTask:
    workload = BuiltinWorkload.model_validate(
        {
            "task": "causal-lm",
            "batchSize": 4,
            "learningRate": 1e-2,
            "causalLm": {"model": str(model), "dataset": str(dataset), "contextLength": CONTEXT} | options,
        }
    )
    task = make_task(workload)
    assert isinstance(task, CausalLmTask)
    return task


def all_tokens(task: CausalLmTask) -> torch.Tensor:
    """The tokenized dataset, the training and the held-out part together."""
    train_part, held_out = task._splits
    return torch.cat([train_part.data, held_out.data])


def test_windows_are_shifted_token_pairs_with_eos_between_documents(models: dict[str, Path], jsonl: Path) -> None:
    task = causal_lm(models["llama"], jsonl)
    tokenizer = load_tokenizer(str(models["llama"]))
    dataset = task.dataset()
    inputs, targets = dataset[2]
    assert inputs.shape == targets.shape == (CONTEXT,) and inputs.dtype == torch.int64
    assert torch.equal(inputs[1:], targets[:-1]) and torch.equal(dataset[3][0][0], targets[-1])
    first = tokenizer(DOCUMENTS[0])["input_ids"]
    assert dataset.data[: len(first) + 2].tolist() == [*first, tokenizer.eos_token_id, tokenizer.bos_token_id]
    whole = all_tokens(task)
    assert int((whole == tokenizer.eos_token_id).sum()) == len(DOCUMENTS) * 8, "one eos after each document"
    assert len(task._splits[1].data) == held_out_tokens(len(whole), CONTEXT), "the held-out text is the tail"
    batch = next(iter(torch.utils.data.DataLoader(dataset, batch_size=3)))
    assert task.batch_size_of(batch) == 3 and task.tokens_in(batch) == 3 * CONTEXT


def test_a_text_file_is_one_document(models: dict[str, Path], tmp_path: Path) -> None:
    task = causal_lm(models["llama"], write_text_dataset(tmp_path / "docs.txt"))
    tokenizer = load_tokenizer(str(models["llama"]))
    assert all_tokens(task).tolist() == tokenizer("\n".join(DOCUMENTS * 8))["input_ids"] + [tokenizer.eos_token_id]


@pytest.mark.parametrize("architecture", ["llama", "gpt2"])
def test_fine_tuning_lowers_the_loss_and_evaluate_scores_held_out_text(
    models: dict[str, Path], jsonl: Path, architecture: str
) -> None:
    task = causal_lm(models[architecture], jsonl)
    torch.manual_seed(0)
    model = task.build_model().train()
    before = task.evaluate(model)
    assert set(before) == {"val_loss", "val_perplexity"} and before["val_perplexity"] == pytest.approx(
        torch.tensor(before["val_loss"]).exp().item(), rel=1e-5
    )
    losses = train(task, model, steps=12)
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 0.5, losses
    assert task.evaluate(model)["val_loss"] < before["val_loss"] - 0.5
    assert model.training, "evaluate must hand the model back in train mode"


def test_the_base_model_loads_the_same_pretrained_weights_whatever_the_seed(
    models: dict[str, Path], jsonl: Path
) -> None:
    task = causal_lm(models["llama"], jsonl)
    torch.manual_seed(1)
    first = task.build_model()
    torch.manual_seed(2)
    rebuilt = build_model_from_config(json.loads(json.dumps(task.model_config())))
    assert first.dtype == torch.float32
    assert all(torch.equal(first.state_dict()[name], tensor) for name, tensor in rebuilt.state_dict().items())
    assert task.model_config() == {"task": "causal-lm", "base": str(models["llama"])}
    assert [type(block).__name__ for block in task.blocks(first)] == ["LlamaDecoderLayer"] * 2


@pytest.mark.parametrize("architecture", ["llama", "gpt2"])
def test_flops_per_token_count_the_weights_that_multiply(
    models: dict[str, Path], jsonl: Path, architecture: str
) -> None:
    task = causal_lm(models[architecture], jsonl)
    model = task.build_model()
    embeddings = model.get_input_embeddings().weight.numel()
    positions = model.transformer.wpe.weight.numel() if architecture == "gpt2" else 0
    # GPT-2's output head is its input embeddings, used as a matrix; Llama's is a matrix of its own.
    multiplying = model.num_parameters() - embeddings - positions + (embeddings if architecture == "gpt2" else 0)
    assert task.flops_per_token() == 6 * multiplying + 12 * 2 * 32 * CONTEXT


@pytest.mark.parametrize(
    ("dataset", "options", "fragment"),
    [
        ('{"text": "fine"}\n{"body": "no text"}\n', {}, 'causalLm.dataset: {dataset}: line 2 has no "text" string'),
        ('{"text": "fine"}\nnot json\n', {}, "causalLm.dataset: {dataset}: line 2 is not JSON"),
        ('{"text": "too short"}\n', {}, "causalLm.dataset: its 9 tokens are too few for a contextLength of 16"),
        (None, {}, "causalLm.dataset: {dataset}: no such file"),
        ('{"text": "fine"}\n', {"contextLength": 1024}, "causalLm.contextLength 1024 is longer than the model's 512"),
    ],
    ids=["no-text-field", "not-json", "too-few-tokens", "missing-file", "context-beyond-positions"],
)
def test_dataset_problems_name_the_option_and_the_line(
    models: dict[str, Path], tmp_path: Path, dataset: str | None, options: dict[str, Any], fragment: str
) -> None:
    path = tmp_path / "data.jsonl"
    if dataset is not None:
        path.write_text(dataset)
    with pytest.raises(ValueError) as caught:
        causal_lm(models["llama"], path, **options).dataset()
    assert fragment.format(dataset=path) in str(caught.value)


def test_a_broken_model_directory_is_named_as_the_model_option(tmp_path: Path, jsonl: Path) -> None:
    with pytest.raises(ValueError, match=rf"^causalLm.model: {tmp_path}: no config.json$"):
        causal_lm(tmp_path, jsonl).dataset()


@pytest.mark.parametrize("as_uri", [False, True])
def test_the_export_is_a_hugging_face_directory_that_loads_the_trained_model(
    models: dict[str, Path], jsonl: Path, tmp_path: Path, as_uri: bool
) -> None:
    task = causal_lm(models["llama"], jsonl)
    model = task.build_model().train()
    train(task, model, steps=3)
    storage = f"file://{tmp_path}" if as_uri else str(tmp_path)
    uri = export_model(storage, model, task.model_config(), {"val_loss": 2.5})
    assert uri == f"{storage}/model"

    exported = tmp_path / "model"
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja"} <= {
        path.name for path in exported.iterdir()
    }
    assert sorted(path.name for path in tmp_path.iterdir()) == ["model"], "no staging directory is left behind"
    metadata = json.loads((exported / "bigmodel.json").read_text())
    assert metadata["model"] == task.model_config() and metadata["metrics"] == {"val_loss": 2.5}
    assert describe_model(uri) == ModelDescription("causal-lm", metadata["exported"])

    loaded, tokenizer = load_causal_lm(uri)
    ids = torch.tensor([tokenizer(DOCUMENTS[1])["input_ids"]])
    model.eval()
    with torch.no_grad():
        assert torch.equal(loaded(input_ids=ids).logits, model(input_ids=ids).logits)
    greedy = loaded.generate(ids, max_new_tokens=6, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    assert greedy.shape == (1, ids.shape[1] + 6) and torch.equal(greedy[:, : ids.shape[1]], ids)
    assert torch.equal(greedy, loaded.generate(ids, max_new_tokens=6, do_sample=False))
    assert isinstance(tokenizer.decode(greedy[0, ids.shape[1] :]), str)
    assert tokenizer.chat_template == load_tokenizer(str(models["llama"])).chat_template

    via_load_model, config = load_model(uri)
    assert config == task.model_config() and not via_load_model.training
    with torch.no_grad():
        assert torch.equal(via_load_model(input_ids=ids).logits, model(input_ids=ids).logits)


def test_a_plain_hugging_face_directory_is_described_by_a_digest_of_its_files(
    models: dict[str, Path], tmp_path: Path
) -> None:
    directory = write_tiny_causal_lm(tmp_path / "model")
    first = describe_model(str(directory))
    assert first.task == "causal-lm" and first.exported.startswith("sha256:")
    assert describe_model(str(directory)) == first, "the same files, the same description"
    write_tiny_causal_lm(directory, seed=1)
    assert describe_model(str(directory)).exported != first.exported
    model, config = load_model(str(directory))
    assert config == {"task": "causal-lm", "base": str(directory)} and not model.training
