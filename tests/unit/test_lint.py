"""The linter runs in `make test`: ruff, with the rule set in pyproject.toml ([tool.ruff]), over the
product code. Any finding fails this test with ruff's own report (file, line, rule, fix)."""
from __future__ import annotations

import subprocess
import sys

from testkit import REPO_ROOT, suppressions_without_reason

LINTED = ("pipelines", "models", "benchmarks")


def test_the_product_code_has_no_lint_findings():
    done = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "--output-format", "concise", *LINTED],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"ruff found problems (fix them, or say why on the line with `# noqa: CODE - why`):\n" \
        f"{done.stdout}{done.stderr}"
    assert "All checks passed" in done.stdout


def test_the_rule_set_is_not_emptied():
    """A lint test over no rules would pass anything: the selection names real rule families."""
    import tomllib

    lint = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["tool"]["ruff"]["lint"]
    assert {"E", "F", "B", "BLE", "I", "UP"} <= set(lint["select"])
    assert set(lint.get("ignore", [])) <= {"B905"}  # every rule left out is named, with its reason, in pyproject


def test_every_noqa_says_why_on_its_line():
    bare = suppressions_without_reason(LINTED, "# noqa", r"# noqa: [A-Z]+\d+(, [A-Z]+\d+)* - \S")
    assert bare == [], "each `# noqa` names its rule and says why: `# noqa: BLE001 - why`\n" + "\n".join(bare)
