"""A Hugging Face causal LM from fine-tuning to the OpenAI client, on one machine: the operator, the API emulator, pods
as local processes, real Ray Train and Ray Serve.

A BigModelJob fine-tunes a tiny model (built here, random weights, a real tokenizer) with FSDP on two worker pods and
exports a Hugging Face directory; a BigModelService names the job and serves that directory; the official `openai`
client completes and chats against the Service's head, plain and streaming, and gets what transformers' generate()
gives the exported model.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
import torch

from bigmodel.api.wire import JOB_LABEL, SERVE_PORT
from bigmodel.runtime.artifacts import describe_model
from bigmodel.runtime.huggingface import load_causal_lm
from tests.support.emulator import KubeClient, wait_for
from tests.support.hf_models import write_text_dataset, write_tiny_causal_lm
from tests.support.local_cluster import LocalCluster, local_cluster

pytestmark = pytest.mark.e2e

JOBS = ("bigmodel.dev/v1alpha1", "bigmodeljobs")
SERVICES = ("bigmodel.dev/v1alpha1", "bigmodelservices")
JOB, SERVICE = "tiny-lm", "tiny-chat"
STEPS = 4
ONE_CPU = {"cpu": "1", "memory": "2Gi"}


def job_manifest(base: Path, dataset: Path, storage: Path) -> dict[str, Any]:
    return {
        "apiVersion": "bigmodel.dev/v1alpha1",
        "kind": "BigModelJob",
        "metadata": {"name": JOB},
        "spec": {
            "workload": {
                "builtin": {
                    "task": "causal-lm",
                    "maxSteps": STEPS,
                    "batchSize": 2,
                    "learningRate": 0.01,
                    "causalLm": {"model": str(base), "dataset": str(dataset), "contextLength": 16},
                }
            },
            "workers": {"replicas": 2, "resources": ONE_CPU},
            "head": {"resources": ONE_CPU},
            "training": {"strategy": "fsdp"},
            "checkpoint": {"storage": str(storage), "everySteps": 2, "keepLast": 1},
        },
    }


def service_manifest() -> dict[str, Any]:
    return {
        "apiVersion": "bigmodel.dev/v1alpha1",
        "kind": "BigModelService",
        "metadata": {"name": SERVICE},
        "spec": {
            "model": {"jobName": JOB, "name": "tiny"},
            "replicas": {"min": 1, "max": 1},
            "replicaResources": {"cpu": 1},
            "workers": {"minReplicas": 1, "maxReplicas": 1, "resources": ONE_CPU},
            "head": {"resources": ONE_CPU},
        },
    }


@pytest.fixture()
def cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    with local_cluster(tmp_path) as running:
        yield running


async def _phase(kube: KubeClient, kind: tuple[str, str], name: str, phase: str, timeout: float) -> dict[str, Any]:
    seen: dict[str, Any] = {}

    async def reached() -> dict[str, Any] | None:
        status = ((await kube.get(*kind, name)) or {}).get("status") or {}
        seen.update(status)
        assert status.get("phase") != "Failed", f"{name} failed: {status.get('message')}"
        return status if status.get("phase") == phase else None

    try:
        return await wait_for(reached, timeout, f"{name} was not {phase} within {timeout:.0f} s", 1.0)
    except AssertionError as missed:
        events = [f"{event['reason']}: {event.get('message', '')}" for event in await kube.events(involved_name=name)]
        raise AssertionError(f"{missed}; its status: {seen}; its Events: {events}") from None


async def _no_pods(kube: KubeClient, job: str) -> bool:
    return not await kube.list("v1", "pods", label_selector=f"{JOB_LABEL}={job}")


def greedy(model_dir: str, prompt: str, count: int) -> str:
    model, tokenizer = load_causal_lm(model_dir)
    ids = torch.tensor([tokenizer(prompt)["input_ids"]])
    output = model.generate(ids, max_new_tokens=count, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    return str(tokenizer.decode(output[0, ids.shape[1] :], skip_special_tokens=True))


async def test_a_fine_tuned_hugging_face_model_answers_the_openai_client(cluster: LocalCluster, tmp_path: Path) -> None:
    # GPT-2: its output head is tied to its input embeddings, which the export of a sharded model must keep.
    base = write_tiny_causal_lm(tmp_path / "base", architecture="gpt2")
    dataset = write_text_dataset(tmp_path / "docs.jsonl")
    async with KubeClient(cluster.emulator.url) as kube:
        await kube.create(*JOBS, job_manifest(base, dataset, tmp_path / "storage"))
        trained = await _phase(kube, JOBS, JOB, "Succeeded", 300)
        # Every pod here is 127.0.0.1: the service's head gets Ray's own ports (which the operator calls) only once
        # the job's head has let go of them.
        await wait_for(lambda: _no_pods(kube, JOB), 120, "the job's pods were not gone within 120 s", 0.5)
        await kube.create(*SERVICES, service_manifest())
        exported = trained["modelUri"]
        assert describe_model(exported).task == "causal-lm"
        metadata = json.loads((Path(exported) / "bigmodel.json").read_text())
        assert metadata["model"] == {"task": "causal-lm", "base": str(base)}
        model, tokenizer = load_causal_lm(exported)
        base_model, _ = load_causal_lm(str(base))
        ids = torch.tensor([tokenizer("The fox and the dog")["input_ids"]])
        with torch.no_grad():
            assert not torch.equal(model(input_ids=ids).logits, base_model(input_ids=ids).logits), "nothing trained"

        ready = await _phase(kube, SERVICES, SERVICE, "Ready", 300)
        assert ready["model"]["source"] == exported
        serving = await kube.get("v1", "services", f"{SERVICE}-serve")
        assert serving is not None
        head = serving["spec"]["selector"]["bigmodel.dev/cluster"] + "-head"
        port = cluster.kubelet.host_port(head, SERVE_PORT)

    client = openai.OpenAI(
        base_url=f"http://127.0.0.1:{port}/v1",
        api_key="unused",
        max_retries=0,
        http_client=openai.DefaultHttpxClient(trust_env=False, timeout=60),
    )
    assert [served.id for served in client.models.list()] == ["tiny"]
    completion = client.completions.create(model="tiny", prompt="The fox", max_tokens=8, temperature=0)
    assert completion.choices[0].text == greedy(exported, "The fox", 8)

    messages = [{"role": "user", "content": "Where is the cat?"}]
    prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    stream = client.chat.completions.create(
        model="tiny",
        messages=messages,
        max_tokens=8,
        temperature=0,
        stream=True,  # type: ignore[arg-type]
    )
    text = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    assert text == greedy(exported, prompt, 8)
