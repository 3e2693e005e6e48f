"""The exported model round-trips to an identical model, and an export never looks complete half-written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import distributed
from torch.nn.parallel import DistributedDataParallel

from bigmodel.api.job import BuiltinWorkload
from bigmodel.runtime.artifacts import ModelDescription, ModelFileMissing, describe_model, export_model, load_model
from bigmodel.runtime.tasks import make_task

TINY_GPT = {"layers": 2, "heads": 2, "embed_dim": 32, "context_length": 16, "corpus_megabytes": 0.05}


@pytest.mark.parametrize("as_uri", [False, True])
def test_gpt_round_trip_gives_identical_outputs(tmp_path: Path, as_uri: bool) -> None:
    task = make_task(BuiltinWorkload(task="gpt", gpt=TINY_GPT))
    torch.manual_seed(0)
    model = task.build_model().eval()
    storage = f"file://{tmp_path}" if as_uri else str(tmp_path)
    uri = export_model(storage, model, task.model_config(), {"val_loss": 1.5})
    assert uri == f"{storage}/model"
    loaded, config = load_model(uri)
    assert config == task.model_config()
    assert not loaded.training
    tokens = task.dataset()[0][0].unsqueeze(0)
    assert torch.equal(model(tokens), loaded(tokens))
    document = json.loads((tmp_path / "model" / "config.json").read_text())
    assert document["metrics"] == {"val_loss": 1.5}


def test_ddp_wrapper_is_unwrapped_and_export_replaces(tmp_path: Path) -> None:
    task = make_task(BuiltinWorkload(task="digits", digits={"hiddenSize": 16}))
    torch.manual_seed(0)
    first = task.build_model()
    export_model(str(tmp_path), first, task.model_config(), {})
    second = task.build_model()
    stale = tmp_path / f".model.tmp-{'b' * 32}"
    stale.mkdir()
    distributed.init_process_group("gloo", init_method=f"file://{tmp_path}/rendezvous", rank=0, world_size=1)
    try:
        uri = export_model(str(tmp_path), DistributedDataParallel(second), task.model_config(), {})
    finally:
        distributed.destroy_process_group()
    (tmp_path / "rendezvous").unlink(missing_ok=True)
    loaded, _ = load_model(uri)
    features = task.dataset()[:5][0]
    assert torch.equal(loaded(features), second(features))
    assert sorted(path.name for path in tmp_path.iterdir()) == ["model"]
    assert sorted(path.name for path in (tmp_path / "model").iterdir()) == ["config.json", "weights.pt"]


def test_describe_model_names_the_task_and_export_time_and_a_missing_file(tmp_path: Path) -> None:
    task = make_task(BuiltinWorkload(task="gpt", gpt=TINY_GPT))
    uri = export_model(str(tmp_path), task.build_model(), task.model_config(), {})
    exported = json.loads((tmp_path / "model" / "config.json").read_text())["exported"]
    assert describe_model(uri) == ModelDescription("gpt", exported)
    (tmp_path / "model" / "weights.pt").unlink()
    with pytest.raises(ModelFileMissing, match=rf"^no weights.pt in {uri}$") as caught:
        describe_model(uri)
    assert caught.value.file == "weights.pt"
    with pytest.raises(ModelFileMissing, match="no config.json"):
        describe_model(str(tmp_path / "elsewhere"))
