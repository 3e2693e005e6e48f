"""The model under test, exported as a job exports one, and what its forward costs."""

from __future__ import annotations

import argparse
import time
from typing import Any

from bench.serving.loadgen import percentile


def add_model_arguments(parser: argparse.ArgumentParser, *, task: str, new_tokens: int) -> None:
    """The flags that choose the model export_bench_model makes, shared by the serving benches."""
    parser.add_argument("--task", choices=["digits", "gpt"], default=task)
    parser.add_argument("--hidden-size", type=int, default=2048, help="digits MLP width (default 2048)")
    parser.add_argument("--gpt-layers", type=int, default=2)
    parser.add_argument("--gpt-heads", type=int, default=4)
    parser.add_argument("--gpt-embed-dim", type=int, default=128)
    parser.add_argument("--gpt-context", type=int, default=128)
    parser.add_argument(
        "--new-tokens", type=int, default=new_tokens, help=f"bytes a GPT request generates (default {new_tokens})"
    )


def gpt_config(args: argparse.Namespace) -> dict[str, Any]:
    """The built-in GPT's model config from the --gpt-* flags."""
    return {
        "task": "gpt",
        "vocab_size": 256,
        "layers": args.gpt_layers,
        "heads": args.gpt_heads,
        "embed_dim": args.gpt_embed_dim,
        "context_length": args.gpt_context,
        "dropout": 0.0,
    }


def export_bench_model(args: argparse.Namespace, storage: str) -> tuple[str, Any, str]:
    """An untrained model of the chosen architecture, exported as a job exports one: (uri, instance, description).

    A throughput benchmark needs the forward's cost, not its answers, so the weights are left as initialised.
    """
    import torch

    from bigmodel.runtime.artifacts import export_model
    from bigmodel.runtime.serving.predictor import SAMPLE_DIGIT, SAMPLE_PROMPT
    from bigmodel.runtime.tasks import build_model_from_config

    torch.manual_seed(0)
    if args.task == "digits":
        config = {"task": "digits", "hidden_size": args.hidden_size}
        instance: Any = SAMPLE_DIGIT
        what = f"digits MLP 64-{args.hidden_size}-{args.hidden_size}-10"
    else:
        config = gpt_config(args)
        instance = {"prompt": SAMPLE_PROMPT, "max_new_tokens": args.new_tokens}
        what = (
            f"GPT {args.gpt_layers} layers x {args.gpt_embed_dim} wide, {args.gpt_heads} heads, context "
            f"{args.gpt_context}, {args.new_tokens} new bytes per request from a {len(SAMPLE_PROMPT)}-byte prompt"
        )
    model = build_model_from_config(config)
    parameters = sum(parameter.numel() for parameter in model.parameters())
    uri = export_model(storage, model, config, {})
    return uri, instance, f"{what} ({parameters / 1e6:.2f} M parameters, untrained)"


def forward_cost(predictor: Any, instance: Any, batch: int) -> tuple[float, float]:
    """Median seconds of predict() on 1 instance and on a full batch."""

    def median(count: int) -> float:
        predictor.predict([instance] * count)
        times = []
        deadline = time.perf_counter() + 1.5
        while len(times) < 5 or (len(times) < 50 and time.perf_counter() < deadline):
            start = time.perf_counter()
            predictor.predict([instance] * count)
            times.append(time.perf_counter() - start)
        return percentile(times, 0.5)

    return median(1), median(batch)
