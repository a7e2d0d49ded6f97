"""Dependencies point one way (projects -> vlt_common), and importing the model is light."""
import ast
import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PROJECT_PACKAGES = tuple(
    name
    for project in os.listdir(os.path.join(REPO, "projects"))
    for name in os.listdir(os.path.join(REPO, "projects", project))
    if os.path.isfile(os.path.join(REPO, "projects", project, name, "__init__.py"))
)


def _imported_modules(path):
    """Absolute module names imported anywhere in a file (top level, functions, conditionals)."""
    with open(path) as f:
        tree = ast.parse(f.read(), path)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.module


def _project_imports(root):
    found = []
    for folder, _, files in os.walk(root):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                found += [
                    f"{os.path.relpath(path, REPO)} imports {module}"
                    for module in _imported_modules(path)
                    if module.split(".")[0] in PROJECT_PACKAGES
                ]
    return found


def test_the_project_packages_are_found():
    assert {"vltseg", "vltdet"} <= set(PROJECT_PACKAGES)


def test_vlt_common_imports_no_project():
    assert _project_imports(os.path.join(REPO, "vlt_common")) == []


def test_the_scan_sees_a_lazy_project_import(tmp_path):
    (tmp_path / "m.py").write_text("def f():\n    from vltseg.config import add_vltseg_config\n")
    assert _project_imports(str(tmp_path)) == [
        f"{os.path.relpath(str(tmp_path / 'm.py'), REPO)} imports vltseg.config"
    ]


_PROBE = """
import json, sys
import detectron2.data  # Detectron2 registers its own builtin datasets on import
from detectron2.data import DatasetCatalog
before = set(DatasetCatalog.list())
import {package}
print(json.dumps({{
    "new_datasets": sorted(set(DatasetCatalog.list()) - before),
    "heavy": sorted(m for m in sys.modules
                    if m.split(".")[0] in ("matplotlib", "vltdet" if "{package}" == "vltseg"
                                           else "vltseg")
                    or m.startswith("vlt_common.evaluation")),
}}))
"""


def _probe(package, pythonpath):
    env = dict(os.environ, PYTHONPATH=pythonpath)
    out = subprocess.run([sys.executable, "-c", _PROBE.format(package=package)], env=env,
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


@pytest.mark.parametrize("package", ["vltseg", "vltdet"])
def test_importing_a_project_loads_no_plotting_nor_the_other_project(package, tree_pythonpath):
    assert _probe(package, tree_pythonpath)["heavy"] == []


def test_importing_the_model_registers_no_dataset(tree_pythonpath):
    assert _probe("vltseg", tree_pythonpath)["new_datasets"] == []
