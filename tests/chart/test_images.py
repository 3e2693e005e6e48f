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
# Dependencies of the package that only the code inside Ray pods imports: the operator image leaves them out.
RUNTIME_ONLY = {"torch", "ray", "pyarrow", "scikit-learn"}
TAG = re.compile(r"^#.*-t (\S+) \.$", re.MULTILINE)
ARG = re.compile(r"^ARG (\w+)=(\S+)$", re.MULTILINE)
QUOTED_REQUIREMENT = re.compile(r'"([A-Za-z0-9_.\-\[\],]+(?:[<>=!~]=?[^"\s]*)+)"')


def project_dependencies() -> dict[str, Requirement]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    requirements = (Requirement(text) for text in project["dependencies"])
    return {requirement.name: requirement for requirement in requirements}


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
    dependencies = project_dependencies()
    assert dependencies["ray"].specifier.contains(values["RAY_VERSION"])
    assert dependencies["torch"].specifier.contains(values["TORCH_VERSION"])
    assert f"rayproject/ray:{values['RAY_VERSION']}-py311-cpu" in text, "the CPU build's base follows RAY_VERSION"


def test_operator_image_installs_the_operator_dependencies_of_pyproject() -> None:
    """The explicit list in the Dockerfile is pyproject's dependencies without the runtime-only ones, ranges included."""
    listed = [Requirement(text) for text in QUOTED_REQUIREMENT.findall(OPERATOR_DOCKERFILE.read_text())]
    expected = {name: str(req.specifier) for name, req in project_dependencies().items() if name not in RUNTIME_ONLY}
    assert {req.name: str(req.specifier) for req in listed} == expected
    assert "--no-deps /wheels/*.whl" in OPERATOR_DOCKERFILE.read_text()


def test_the_operator_never_imports_runtime_only_packages() -> None:
    """What lets the operator image leave torch and Ray out: `bigmodel operator` imports neither."""
    script = (
        "import json, sys, bigmodel.cli, bigmodel.controller.main, bigmodel.controller.settings; "
        "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, cwd=REPO)
    imported = set(json.loads(result.stdout))
    assert not imported & {"torch", "ray", "pyarrow", "sklearn"}
