"""Contender processes: ``python -m benchmarks.workers JSON`` prints one JSON line.

``train`` (one process, a DDP rank when ``world`` > 1, or a Horovod rank when ``horovod``): plain
PyTorch training on in-memory tensors, the limit and the DDP and Horovod contenders of the train
benchmark (Horovod as its documentation shows: ``DistributedOptimizer``, rendezvous from the
environment). Same model (built as dlpipe's trainer builds it), optimizer, batch and per-rank steps
as dlpipe's trainer, and the same loss: the model's own ``loss``, so any dlpipe model trains here;
``compression`` (fp16) and ``accumulation`` apply each library's own communication knobs.
Measures samples/s per epoch (``steps`` optimizer steps of ``accumulation`` batches each).

``infer_torch``: one PyTorch process scoring Parquet files with a model artifact and writing
every output the model declares (``output_schema``) as Parquet. Measures rows and seconds.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np


def load_split(split: dict[str, Any], manifest: dict[str, Any], rank: int = 0, world: int = 1) -> tuple[Any, Any]:
    """A split (``SplitFiles.to_dict()``) as normalized (rows, *feature_shape) float32 and (rows,)
    int64 tensors; rows rank::world. ``manifest``: the dataset's ``Manifest.to_dict()``."""
    import torch

    from pipelines.artifact import Normalizer
    from pipelines.dataset import Normalization, SplitFiles, read_split

    table = read_split(SplitFiles.from_dict(split, "split"), ("features", "label"))
    flat = np.asarray(table.column("features").combine_chunks().flatten()).reshape(table.num_rows, -1)
    labels = np.asarray(table.column("label"))
    normalize = Normalizer.from_stats(Normalization.from_dict(manifest["normalization"], "manifest", "normalization"),
                                      manifest["feature_shape"])
    return normalize(flat[rank::world]).contiguous(), torch.from_numpy(labels[rank::world].copy())


def train(args: dict[str, Any]) -> dict[str, Any]:
    """Train for ``epochs`` x ``steps`` steps of ``batch`` rows; samples/s of every epoch (all ranks)."""
    import torch

    from benchmarks.data import build_model

    torch.set_num_threads(args["threads"])
    group = _Group(args)
    x, y = load_split(args["split"], args["manifest"], group.rank, group.world)
    torch.manual_seed(args["seed"])
    model = build_model(args["model"], args["model_params"], args["manifest"])
    net, optimizer = _net_and_optimizer(model, args, group)
    rates = _epochs(net, optimizer, x, y, args, group)
    group.leave()
    return {"samples_per_s": rates, "rank": group.rank}


class _Group:
    """This process's place among the contender's processes (a DDP or Horovod rank, or alone), joined on
    construction: how it waits for the others and leaves them."""

    def __init__(self, args: dict[str, Any]) -> None:
        import torch

        self._torch = torch
        self.rank: int = args.get("rank", 0)
        self.world: int = args.get("world", 1)
        self.horovod: bool = args.get("horovod", False)
        self.ddp = self.world > 1 and not self.horovod
        self.hvd: Any = None  # horovod.torch, when a Horovod rank
        self.dist: Any = None  # torch.distributed, when a DDP rank
        if self.horovod:
            import horovod.torch as hvd

            hvd.init()
            self.hvd = hvd
            self.rank, self.world = hvd.rank(), hvd.size()
        if self.ddp:
            import torch.distributed as dist

            dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{args['port']}", rank=self.rank,
                                    world_size=self.world)
            self.dist = dist

    def barrier(self, name: str) -> None:
        """Wait for every rank, so that an epoch's clock starts and stops together on all of them."""
        if self.ddp:
            self.dist.barrier()
        elif self.horovod:
            self.hvd.allreduce(self._torch.zeros(1), name=name)

    def leave(self) -> None:
        """Leave the process group (DDP) or shut Horovod down."""
        if self.ddp:
            self.dist.destroy_process_group()
        if self.horovod:
            self.hvd.shutdown()


def _net_and_optimizer(model: Any, args: dict[str, Any], group: _Group) -> tuple[Any, Any]:
    """(the module computing the loss, wrapped for DDP ranks; the optimizer, Horovod's for Horovod ranks)."""
    import torch

    step_loss = _loss_module(model)
    # Communication knobs as each library documents them: fp16 compression (Horovod's
    # Compression.fp16, DDP's fp16_compress_hook) and gradient accumulation (Horovod's
    # backward_passes_per_step, DDP's no_sync), ``accumulate`` batches per optimizer step.
    compress, accumulate = args.get("compression", "none") == "fp16", args.get("accumulation", 1)
    net = step_loss
    if group.ddp:
        from torch.nn.parallel import DistributedDataParallel

        # DDP reduces gradients through its own forward, so the loss must be computed inside it.
        net = DistributedDataParallel(step_loss)
    if group.ddp and compress:
        from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

        net.register_comm_hook(None, default_hooks.fp16_compress_hook)
    optimizer = torch.optim.Adam(model.parameters(), lr=args["lr"])
    if group.horovod:
        hvd = group.hvd
        optimizer = hvd.DistributedOptimizer(optimizer, named_parameters=model.named_parameters(), op=hvd.Average,
                                             compression=hvd.Compression.fp16 if compress else hvd.Compression.none,
                                             backward_passes_per_step=accumulate)
        hvd.broadcast_parameters(model.state_dict(), root_rank=0)
    return net, optimizer


def _epochs(net: Any, optimizer: Any, x: Any, y: Any, args: dict[str, Any], group: _Group) -> list[float]:
    """Samples/s of each of ``epochs`` epochs, all ranks together, timed between barriers."""
    import torch

    accumulate = args.get("accumulation", 1)
    batch, steps = args["batch"], args["steps"]
    rates = []
    for epoch in range(args["epochs"]):
        order = torch.randperm(len(y))
        group.barrier(f"epoch{epoch}.start")
        started = time.perf_counter()
        for step in range(steps):
            optimizer.zero_grad()
            for part in range(accumulate):
                start = ((step * accumulate + part) * batch) % max(1, len(y) - batch + 1)
                idx = order[start:start + batch]
                holding = net.no_sync() if group.ddp and part < accumulate - 1 else contextlib.nullcontext()
                with holding:
                    loss, metrics = net(x[idx], y[idx])
                    (loss / accumulate if accumulate > 1 else loss).backward()
                # dlpipe's trainer reads the loss and every metric each batch too
                loss.item()
                for value in metrics.values():
                    float(value)
            optimizer.step()
        group.barrier(f"epoch{epoch}.end")
        rates.append(steps * accumulate * batch * group.world / (time.perf_counter() - started))
    return rates


def _loss_module(model: Any) -> Any:
    """A module whose forward is ``model.loss`` on (features, label): what DDP has to wrap."""
    import torch

    class Loss(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, features: torch.Tensor, label: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
            loss: tuple[torch.Tensor, dict[str, torch.Tensor]] = self.model.loss({"features": features, "label": label})
            return loss

    return Loss()


def arrow_outputs(outputs: dict[str, Any], schema: dict[str, tuple[str, tuple[int, ...]]]) -> dict[str, Any]:
    """A model's ``predict`` outputs as Arrow columns, by its ``output_schema``: scalars as
    values, per-row arrays as list columns (flattened per row)."""
    import pyarrow as pa

    columns = {}
    for name, (dtype, shape) in schema.items():
        values = outputs[name].numpy().astype(dtype, copy=False)  # Arrow's type follows the NumPy dtype
        if not shape:
            columns[name] = pa.array(values)
            continue
        width = math.prod(shape)
        offsets = pa.array(np.arange(0, (len(values) + 1) * width, width, dtype=np.int32))
        columns[name] = pa.ListArray.from_arrays(offsets, pa.array(values.reshape(-1)))
    return columns


def infer_torch(args: dict[str, Any]) -> dict[str, Any]:
    """Read Parquet batches, score them with the artifact, write its declared outputs; rows and seconds."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    import torch

    from pipelines.artifact import load_artifact

    torch.set_num_threads(args["threads"])
    started = time.perf_counter()
    model, meta = load_artifact(args["artifact"])
    normalize = meta.normalizer()
    schema = model.output_schema()
    out = Path(args["output"])
    out.mkdir(parents=True, exist_ok=True)
    writer, rows = None, 0
    with torch.inference_mode():
        for f in args["files"]:  # the split's files (local paths), in the dataset view's order
            for rb in pq.ParquetFile(f).iter_batches(batch_size=args["batch"], columns=["id", "features"]):
                n = rb.num_rows
                flat = np.asarray(rb.column(1).flatten()).reshape(n, -1)
                outputs = model.predict(normalize(flat))
                table = pa.table({"id": rb.column(0), **arrow_outputs(outputs, schema)})
                if writer is None:
                    writer = pq.ParquetWriter(str(out / "part-00000.parquet"), table.schema)
                writer.write_table(table)
                rows += n
    if writer is not None:
        writer.close()
    return {"rows": rows, "seconds": time.perf_counter() - started}


JOBS = {"train": train, "infer_torch": infer_torch}

if __name__ == "__main__":
    import warnings

    warnings.filterwarnings("ignore")
    job = json.loads(sys.argv[1])
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    result = JOBS[job.pop("job")](job)
    print(json.dumps(result), flush=True)
