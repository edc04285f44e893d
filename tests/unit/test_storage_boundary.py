"""Every read, write, listing, existence check and delete of a workdir or source path goes through
pipelines.storage: no other product module touches files, except for the local things named here."""
from __future__ import annotations

import ast

from testkit import REPO_ROOT

# Modules allowed to use local files, and what for (none of it is a workdir or source path).
LOCAL_FILES = {
    "pipelines/config.py": "the config file the user names (--config)",
    "pipelines/session.py": "Spark's conf folder, the repository root and the job's Spark log file",
    "pipelines/__main__.py": "the import path of `spark-submit pipelines/__main__.py`",
    "pipelines/launcher/task.py": "the rank's spec and log file in its host's temp folder",
    "pipelines/launcher/rank.py": "the rank's spec and log file in its host's temp folder",
    "pipelines/etl/generate.py": "the bundled digits in the repository (data/digits)",
    "pipelines/infer/scoring.py": "a local staging copy of the artifact for SparkContext.addFile",
    "pipelines/tracking/__init__.py": "MLflow's file store and TensorBoard write local files",
    "pipelines/tracking/sinks.py": "TensorBoard's event files",
    "pipelines/tracking/mlflow_sink.py": "local copies MLflow uploads",
    "pipelines/rl/statekey.py": "the key that signs RL actor states, kept off the work folder on purpose",
}
FILE_FUNCTIONS = {"makedirs", "mkdir", "remove", "unlink", "rename", "replace", "listdir", "scandir", "walk",
                  "rmdir", "stat", "lstat", "chmod", "open", "truncate", "removedirs", "link", "symlink"}


def _file_uses(path) -> list[str]:
    uses = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            uses += [f"imports {n}" for n in names if n.split(".")[0] in ("pathlib", "shutil", "glob")]
        elif isinstance(node, ast.Call):
            func = node.func
            if isinstance(func, ast.Name) and func.id == "open":
                uses.append(f"open() at line {node.lineno}")
            elif isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) and func.value.id == "os" \
                    and func.attr in FILE_FUNCTIONS:
                uses.append(f"os.{func.attr}() at line {node.lineno}")
            elif isinstance(func, ast.Attribute) and isinstance(func.value, ast.Attribute) \
                    and isinstance(func.value.value, ast.Name) and func.value.value.id == "os" \
                    and func.value.attr == "path" and func.attr not in ("join", "basename", "dirname", "pathsep"):
                uses.append(f"os.path.{func.attr}() at line {node.lineno}")
    return uses


def test_only_the_storage_layer_touches_files():
    offenders = {}
    for path in sorted((REPO_ROOT / "pipelines").rglob("*.py")):
        rel = path.relative_to(REPO_ROOT).as_posix()
        if rel.startswith("pipelines/storage/") or rel in LOCAL_FILES:
            continue
        uses = _file_uses(path)
        if uses:
            offenders[rel] = uses
    assert offenders == {}, ("use pipelines.storage for every workdir and source path (or name the local use "
                             f"in LOCAL_FILES with its reason): {offenders}")


def test_the_check_catches_what_it_is_for(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text("import os\nfrom pathlib import Path\nos.makedirs('x')\nopen('y')\nos.path.exists('z')\n")
    assert _file_uses(sample) == ["imports pathlib", "os.makedirs() at line 3", "open() at line 4",
                                  "os.path.exists() at line 5"]
