"""Hugging Face causal LMs on the engine: what a mixed batch generates is what transformers' generate() gives each
prompt alone, and the OpenAI chat endpoint speaks through the tokenizer's own chat template."""

from __future__ import annotations

import json

import pytest
import torch

from bigmodel.runtime.huggingface import load_causal_lm
from bigmodel.runtime.serving.openai_api import OpenAIEndpoints
from bigmodel.runtime.serving.openai_protocol import OpenAIError
from bigmodel.runtime.serving.predictor import CausalLmPredictor, load_predictor
from bigmodel.runtime.serving.protocol import ProtocolError, v1_location
from tests.support.hf_models import write_tiny_causal_lm

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CPU = torch.device("cpu")
PROMPTS = [("The fox", 9), ("A language model predicts the next token", 5), ("def", 12), ("0 1 2 3 4 5 6 7 8 9", 7)]


@pytest.fixture(scope="module", params=["llama", "gpt2"])
def model_dir(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> str:
    directory = write_tiny_causal_lm(tmp_path_factory.mktemp(request.param), architecture=request.param)
    # Large weights: the next token then changes from step to step, so equal texts mean something. Float64 so that a
    # batch's padded attention cannot round a near tie the other way than one row alone does.
    model, tokenizer = load_causal_lm(str(directory), dtype=torch.float64)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.dim() > 1:
                parameter.normal_(0.0, 0.5)
    model.save_pretrained(directory)
    return str(directory)


def expected(model_dir: str, prompt: str, count: int) -> str:
    model, tokenizer = load_causal_lm(model_dir)
    ids = torch.tensor([tokenizer(prompt)["input_ids"]])
    output = model.generate(ids, max_new_tokens=count, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    return str(tokenizer.decode(output[0, ids.shape[1] :], skip_special_tokens=True))


def test_a_mixed_batch_generates_what_transformers_generates_for_each_prompt(model_dir: str) -> None:
    predictor = load_predictor(model_dir, CPU)
    assert isinstance(predictor, CausalLmPredictor)
    instances = [{"prompt": prompt, "max_new_tokens": count} for prompt, count in PROMPTS]
    texts = predictor.run(predictor.checked(instances, {}, v1_location))
    assert texts == [expected(model_dir, prompt, count) for prompt, count in PROMPTS]
    assert len(set(texts)) == len(texts), "the test model should continue different prompts differently"


async def test_a_chat_is_rendered_by_the_tokenizers_template(model_dir: str) -> None:
    predictor = load_predictor(model_dir, CPU)
    assert isinstance(predictor, CausalLmPredictor)
    server = OpenAIEndpoints(predictor.generator, "tiny", created=0, timeout_s=60)
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello"}]
    body = {"model": "tiny", "messages": messages, "max_tokens": 6, "temperature": 0}
    answer = await server.chat(json.dumps(body).encode())
    assert answer.document is not None
    _, tokenizer = load_causal_lm(model_dir)
    prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert prompt == "<|system|>Be brief.<|user|>Hello<|assistant|>"
    assert answer.document["choices"][0]["message"]["content"] == expected(model_dir, prompt, 6)


def test_a_prompt_past_the_models_context_is_refused_naming_the_limit(model_dir: str) -> None:
    predictor = load_predictor(model_dir, CPU)
    with pytest.raises(ProtocolError, match="instances\\[0\\]: this model's maximum context length is 512 tokens"):
        predictor.checked([{"prompt": "fox " * 600, "max_new_tokens": 4}], {}, v1_location)


async def test_a_conversation_the_template_refuses_is_400_naming_messages(model_dir: str) -> None:
    predictor = load_predictor(model_dir, CPU)
    assert isinstance(predictor, CausalLmPredictor)
    tokenizer = predictor.generator.tokenizer.tokenizer
    # As many chat models' templates do: only alternating user and assistant turns.
    tokenizer.chat_template = (
        "{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('no system messages') }}{% endif %}"
        "{{ m['content'] }}{% endfor %}"
    )
    server = OpenAIEndpoints(predictor.generator, "tiny", created=0, timeout_s=60)
    body = {"model": "tiny", "messages": [{"role": "system", "content": "x"}], "max_tokens": 2}
    with pytest.raises(OpenAIError) as caught:
        await server.chat(json.dumps(body).encode())
    assert (caught.value.status, caught.value.param) == (400, "messages")
    assert "chat template refuses this conversation: no system messages" in caught.value.message
