"""``python -m benchmarks train``: 2 Horovod ranks launched by dlpipe against plain PyTorch, DDP and TorchDistributor.

Measures training throughput (samples/s) and launch time. Contenders, on the same model
(``model.name``/``model.params``, default ``cnn``), optimizer (Adam, lr x ranks), batch
(``train.batch_size`` per rank) and per-rank steps per epoch, over the train split of the same
ETL output, one after the other:

- ``dlpipe_2_ranks``: ``pipelines.train.rank.train_rank`` on 2 ranks of one barrier stage, planned
  and launched as ``dlpipe train`` does (``pipelines.train.job.plan_job`` +
  ``pipelines.train.driver.launch``, see ``benchmarks.training``; Petastorm shards, Horovod over
  Gloo); per-epoch samples/s as the trainer measures it (validation excluded). Launched once per round.
- ``torch_1_process``: one single-thread PyTorch process on in-memory tensors (the limit x 2).
- ``torch_2_independent_processes``: two such processes at once, not communicating (summed): what the
  machine's 2 cores give to 2 processes at all (``machine_scaling`` = this / (2 x torch_1_process)).
- ``ddp_2_processes``: PyTorch DDP (Gloo on 127.0.0.1), 2 single-thread processes, in-memory tensors.
- ``horovod_2_processes``: plain Horovod (``DistributedOptimizer``, Gloo on 127.0.0.1, rendezvous
  served here as ``horovodrun`` does), 2 single-thread processes, in-memory tensors: Horovod's own
  cost, apart from what dlpipe adds (``horovod_vs_ddp``, ``dlpipe_vs_horovod``).
- Knob sweep (small and large): dlpipe's 2 ranks once each with glibc's default malloc thresholds
  (Horovod and DDP; ``train.malloc_tuning=false``), HOROVOD_CYCLE_TIME 5 ms, batch 128, and rank
  processes left unpinned (``train.pin_ranks=false``).
- Where the cores go: each dlpipe launch's ``cpu_cores`` (``benchmarks.cpu_profile``) splits the
  CPU time of the job's process tree after the first epoch into rank main threads, the ranks' other
  threads (loader, Petastorm, Horovod/Gloo), Spark's JVM, the Python workers relaying the ranks'
  output, and the driver.
- Launch: ``dlpipe_launch_to_first_step`` (call -> end of the trainer's first step);
  ``dlpipe_noop_launch`` (the same launch of an entry that joins Horovod and returns);
  ``torchdistributor_noop`` (``TorchDistributor(num_processes=2, local_mode=False).run(noop)``,
  call -> the no-op running, i.e. the same barrier-stage kind of launch) and its local_mode=True form.

The PyTorch contenders train with the model's own ``loss`` (``benchmarks.workers``), so every
dlpipe model can be benchmarked. First epochs are warm-up and left out of the samples/s figures of
every contender. The training contenders take turns round by round, so a change in machine load
hits all of them alike.
"""
from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from benchmarks import data, harness, procs
from benchmarks.ranks import TIMED_ENTRY
from benchmarks.training import RANKS, noop_launch, plan, train_once
from pipelines import dataset
from pipelines.config import PipelineConfig
from pipelines.train.job import TrainJob

NAME = "train"


@dataclass(frozen=True)
class Size:
    """One size: the dataset, rounds of the training contenders, epochs per training, launches timed,
    whether to run the knob sweep, and TorchDistributor's ``local_mode`` values to launch."""

    spec: data.DataSpec
    rounds: int
    epochs: int
    launch_repeats: int
    sweep: bool
    torchdistributor: tuple[bool, ...] = (False, True)


SIZES = {
    # tiny: a smoke run of this module's code; TorchDistributor's own 10 s launch is left to the real sizes
    "tiny": Size(data.BASE["tiny"], rounds=1, epochs=2, launch_repeats=1, sweep=False, torchdistributor=(True,)),
    "small": Size(data.DataSpec(10000, 28, 1024), rounds=3, epochs=3, launch_repeats=2, sweep=True),
    "large": Size(data.DataSpec(50000, 28, 1024), rounds=3, epochs=3, launch_repeats=3, sweep=True),
}
# Knobs tried on dlpipe's 2 ranks (one launch each, after the rounds): name -> (config overrides, rank entry).
# Also tried by hand on this machine, and no faster: HOROVOD_CYCLE_TIME 0.1-20 ms (2-5 ms within noise of
# 1 ms once malloc is tuned), waiting for Horovod's handles with a sleeping poll instead of its yield loop,
# and one grouped allreduce after the backward pass instead of per-parameter hooks.
SWEEP = {
    "dlpipe_2_ranks_malloc_default": (["train.malloc_tuning=false"], TIMED_ENTRY),
    "dlpipe_2_ranks_ddp_malloc_default": (["train.strategy=ddp", "train.malloc_tuning=false"], TIMED_ENTRY),
    "dlpipe_2_ranks_cycle_5ms": (["train.horovod_cycle_time_ms=5"], TIMED_ENTRY),
    "dlpipe_2_ranks_batch128": (["train.batch_size=128"], TIMED_ENTRY),
    "dlpipe_2_ranks_unpinned": (["train.pin_ranks=false"], TIMED_ENTRY),
    # the communication knobs (train.grad_compression, train.grad_accumulation)
    "dlpipe_2_ranks_fp16_allreduce": (["train.grad_compression=fp16"], TIMED_ENTRY),
    "dlpipe_2_ranks_accumulate4": (["train.grad_accumulation=4"], TIMED_ENTRY),
    "dlpipe_2_ranks_ddp_fp16_allreduce": (["train.strategy=ddp", "train.grad_compression=fp16"], TIMED_ENTRY),
    "dlpipe_2_ranks_ddp_bf16_allreduce": (["train.strategy=ddp", "train.grad_compression=bf16"], TIMED_ENTRY),
    "dlpipe_2_ranks_ddp_accumulate4": (["train.strategy=ddp", "train.grad_accumulation=4"], TIMED_ENTRY),
}
ACCUMULATE = 4  # batches per optimizer step of the *_accumulate4 contenders
# Test accuracy on the bundled digits (dlpipe run, digits_cnn.yaml): each knob against the plain run.
ACCURACY_RUNS = {
    "plain": [],
    "fp16_allreduce": ["train.grad_compression=fp16"],
    "ddp_bf16_allreduce": ["train.strategy=ddp", "train.grad_compression=bf16"],
    f"accumulate{ACCUMULATE}": [f"train.grad_accumulation={ACCUMULATE}"],
}

def run(spark: Any, config: PipelineConfig, size: str) -> dict[str, Any]:
    """Run the train benchmark at ``size``; print its table, write ``train.json``, return its JSON."""
    s = SIZES[size]
    report = harness.Report(NAME, size)
    ds = data.dataset(spark, config, s.spec)
    # The contract dlpipe's ranks get; the PyTorch contenders read the same split, manifest and settings.
    job = plan(config, ds, harness.bench_dir(config) / "runs" / "train")
    manifest, tc = job.data.manifest, job.config.train
    steps = dataset.steps_per_epoch(job.train.sizes, RANKS, tc.batch_size)
    report.params = {"dataset": s.spec.key, "model": config.model.name, "model_params": config.model.params,
                     "feature_shape": manifest.feature_shape, "batch_size_per_rank": tc.batch_size,
                     "steps_per_epoch_per_rank": steps, "epochs": s.epochs, "rounds": s.rounds,
                     "horovod_cycle_time_ms": tc.horovod_cycle_time_ms,
                     "horovod_fusion_threshold_mb": tc.horovod_fusion_threshold_mb,
                     "reader_workers": tc.reader_workers, "threads_per_rank": 1}
    others = _library_contenders(job, config, s, steps)
    _training_rounds(spark, config, ds, s, others, report)
    _knob_sweep(spark, config, ds, s, report)
    _launch_costs(spark, config, ds, s, size, report)
    _ratios(report, s)
    _limits(report)
    return harness.finish(report, config)


def _library_contenders(job: TrainJob, config: PipelineConfig, s: Size,
                        steps: int) -> dict[str, Callable[[], list[float]]]:
    """The plain-PyTorch, DDP and Horovod contenders on the job's split and settings, each a call returning
    per-epoch samples/s; with the sweep, DDP and Horovod accumulating gradients as dlpipe's knob does."""
    manifest, tc = job.data.manifest, job.config.train
    args = {"job": "train", "split": job.train.to_dict(), "manifest": manifest.to_dict(), "model": config.model.name,
            "model_params": config.model.params, "batch": tc.batch_size, "steps": steps, "epochs": s.epochs,
            "seed": tc.seed, "threads": 1}
    lr_ranks = tc.lr * RANKS if tc.scale_lr_by_workers else tc.lr
    others: dict[str, Callable[[], list[float]]] = {
        "torch_1_process": lambda: procs.run_worker({**args, "lr": tc.lr}, threads=1, timeout_s=900)["samples_per_s"],
        "torch_2_independent_processes": lambda: _independent(args, tc.lr),
        "ddp_2_processes": lambda: _ddp(args, lr_ranks),
        "horovod_2_processes": lambda: _horovod(args, lr_ranks, tc.horovod_cycle_time_ms,
                                                tc.horovod_fusion_threshold_mb)}
    if s.sweep:  # the plain libraries with the same knob: equal settings for dlpipe's knob contenders
        accumulating = {**args, "steps": max(1, steps // ACCUMULATE), "accumulation": ACCUMULATE}
        others[f"ddp_2_processes_accumulate{ACCUMULATE}"] = lambda: _ddp(accumulating, lr_ranks * ACCUMULATE)
        others[f"horovod_2_processes_accumulate{ACCUMULATE}"] = lambda: _horovod(
            accumulating, lr_ranks * ACCUMULATE, tc.horovod_cycle_time_ms, tc.horovod_fusion_threshold_mb)
    return others


def _training_rounds(spark: Any, config: PipelineConfig, ds: Path, s: Size,
                     others: dict[str, Callable[[], list[float]]], report: harness.Report) -> None:
    """dlpipe's Horovod and DDP ranks and the ``others``, every one once per round, into ``report`` (first
    epochs left out); a library contender that fails is skipped from then on."""
    figures: dict[str, list[float]] = {key: [] for key in others}
    rates, ddp_rates, launches, rss, waits, phases, cpus, ddp_cpus = [], [], [], [], [], [], [], []
    # Rounds: every contender once per round, so a change in machine load hits all of them alike.
    for i in range(s.rounds):
        harness.log(NAME, f"round {i + 1} of {s.rounds}: dlpipe on {RANKS} Horovod ranks, {s.epochs} epochs")
        out = train_once(spark, config, ds, s.epochs, run_name=f"train-{i}")
        rates += out["samples_per_s"][1:]
        launches.append(out["launch_seconds"])
        phases.append(out["launch_phases"])
        rss.append(out["peak_rss_bytes"])
        waits += out["data_wait_fraction"][1:]
        cpus.append(out["cpu_cores"])
        harness.log(NAME, f"round {i + 1} of {s.rounds}: dlpipe on {RANKS} ranks with train.strategy=ddp")
        out = train_once(spark, data.derive(config, "train.strategy=ddp"), ds, s.epochs, run_name=f"train-ddp-{i}")
        ddp_rates += out["samples_per_s"][1:]
        ddp_cpus.append(out["cpu_cores"])
        for key, measure in others.items():
            if key in report.unavailable:
                continue
            harness.log(NAME, f"round {i + 1} of {s.rounds}: {key}")
            try:
                figures[key] += measure()[1:]
            except (harness.BenchError, subprocess.TimeoutExpired) as e:
                report.skip(key, f"did not run: {str(e).splitlines()[0]}")
    report.add("dlpipe_2_ranks", rates, "samples/s", DESCRIPTIONS["dlpipe_2_ranks"],
               data_wait_fraction=harness.mean(waits), peak_rss_bytes=max(rss), cpu_cores=_mean_parts(cpus))
    report.add("dlpipe_2_ranks_ddp", ddp_rates, "samples/s", DESCRIPTIONS["dlpipe_2_ranks_ddp"],
               cpu_cores=_mean_parts(ddp_cpus))
    report.add("dlpipe_launch_to_first_step", launches, "s", DESCRIPTIONS["dlpipe_launch_to_first_step"],
               phases=phases)
    for key, values in figures.items():
        if values and key not in report.unavailable:
            report.add(key, values, "samples/s", DESCRIPTIONS[key])


def _knob_sweep(spark: Any, config: PipelineConfig, ds: Path, s: Size, report: harness.Report) -> None:
    """With the sweep: dlpipe's ranks once with each knob of SWEEP, then each knob's test accuracy."""
    for key, (overrides, entry) in (SWEEP.items() if s.sweep else ()):
        harness.log(NAME, f"knob: {key}")
        out = train_once(spark, data.derive(config, *overrides), ds, s.epochs, run_name=f"train-{key}",
                         entry=entry)
        report.add(key, out["samples_per_s"][1:], "samples/s", f"dlpipe_2_ranks with {' '.join(overrides)}",
                   data_wait_fraction=harness.mean(out["data_wait_fraction"][1:]))

    if s.sweep:
        for key, accuracy in _knob_accuracy(spark, config).items():
            report.add(f"test_accuracy_{key}", [accuracy], "accuracy",
                       f"dlpipe run of digits_cnn.yaml on the bundled digits, "
                       f"{' '.join(ACCURACY_RUNS[key]) or 'as is'}")


def _launch_costs(spark: Any, config: PipelineConfig, ds: Path, s: Size, size: str, report: harness.Report) -> None:
    """The cost of a launch alone: dlpipe's no-op launch and TorchDistributor's (in the local modes the size
    runs; the others recorded as not run)."""
    harness.log(NAME, "launch cost: dlpipe no-op and TorchDistributor no-op")
    noops = [noop_launch(spark, config, ds) for _ in range(s.launch_repeats)]
    report.add("dlpipe_noop_launch", [n[0] for n in noops], "s", DESCRIPTIONS["dlpipe_noop_launch"],
               to_return_seconds=[round(n[1], 3) for n in noops])
    for local_mode in (False, True):
        key = "torchdistributor_noop" + ("_local_mode" if local_mode else "")
        if local_mode not in s.torchdistributor:
            report.skip(key, f"not run at size {size} (a smoke run of the benchmark's code)")
            continue
        try:
            launched = [_torchdistributor_noop(local_mode) for _ in range(s.launch_repeats)]
            report.add(key, [f[0] for f in launched], "s",
                       f"TorchDistributor(num_processes=2, local_mode={local_mode}).run(noop): call -> noop running",
                       to_return_seconds=[round(f[1], 3) for f in launched])
        except Exception as e:  # noqa: BLE001 - a contender that cannot run here is recorded, not faked
            report.skip_error(key, e)


def _ratios(report: harness.Report, s: Size) -> None:
    """Scaling against twice one process, dlpipe against DDP and Horovod, the launch against TorchDistributor,
    the best setting measured, and (with the sweep) the knobs at equal settings and their accuracy cost."""
    one = report.median("torch_1_process")
    twice_one = RANKS * one if one else None
    report.ratios["scaling_efficiency"] = harness.ratio(report.median("dlpipe_2_ranks"), twice_one)
    report.ratios["ratio_vs_ddp"] = harness.ratio(report.median("dlpipe_2_ranks"), report.median("ddp_2_processes"))
    report.ratios["ddp_strategy_vs_ddp"] = harness.ratio(report.median("dlpipe_2_ranks_ddp"),
                                                         report.median("ddp_2_processes"))
    report.ratios["ddp_scaling_efficiency"] = harness.ratio(report.median("ddp_2_processes"), twice_one)
    report.ratios["ddp_strategy_scaling_efficiency"] = harness.ratio(report.median("dlpipe_2_ranks_ddp"), twice_one)
    report.ratios["horovod_vs_ddp"] = harness.ratio(report.median("horovod_2_processes"),
                                                    report.median("ddp_2_processes"))
    report.ratios["dlpipe_vs_horovod"] = harness.ratio(report.median("dlpipe_2_ranks"),
                                                       report.median("horovod_2_processes"))
    report.ratios["machine_scaling"] = harness.ratio(report.median("torch_2_independent_processes"), twice_one)
    report.ratios["launch_seconds"] = report.median("dlpipe_launch_to_first_step")
    report.ratios["launch_ratio_vs_torchdistributor"] = harness.ratio(report.median("dlpipe_launch_to_first_step"),
                                                                      report.median("torchdistributor_noop"))
    report.ratios["noop_launch_ratio_vs_torchdistributor"] = harness.ratio(report.median("dlpipe_noop_launch"),
                                                                           report.median("torchdistributor_noop"))
    dlpipe_runs = [k for k in report.contenders if k.startswith("dlpipe_2_ranks")]
    best = max(dlpipe_runs, key=lambda k: report.median(k) or 0.0)
    report.ratios["best_scaling_efficiency"] = harness.ratio(report.median(best), twice_one)
    report.notes.append(f"`best_scaling_efficiency` is `{best}` ({DESCRIPTIONS.get(best, 'a knob of the sweep')}).")
    if s.sweep:  # the knobs at equal settings, and what they cost in accuracy
        _knob_ratios(report)


def _knob_ratios(report: harness.Report) -> None:
    """The accumulation knob against the plain libraries with the same knob, and each knob's test accuracy
    against the plain run's (points)."""
    knob = f"accumulate{ACCUMULATE}"
    report.ratios[f"ratio_vs_ddp_{knob}"] = harness.ratio(report.median(f"dlpipe_2_ranks_{knob}"),
                                                         report.median(f"ddp_2_processes_{knob}"))
    report.ratios[f"horovod_vs_ddp_{knob}"] = harness.ratio(report.median(f"horovod_2_processes_{knob}"),
                                                           report.median(f"ddp_2_processes_{knob}"))
    plain = report.median("test_accuracy_plain")
    for key in ACCURACY_RUNS:
        knob_accuracy = report.median(f"test_accuracy_{key}")
        if key != "plain" and plain is not None and knob_accuracy is not None:
            report.ratios[f"accuracy_points_{key}_vs_plain"] = round(100 * (knob_accuracy - plain), 2)


def _limits(report: harness.Report) -> None:
    """What limits each ratio that missed its target, with this run's own figures."""
    if harness.meets("scaling_efficiency", report.ratios["scaling_efficiency"]) is False:
        report.limits["scaling_efficiency"] = scaling_limit(report)
    if harness.meets("ratio_vs_ddp", report.ratios["ratio_vs_ddp"]) is False:
        report.limits["ratio_vs_ddp"] = ddp_limit(report)
    if harness.meets("ddp_strategy_vs_ddp", report.ratios["ddp_strategy_vs_ddp"]) is False:
        report.limits["ddp_strategy_vs_ddp"] = ddp_strategy_limit(report)
    knob_ratio = f"ratio_vs_ddp_accumulate{ACCUMULATE}"
    if harness.meets(knob_ratio, report.ratios.get(knob_ratio)) is False:
        report.limits[knob_ratio] = accumulate_limit(report)


def _knob_accuracy(spark: Any, config: PipelineConfig) -> dict[str, float]:
    """Test accuracy of ``dlpipe run`` on the bundled digits (digits_cnn.yaml) with each of ACCURACY_RUNS."""
    from pipelines import run
    from pipelines.config import load_config
    from pipelines.tracking import TRACKING_OFF

    workdir = harness.bench_dir(config) / "runs" / "knob-accuracy"
    found = {}
    for key, overrides in ACCURACY_RUNS.items():
        harness.log(NAME, f"test accuracy on the bundled digits: {key}")
        cfg = load_config(harness.REPO_ROOT / "pipelines" / "configs" / "digits_cnn.yaml",
                          [*TRACKING_OFF, f"workdir={workdir}", f"run_id={key}",
                           f"etl.source.path={harness.REPO_ROOT / 'data' / 'digits'}", *overrides])
        evaluation = run.main(spark, cfg).eval
        if evaluation is None or evaluation.accuracy is None:  # digits_cnn is a classifier: always evaluated
            raise harness.BenchError(f"dlpipe run of digits_cnn.yaml ({key}) reported no test accuracy")
        found[key] = evaluation.accuracy
    return found


def _mean_parts(profiles: list[dict[str, float]]) -> dict[str, float]:
    """Cores per part of the job, averaged over the rounds that have a profile."""
    profiles = [p for p in profiles if p]
    return {k: round(harness.mean([p[k] for p in profiles]), 3) for k in profiles[0]} if profiles else {}


def _figure(report: harness.Report, name: str) -> str:
    value = report.ratios.get(name)
    return "n/a" if value is None else f"{value:.2f}"


def _malloc_sentence(report: harness.Report, tuned: str, untuned: str, what: str) -> str:
    """The measured effect of train.malloc_tuning on one strategy, or '' when the sweep did not run."""
    with_it, without = report.median(tuned), report.median(untuned)
    if not (with_it and without):
        return ""
    return (f" {what} with glibc's default malloc thresholds (`train.malloc_tuning=false`): {without:,.0f} "
            f"samples/s against {with_it:,.0f} tuned ({with_it / without:.2f}x, one launch): by default every "
            "step's activation buffers go back to the OS and are faulted in again (page faults, zeroing and "
            "unmapping, seen with `perf record` on the rank processes).")


def _cpu_sentence(report: harness.Report) -> str:
    """Where the cores went while dlpipe's Horovod ranks trained, from ``benchmarks.cpu_profile``."""
    cores = report.contenders.get("dlpipe_2_ranks", {}).get("cpu_cores") or {}
    one = report.median("torch_1_process")
    if not cores or not cores.get("rank main threads") or not one:
        return ""
    main, idle = cores["rank main threads"], max(0.0, RANKS - cores["total"])
    per_core = report.median("dlpipe_2_ranks") / main
    return (f"Where the cores went after the first epoch (`cpu_cores`): the ranks' main threads used {main:.2f} of "
            f"the {RANKS}, their other threads (loader, Petastorm, Horovod and Gloo) "
            f"{cores['rank other threads']:.2f}, "
            f"Spark's JVM and the Python workers relaying the ranks' output "
            f"{cores['Spark JVM'] + cores['Spark Python workers']:.2f}, the driver {cores['driver']:.2f}; "
            f"{idle:.2f} cores sat idle, the time each rank waits in every step's allreduce for the other's "
            f"gradients. Per core of main thread the ranks train {per_core:,.0f} samples/s against {one:,.0f} for "
            f"one process alone ({per_core / one:.2f}): the allreduce's own work (summing, copying into and out "
            "of the fusion buffer) and two processes sharing one memory system.")


def _step_sentence(report: harness.Report) -> str:
    one = report.median("torch_1_process")
    if not one:
        return "every step ends waiting for the slower rank."
    step_ms = 1000 * report.params["batch_size_per_rank"] / one
    return (f"a step computes for about {step_ms:.0f} ms, so a wait of a millisecond or two for the slower rank "
            "and the allreduce in every step is a large share of it (`train.batch_size=128` in the knobs below "
            "shows the same cost spread over 4x the work).")


def scaling_limit(report: harness.Report) -> str:
    """What limits ``scaling_efficiency``, with this run's own figures."""
    r = report.ratios
    wait = report.contenders["dlpipe_2_ranks"]["data_wait_fraction"]
    parts = [f"The ranks waited for data {wait:.1%} of their time after the first epoch, so the loader is not "
             "what holds them back."]
    machine = r.get("machine_scaling")
    if machine is not None:
        said = (f"Two single-thread PyTorch processes that never communicate reach {machine:.0%} of twice one "
                "process on this machine (`machine_scaling`)")
        parts.append(said + (": the two cores do not give two cores' worth of this model, a ceiling no launcher "
                             "can pass." if machine < 0.9 else ", so the cores themselves scale."))
    parts.append(_cpu_sentence(report))
    parts.append(f"The synchronization is Horovod's: plain Horovod on in-memory tensors, without Spark, Parquet or "
                 f"dlpipe, reaches {_figure(report, 'horovod_vs_ddp')}x PyTorch DDP (`horovod_vs_ddp`), and "
                 f"dlpipe's Horovod ranks {_figure(report, 'dlpipe_vs_horovod')}x plain Horovod "
                 "(`dlpipe_vs_horovod`). Horovod's background thread negotiates with the other rank over Gloo once "
                 "every HOROVOD_CYCLE_TIME, and a gradient that is ready waits for the next cycle, then for the "
                 "negotiation's round trip, before its allreduce starts; DDP starts each bucket's allreduce from "
                 "the autograd hook that filled it. Even so, two DDP processes on in-memory tensors reach "
                 f"{_figure(report, 'ddp_scaling_efficiency')} here (`ddp_scaling_efficiency`), and dlpipe under "
                 f"`train.strategy=ddp` {_figure(report, 'ddp_strategy_scaling_efficiency')}: "
                 + _step_sentence(report))
    parts.append(_malloc_sentence(report, "dlpipe_2_ranks", "dlpipe_2_ranks_malloc_default",
                                  "Horovod ranks").strip())
    tried = [(k, report.median(k)) for k in SWEEP if report.median(k) and "malloc" not in k]
    if tried:
        base = report.median("dlpipe_2_ranks")
        parts.append(f"Knobs tried against the default ({base:,.0f} samples/s, HOROVOD_CYCLE_TIME "
                     f"{report.params['horovod_cycle_time_ms']:g} ms, batch {report.params['batch_size_per_rank']}, "
                     "ranks pinned): " + ", ".join(f"{' '.join(SWEEP[k][0])} {v:,.0f}" for k, v in tried)
                     + " samples/s (one launch each).")
    return " ".join(p for p in parts if p)


def ddp_limit(report: harness.Report) -> str:
    """What limits ``ratio_vs_ddp``."""
    versus = report.ratios.get("dlpipe_vs_horovod")
    if versus is not None and versus >= 1.0:
        added = ("pinning each rank process to its own core (`train.pin_ranks`) and keeping freed memory mapped "
                 "(`train.malloc_tuning`) more than pay for the data path, so what remains of the gap to DDP is "
                 "Horovod's own.")
    else:
        added = ("the rest of the gap is what dlpipe's data path and launch add on the same cores (see "
                 "`cpu_cores`).")
    return (f"Plain Horovod on the same in-memory tensors reaches {_figure(report, 'horovod_vs_ddp')}x DDP "
            "(`horovod_vs_ddp`), for the background-thread reason above. dlpipe's ranks, streaming and normalizing "
            f"Parquet on the same two cores, reach {_figure(report, 'dlpipe_vs_horovod')}x plain Horovod "
            f"(`dlpipe_vs_horovod`): {added} Users who need DDP's speed set `train.strategy=ddp` "
            f"(`ddp_strategy_vs_ddp` {_figure(report, 'ddp_strategy_vs_ddp')}).")


def accumulate_limit(report: harness.Report) -> str:
    """What limits ``ratio_vs_ddp_accumulate4``: Horovod against DDP with the same accumulation."""
    knob = f"accumulate{ACCUMULATE}"
    plain_horovod = report.median(f"horovod_2_processes_{knob}")
    ours = report.median(f"dlpipe_2_ranks_{knob}")
    versus = ours / plain_horovod if ours and plain_horovod else None
    added = ("dlpipe adds little to it" if versus is not None and versus >= 0.9 else
             "the rest is dlpipe's data path on the same cores (see `cpu_cores`)")
    best = max((k for k in report.contenders if k.startswith("dlpipe_2_ranks")),
               key=lambda k: report.median(k) or 0.0)
    return (f"With {ACCUMULATE} batches per optimizer step the gradients are all-reduced a quarter as often, and "
            f"plain Horovod on in-memory tensors, without Spark or Parquet, reaches "
            f"{_figure(report, f'horovod_vs_ddp_{knob}')}x plain DDP at the same setting (`horovod_vs_ddp_{knob}`); "
            f"dlpipe's Horovod ranks reach {'n/a' if versus is None else f'{versus:.2f}'}x that plain Horovod run. "
            "The gap is Horovod's per-step negotiation and fusion described under `scaling_efficiency`, paid once "
            f"per optimizer step instead of once per batch; {added}. The fastest dlpipe setting measured is "
            f"`{best}` (`best_scaling_efficiency`).")


def ddp_strategy_limit(report: harness.Report) -> str:
    """What limits ``ddp_strategy_vs_ddp``."""
    wait = report.contenders["dlpipe_2_ranks"]["data_wait_fraction"]
    return ("The DDP contender trains on normalized tensors already in memory; dlpipe's DDP ranks stream the "
            f"Parquet shard, shuffle and normalize it in a read-ahead thread on the same two cores (data wait "
            f"{wait:.1%} of step time) and relay events through the barrier task."
            + _malloc_sentence(report, "dlpipe_2_ranks_ddp", "dlpipe_2_ranks_ddp_malloc_default", "DDP ranks"))


DESCRIPTIONS = {
    "dlpipe_2_ranks": "pipelines.train.rank.train_rank on 2 Horovod ranks (Petastorm shards)",
    "dlpipe_2_ranks_ddp": "the same with train.strategy=ddp (torch DistributedDataParallel over Gloo)",
    "dlpipe_launch_to_first_step": "pipelines.train.driver.launch call -> end of the trainer's first step",
    "dlpipe_noop_launch": "pipelines.train.driver.launch of an entry that only joins Horovod: call -> all ranks joined",
    "torch_1_process": "one single-thread PyTorch process on in-memory tensors, same per-rank steps",
    "torch_2_independent_processes": "2 single-thread PyTorch processes training at the same time without "
                                     "communicating (sum): what the 2 cores give",
    "ddp_2_processes": "PyTorch DDP (Gloo, 127.0.0.1), 2 single-thread processes, in-memory tensors",
    "horovod_2_processes": "plain Horovod (DistributedOptimizer, Gloo, 127.0.0.1, same HOROVOD_CYCLE_TIME), "
                           "2 single-thread processes, in-memory tensors: Horovod's own cost, without dlpipe",
    f"ddp_2_processes_accumulate{ACCUMULATE}": f"ddp_2_processes accumulating {ACCUMULATE} batches per optimizer "
                                               "step (no_sync)",
    f"horovod_2_processes_accumulate{ACCUMULATE}": f"horovod_2_processes accumulating {ACCUMULATE} batches per "
                                                   "optimizer step (backward_passes_per_step)",
}


def _torchdistributor_noop(local_mode: bool) -> tuple[float, float]:
    """(call -> no-op running, call -> return) in seconds."""
    from pyspark.ml.torch.distributor import TorchDistributor

    def noop() -> float:  # nested, so cloudpickle ships it by value: the workers need not import dlpipe
        import time as t

        return t.time()

    called = time.time()
    # run() returns what the function returned on rank 0 (typed Optional[Any]): noop's time.
    started = cast(float, TorchDistributor(num_processes=RANKS, local_mode=local_mode, use_gpu=False).run(noop))
    return started - called, time.time() - called


def _ddp(args: dict[str, Any], lr: float) -> list[float]:
    """Per-epoch samples/s of 2 DDP processes (rank 0's clock; both wait at a barrier per epoch)."""
    env = procs.python_env(1)
    env.update({"MASTER_ADDR": "127.0.0.1", "GLOO_SOCKET_IFNAME": "lo"})
    port = procs.free_port()
    results = procs.run_workers([{**args, "lr": lr, "rank": r, "world": RANKS, "port": port}
                                 for r in range(RANKS)], env)
    per_epoch: list[float] = results[0]["samples_per_s"]
    return per_epoch


def _horovod(args: dict[str, Any], lr: float, cycle_time_ms: float, fusion_mb: int) -> list[float]:
    """Per-epoch samples/s of 2 plain Horovod processes (Gloo on 127.0.0.1, in-memory tensors), started
    as ``horovodrun`` starts them: a rendezvous server here, each rank's place in its environment."""
    from horovod.runner.common.util.hosts import HostInfo, get_host_assignments
    from horovod.runner.http.http_server import RendezvousServer

    plan = get_host_assignments([HostInfo("127.0.0.1", RANKS)], RANKS)
    server = RendezvousServer()
    port = server.start()
    server.init(plan)
    envs = []
    for slot in plan:
        env = procs.python_env(1)
        env.update({"HOROVOD_GLOO_RENDEZVOUS_ADDR": "127.0.0.1", "HOROVOD_GLOO_RENDEZVOUS_PORT": str(port),
                    "HOROVOD_CONTROLLER": "gloo", "HOROVOD_CPU_OPERATIONS": "gloo", "HOROVOD_GLOO_IFACE": "lo",
                    "HOROVOD_HOSTNAME": slot.hostname, "HOROVOD_RANK": str(slot.rank),
                    "HOROVOD_SIZE": str(slot.size), "HOROVOD_LOCAL_RANK": str(slot.local_rank),
                    "HOROVOD_LOCAL_SIZE": str(slot.local_size), "HOROVOD_CROSS_RANK": str(slot.cross_rank),
                    "HOROVOD_CROSS_SIZE": str(slot.cross_size), "HOROVOD_CYCLE_TIME": str(cycle_time_ms),
                    "HOROVOD_FUSION_THRESHOLD": str(fusion_mb << 20)})
        envs.append(env)
    try:
        results = procs.run_workers([{**args, "lr": lr, "horovod": True} for _ in plan], envs)
    finally:
        server.stop()
    per_epoch: list[float] = next(r for r in results if r["rank"] == 0)["samples_per_s"]
    return per_epoch


def _independent(args: dict[str, Any], lr: float) -> list[float]:
    """Per-epoch samples/s of 2 single-thread processes training at once without talking: what 2 cores give."""
    results = procs.run_workers([{**args, "lr": lr} for _ in range(RANKS)], procs.python_env(1))
    return [sum(epoch) for epoch in zip(*(r["samples_per_s"] for r in results))]
