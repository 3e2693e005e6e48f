"""What `bigmodel train` shows a person: a live progress line and a one-screen summary."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table

from bigmodel.runtime.driver import TrainingResult
from bigmodel.runtime.progress import ProgressSnapshot

_PROGRESS_KEYS = {"progress", "eta_seconds"}


def _duration(seconds: int | None) -> str:
    if seconds is None:
        return "--:--"
    minutes, secs = divmod(seconds, 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes:02d}:{secs:02d}"


def _rate(metrics: dict[str, float]) -> str:
    if "tokens_per_second" in metrics:
        return f"{metrics['tokens_per_second']:,.0f} tok/s"
    if "samples_per_second" in metrics:
        return f"{metrics['samples_per_second']:,.0f} samples/s"
    return ""


def progress_line(snapshot: ProgressSnapshot) -> str:
    """epoch, step, loss, throughput and ETA in one line."""
    event = snapshot.latest
    if event is None:
        return "starting workers"
    eta = event.metrics.get("eta_seconds")
    # A user loop may report no plan (`user_loop.report` without epochs or total_steps): show what is known.
    parts = [f"epoch {event.epoch + 1}/{event.epochs}"] if event.epochs else []
    parts.append(f"step {event.step}/{event.total_steps}" if event.total_steps else f"step {event.step}")
    if "loss" in event.metrics:
        parts.append(f"loss {event.metrics['loss']:.4f}")
    if _rate(event.metrics):
        parts.append(_rate(event.metrics))
    parts.append(f"ETA {_duration(None if eta is None else int(eta))}")
    if snapshot.worker_restarts:
        parts.append(f"[yellow]worker restarts {snapshot.worker_restarts}[/yellow]")
    return "  ".join(parts)


class LiveProgress:
    """A rich progress bar fed with recorder snapshots from the driver's polling thread."""

    def __init__(self, console: Console, title: str) -> None:
        self._progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            TextColumn("{task.percentage:>3.0f}%"),
            TextColumn("{task.fields[line]}"),
            TimeElapsedColumn(),
            console=console,
            transient=False,
        )
        self._task: TaskID = self._progress.add_task(title, total=None, line="starting workers")
        self.snapshot: ProgressSnapshot | None = None

    def __enter__(self) -> LiveProgress:
        self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.stop()

    def update(self, snapshot: ProgressSnapshot) -> None:
        self.snapshot = snapshot
        event = snapshot.latest
        total = event.total_steps if event and event.total_steps else None
        completed = event.step if event else 0
        self._progress.update(self._task, total=total, completed=completed, line=progress_line(snapshot))


def summary_table(name: str, result: TrainingResult) -> Table:
    table = Table(title=f"BigModelJob {name}: Succeeded", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    steps = f"{result.steps}/{result.total_steps}" if result.total_steps else str(result.steps)
    table.add_row("steps", f"{steps} over {result.epochs} epoch(s)" if result.epochs else steps)
    for key, value in sorted(result.metrics.items()):
        if key in _PROGRESS_KEYS:
            continue
        table.add_row(key.replace("_", " "), f"{value:.4f}" if abs(value) < 100 else f"{value:,.0f}")
    resumed = result.progress.attempts[0].resumed_from_step if result.progress.attempts else 0
    if resumed:
        table.add_row("resumed from", f"step {resumed}")
    if result.progress.worker_restarts:
        table.add_row("worker restarts", str(result.progress.worker_restarts))
    for uri, why in result.progress.skipped.items():
        table.add_row("skipped checkpoint", f"{uri}: would not load ({why})")
    if result.checkpoint is not None:
        table.add_row("checkpoint", f"{result.checkpoint.uri} (step {result.checkpoint.step})")
    if result.model_uri:
        table.add_row("model", result.model_uri)
    table.add_row("time", f"{result.elapsed_s:.1f} s")
    return table
