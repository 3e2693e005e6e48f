"""What a user copies from the README works: its manifests are valid and its commands exist."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from bigmodel.api.manifests import parse_manifest
from bigmodel.cli import build_parser

README = Path(__file__).resolve().parents[2] / "README.md"
BLOCK = re.compile(r"```(\w*)\n(.*?)```", re.DOTALL)


def blocks(language: str) -> list[str]:
    return [body for lang, body in BLOCK.findall(README.read_text()) if lang == language]


def test_every_manifest_in_the_readme_is_valid() -> None:
    manifests = [text for text in blocks("yaml") if "kind: BigModel" in text]
    assert manifests, "the README shows no manifest"
    for text in manifests:
        parse_manifest(yaml.safe_load(text), "README.md")


def test_every_bigmodel_command_in_the_readme_parses() -> None:
    parser = build_parser()
    commands = [
        part.split()
        for text in blocks("bash")
        for line in text.splitlines()
        for part in line.split("#")[0].split("&&")
        if part.strip().startswith(("bigmodel ", ".venv/bin/bigmodel "))
    ]
    assert commands, "the README shows no bigmodel command"
    for words in commands:
        parser.parse_args(words[1:])
