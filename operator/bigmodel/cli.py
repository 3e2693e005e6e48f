"""The `bigmodel` command: run manifests on an embedded local Ray, and generate the CRDs."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rich.console import Console

from bigmodel.version import VERSION

EXIT_USAGE = 2
EXIT_FAILED = 1
EXIT_INTERRUPTED = 130


class CliError(Exception):
    """A problem the user can fix, reported as one line and exit code 2."""


def _load_job(path: str):  # -> BigModelJob, imported lazily so `bigmodel crds` stays fast
    from bigmodel.api.job import BigModelJob
    from bigmodel.api.manifests import ManifestError, load_manifest

    try:
        manifest = load_manifest(path)
    except ManifestError as error:
        raise CliError(str(error)) from error
    if not isinstance(manifest, BigModelJob):
        raise CliError(f"{path}: kind: `bigmodel train` runs a BigModelJob, this file holds a {manifest.kind}")
    return manifest


def _storage_for(job, override: str | None) -> str:
    storage = override or job.spec.checkpoint.storage or f"bigmodel-runs/{job.metadata.name}"
    if "://" not in storage:
        try:
            Path(storage).expanduser().mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise CliError(f"checkpoint storage {storage!r} cannot be created: {error.strerror}") from error
    return storage


def cmd_train(args: argparse.Namespace, console: Console) -> int:
    job = _load_job(args.manifest)
    storage = _storage_for(job, args.storage)

    from bigmodel.console import LiveProgress, summary_table
    from bigmodel.runtime.driver import TrainingFailed, resolve_storage, run_command, run_training
    from bigmodel.runtime.embedded import embedded_ray, local_cpus, local_worker_resources

    name = job.metadata.name
    spec = job.spec
    console.print(
        f"Training [bold]{name}[/bold] on an embedded Ray cluster: {spec.workers.replicas} worker(s), "
        f"checkpoints in {resolve_storage(storage)}"
    )
    with embedded_ray(args.num_cpus or local_cpus(spec), verbose=args.verbose) as address:
        if spec.workload.command is not None:
            code = run_command(spec, storage, address)
            console.print(f"command exited with code {code}")
            return code
        try:
            with LiveProgress(console, name) as live:
                result = run_training(
                    name,
                    spec,
                    storage,
                    resources_per_worker=local_worker_resources(spec),
                    on_progress=live.update,
                )
        except TrainingFailed as error:
            console.print(f"[red]BigModelJob {name} failed:[/red] {error}")
            return EXIT_FAILED
        except KeyboardInterrupt:
            from bigmodel.runtime.checkpoints import CheckpointStore

            latest = CheckpointStore(resolve_storage(storage)).latest()
            kept = f"step {latest.step} at {latest.uri}" if latest else "none yet"
            console.print(f"\nStopped. Last checkpoint: {kept}. Run the same command to resume.")
            return EXIT_INTERRUPTED
    console.print(summary_table(name, result))
    return 0


def cmd_crds(args: argparse.Namespace, console: Console) -> int:
    from bigmodel.api.crd import write_crds

    for path in write_crds(Path(args.output)):
        console.print(f"wrote {path}")
    return 0


def cmd_validate(args: argparse.Namespace, console: Console) -> int:
    from bigmodel.api.manifests import ManifestError, load_manifest

    failed = 0
    for path in args.manifests:
        try:
            manifest = load_manifest(path)
        except ManifestError as error:
            console.print(f"[red]invalid[/red] {error}", highlight=False, soft_wrap=True)
            failed += 1
        else:
            console.print(f"[green]valid[/green]   {path}: {manifest.kind} {manifest.metadata.name}", soft_wrap=True)
    return EXIT_USAGE if failed else 0


def cmd_operator(args: argparse.Namespace, console: Console) -> int:
    from bigmodel.controller.main import run_operator
    from bigmodel.controller.settings import OperatorSettings

    settings = OperatorSettings.from_env()
    if args.namespace:
        settings.namespaces = args.namespace
    if args.default_storage:
        settings.default_storage = args.default_storage
    run_operator(settings)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bigmodel", description="Train and serve PyTorch models on Ray, locally or through Kubernetes."
    )
    parser.add_argument("--version", action="version", version=f"bigmodel {VERSION}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    train = commands.add_parser("train", help="run a BigModelJob manifest on an embedded local Ray cluster")
    train.add_argument("manifest", help="BigModelJob YAML file")
    train.add_argument("--storage", help="checkpoint directory or URI (default: the manifest's, or bigmodel-runs/NAME)")
    train.add_argument("--num-cpus", type=int, help="CPUs the embedded Ray cluster may use (default: all)")
    train.add_argument("--verbose", action="store_true", help="show Ray's own logs")
    train.set_defaults(handler=cmd_train)

    crds = commands.add_parser("crds", help="write the CustomResourceDefinitions generated from the API models")
    crds.add_argument("--output", default="crds", help="directory to write to (default: crds)")
    crds.set_defaults(handler=cmd_crds)

    operator = commands.add_parser("operator", help="run the Kubernetes operator (in-cluster or with a kubeconfig)")
    operator.add_argument(
        "--namespace", action="append", help="namespace to watch; repeat for several (default: all, or BIGMODEL_NAMESPACES)"
    )
    operator.add_argument("--default-storage", help="checkpoint storage for jobs that name none (BIGMODEL_DEFAULT_STORAGE)")
    operator.set_defaults(handler=cmd_operator)

    validate = commands.add_parser("validate", help="check manifests without running them")
    validate.add_argument("manifests", nargs="+", help="YAML files")
    validate.set_defaults(handler=cmd_validate)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    console = Console(highlight=False)
    try:
        return args.handler(args, console)
    except CliError as error:
        # Plain print: a terminal-width wrap would split the one line a user (or a script) reads.
        print(f"bigmodel: {error}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
