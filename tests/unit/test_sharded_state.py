"""Sharded checkpoints on real gloo workers: written by every worker, restored whole onto any number of them.

Each test trains a tiny GPT a few steps on N processes, saves, and restores on M, comparing the whole model and
optimizer state (gathered to rank 0) with what was saved, tensor for tensor.
"""

from __future__ import annotations

import copy
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import pytest
import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict
from torch.nn.parallel import DistributedDataParallel

from bigmodel.runtime import sharded_state
from bigmodel.runtime.checkpointing import Checkpointing
from bigmodel.runtime.checkpoints import CheckpointInfo, CheckpointStore
from bigmodel.runtime.sharding import shard, state_bytes
from bigmodel.runtime.storage import resolve
from bigmodel.runtime.tasks.gpt_model import build_gpt
from tests.support.torch_ranks import run_ranks

Strategy = Literal["ddp", "fsdp", "none"]
CONFIG = {"vocab_size": 256, "layers": 2, "heads": 2, "embed_dim": 16, "context_length": 16, "dropout": 0.0}
LEGACY = Path(__file__).parent.parent / "fixtures" / "ddp-checkpoint-v1"


def _model(strategy: Strategy, config: dict[str, Any] = CONFIG, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = build_gpt(config)
    if strategy == "fsdp":
        return shard(model, blocks=model.blocks)
    if strategy == "ddp":
        return DistributedDataParallel(model)
    return model


def _train(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    rank: int,
    steps: int,
    first: int = 0,
    before_update: Callable[[], None] = lambda: None,
) -> None:
    for step in range(first, first + steps):
        tokens = torch.randint(0, 256, (2, 17), generator=torch.Generator().manual_seed(100 * rank + step))
        logits = model(tokens[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, 256), tokens[:, 1:].reshape(-1))
        loss.backward()
        before_update()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)


def _whole(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Model and optimizer state as one process would hold them, on rank 0: a copy, as some of it (the optimizer's
    step counts) is the live tensors themselves."""
    model_state, optimizer_state = get_state_dict(
        model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
    )
    return copy.deepcopy({"model": model_state, "optimizer": optimizer_state})


def _assert_same(expected: Any, actual: Any, path: str = "") -> None:
    if isinstance(expected, torch.Tensor):
        assert torch.equal(expected, actual), f"{path} differs"
    elif isinstance(expected, dict):
        assert sorted(expected) == sorted(actual), f"{path}: keys {sorted(expected)} != {sorted(actual)}"
        for key in expected:
            _assert_same(expected[key], actual[key], f"{path}.{key}")
    elif isinstance(expected, list):
        assert len(expected) == len(actual), path
        for index, (left, right) in enumerate(zip(expected, actual, strict=True)):
            _assert_same(left, right, f"{path}[{index}]")
    else:
        assert expected == actual, f"{path}: {expected!r} != {actual!r}"


def _save_trained(rank: int, world: int, strategy: Strategy, directory: str, out: str) -> None:
    model = _model(strategy)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    _train(model, optimizer, rank, steps=3)
    sharded_state.save(resolve(directory), model, optimizer)
    whole = _whole(model, optimizer)
    if rank == 0:
        torch.save(whole, out)
    # What each worker holds, for the memory comparison between strategies.
    torch.save(state_bytes(model, optimizer), f"{out}.bytes-{rank}")


def _restore(rank: int, world: int, strategy: Strategy, directory: str, out: str) -> None:
    model = _model(strategy, seed=1)  # different weights from the saved ones, so restoring must replace them
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    sharded_state.restore(resolve(directory), model, optimizer)
    whole = _whole(model, optimizer)
    if rank == 0:
        torch.save(whole, out)


@pytest.fixture(scope="module")
def saved_by_two_fsdp_workers(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    root = tmp_path_factory.mktemp("fsdp2")
    run_ranks(_save_trained, 2, "fsdp", str(root / "step"), str(root / "saved.pt"))
    return root / "step", torch.load(root / "saved.pt", weights_only=False)


@pytest.mark.parametrize(("strategy", "world"), [("fsdp", 1), ("fsdp", 3), ("ddp", 2)])
def test_a_checkpoint_of_two_fsdp_workers_restores_whole_onto_any_number(
    saved_by_two_fsdp_workers: tuple[Path, dict[str, Any]], tmp_path: Path, strategy: Strategy, world: int
) -> None:
    directory, saved = saved_by_two_fsdp_workers
    run_ranks(_restore, world, strategy, str(directory), str(tmp_path / "restored.pt"))
    _assert_same(saved, torch.load(tmp_path / "restored.pt", weights_only=False))


def test_every_worker_writes_its_own_shard_and_holds_half_the_state(
    saved_by_two_fsdp_workers: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    directory, _ = saved_by_two_fsdp_workers
    shards = sorted(path.name for path in (directory / sharded_state.SHARDS_DIR).iterdir())
    assert shards == [".metadata", "__0_0.distcp", "__1_0.distcp"]
    sizes = [(directory / sharded_state.SHARDS_DIR / name).stat().st_size for name in shards[1:]]
    assert min(sizes) >= 0.35 * sum(sizes), f"shards of {sizes} bytes: one worker wrote most of the state"

    run_ranks(_save_trained, 1, "ddp", str(tmp_path / "ddp"), str(tmp_path / "ddp.pt"))
    whole = torch.load(tmp_path / "ddp.pt.bytes-0")
    fsdp = [torch.load(directory.parent / f"saved.pt.bytes-{rank}") for rank in (0, 1)]
    for held in fsdp:
        assert 0.45 * whole <= held <= 0.6 * whole, f"an FSDP worker holds {held} of {whole} bytes"


def _async_save_then_change(rank: int, world: int, directory: str, out: str) -> None:
    model = _model("fsdp")
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    _train(model, optimizer, rank, steps=2)
    whole = _whole(model, optimizer)
    stager = sharded_state.host_stager()
    save = sharded_state.save_async(
        resolve(directory), model, optimizer, process_group=dist.new_group(backend="gloo"), stager=stager
    )
    # Training goes on while the state is copied and written; only its optimizer steps wait for the copy.
    _train(model, optimizer, rank, steps=2, first=2, before_update=save.staged.result)
    save.written.result()
    stager.close()
    if rank == 0:
        torch.save(whole, out)


def test_an_async_save_holds_the_state_of_when_it_began(tmp_path: Path) -> None:
    run_ranks(_async_save_then_change, 2, str(tmp_path / "step"), str(tmp_path / "saved.pt"))
    run_ranks(_restore, 2, "fsdp", str(tmp_path / "step"), str(tmp_path / "restored.pt"))
    _assert_same(
        torch.load(tmp_path / "saved.pt", weights_only=False),
        torch.load(tmp_path / "restored.pt", weights_only=False),
    )


def _checkpoint_twice(rank: int, world: int, storage: str, out: str, async_save: bool) -> None:
    model = _model("fsdp")
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    completed: list[CheckpointInfo] = []
    checkpoints = Checkpointing(
        CheckpointStore(storage), rank=rank, async_save=async_save, on_complete=lambda info, _: completed.append(info)
    )
    for step in (1, 2):
        _train(model, optimizer, rank, steps=1, first=step, before_update=checkpoints.before_update)
        whole = _whole(model, optimizer)
        checkpoints.save(model, optimizer, step=step, epoch=0, metrics={"loss": float(step)})
        if rank == 0:
            torch.save(whole, f"{out}-{step}")
    checkpoints.close()
    if rank == 0:
        assert [info.step for info in completed] == [1, 2], "each checkpoint is announced once it is complete"


def _resume(rank: int, world: int, storage: str, out: str) -> None:
    model = _model("fsdp", seed=1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    checkpoints = Checkpointing(CheckpointStore(storage), rank=rank, async_save=False, on_complete=lambda *_: None)
    resume = checkpoints.resume(model, optimizer)  # as the built-in loop resumes
    whole = _whole(model, optimizer)
    if rank == 0:
        torch.save(
            {"step": resume.checkpoint and resume.checkpoint.step, "skipped": resume.skipped, "state": whole}, out
        )


@pytest.mark.parametrize("async_save", [False, True], ids=["sync", "async"])
def test_a_truncated_newest_checkpoint_resumes_from_the_one_before(tmp_path: Path, async_save: bool) -> None:
    storage = tmp_path / "run"
    run_ranks(_checkpoint_twice, 2, str(storage), str(tmp_path / "saved"), async_save)
    assert [info.step for info in CheckpointStore(str(storage)).list()] == [1, 2]
    shard_file = storage / "checkpoints" / "step-0000000002" / sharded_state.SHARDS_DIR / "__1_0.distcp"
    shard_file.write_bytes(shard_file.read_bytes()[:100])  # a disk that filled up mid-write

    run_ranks(_resume, 3, str(storage), str(tmp_path / "resumed.pt"))
    resumed = torch.load(tmp_path / "resumed.pt", weights_only=False)
    assert resumed["step"] == 1
    (skipped,) = resumed["skipped"]
    assert skipped.uri == str(storage / "checkpoints" / "step-0000000002")
    assert skipped.reason and "\n" not in skipped.reason
    _assert_same(torch.load(tmp_path / "saved-1", weights_only=False), resumed["state"])


LEGACY_CONFIG = {"vocab_size": 256, "layers": 1, "heads": 2, "embed_dim": 16, "context_length": 16, "dropout": 0.0}


def _restore_legacy(rank: int, world: int, strategy: Strategy, storage: str, out: str) -> None:
    model = _model(strategy, LEGACY_CONFIG, seed=1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    resume = CheckpointStore(storage).resume(lambda directory: sharded_state.restore(directory, model, optimizer))
    whole = _whole(model, optimizer)
    if rank == 0:
        torch.save({"step": resume.checkpoint and resume.checkpoint.step, "state": whole}, out)


@pytest.mark.parametrize(("strategy", "world"), [("ddp", 2), ("fsdp", 2), ("none", 1)])
def test_a_checkpoint_of_the_runtime_before_sharding_still_resumes(
    tmp_path: Path, strategy: Strategy, world: int
) -> None:
    storage = tmp_path / "run"
    shutil.copytree(LEGACY / "checkpoints", storage / "checkpoints")
    run_ranks(_restore_legacy, world, strategy, str(storage), str(tmp_path / "restored.pt"))
    restored = torch.load(tmp_path / "restored.pt", weights_only=False)
    assert restored["step"] == 6

    legacy = torch.load(storage / "checkpoints" / "step-0000000006" / "state.pt", weights_only=True)
    _assert_same(legacy["model"], restored["state"]["model"])
    names = [name for name, _ in build_gpt(LEGACY_CONFIG).named_parameters()]
    for index, state in legacy["optimizer"]["state"].items():
        _assert_same(state, restored["state"]["optimizer"]["state"][names[index]], names[index])
