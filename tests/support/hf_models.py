"""Tiny Hugging Face causal LMs and text datasets on disk, made in-process in a fraction of a second: nothing is
downloaded.

The tokenizer is real (byte-level BPE trained here on a small text), so any text round-trips through it; the model's
weights are random.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

Architecture = Literal["llama", "gpt2"]

BOS, EOS, PAD = "<|bos|>", "<|eos|>", "<|pad|>"
VOCAB_SIZE = 400
CONTEXT = 512
HIDDEN, LAYERS, HEADS, KV_HEADS = 32, 2, 4, 2
# Turns as <|role|>content, then <|assistant|> when the model is to answer.
CHAT_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|>{{ message['content'] }}{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
TRAINING_TEXT = [
    "The quick brown fox jumps over the lazy dog while the cat sleeps in the warm afternoon sun.",
    "A language model predicts the next token of a text from the tokens before it.",
    "def fine_tune(model, dataset):\n    for batch in dataset:\n        model.step(batch)\n",
    "Numbers: 0 1 2 3 4 5 6 7 8 9 10 100 1000; symbols: !?.,;:'\"()[]{}<>+-*/=_#@$%^&|~`",
]
DOCUMENTS = [
    "The fox and the dog were friends, and every morning they ran across the field together.",
    "Tokens come one after another; the model learns which token tends to follow which.",
    "In the afternoon the cat slept in the sun, and the fox watched the river go by.",
    "A small model on a small text learns its words quickly, and its loss goes down.",
]


def build_tokenizer() -> PreTrainedTokenizerFast:
    """Byte-level BPE (every byte is in the vocabulary, so no text is out of it) that puts BOS before a text."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=[BOS, EOS, PAD],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(TRAINING_TEXT, trainer)
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, tokenizer.token_to_id(BOS))]
    )
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token=BOS, eos_token=EOS, pad_token=PAD)
    fast.chat_template = CHAT_TEMPLATE
    return fast


def _build_model(architecture: Architecture, tokenizer: PreTrainedTokenizerFast) -> torch.nn.Module:
    special = {
        "vocab_size": len(tokenizer),
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    if architecture == "llama":
        config = LlamaConfig(
            hidden_size=HIDDEN,
            intermediate_size=2 * HIDDEN,
            num_hidden_layers=LAYERS,
            num_attention_heads=HEADS,
            num_key_value_heads=KV_HEADS,
            max_position_embeddings=CONTEXT,
            **special,
        )
        return LlamaForCausalLM(config)
    # GPT-2 ties its output head to its input embeddings, and dropout is off so that two forward passes agree.
    config = GPT2Config(
        n_embd=HIDDEN,
        n_layer=LAYERS,
        n_head=HEADS,
        n_positions=CONTEXT,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        **special,
    )
    return GPT2LMHeadModel(config)


def write_tiny_causal_lm(
    directory: Path, *, architecture: Architecture = "llama", seed: int = 0, dtype: torch.dtype = torch.float32
) -> Path:
    """A Hugging Face model directory (config.json, model.safetensors, tokenizer files with a chat template) of a
    two-layer model with random weights, the same for the same seed; returns the directory."""
    tokenizer = build_tokenizer()
    torch.manual_seed(seed)
    model = _build_model(architecture, tokenizer).to(dtype)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def write_text_dataset(path: Path, documents: list[str] = DOCUMENTS, repeat: int = 8) -> Path:
    """A .txt dataset (one document: the documents one after another, `repeat` times) or a .jsonl one (a document a
    line, in "text"), by path's suffix; returns the path."""
    documents = documents * repeat
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps({"text": document}) + "\n" for document in documents), encoding="utf-8")
    else:
        path.write_text("\n".join(documents), encoding="utf-8")
    return path
