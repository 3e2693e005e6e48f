"""A text dataset as documents, and the documents as one token sequence: a .txt file (one document) or a .jsonl file
(one document a line, in its "text" field), on local disk or in an object store."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import torch

from bigmodel.runtime.storage import read_bytes, resolve

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


def read_documents(uri: str) -> list[str]:
    """The dataset's documents; a problem is a ValueError naming the file, and the line of a .jsonl file."""
    try:
        text = read_bytes(resolve(uri)).decode("utf-8")
    except FileNotFoundError:
        raise ValueError(f"{uri}: no such file") from None
    except UnicodeDecodeError as error:
        raise ValueError(f"{uri}: not UTF-8 text (byte {error.start})") from None
    if uri.partition("?")[0].endswith(".txt"):
        return [text]
    documents = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            raise ValueError(f"{uri}: line {number} is not JSON") from None
        if not isinstance(record, dict) or not isinstance(record.get("text"), str):
            raise ValueError(f'{uri}: line {number} has no "text" string')
        documents.append(record["text"])
    return documents


def tokenize_documents(tokenizer: PreTrainedTokenizerBase, documents: list[str]) -> torch.Tensor:
    """The documents' tokens one after another, each document ended by the end-of-sequence token so that the model
    learns where one ends; special tokens the tokenizer adds itself (a beginning-of-sequence token) are kept."""
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ValueError("the tokenizer has no end-of-sequence token to separate documents with")
    # verbose=False: a document longer than the model's context is expected here, it is cut into windows.
    encoded = tokenizer(documents, add_special_tokens=True, verbose=False)["input_ids"]
    tokens: list[int] = []
    for ids in encoded:
        tokens.extend(ids)
        if not ids or ids[-1] != eos:
            tokens.append(eos)
    return torch.tensor(tokens, dtype=torch.int32)
