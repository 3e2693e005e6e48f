"""The Dockerfiles build the images that version.py, the chart and the CRD defaults name, with the project's deps."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import tomllib
from packaging.requirements import Requirement

from bigmodel.version import OPERATOR_IMAGE, RUNTIME_IMAGE, VERSION
from tests.chart.rendering import REPO

OPERATOR_DOCKERFILE = REPO / "images" / "operator" / "Dockerfile"
RUNTIME_DOCKERFILE = REPO / "images" / "runtime" / "Dockerfile"
TAG = re.compile(r"^#.*-t (\S+) \.$", re.MULTILINE)
ARG = re.compile(r"^ARG (\w+)=(\S+)$", re.MULTILINE)
QUOTED_REQUIREMENT = re.compile(r'"([A-Za-z0-9_.\-\[\],]+(?:[<>=!~]=?[^"\s]*)+)"')
PROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


def requirements(texts: list[str]) -> dict[str, Requirement]:
    return {requirement.name: requirement for requirement in map(Requirement, texts)}


def args(dockerfile_text: str) -> dict[str, str]:
    return dict(ARG.findall(dockerfile_text))


def test_operator_image_tag_and_version() -> None:
    text = OPERATOR_DOCKERFILE.read_text()
    assert TAG.findall(text) == [OPERATOR_IMAGE]
    assert args(text)["VERSION"] == VERSION


def test_runtime_image_tags_and_versions() -> None:
    text = RUNTIME_DOCKERFILE.read_text()
    assert TAG.findall(text) == [RUNTIME_IMAGE, f"{RUNTIME_IMAGE}-cpu"]
    values = args(text)
    assert values["VERSION"] == VERSION
    assert values["BASE"] == "rayproject/ray:${RAY_VERSION}-py311-gpu"
    dependencies = requirements(PROJECT["optional-dependencies"]["runtime"])
    assert dependencies["ray"].specifier.contains(values["RAY_VERSION"])
    assert dependencies["torch"].specifier.contains(values["TORCH_VERSION"])
    assert f"rayproject/ray:{values['RAY_VERSION']}-py311-cpu" in text, "the CPU build's base follows RAY_VERSION"


def test_each_image_installs_the_wheel_with_its_own_dependencies() -> None:
    """No hand-kept list to drift: the operator image takes the package's dependencies, the runtime image adds the
    runtime extra, and the only versions a Dockerfile names are the runtime's pinned torch and Ray."""
    operator = OPERATOR_DOCKERFILE.read_text()
    assert QUOTED_REQUIREMENT.findall(operator) == [] and "install --no-cache-dir --no-deps" not in operator
    assert "pip install --no-cache-dir /wheels/*.whl" in operator
    runtime = RUNTIME_DOCKERFILE.read_text()
    assert '"${wheel}[runtime]"' in runtime
    pinned = {re.split(r"[\[=<>!~]", text)[0] for text in QUOTED_REQUIREMENT.findall(runtime)}
    assert pinned == {"torch", "ray"}


def test_the_runtime_extra_is_what_the_package_leaves_out_and_dev_installs_everything() -> None:
    base = requirements(PROJECT["dependencies"])
    runtime = requirements(PROJECT["optional-dependencies"]["runtime"])
    assert {"torch", "ray", "pyarrow", "scikit-learn"} <= runtime.keys() and not base.keys() & runtime.keys()
    assert "bigmodel-operator[runtime]" in PROJECT["optional-dependencies"]["dev"]


def test_the_operator_never_imports_runtime_only_packages() -> None:
    """What lets the operator image leave the runtime extra out: `bigmodel operator` imports none of it."""
    script = (
        "import json, sys, bigmodel.cli, bigmodel.controller.main, bigmodel.controller.handlers, bigmodel.api.crd; "
        "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, cwd=REPO)
    imported = set(json.loads(result.stdout))
    assert not imported & {"torch", "ray", "pyarrow", "sklearn", "transformers", "safetensors"}
