"""The type checker runs in `make test`: mypy, with the settings in pyproject.toml ([tool.mypy], close to
--strict), over the product code. Any finding fails this test with mypy's own report (file, line, code)."""
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
    """A type check that checks nothing would pass anything: the strict-leaning settings stay on,
    every file is checked, and only libraries without type information are skipped."""
    mypy = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["tool"]["mypy"]
    for setting in ("disallow_untyped_defs", "disallow_incomplete_defs", "check_untyped_defs", "warn_unused_ignores",
                    "strict_equality"):
        assert mypy[setting] is True, setting
    assert set(mypy["files"]) == set(CHECKED) and not mypy.get("ignore_errors") and not mypy.get("exclude")
    for override in mypy.get("overrides", []):
        assert set(override) <= {"module", "ignore_missing_imports"}, override  # no per-module error silencing
        assert not any(m.startswith(("pipelines", "models", "benchmarks")) for m in override["module"])


def test_every_type_ignore_names_its_code_and_says_why():
    bare = suppressions_without_reason(CHECKED, "# type: ignore", r"# type: ignore\[[a-z-]+(, [a-z-]+)*\]  # \S")
    assert bare == [], "each `# type: ignore` names its code and says why: `# type: ignore[arg-type]  # why`\n" \
        + "\n".join(bare)
