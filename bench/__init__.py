"""Benchmarks that print figures; each runs as a module from the repository root: `python -m bench.<name>`."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any


def bench_parser(module: str, doc: str | None) -> argparse.ArgumentParser:
    """The argument parser of the bench `module`: its usage line says how to run it, its help shows doc as written."""
    return argparse.ArgumentParser(
        prog=f"python -m {module}", description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )


def run_until_interrupted(run: Callable[[argparse.Namespace], Any], args: argparse.Namespace) -> None:
    """run(args), exiting with its int result; Ctrl-C exits 130 with one line. A run prints what it measured so far
    and stops its children and Ray on the way out (its own finally blocks)."""
    try:
        result = run(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    if isinstance(result, int):
        sys.exit(result)
