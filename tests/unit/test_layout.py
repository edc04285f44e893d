"""The package layout: no import cycle, one CLI, and no benchmark code in the installed wheel."""
from __future__ import annotations

import ast
import importlib
import shutil
import subprocess
import sys
import zipfile

import pytest

from testkit import REPO_ROOT
from pipelines.cli import JOBS, parse_args

PACKAGES = ("pipelines", "models")


def _module_imports() -> dict[str, set[str]]:
    """module -> the project modules it imports (anywhere in the file, lazily or not)."""
    files = {}
    for package in PACKAGES:
        for path in (REPO_ROOT / package).rglob("*.py"):
            parts = path.relative_to(REPO_ROOT).with_suffix("").parts
            files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    edges: dict[str, set[str]] = {m: set() for m in files}
    for module, path in files.items():
        is_package = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    pkg = module.split(".") if is_package else module.split(".")[:-1]
                    base = ".".join(pkg[: len(pkg) - node.level + 1] + ([base] if base else []))
                names = [base] + [f"{base}.{a.name}" for a in node.names]
            for name in names:
                while name and name not in files:
                    name = name.rpartition(".")[0]
                if name and name != module and not module.startswith(name + "."):
                    edges[module].add(name)
    return edges


def test_no_import_cycle_among_the_projects_modules():
    edges = _module_imports()
    assert "pipelines.etl.job" in edges and "pipelines.train.rank" in edges  # the walk found the stages
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in sorted(edges[module]):
            if state.get(target) == 1:
                pytest.fail("import cycle: " + " -> ".join(path[path.index(target):] + [module, target]))
            if target not in state:
                visit(target, path + [module])
        state[module] = 2

    for module in sorted(edges):
        if module not in state:
            visit(module, [])


# The import layers of docs/architecture.md, lowest first: a module imports only its own layer and below.
LAYERS = [
    ("models",),
    ("pipelines.errors", "pipelines.choices", "pipelines.stackinfo", "pipelines.formats", "pipelines.storage", "pipelines.config_rules", "pipelines.config",
     "pipelines.events", "pipelines.device", "pipelines.progress", "pipelines.lease", "pipelines.readers",
     "pipelines.publish", "pipelines.runfolder",
     "pipelines.checkpoint_store", "pipelines.tracking", "pipelines.drift", "pipelines.promotion"),
    ("pipelines.dataset", "pipelines.artifact", "pipelines.session", "pipelines.preprocess", "pipelines.tables",
     "pipelines.raw", "pipelines.launcher", "pipelines.guards"),
    ("pipelines.etl", "pipelines.train", "pipelines.infer", "pipelines.rl", "pipelines.report", "pipelines.summary",
     "pipelines.challenger", "pipelines.lineage"),
    ("pipelines.preflight", "pipelines.run", "pipelines.cli", "pipelines.__main__", "pipelines"),
]


def _layer(module: str) -> int:
    for level, prefixes in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in prefixes if p != "pipelines") or module == "pipelines":
            return level
    raise AssertionError(f"module {module} is in no layer of LAYERS (docs/architecture.md): place it")


def test_lower_layers_never_import_higher_ones():
    edges = _module_imports()
    upward = sorted(f"{m} (layer {_layer(m) + 1}) imports {t} (layer {_layer(t) + 1})"
                    for m, targets in edges.items() for t in targets if _layer(t) > _layer(m))
    assert upward == [], upward


def test_models_import_nothing_but_torch():
    for module, targets in _module_imports().items():
        if module.startswith("models"):
            assert all(t.startswith("models") for t in targets), (module, targets)
    leaked = subprocess.run([sys.executable, "-c", "import models, sys; print(sorted(m for m in sys.modules "
                             "if m.split('.')[0] in ('pyspark', 'pipelines', 'horovod', 'petastorm')))"],
                            capture_output=True, text=True, check=True, cwd=REPO_ROOT).stdout.strip()
    assert leaked == "[]"


def test_every_verb_runs_a_module_with_main_and_bench_is_not_a_product_verb():
    for verb, module in JOBS.items():
        assert callable(importlib.import_module(module).main), verb
    with pytest.raises(SystemExit):
        parse_args(["bench", "all"])


@pytest.mark.slow
def test_the_wheel_holds_the_two_packages_and_no_benchmark_or_test_code(tmp_path):
    # Build from a copy of the whole tree (benchmarks/ and tests/ included): setuptools writes build/ in place.
    source = tmp_path / "src"
    shutil.copytree(REPO_ROOT, source, ignore=shutil.ignore_patterns(".git", ".venv", "work", "dist", "build",
                                                                     "*.egg-info", "__pycache__", "data"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path), str(source)], check=True, capture_output=True, timeout=300)
    (wheel,) = tmp_path.glob("dlpipe-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names if not n.startswith("dlpipe-")}
    assert tops == {"pipelines", "models"}, tops
    assert "pipelines/configs/digits_cnn.yaml" in names and "pipelines/train/rank.py" in names


def test_only_the_run_folder_module_spells_the_run_folders_files():
    """The run folder has one owner (pipelines/runfolder.py): no other module spells its file names,
    so a layout change is made, and read, in one place."""
    names = {"config.yaml", "summary.json", "metrics.jsonl", "dataset.json", "rl_eval.json", "policy.pt"}
    spelled = []
    for package in PACKAGES:
        for path in sorted((REPO_ROOT / package).rglob("*.py")):
            if path.name == "runfolder.py":
                continue
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Constant) and node.value in names:
                    spelled.append(f"{path.relative_to(REPO_ROOT)}:{node.lineno}: {node.value!r}")
    assert spelled == [], "ask pipelines.runfolder.RunFolder for these paths:\n" + "\n".join(spelled)


def test_config_yaml_is_written_once_per_job_and_again_only_when_it_changes(tmp_path, monkeypatch):
    from pipelines import storage
    from pipelines.config import load_config, to_yaml
    from pipelines.runfolder import RunFolder

    config = load_config(None, [f"workdir={tmp_path}", "run_id=r1"])
    folder = RunFolder.of(config)
    writes = []
    real_write = storage.write_text
    monkeypatch.setattr(storage, "write_text", lambda location, text: (writes.append(location), real_write(location, text)))
    assert folder.write_config(config) is True
    assert folder.write_config(config) is False  # the training stage inside `dlpipe run`: the same text
    changed = load_config(None, [f"workdir={tmp_path}", "run_id=r1", "train.epochs=3"])
    assert folder.write_config(changed) is True  # a re-run with another config records it
    assert writes == [folder.config_file, folder.config_file]
    assert storage.read_text(folder.config_file) == to_yaml(changed)
    assert folder.config_file == str(tmp_path / "runs" / "r1" / "config.yaml")


def _architecture_map() -> str:
    """The flow diagram at the top of docs/architecture.md (its first code block)."""
    text = (REPO_ROOT / "docs" / "architecture.md").read_text()
    return text.split("```", 2)[1]


# The map's stages in flow order (data moves down the list), and the formats and libraries they
# share: a stage may use an earlier stage's output format, never a later stage; a format or library
# module serves the stages and imports none of them.
STAGES = ["pipelines.etl", "pipelines.train", "pipelines.infer"]
SHARED = ["pipelines.raw", "pipelines.preprocess", "pipelines.dataset", "pipelines.launcher", "pipelines.artifact"]
FLOW = [*STAGES, *SHARED, "pipelines.report", "pipelines.summary"]


def _owner(module: str, owners: list[str]) -> int | None:
    for index, owner in enumerate(owners):
        if module == owner or module.startswith(owner + "."):
            return index
    return None


def test_the_architecture_map_names_only_modules_that_exist():
    import re

    block = _architecture_map()
    folders = re.findall(r"pipelines/(?:\w+/)*", block)
    named = re.findall(r"pipelines/[\w/]+\.py", block)
    assert len(named) >= 6 and len(folders) >= 10, block  # the map was found
    missing = [p for p in named if not (REPO_ROOT / p).is_file()]
    # bare file names (sources.py, job.py) belong to one of the packages the map names
    bare = set(re.findall(r"(?<![/\w])(\w+\.py)\b", block))
    homeless = sorted(b for b in bare if not any((REPO_ROOT / f / b).is_file() for f in set(folders)))
    assert missing == [] and homeless == [], f"the map names files that do not exist: {missing + homeless}"
    for module in FLOW:  # every stage and format of the flow is on the map
        assert module.replace(".", "/") in block, f"{module} is missing from the map"


def test_the_flow_on_the_map_is_the_import_direction():
    """The ETL knows nothing of training or inference, training nothing of inference; the formats
    and libraries the stages share (dataset versions, the artifact, the launcher) import no stage."""
    edges = _module_imports()
    against = []
    for module, targets in edges.items():
        for target in targets:
            here, there = _owner(module, STAGES), _owner(target, STAGES)
            if there is not None and (_owner(module, SHARED) is not None or (here is not None and there > here)):
                against.append(f"{module} imports {target}")
    assert sorted(against) == [], "imports against the flow of docs/architecture.md's map:\n" + "\n".join(against)


MAX_FUNCTION_LINES, MAX_PARAMETERS = 60, 8


def test_no_function_is_longer_than_60_lines_or_takes_more_than_8_parameters():
    """Long functions mix concerns: split them (``def`` to last line, docstring included; ``self`` and
    ``cls`` are not counted)."""
    long = []
    for folder in (*PACKAGES, "benchmarks"):
        for path in sorted((REPO_ROOT / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    continue
                a = node.args
                params = len(a.posonlyargs) + len(a.args) + len(a.kwonlyargs) + bool(a.vararg) + bool(a.kwarg)
                params -= bool(a.args and a.args[0].arg in ("self", "cls"))
                lines = (node.end_lineno or node.lineno) - node.lineno + 1
                if lines > MAX_FUNCTION_LINES or params > MAX_PARAMETERS:
                    long.append(f"{path.relative_to(REPO_ROOT)}:{node.lineno}: {node.name} ({lines} lines, "
                                f"{params} parameters)")
    assert long == [], "split these by concern:\n" + "\n".join(long)


def test_modules_share_a_name_only_in_the_parallel_roles_the_architecture_doc_states():
    import collections
    import re

    by_name = collections.defaultdict(list)
    for package in PACKAGES:
        for path in (REPO_ROOT / package).rglob("*.py"):
            if path.name != "__init__.py":
                by_name[path.name].append(str(path.relative_to(REPO_ROOT)))
    shared = {name for name, paths in by_name.items() if len(paths) > 1}
    text = (REPO_ROOT / "docs" / "architecture.md").read_text()
    section = text.split("## Same names, same roles", 1)[1].split("\n## ", 1)[0]
    stated = set(re.findall(r"^\| `([\w.]+\.py)` \|", section, flags=re.MULTILINE))
    assert shared, "the walk found no modules"
    assert shared <= stated, f"modules sharing a name without a stated parallel role: " \
        f"{ {n: by_name[n] for n in sorted(shared - stated)} }"
    assert stated <= shared, f"the doc states pairs that no longer exist: {sorted(stated - shared)}"
