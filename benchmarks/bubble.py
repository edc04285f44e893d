"""The pipeline's bubble, measured: how long each stage idles per step, against (K-1)/(M+K-1).

Two processes (one per stage, joined over Gloo on 127.0.0.1 through a TCPStore this process runs,
as the driver does in a launch) run dlpipe's own ``PipelineStrategy`` on an MLP cut into two
equal halves. Each stage first times its own forward + backward of one micro-batch alone (no
communication); a step's busy time is that times M, and the rest of its wall time is idle:
waiting for the other stage (the schedule's fill and drain) or for communication.
"""
from __future__ import annotations

import os
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch

STAGES = 2
BATCH = 256
WIDTH = 1024  # wide enough that compute, not Python and messaging, fills a step
FEATURES = 1024


def _model() -> Any:
    import models

    torch.manual_seed(0)
    # Four equal hidden layers: the balanced cut gives each stage the same work.
    return models.build("mlp", feature_shape=(FEATURES,), num_classes=10, hidden_sizes=(WIDTH,) * 4, dropout=0.0)


def _stage_worker(rank: int, port: int, microbatches: list[int], steps: int, out: str) -> None:
    """One stage: for each M, warm up, then time ``steps`` steps and the stage's own compute."""
    import torch.distributed as dist

    from pipelines.config import PipelineParallelConfig, TrainConfig
    from pipelines.launcher.rank import RankContext, exit_now
    from pipelines.train.strategies.pipeline import PipelineStrategy

    class _Stage(RankContext):
        def emit(self, event: Any) -> None:
            """No driver reads a stage's events here (the strategy reports joining its group)."""

    os.environ["GLOO_SOCKET_IFNAME"] = "lo"  # what the launcher's torch.distributed rendezvous sets
    # The stage's place, and the store it joins through (as a launch hands them to a rank).
    ctx = _Stage(rank=rank, size=STAGES, local_rank=rank, local_size=STAGES, rendezvous_addr="127.0.0.1",
                 rendezvous_port=port, stall_timeout_s=120)
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(1)
    batch = {"features": torch.randn(BATCH, FEATURES, generator=g),
             "label": torch.randint(0, 10, (BATCH,), generator=g)}
    results = []
    strategy = None
    for m in microbatches:
        tc = TrainConfig(strategy="pipeline", batch_size=BATCH, pipeline=PipelineParallelConfig(microbatches=m))
        strategy = PipelineStrategy(ctx, tc)
        if not dist.is_initialized():
            strategy.start()
        strategy.setup(_model(), lambda params: torch.optim.SGD(params, lr=1e-3))
        compute = _alone(strategy.module, rank, BATCH // m)  # one micro-batch's forward + backward
        for _ in range(2):  # warm-up: buffers, shapes
            strategy.train_step(batch)
        dist.barrier()
        t0 = time.perf_counter()
        for _ in range(steps):
            strategy.train_step(batch)
        dist.barrier()
        wall = time.perf_counter() - t0
        results.append({"microbatches": m, "busy": compute * m * steps, "wall": wall})
    torch.save(results, Path(out) / f"stage{rank}.pt")
    if strategy is not None:
        strategy.stop()
    exit_now(0)  # no interpreter finalization with a process group's objects alive (see exit_now)


def _alone(module: torch.nn.Module, rank: int, rows: int, repeats: int = 5) -> float:
    """Median seconds of one micro-batch's forward + backward through this stage, with no one to wait for."""
    width = FEATURES if rank == 0 else WIDTH  # the second stage takes the first one's activations
    times = []
    for _ in range(repeats + 1):
        x = torch.randn(rows, width, requires_grad=rank > 0)
        t0 = time.perf_counter()
        out = module(x)
        out.backward(torch.ones_like(out))
        times.append(time.perf_counter() - t0)
    module.zero_grad()
    return sorted(times[1:])[repeats // 2]


def measure(microbatches: list[int], steps: int = 10, timeout_s: float = 600) -> dict[str, Any]:
    """Idle fraction per M, averaged over the stages, with the GPipe formula beside it."""
    import torch.multiprocessing as mp
    from torch.distributed import TCPStore

    store = TCPStore("127.0.0.1", 0, None, True, wait_for_workers=False, timeout=timedelta(seconds=timeout_s))
    with tempfile.TemporaryDirectory(prefix="dlpipe-bubble-") as out:
        context = mp.spawn(_stage_worker, args=(store.port, microbatches, steps, out), nprocs=STAGES, join=False)
        deadline = time.monotonic() + timeout_s
        while not context.join(timeout=2):
            if time.monotonic() > deadline:
                for p in context.processes:
                    p.kill()
                raise TimeoutError(f"the {STAGES} pipeline stages did not finish within {timeout_s:g}s")
        stages = [torch.load(Path(out) / f"stage{r}.pt", weights_only=True) for r in range(STAGES)]
    rows = []
    for i, m in enumerate(microbatches):
        idle = sum(1 - s[i]["busy"] / s[i]["wall"] for s in stages) / STAGES
        rows.append({"microbatches": m, "idle_fraction": idle, "formula": (STAGES - 1) / (m + STAGES - 1),
                     "step_ms": 1000 * max(s[i]["wall"] for s in stages) / steps})
    return {"stages": STAGES, "batch": BATCH, "steps": steps,
            "parameters": sum(p.numel() for p in _model().parameters()), "rows": rows}
