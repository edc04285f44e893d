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
- Knob sweep (small and large): dlpipe's 2 ranks once each with HOROVOD_CYCLE_TIME 5 ms, batch 128,
  and rank processes pinned to their own cores (``benchmarks.ranks.pinned_train_rank``).
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
from typing import Any

from benchmarks import data, harness, procs
from benchmarks.ranks import PINNED_ENTRY, TIMED_ENTRY
from benchmarks.training import RANKS, noop_launch, plan, train_once
from pipelines import dataset
from pipelines.config import PipelineConfig

NAME = "train"
SIZES = {
    "tiny": {"data": data.BASE["tiny"], "rounds": 1, "epochs": 2, "launch_repeats": 1, "sweep": False},
    "small": {"data": data.DataSpec(10000, 28, 1024), "rounds": 3, "epochs": 3, "launch_repeats": 2, "sweep": True},
    "large": {"data": data.DataSpec(50000, 28, 1024), "rounds": 3, "epochs": 3, "launch_repeats": 3, "sweep": True},
}
# Knobs tried on dlpipe's 2 ranks (one launch each, after the rounds): name -> (config overrides, rank entry).
# Also tried by hand on this machine, and slower: HOROVOD_CYCLE_TIME 0.1-0.2 ms and 20 ms.
SWEEP = {
    "dlpipe_2_ranks_cycle_5ms": (["train.horovod_cycle_time_ms=5"], TIMED_ENTRY),
    "dlpipe_2_ranks_batch128": (["train.batch_size=128"], TIMED_ENTRY),
    "dlpipe_2_ranks_pinned": ([], PINNED_ENTRY),
}


def run(spark: Any, config: PipelineConfig, size: str) -> dict[str, Any]:
    """Run the train benchmark at ``size``; print its table, write ``train.json``, return its JSON."""
    s = SIZES[size]
    report = harness.Report(NAME, size)
    ds = data.dataset(spark, config, s["data"])
    # The contract dlpipe's ranks get; the PyTorch contenders read the same split, manifest and settings.
    job = plan(config, ds, harness.bench_dir(config) / "runs" / "train")
    manifest, tc = job.manifest, job.config.train
    steps = dataset.steps_per_epoch(dataset.row_group_sizes(job.train_path), RANKS, tc.batch_size)
    report.params = {"dataset": s["data"].key, "model": config.model.name, "model_params": config.model.params,
                     "feature_shape": manifest["feature_shape"], "batch_size_per_rank": tc.batch_size,
                     "steps_per_epoch_per_rank": steps, "epochs": s["epochs"], "rounds": s["rounds"],
                     "horovod_cycle_time_ms": tc.horovod_cycle_time_ms,
                     "horovod_fusion_threshold_mb": tc.horovod_fusion_threshold_mb,
                     "reader_workers": tc.reader_workers, "threads_per_rank": 1}

    args = {"job": "train", "path": job.train_path, "manifest": manifest, "model": config.model.name,
            "model_params": config.model.params, "batch": tc.batch_size, "steps": steps, "epochs": s["epochs"],
            "seed": tc.seed, "threads": 1}
    lr_ranks = tc.lr * RANKS if tc.scale_lr_by_workers else tc.lr
    others = {"torch_1_process": lambda: procs.run_worker({**args, "lr": tc.lr}, threads=1,
                                                          timeout_s=900)["samples_per_s"],
              "torch_2_independent_processes": lambda: _independent(args, tc.lr),
              "ddp_2_processes": lambda: _ddp(args, lr_ranks)}
    figures: dict[str, list[float]] = {key: [] for key in others}
    rates, ddp_rates, launches, rss, waits, phases = [], [], [], [], [], []
    # Rounds: every contender once per round, so a change in machine load hits all of them alike.
    for i in range(s["rounds"]):
        harness.log(NAME, f"round {i + 1} of {s['rounds']}: dlpipe on {RANKS} Horovod ranks, {s['epochs']} epochs")
        out = train_once(spark, config, ds, s["epochs"], run_name=f"train-{i}")
        rates += out["samples_per_s"][1:]
        launches.append(out["launch_seconds"])
        phases.append(out["launch_phases"])
        rss.append(out["peak_rss_bytes"])
        waits += out["data_wait_fraction"][1:]
        harness.log(NAME, f"round {i + 1} of {s['rounds']}: dlpipe on {RANKS} ranks with train.strategy=ddp")
        ddp_rates += train_once(spark, data.derive(config, "train.strategy=ddp"), ds, s["epochs"],
                                run_name=f"train-ddp-{i}")["samples_per_s"][1:]
        for key, measure in others.items():
            if key in report.unavailable:
                continue
            harness.log(NAME, f"round {i + 1} of {s['rounds']}: {key}")
            try:
                figures[key] += measure()[1:]
            except (harness.BenchError, subprocess.TimeoutExpired) as e:
                report.skip(key, f"did not run: {str(e).splitlines()[0]}")
    report.add("dlpipe_2_ranks", rates, "samples/s", DESCRIPTIONS["dlpipe_2_ranks"],
               data_wait_fraction=harness.mean(waits), peak_rss_bytes=max(rss))
    report.add("dlpipe_2_ranks_ddp", ddp_rates, "samples/s", DESCRIPTIONS["dlpipe_2_ranks_ddp"])
    report.add("dlpipe_launch_to_first_step", launches, "s", DESCRIPTIONS["dlpipe_launch_to_first_step"],
               phases=phases)
    for key, values in figures.items():
        if values and key not in report.unavailable:
            report.add(key, values, "samples/s", DESCRIPTIONS[key])

    for key, (overrides, entry) in (SWEEP.items() if s["sweep"] else ()):
        harness.log(NAME, f"knob: {key}")
        out = train_once(spark, data.derive(config, *overrides), ds, s["epochs"], run_name=f"train-{key}",
                         entry=entry)
        what = " ".join(overrides) if overrides else "each rank process pinned to its own core (sched_setaffinity)"
        report.add(key, out["samples_per_s"][1:], "samples/s", f"dlpipe_2_ranks with {what}",
                   data_wait_fraction=harness.mean(out["data_wait_fraction"][1:]))

    harness.log(NAME, "launch cost: dlpipe no-op and TorchDistributor no-op")
    noops = [noop_launch(spark, config, ds) for _ in range(s["launch_repeats"])]
    report.add("dlpipe_noop_launch", [n[0] for n in noops], "s", DESCRIPTIONS["dlpipe_noop_launch"],
               to_return_seconds=[round(n[1], 3) for n in noops])
    for local_mode in (False, True):
        key = "torchdistributor_noop" + ("_local_mode" if local_mode else "")
        try:
            launched = [_torchdistributor_noop(local_mode) for _ in range(s["launch_repeats"])]
            report.add(key, [f[0] for f in launched], "s",
                       f"TorchDistributor(num_processes=2, local_mode={local_mode}).run(noop): call -> noop running",
                       to_return_seconds=[round(f[1], 3) for f in launched])
        except Exception as e:  # a contender that cannot run here is recorded, not faked
            report.skip_error(key, e)

    one = report.median("torch_1_process")
    twice_one = RANKS * one if one else None
    report.ratios["scaling_efficiency"] = harness.ratio(report.median("dlpipe_2_ranks"), twice_one)
    report.ratios["ratio_vs_ddp"] = harness.ratio(report.median("dlpipe_2_ranks"), report.median("ddp_2_processes"))
    report.ratios["ddp_strategy_vs_ddp"] = harness.ratio(report.median("dlpipe_2_ranks_ddp"),
                                                         report.median("ddp_2_processes"))
    report.ratios["ddp_scaling_efficiency"] = harness.ratio(report.median("ddp_2_processes"), twice_one)
    report.ratios["machine_scaling"] = harness.ratio(report.median("torch_2_independent_processes"), twice_one)
    report.ratios["launch_seconds"] = report.median("dlpipe_launch_to_first_step")
    report.ratios["launch_ratio_vs_torchdistributor"] = harness.ratio(report.median("dlpipe_launch_to_first_step"),
                                                                      report.median("torchdistributor_noop"))
    report.ratios["noop_launch_ratio_vs_torchdistributor"] = harness.ratio(report.median("dlpipe_noop_launch"),
                                                                           report.median("torchdistributor_noop"))
    if harness.meets("scaling_efficiency", report.ratios["scaling_efficiency"]) is False:
        report.limits["scaling_efficiency"] = scaling_limit(report)
    if harness.meets("ratio_vs_ddp", report.ratios["ratio_vs_ddp"]) is False:
        report.limits["ratio_vs_ddp"] = ddp_limit(report)
    return harness.finish(report, config)


def scaling_limit(report: harness.Report) -> str:
    """What limits ``scaling_efficiency``, with this run's own profile figures."""
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
    ddp = r.get("ddp_scaling_efficiency")
    parts.append("What the figures point at is synchronization: every step ends in an allreduce that waits for the slower rank, so "
                 "whenever one rank loses its core for a moment (to its own Petastorm reader and batching threads, "
                 "Horovod's background thread, the barrier task relaying its output, the Spark driver or the OS) "
                 "both ranks stall" + (f"; PyTorch DDP on in-memory tensors, with no reader threads and no Spark, "
                                       f"reaches {ddp:.0%}." if ddp is not None else "."))
    tried = [(k, report.median(k)) for k in SWEEP if report.median(k)]
    if tried:
        base = report.median("dlpipe_2_ranks")
        parts.append(f"Knobs tried against the default ({base:,.0f} samples/s, HOROVOD_CYCLE_TIME "
                     f"{report.params['horovod_cycle_time_ms']:g} ms, batch {report.params['batch_size_per_rank']}): "
                     + ", ".join(f"{' '.join(SWEEP[k][0]) or 'ranks pinned to cores'} {v:,.0f}" for k, v in tried)
                     + " samples/s.")
    return " ".join(parts)


def ddp_limit(report: harness.Report) -> str:
    """What limits ``ratio_vs_ddp``."""
    wait = report.contenders["dlpipe_2_ranks"]["data_wait_fraction"]
    text = ("DDP here trains on tensors already in memory, while dlpipe's ranks stream and normalize Parquet "
            f"on the same two cores (data wait {wait:.1%} of step time, plus the reader threads' CPU time); "
            "Horovod's allreduce also passes through its background thread (HOROVOD_CYCLE_TIME), where DDP "
            "reduces gradient buckets straight from autograd hooks.")
    pinned, ddp = report.median("dlpipe_2_ranks_pinned"), report.median("ddp_2_processes")
    if pinned and ddp:
        text += (f" With each rank process pinned to its own core (a launcher change, tried here as a what-if) "
                 f"dlpipe reaches {pinned / ddp:.2f}x DDP.")
    return text


DESCRIPTIONS = {
    "dlpipe_2_ranks": "pipelines.train.rank.train_rank on 2 Horovod ranks (Petastorm shards)",
    "dlpipe_2_ranks_ddp": "the same with train.strategy=ddp (torch DistributedDataParallel over Gloo)",
    "dlpipe_launch_to_first_step": "pipelines.train.driver.launch call -> end of the trainer's first step",
    "dlpipe_noop_launch": "pipelines.train.driver.launch of an entry that only joins Horovod: call -> all ranks joined",
    "torch_1_process": "one single-thread PyTorch process on in-memory tensors, same per-rank steps",
    "torch_2_independent_processes": "2 single-thread PyTorch processes training at the same time without "
                                     "communicating (sum): what the 2 cores give",
    "ddp_2_processes": "PyTorch DDP (Gloo, 127.0.0.1), 2 single-thread processes, in-memory tensors",
}


def _torchdistributor_noop(local_mode: bool) -> tuple[float, float]:
    """(call -> no-op running, call -> return) in seconds."""
    from pyspark.ml.torch.distributor import TorchDistributor

    def noop() -> float:  # nested, so cloudpickle ships it by value: the workers need not import dlpipe
        import time as t

        return t.time()

    called = time.time()
    started = TorchDistributor(num_processes=RANKS, local_mode=local_mode, use_gpu=False).run(noop)
    return started - called, time.time() - called


def _ddp(args: dict[str, Any], lr: float) -> list[float]:
    """Per-epoch samples/s of 2 DDP processes (rank 0's clock; both wait at a barrier per epoch)."""
    env = procs.python_env(1)
    env.update({"MASTER_ADDR": "127.0.0.1", "GLOO_SOCKET_IFNAME": "lo"})
    port = procs.free_port()
    results = procs.run_workers([{**args, "lr": lr, "rank": r, "world": RANKS, "port": port}
                                 for r in range(RANKS)], env)
    return results[0]["samples_per_s"]


def _independent(args: dict[str, Any], lr: float) -> list[float]:
    """Per-epoch samples/s of 2 single-thread processes training at once without talking: what 2 cores give."""
    results = procs.run_workers([{**args, "lr": lr} for _ in range(RANKS)], procs.python_env(1))
    return [sum(epoch) for epoch in zip(*(r["samples_per_s"] for r in results))]
