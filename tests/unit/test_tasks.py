"""The built-in tasks train single-process on the CPU and rebuild from their configs."""

from __future__ import annotations

import json

import pytest
import torch

from bigmodel.api.job import BuiltinWorkload
from bigmodel.runtime.tasks import GPT, build_model_from_config, generate, make_task
from bigmodel.runtime.tasks.base import TrainingTask

TINY_GPT = {"layers": 2, "heads": 2, "embed_dim": 64, "context_length": 32, "corpus_megabytes": 0.2}


def train(task: TrainingTask, model: torch.nn.Module, steps: int, epochs: int = 1) -> list[float]:
    optimizer = torch.optim.AdamW(model.parameters(), lr=task.workload.learning_rate)
    loader = torch.utils.data.DataLoader(
        task.dataset(), batch_size=task.workload.batch_size, shuffle=True, generator=torch.Generator().manual_seed(0)
    )
    losses: list[float] = []
    for _ in range(epochs):
        for batch in loader:
            loss = task.loss(model, batch)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
            if len(losses) == steps:
                return losses
    return losses


def test_digits_reaches_ninety_percent_held_out_accuracy() -> None:
    task = make_task(BuiltinWorkload(task="digits", batch_size=64, learning_rate=3e-3))
    torch.manual_seed(0)
    model = task.build_model()
    train(task, model, steps=10_000, epochs=5)
    metrics = task.evaluate(model)
    assert metrics["val_accuracy"] > 0.9, metrics
    assert model.training, "evaluate must hand the model back in train mode"


def test_digits_split_is_fixed_and_disjoint() -> None:
    first = make_task(BuiltinWorkload(task="digits", seed=1)).dataset()
    second = make_task(BuiltinWorkload(task="digits", seed=2)).dataset()
    assert len(first) == 1438
    assert torch.equal(first.tensors[0], second.tensors[0])
    assert first.tensors[0].dtype == torch.float32 and 0.0 <= first.tensors[0].min() <= first.tensors[0].max() <= 1.0


def test_digits_counts_samples_not_tokens() -> None:
    task = make_task(BuiltinWorkload(task="digits"))
    batch = next(iter(torch.utils.data.DataLoader(task.dataset(), batch_size=7)))
    assert task.batch_size_of(batch) == 7
    assert task.tokens_in(batch) == 0
    assert task.flops_per_token() == 0.0


def test_gpt_loss_decreases_on_a_tiny_model() -> None:
    task = make_task(BuiltinWorkload(task="gpt", batch_size=16, learning_rate=3e-3, gpt=TINY_GPT))
    torch.manual_seed(0)
    model = task.build_model()
    before = task.evaluate(model)["val_loss"]
    losses = train(task, model, steps=30)
    assert len(losses) == 30
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.5, losses
    assert task.evaluate(model)["val_loss"] < before


def test_gpt_windows_are_shifted_byte_pairs() -> None:
    task = make_task(BuiltinWorkload(task="gpt", gpt=TINY_GPT))
    dataset = task.dataset()
    inputs, targets = dataset[3]
    assert inputs.shape == targets.shape == (32,) and inputs.dtype == torch.int64
    assert torch.equal(inputs[1:], targets[:-1])
    assert torch.equal(dataset[4][0][0], targets[-1])
    batch = next(iter(torch.utils.data.DataLoader(dataset, batch_size=5)))
    assert task.batch_size_of(batch) == 5 and task.tokens_in(batch) == 5 * 32
    with pytest.raises(IndexError):
        dataset[len(dataset)]


@pytest.mark.parametrize("workload", [{"task": "digits", "digits": {"hiddenSize": 32}}, {"task": "gpt", "gpt": TINY_GPT}])
def test_model_config_rebuilds_the_same_architecture(workload: dict[str, object]) -> None:
    task = make_task(BuiltinWorkload.model_validate(workload))
    torch.manual_seed(0)
    model = task.build_model()
    config = json.loads(json.dumps(task.model_config()))
    rebuilt = build_model_from_config(config)
    rebuilt.load_state_dict(model.state_dict())
    batch = next(iter(torch.utils.data.DataLoader(task.dataset(), batch_size=4)))
    model.eval(), rebuilt.eval()
    assert torch.equal(model(batch[0]), rebuilt(batch[0]))


def test_same_seed_builds_the_same_model() -> None:
    task = make_task(BuiltinWorkload(task="gpt", gpt=TINY_GPT))
    torch.manual_seed(5)
    first = task.build_model().state_dict()
    torch.manual_seed(5)
    second = task.build_model().state_dict()
    assert all(torch.equal(first[name], second[name]) for name in first)


def test_unknown_task_in_config_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown task"):
        build_model_from_config({"task": "resnet"})


def gpt_on_meta(layers: int, heads: int, embed_dim: int) -> tuple[TrainingTask, GPT]:
    options = {"layers": layers, "heads": heads, "embed_dim": embed_dim, "context_length": 1024}
    task = make_task(BuiltinWorkload(task="gpt", gpt=options))
    with torch.device("meta"):
        model = build_model_from_config(task.model_config())
    assert isinstance(model, GPT)
    return task, model


def test_gpt_scales_past_a_hundred_million_parameters() -> None:
    # With a 256-byte vocabulary the GPT-2-small shape (12 x 768) holds 86M; GPT-2's 124M includes 39M of BPE embeddings.
    task, small = gpt_on_meta(12, 12, 768)
    width = 768
    per_block = 12 * width * width + 13 * width
    assert small.num_parameters() == 12 * per_block + (256 + 1024 + 2) * width
    _, medium = gpt_on_meta(12, 16, 1024)
    assert medium.num_parameters() > 100_000_000
    non_position = small.num_parameters(include_position_embedding=False)
    assert task.flops_per_token() == 6 * non_position + 12 * 12 * 768 * 1024


def test_generate_is_greedy_at_temperature_zero() -> None:
    task = make_task(BuiltinWorkload(task="gpt", gpt=TINY_GPT))
    torch.manual_seed(0)
    model = task.build_model().eval()
    prompt = b"def " * 20
    first = generate(model, prompt, max_new_tokens=8)
    assert len(first) == 8 and first == generate(model, prompt, max_new_tokens=8)
    sampled = generate(model, prompt, 8, temperature=1.0, generator=torch.Generator().manual_seed(1))
    assert len(sampled) == 8
    with pytest.raises(ValueError):
        generate(model, b"", 1)
