"""The type checker runs in `make test`: mypy, with the settings in pyproject.toml ([tool.mypy], --strict
but three flags), over the product code. Any finding fails this test with mypy's own report (file, line, code)."""
from __future__ import annotations

import subprocess
import sys
import tomllib

from testkit import REPO_ROOT, suppressions_without_reason

CHECKED = ("pipelines", "models", "benchmarks")


def test_the_product_code_has_no_type_errors(tmp_path):
    # a cache of its own: a fresh check each time, nothing left in the repository
    done = subprocess.run([sys.executable, "-m", "mypy", "--cache-dir", str(tmp_path / "cache")], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, "mypy found problems (fix them, or say why on the line with " \
        f"`# type: ignore[code]  # why`):\n{done.stdout}{done.stderr}"
    assert "Success: no issues found" in done.stdout


def test_the_checks_are_not_loosened():
    """A type check that checks nothing would pass anything: the strict settings stay on, every file
    is checked, and only third-party libraries get overrides (skipped when untyped; names re-exported
    by plain imports when their stubs do not mark them)."""
    mypy = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["tool"]["mypy"]
    for setting in ("disallow_untyped_defs", "disallow_incomplete_defs", "check_untyped_defs", "warn_unused_ignores",
                    "warn_redundant_casts", "strict_equality", "extra_checks", "disallow_any_generics",
                    "warn_return_any", "no_implicit_reexport"):
        assert mypy[setting] is True, setting
    assert set(mypy["files"]) == set(CHECKED) and not mypy.get("ignore_errors") and not mypy.get("exclude")
    for override in mypy.get("overrides", []):
        assert set(override) <= {"module", "ignore_missing_imports", "implicit_reexport"}, override  # no silencing
        assert not any(m.startswith(CHECKED) for m in override["module"])


def test_the_storage_names_mypy_reads_are_the_ones_served():
    """pipelines.storage writes its __all__ out for mypy (no_implicit_reexport) and loads most names
    lazily from per-module tuples: the two lists name the same things, and each name resolves."""
    import pipelines.storage as storage

    lazy = (*storage._FS_NAMES, *storage._PETASTORM_NAMES, *storage._READAHEAD_NAMES, *storage._CONDITIONAL_NAMES)
    assert len(set(storage.__all__)) == len(storage.__all__) and set(lazy) <= set(storage.__all__)
    assert all(getattr(storage, name) is not None for name in storage.__all__)


def test_every_type_ignore_names_its_code_and_says_why():
    bare = suppressions_without_reason(CHECKED, "# type: ignore", r"# type: ignore\[[a-z-]+(, [a-z-]+)*\]  # \S")
    assert bare == [], "each `# type: ignore` names its code and says why: `# type: ignore[arg-type]  # why`\n" \
        + "\n".join(bare)
