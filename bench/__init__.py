"""Benchmarks that print figures; each runs as a module from the repository root: `python -m bench.<name>`."""

from __future__ import annotations

import argparse


def bench_parser(module: str, doc: str | None) -> argparse.ArgumentParser:
    """The argument parser of the bench `module`: its usage line says how to run it, its help shows doc as written."""
    return argparse.ArgumentParser(
        prog=f"python -m {module}", description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )
