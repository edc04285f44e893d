"""What a GPU host with only Python and torch runs: the models, the per-step training and scoring
functions and ``scripts/gpu_check.py`` import and run with Spark, Horovod and Petastorm blocked."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

from testkit import REPO_ROOT

BLOCKED = ("pyspark", "horovod", "petastorm", "pyarrow", "pandas", "yaml", "py4j")
TORCH_ONLY = ("models", "pipelines.device", "pipelines.train.precision", "pipelines.train.step",
              "pipelines.infer.predict")

# A None entry in sys.modules makes `import x` raise ImportError and importlib.util.find_spec(x)
# return None, exactly as if x were not installed (torch probes optional modules with find_spec).
BLOCKER = textwrap.dedent(f"""
    import sys

    sys.modules.update(dict.fromkeys({BLOCKED!r}))
    sys.path.insert(0, {str(REPO_ROOT)!r})
""")


def _python(code: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": ""}
    return subprocess.run([sys.executable, "-c", BLOCKER + code], capture_output=True, text=True, timeout=timeout,
                          cwd=REPO_ROOT, env=env)


def test_the_blocker_blocks():
    done = _python("import pyspark")
    assert done.returncode != 0 and "ModuleNotFoundError: import of pyspark halted" in done.stderr


def test_models_and_the_step_and_scoring_functions_import_with_torch_alone():
    done = _python(f"import importlib; [importlib.import_module(m) for m in {TORCH_ONLY!r}]; "
                   f"print(sorted(m for m, v in sys.modules.items() if v is not None and m.split('.')[0] in {BLOCKED!r}))")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_gpu_check_on_cpu_passes_with_torch_alone(tmp_path):
    out = tmp_path / "check.json"
    done = _python(f"import runpy; sys.argv = ['gpu_check.py', '--device', 'cpu', '--steps', '30', "
                   f"'--timing-steps', '3', '--batch-size', '32', '--out', {str(out)!r}]; "
                   f"runpy.run_path('scripts/gpu_check.py', run_name='__main__')", timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(out.read_text())
    assert report["ok"] and report["device"] == "cpu" and report["steps"] == 30
    assert set(report["models"]) == {"cnn", "mlp", "autoencoder", "vae"}
    for name, result in report["models"].items():
        assert result["ok"] and result["failed"] == [], name
        # cpu against cpu: the same numbers exactly
        assert result["initial_loss"]["device"] == result["initial_loss"]["cpu"]
        assert result["final_loss"]["device"] == result["final_loss"]["cpu"] < result["first_loss"]["cpu"]
        assert all(v == 0.0 for v in result["diffs"].values()), result["diffs"]
        assert all(v == 0.0 for v in result["scores"].values()), result["scores"]
        assert result["timing"]["fp32"] > 0 and result["timing"]["bf16"] > 0
    assert "early_loss_rel" not in report["models"]["vae"]["diffs"]  # its noise is per device
    assert set(report["models"]["cnn"]["scores"]) == {"prediction_mismatch_fraction", "probabilities_max_abs_diff"}
