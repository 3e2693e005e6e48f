"""The `bigmodel` command: run manifests on an embedded local Ray, and generate the CRDs."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console

from bigmodel.api.wire import JOB_KIND, SERVICE_KIND
from bigmodel.version import VERSION

if TYPE_CHECKING:
    from bigmodel.runtime.artifacts import ModelDescription

EXIT_USAGE = 2
EXIT_FAILED = 1
# What `train` and `serve` need beyond the operator's own dependencies: the package's `runtime` extra.
RUNTIME_MODULES = ("ray", "torch", "sklearn", "pyarrow", "transformers", "safetensors")


class CliError(Exception):
    """A problem the user can fix, reported as one line and exit code 2."""


@contextlib.contextmanager
def _needs_runtime(command: str) -> Iterator[None]:
    """A missing training stack is one line saying how to install it, not an import traceback."""
    try:
        yield
    except ModuleNotFoundError as error:
        if (error.name or "").split(".")[0] not in RUNTIME_MODULES:
            raise
        raise CliError(
            f"`bigmodel {command}` runs Ray and PyTorch on this machine, and {error.name} is not installed: "
            "pip install 'bigmodel-operator[runtime]'"
        ) from error


def _load(path: str, kind: str, command: str) -> Any:
    """The manifest's resource, which must be of `kind`; every problem is one line. Imported lazily so that
    `bigmodel crds` stays fast."""
    from bigmodel.api.manifests import ManifestError, load_manifest

    try:
        manifest = load_manifest(path)
    except ManifestError as error:
        raise CliError(str(error)) from error
    if manifest.kind != kind:
        raise CliError(f"{path}: kind: `bigmodel {command}` runs a {kind}, this file holds a {manifest.kind}")
    return manifest


def _job_manifest_named(job_name: str, directory: Path) -> str | None:
    """The BigModelJob manifest next to a service manifest that trains the job it names, to tell the user to run it."""
    from bigmodel.api.job import BigModelJob
    from bigmodel.api.manifests import ManifestError, load_manifest

    for candidate in sorted(directory.glob("*.y*ml")):
        try:
            manifest = load_manifest(candidate)
        except ManifestError:
            continue
        if isinstance(manifest, BigModelJob) and manifest.metadata.name == job_name:
            return str(candidate)
    return None


def _model_source(service, manifest: str, override: str | None) -> tuple[str, str]:
    """Where the model to serve is, and what to tell the user when it is not there."""
    model = service.spec.model
    if override:
        return override, "check --model"
    if model.uri:
        return model.uri, "check spec.model.uri"
    job_manifest = _job_manifest_named(model.job_name, Path(manifest).parent)
    train = f"bigmodel train {job_manifest}" if job_manifest else f"bigmodel train` on the BigModelJob {model.job_name}"
    return f"bigmodel-runs/{model.job_name}/model", f"run `{train}` first, or pass --model PATH"


def _read_exported(uri: str, hint: str) -> tuple[str, ModelDescription]:
    """The model's absolute URI and its ModelDescription, read before Ray starts: a missing or incomplete model is one
    line at once. Our own exports and Hugging Face causal-LM directories alike.

    A replica that cannot load its model is retried by Serve for a minute or more before the deploy reports why.
    """
    with _needs_runtime("serve"):
        from bigmodel.runtime.artifacts import ModelFileMissing, describe_model
        from bigmodel.runtime.huggingface import HuggingFaceModelError
        from bigmodel.runtime.storage import resolve

    try:
        # Absolute: replicas are other processes, with working directories of their own.
        return resolve(uri).uri, describe_model(uri)
    except ModelFileMissing as error:
        raise CliError(f"no exported model at {uri} (no {error.file}): {hint}") from error
    except HuggingFaceModelError as error:
        raise CliError(f"{error}: {hint}") from error
    except (OSError, ValueError) as error:
        # One line: object stores answer with multi-line details.
        reason = " ".join(str(error).split())
        raise CliError(f"cannot read the exported model at {uri}: {reason}") from error


def _check_port_free(port: int) -> None:
    import socket

    from bigmodel.runtime.serving.local import LOOPBACK

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        # As the server binds: connections of a server just stopped, still in TIME_WAIT, do not make the port busy.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((LOOPBACK, port))
        except OSError as error:
            raise CliError(f"port {port} is not free ({error.strerror}): choose another with --port") from error


def _check_api_keys(service) -> None:
    """A service with spec.auth takes its keys from the user's environment here, as its pods do from the Secret."""
    import os

    from bigmodel.api.wire import API_KEYS_ENV
    from bigmodel.runtime.serving.guard import parse_api_keys

    if service.spec.auth is not None and not parse_api_keys(os.environ.get(API_KEYS_ENV, "")):
        raise CliError(
            f"spec.auth: this service requires API keys; set {API_KEYS_ENV} to them, one a line "
            f"(locally it stands for the Secret {service.spec.auth.secret_name})"
        )


def cmd_serve(args: argparse.Namespace, console: Console) -> int:
    service = _load(args.manifest, SERVICE_KIND, "serve")
    _check_api_keys(service)
    uri, hint = _model_source(service, args.manifest, args.model)
    model_uri, description = _read_exported(uri, hint)
    _check_port_free(args.port)

    from bigmodel.builders.serve_app import app_args, model_name, model_version, serve_deploy_config
    from bigmodel.builders.serving_env import proxy_env

    with _needs_runtime("serve"):
        import ray

        from bigmodel.runtime.embedded import embedded_ray
        from bigmodel.runtime.graceful_stop import GracefulStop
        from bigmodel.runtime.serving import local
        from bigmodel.runtime.serving.predictor import TextPredictor, predictor_class

    name, spec = service.metadata.name, service.spec
    # The export time stands in for the run revision the operator uses: every new export is a new version.
    version = model_version(model_uri, description.exported)
    try:
        predictor = predictor_class(description.task)
    except ValueError as error:
        raise CliError(f"{uri}: {error}") from error
    config = serve_deploy_config(name, spec, app_args(name, spec, model_uri, version))
    console.print(
        f"Serving [bold]{name}[/bold] ({model_uri}, version {version}) on an embedded Ray cluster", soft_wrap=True
    )
    # Ray's processes inherit this environment, as a pod's do its env: the proxy loads its guard, replicas the keys.
    os.environ.update(proxy_env(spec))

    def finish() -> None:
        console.print("\nStopping: finishing the requests in flight (Ctrl-C again stops at once).")
        local.drain(config)

    stop = GracefulStop(finish=finish)
    try:
        # The signals are taken once Ray is up: ray.init sets its own SIGTERM handler.
        with embedded_ray(args.num_cpus or os.cpu_count() or 1, verbose=args.verbose), stop:
            resources = ray.cluster_resources()
            config, notes = local.local_deploy_config(
                config, port=args.port, cpus=resources.get("CPU", 1.0), gpus=resources.get("GPU", 0.0)
            )
            for note in notes:
                console.print(f"note: {note}")
            try:
                local.deploy(config, verbose=args.verbose)
            except local.DeployFailed as error:
                console.print(f"[red]BigModelService {name} failed:[/red] {error}", soft_wrap=True)
                return EXIT_FAILED
            _show_ready(
                console,
                local.base_url(config),
                model_name(name, spec),
                predictor.sample,
                auth=spec.auth is not None,
                generative=issubclass(predictor, TextPredictor),
            )
            # Until Ctrl-C or SIGTERM, which first let the requests in flight finish; leaving the block stops the
            # embedded Ray, and with it every replica and the proxy. Short sleeps: the kernel may hand the signal to
            # one of Ray's threads, and Python acts on it only when this thread wakes.
            while True:
                time.sleep(0.5)
    except KeyboardInterrupt:
        console.print("\nStopped.")
        return stop.exit_code


def _show_ready(console: Console, url: str, model: str, sample: object, *, auth: bool, generative: bool) -> None:
    import json
    import shlex

    body = shlex.quote(json.dumps({"instances": [sample]}))
    key = " -H 'Authorization: Bearer <one of your API keys>'" if auth else ""
    console.print(
        f"Ready at {url}  (v1: /v1/models/{model}:predict, v2: /v2/models/{model}/infer)", markup=False, soft_wrap=True
    )
    console.print("Try:", markup=False)
    console.print(f"  curl -s{key} {url}/v1/models/{model}:predict -d {body}", markup=False, soft_wrap=True)
    if generative:
        completion = shlex.quote(json.dumps({"model": model, "prompt": sample, "max_tokens": 32, "stream": True}))
        console.print(
            f"OpenAI-compatible at {url}/v1 (completions, chat/completions, models):", markup=False, soft_wrap=True
        )
        console.print(
            f"  curl -sN{key} {url}/v1/completions -H 'Content-Type: application/json' -d {completion}",
            markup=False,
            soft_wrap=True,
        )
        api_key = "<one of your API keys>" if auth else "unused"
        console.print(
            f"  python -c \"import openai; print(openai.OpenAI(base_url='{url}/v1', api_key='{api_key}')"
            f".completions.create(model='{model}', prompt={sample!r}, max_tokens=32).choices[0].text)\"",
            markup=False,
            soft_wrap=True,
        )
    console.print("Ctrl-C stops the server.", markup=False)


def _storage_for(job, override: str | None) -> str:
    """The run's storage, written to once: storage that cannot take a checkpoint is one line now, not a failure an
    interval into the run."""
    from bigmodel.runtime.storage import StorageUnwritable, probe_writable

    storage = override or job.spec.checkpoint.storage or f"bigmodel-runs/{job.metadata.name}"
    try:
        probe_writable(storage)
    except StorageUnwritable as error:
        raise CliError(str(error)) from None
    return storage


def cmd_train(args: argparse.Namespace, console: Console) -> int:
    job = _load(args.manifest, JOB_KIND, "train")
    with _needs_runtime("train"):
        from bigmodel.console import LiveProgress, summary_table
        from bigmodel.runtime.driver import (
            TrainingFailed,
            checkpoint_before_stopping,
            latest_checkpoint,
            local_environment,
            resolve_storage,
            run_command,
            run_training,
        )
        from bigmodel.runtime.embedded import embedded_ray, local_cpus, local_worker_resources
        from bigmodel.runtime.graceful_stop import GracefulStop
    storage = _storage_for(job, args.storage)

    name = job.metadata.name
    spec = job.spec
    console.print(
        f"Training [bold]{name}[/bold] on an embedded Ray cluster: {spec.workers.replicas} worker(s), "
        f"checkpoints in {resolve_storage(storage)}"
    )
    env, notes = local_environment(spec, os.environ)
    for note in notes:
        console.print(f"note: {note}", markup=False, soft_wrap=True)

    def finish() -> None:
        console.print("\nStopping: saving a checkpoint first (Ctrl-C again stops at once).")
        checkpoint_before_stopping(spec, storage)

    # A user's loop knows of no drain: it keeps the checkpoints it has made, and a signal stops it at once.
    stop = GracefulStop(finish=finish if spec.workload.builtin is not None else None)
    # The signals are taken once Ray is up: ray.init sets its own SIGTERM handler.
    with embedded_ray(args.num_cpus or local_cpus(spec), verbose=args.verbose) as address, stop:
        live = None
        try:
            if spec.workload.command is not None:
                code = run_command(spec, storage, address, env)
                console.print(f"command exited with code {code}")
                return code
            with LiveProgress(console, name) as live:
                result = run_training(
                    name,
                    spec,
                    storage,
                    resources_per_worker=local_worker_resources(spec),
                    env=env,
                    on_progress=live.update,
                )
        except TrainingFailed as error:
            console.print(f"[red]BigModelJob {name} failed:[/red] {error}")
            return EXIT_FAILED
        except KeyboardInterrupt:
            latest = latest_checkpoint(spec, storage, live.snapshot if live is not None else None)
            kept = f"step {latest.step} at {latest.uri}" if latest else "none yet"
            console.print(f"\nStopped. Last checkpoint: {kept}. Run the same command to resume.")
            return stop.exit_code
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

    serve = commands.add_parser(
        "serve", help="serve a BigModelService manifest's model on an embedded local Ray cluster"
    )
    serve.add_argument("manifest", help="BigModelService YAML file")
    serve.add_argument(
        "--model", help="exported model directory or URI (default: spec.model.uri, or bigmodel-runs/JOB/model)"
    )
    serve.add_argument("--port", type=int, default=8000, help="HTTP port on 127.0.0.1 (default: 8000)")
    serve.add_argument("--num-cpus", type=int, help="CPUs the embedded Ray cluster may use (default: all)")
    serve.add_argument("--verbose", action="store_true", help="show Ray's own logs")
    serve.set_defaults(handler=cmd_serve)

    crds = commands.add_parser("crds", help="write the CustomResourceDefinitions generated from the API models")
    crds.add_argument("--output", default="crds", help="directory to write to (default: crds)")
    crds.set_defaults(handler=cmd_crds)

    operator = commands.add_parser("operator", help="run the Kubernetes operator (in-cluster or with a kubeconfig)")
    operator.add_argument(
        "--namespace",
        action="append",
        help="namespace to watch; repeat for several (default: all, or BIGMODEL_NAMESPACES)",
    )
    operator.add_argument(
        "--default-storage", help="checkpoint storage for jobs that name none (BIGMODEL_DEFAULT_STORAGE)"
    )
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
