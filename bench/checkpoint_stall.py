"""How long a checkpoint save holds training up, synchronous against asynchronous (checkpoint.asyncSave), in one run.

The gpt task trains with FSDP on 2 workers twice, the real Ray Train run that `bigmodel train` does in an
embedded Ray, alike but for checkpoint.asyncSave: false, then true. Each completed checkpoint reports
`checkpoint_stall_seconds`, the time its save held the training loop up: a synchronous save, the whole
torch.distributed.checkpoint write; an asynchronous one, starting the save, the wait of the next optimizer step
for the copy of the state to host memory (made in a thread while forward and backward run), and any wait for the
previous save still being written. The model is big enough for a save to take noticeable time on a
CPU. Printed: mean and max stall over each run's saves, each run's wall time (start-up included), a
checkpoint's size on disk, and the ratio of the mean stalls.

    python -m bench.checkpoint_stall
    python -m bench.checkpoint_stall --embed-dim 768 --every-steps 5
"""

from __future__ import annotations

import argparse
import tempfile
from dataclasses import dataclass
from pathlib import Path
from statistics import mean

from bench import bench_parser
from bigmodel.api.job import BigModelJobSpec
from bigmodel.runtime.driver import run_training
from bigmodel.runtime.embedded import embedded_ray

WORKERS = 2
GOAL = 0.10


@dataclass(frozen=True)
class Saves:
    """The checkpoints of one run: each save's stall, and the size of the last on disk."""

    stalls_s: list[float]
    size_bytes: int
    elapsed_s: float


def job_spec(args: argparse.Namespace, async_save: bool) -> BigModelJobSpec:
    gpt = {
        "layers": args.layers,
        "heads": args.heads,
        "embedDim": args.embed_dim,
        "contextLength": args.context_length,
        "corpusMegabytes": 2,
    }
    return BigModelJobSpec.model_validate(
        {
            "workload": {
                "builtin": {
                    "task": "gpt",
                    "epochs": 1000,
                    "maxSteps": args.steps,
                    "batchSize": args.batch_size,
                    "gpt": gpt,
                }
            },
            "workers": {"replicas": WORKERS},
            "training": {"strategy": "fsdp"},
            "checkpoint": {"everySteps": args.every_steps, "asyncSave": async_save},
            # A restarted worker group saves its steps again: the figures would mix two attempts.
            "failurePolicy": {"maxWorkerFailures": 0},
        },
        by_alias=True,
    )


def _directory_bytes(directory: Path) -> int:
    return sum(path.stat().st_size for path in directory.rglob("*") if path.is_file())


def train(spec: BigModelJobSpec) -> Saves:
    with tempfile.TemporaryDirectory() as storage:
        result = run_training("bench", spec, storage, resources_per_worker={"CPU": 1})
        if result.checkpoint is None:
            raise SystemExit("the run saved no checkpoint")
        size = _directory_bytes(Path(result.checkpoint.uri))
    stalls = [event.metrics["checkpoint_stall_seconds"] for event in result.progress.checkpoints]
    return Saves(stalls, size, result.elapsed_s)


def _row(label: str, saves: Saves) -> str:
    return f"{label:<12} {mean(saves.stalls_s):10.3f} s {max(saves.stalls_s):10.3f} s {saves.elapsed_s:10.1f} s"


def main() -> None:
    parser = bench_parser("bench.checkpoint_stall", __doc__)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--embed-dim", type=int, default=512)
    parser.add_argument("--context-length", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--steps", type=int, default=24)
    parser.add_argument("--every-steps", type=int, default=4)
    args = parser.parse_args()

    with embedded_ray(num_cpus=WORKERS):
        sync = train(job_spec(args, async_save=False))
        overlapped = train(job_spec(args, async_save=True))
    print(
        f"task=gpt layers={args.layers} embedDim={args.embed_dim} strategy=fsdp workers={WORKERS} "
        f"steps={args.steps} checkpoint every {args.every_steps} steps, {len(sync.stalls_s)} saves per run"
    )
    print(f"checkpoint size {sync.size_bytes / 1e6:10.1f} MB on disk")
    print(f"{'':<12} {'mean stall':>12} {'max stall':>12} {'run time':>12}")
    print(_row("sync save", sync))
    print(_row("async save", overlapped))
    ratio = mean(overlapped.stalls_s) / mean(sync.stalls_s)
    print(f"ratio async/sync (mean stall) {ratio:.3f}   (goal < {GOAL:.2f})")


if __name__ == "__main__":
    main()
