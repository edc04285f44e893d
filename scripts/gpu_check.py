"""Device check for one machine, with torch alone (no Spark, Horovod, Petastorm, Java).

    python scripts/gpu_check.py                      # on a GPU host: cuda against cpu, under 5 minutes
    python scripts/gpu_check.py --device cpu --steps 30   # anywhere: the same checks, cpu against cpu

For every model (cnn, mlp, autoencoder, vae) on synthetic batches, on ``--device`` and on the CPU
from the same initial weights:

- trains ``--steps`` steps in fp32 through dlpipe's own step (``pipelines.train.step``) and
  compares the losses: the first evaluation loss (same weights, same batch) within 1e-4 relative,
  the first steps' losses within 1e-3 (not the VAE: its sampling noise comes from each device's
  own generator), the mean losses of the last tenth of the steps within 5% of the initial loss
  (long runs drift apart by rounding, but must learn as much);
- times fp32 against bf16 autocast steps on ``--device``;
- scores a batch with the inference function (``pipelines.infer.predict``) on both devices and
  compares the outputs (floats within 1e-4).

Writes one JSON (``--out``) and exits 1 when a check fails.
"""
from __future__ import annotations

import argparse
import copy
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout, nothing installed

import torch  # noqa: E402

import models  # noqa: E402
from pipelines.device import exact_fp32, to_device  # noqa: E402
from pipelines.infer import predict  # noqa: E402
from pipelines.train import step  # noqa: E402
from pipelines.train.precision import Precision, PrecisionError  # noqa: E402

MODELS = ("cnn", "mlp", "autoencoder", "vae")
PARAMS = {"cnn": {"dropout": 0.0}, "mlp": {"dropout": 0.0}}  # dropout draws from each device's generator
FEATURE_SHAPE = (1, 28, 28)
CLASSES = 10
TOLERANCE = {"initial_loss_rel": 1e-4, "early_loss_rel": 1e-3, "final_loss_vs_initial": 0.05, "score_abs": 1e-4,
             "prediction_mismatch_fraction": 1e-3}
EARLY_STEPS = 10


def synthetic_batches(count: int, batch_size: int, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    """Learnable data: a fixed noisy prototype image per class."""
    g = torch.Generator().manual_seed(seed)
    prototypes = torch.randn(CLASSES, *FEATURE_SHAPE, generator=g)
    batches = []
    for _ in range(count):
        labels = torch.randint(0, CLASSES, (batch_size,), generator=g)
        features = prototypes[labels] + 0.7 * torch.randn(batch_size, *FEATURE_SHAPE, generator=g)
        batches.append({"features": features, "label": labels})
    return batches


def train(model: models.DlpipeModel, device: torch.device, precision: str, batches: list[dict[str, torch.Tensor]],
          steps: int) -> tuple[list[float], float]:
    """Losses of ``steps`` training steps of a copy of ``model`` on ``device``, and steps per second."""
    torch.manual_seed(0)
    model = copy.deepcopy(model).to(device).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    run = Precision(precision, device)
    losses = []
    _sync(device)
    started = time.perf_counter()
    for i in range(steps):
        losses.append(step.train_step(model.loss, optimizer, run, to_device(batches[i % len(batches)], device))["loss"])
    _sync(device)
    return losses, steps / (time.perf_counter() - started)


def initial_loss(model: models.DlpipeModel, device: torch.device, batch: dict[str, torch.Tensor]) -> float:
    """The eval-mode loss of the untrained weights (deterministic: the VAE uses z = mu)."""
    model = copy.deepcopy(model).to(device).eval()
    return step.eval_step(model.loss, Precision("fp32", device), to_device(batch, device))["loss"]


def steps_per_s(model: models.DlpipeModel, device: torch.device, precision: str,
                batches: list[dict[str, torch.Tensor]], steps: int) -> float:
    train(model, device, precision, batches, 3)  # warm-up: kernels, autotuning, allocator
    return train(model, device, precision, batches, steps)[1]


def compare_scores(model: models.DlpipeModel, device: torch.device, features: torch.Tensor,
                   batch_size: int) -> dict[str, float]:
    """Largest difference per float output, and the fraction of integer outputs that differ."""
    there = predict.score(predict.place(copy.deepcopy(model), device), features, batch_size)
    here = predict.score(predict.place(copy.deepcopy(model), torch.device("cpu")), features, batch_size)
    out = {}
    for name, value in here.items():
        if value.is_floating_point():
            out[f"{name}_max_abs_diff"] = (there[name] - value).abs().max().item()
        else:
            out[f"{name}_mismatch_fraction"] = (there[name] != value).float().mean().item()
    return out


def check_model(name: str, device: torch.device, args: argparse.Namespace) -> dict[str, Any]:
    torch.manual_seed(0)
    model = models.build(name, feature_shape=FEATURE_SHAPE, num_classes=CLASSES, **PARAMS.get(name, {}))
    batches = synthetic_batches(8, args.batch_size)
    cpu = torch.device("cpu")
    result: dict[str, Any] = {"parameters": sum(p.numel() for p in model.parameters())}
    result["initial_loss"] = {"device": initial_loss(model, device, batches[0]),
                              "cpu": initial_loss(model, cpu, batches[0])}
    on_device, result["fp32_steps_per_s_training"] = train(model, device, "fp32", batches, args.steps)
    on_cpu, _ = train(model, cpu, "fp32", batches, args.steps)
    tail = max(1, args.steps // 10)
    result["final_loss"] = {"device": sum(on_device[-tail:]) / tail, "cpu": sum(on_cpu[-tail:]) / tail}
    result["first_loss"] = {"device": on_device[0], "cpu": on_cpu[0]}
    result["learned"] = result["final_loss"]["device"] < on_device[0] and result["final_loss"]["cpu"] < on_cpu[0]
    diffs = {"initial_loss_rel": _rel(*result["initial_loss"].values()),
             "final_loss_vs_initial": abs(result["final_loss"]["device"] - result["final_loss"]["cpu"])
             / result["initial_loss"]["cpu"]}
    if name != "vae":
        early = min(EARLY_STEPS, args.steps)
        diffs["early_loss_rel"] = max(_rel(a, b) for a, b in zip(on_device[:early], on_cpu[:early]))
    timing: dict[str, Any] = {"fp32": steps_per_s(model, device, "fp32", batches, args.timing_steps)}
    try:
        timing["bf16"] = steps_per_s(model, device, "bf16", batches, args.timing_steps)
        timing["bf16_speedup"] = timing["bf16"] / timing["fp32"]
    except PrecisionError as e:  # a GPU older than compute capability 8.0: reported, not a failure
        timing.update(bf16=None, bf16_speedup=None, bf16_unsupported=str(e))
    result["timing"] = timing
    scores = compare_scores(model, device, torch.cat([b["features"] for b in batches]), args.batch_size)
    result["scores"] = scores
    failed = [k for k, v in diffs.items() if not v <= TOLERANCE[k]]
    failed += [k for k, v in scores.items() if k.endswith("_max_abs_diff") and not v <= TOLERANCE["score_abs"]]
    failed += [k for k, v in scores.items()
               if k.endswith("_mismatch_fraction") and not v <= TOLERANCE["prediction_mismatch_fraction"]]
    if not result["learned"]:
        failed.append("learned")
    result.update(diffs=diffs, failed=failed, ok=not failed)
    return result


def _rel(a: float, b: float) -> float:
    return abs(a - b) / max(abs(b), 1e-12)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", help="cuda (default), cuda:N or cpu")
    parser.add_argument("--steps", type=int, default=300, help="training steps per model and device")
    parser.add_argument("--timing-steps", type=int, default=50, help="timed steps per model and precision")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--out", default="gpu_check.json", help="where the JSON goes")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        fix = ("check the driver (nvidia-smi) and CUDA_VISIBLE_DEVICES" if torch.version.cuda
               else "install a CUDA build of torch")
        print(f"gpu_check: --device {args.device} but torch sees no CUDA device (torch {torch.__version__}, CUDA "
              f"build: {torch.version.cuda or 'no'}): {fix}, or run with --device cpu", file=sys.stderr)
        return 2
    exact_fp32()
    started = time.perf_counter()
    report: dict[str, Any] = {
        "device": str(device), "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else "",
        "torch": torch.__version__, "cuda": torch.version.cuda or "", "python": platform.python_version(),
        "steps": args.steps, "timing_steps": args.timing_steps, "batch_size": args.batch_size,
        "feature_shape": list(FEATURE_SHAPE), "tolerance": TOLERANCE, "models": {}}
    for name in MODELS:
        result = check_model(name, device, args)
        report["models"][name] = result
        print(f"gpu_check: {name:12s} {'ok' if result['ok'] else 'FAILED ' + ', '.join(result['failed'])}: "
              f"final loss {result['final_loss']['device']:.4g} ({device}) vs {result['final_loss']['cpu']:.4g} (cpu); "
              f"fp32 {result['timing']['fp32']:.0f} steps/s, bf16 x{result['timing']['bf16_speedup'] or 0:.2f}",
              flush=True)
    report["ok"] = all(r["ok"] for r in report["models"].values())
    report["seconds"] = round(time.perf_counter() - started, 1)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(f"gpu_check: {'ok' if report['ok'] else 'FAILED'} in {report['seconds']} s; {args.out}")
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
