"""The rooms of the package import only what their place allows (pyproject.toml, [tool.importlinter]).

The contracts keep code that runs in a Ray pod free of the operator's renderers and clients, decisions and builders
pure, and the operator process free of the training stack that only the runtime image installs.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from importlinter.cli import lint_imports

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT_S = 120


def test_every_import_contract_is_kept(capsys: object) -> None:
    code = lint_imports(config_filename=str(ROOT / "pyproject.toml"), no_cache=True, no_logo=True)
    assert code == 0, "an import contract is broken: see the lint-imports report above"


def _modules_loaded_by(statement: str) -> set[str]:
    probe = f"import json, sys; {statement}; print(json.dumps(sorted(sys.modules)))"
    done = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=TIMEOUT_S, check=True
    )
    return {name.split(".")[0] for name in json.loads(done.stdout.strip().splitlines()[-1])}


def test_the_wire_contract_imports_nothing_outside_the_standard_library() -> None:
    loaded = _modules_loaded_by("import bigmodel.api.wire")
    assert not loaded & {"pydantic", "yaml", "kubernetes", "kopf", "ray", "torch", "aiohttp"}
