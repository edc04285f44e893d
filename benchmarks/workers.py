"""Contender processes: ``python -m pipelines.bench.workers JSON`` prints one JSON line.

``train_single`` / ``train_ddp``: plain PyTorch training on in-memory tensors (the limit and the
DDP contender), the same model, optimizer, batch and per-rank steps as dlpipe's trainer.
``infer_torch``: one PyTorch process scoring a Parquet folder and writing the predictions.
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np


def load_split(path: str, normalization: dict[str, Any], feature_shape: list[int], rank: int = 0,
               world: int = 1):
    """A split as normalized (rows, *feature_shape) float32 and (rows,) int64 tensors; rows rank::world."""
    import pyarrow.parquet as pq
    import torch

    from pipelines.loader import Normalizer

    table = pq.read_table(path, columns=["features", "label"])
    flat = np.asarray(table.column("features").combine_chunks().flatten()).reshape(table.num_rows, -1)
    labels = np.asarray(table.column("label"))
    normalize = Normalizer.from_stats(normalization, feature_shape)
    return normalize(flat[rank::world]).contiguous(), torch.from_numpy(labels[rank::world].copy())


def train(args: dict[str, Any]) -> dict[str, Any]:
    """Train for ``epochs`` x ``steps`` steps of ``batch`` rows; samples/s of every epoch (all ranks)."""
    import torch
    import torch.nn.functional as F

    import models

    torch.set_num_threads(args["threads"])
    rank, world = args.get("rank", 0), args.get("world", 1)
    ddp = world > 1
    if ddp:
        import torch.distributed as dist
        from torch.nn.parallel import DistributedDataParallel

        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{args['port']}", rank=rank, world_size=world)
    x, y = load_split(args["path"], args["normalization"], args["feature_shape"], rank, world)
    torch.manual_seed(args["seed"])
    model = models.build(args["model"], feature_shape=tuple(args["feature_shape"]), num_classes=args["num_classes"],
                         **args["model_params"])
    net = DistributedDataParallel(model) if ddp else model
    optimizer = torch.optim.Adam(net.parameters(), lr=args["lr"])
    batch, steps = args["batch"], args["steps"]
    rates = []
    for epoch in range(args["epochs"]):
        order = torch.randperm(len(y))
        if ddp:
            dist.barrier()
        started = time.perf_counter()
        for step in range(steps):
            start = (step * batch) % max(1, len(y) - batch + 1)
            idx = order[start:start + batch]
            optimizer.zero_grad()
            logits = net(x[idx])  # (B, num_classes); through DDP's forward so its hooks reduce the gradients
            loss = F.cross_entropy(logits, y[idx])
            loss.backward()
            optimizer.step()
            loss.item()  # dlpipe's trainer reads the loss every step too
        if ddp:
            dist.barrier()
        rates.append(steps * batch * world / (time.perf_counter() - started))
    if ddp:
        dist.destroy_process_group()
    return {"samples_per_s": rates, "rank": rank}


def infer_torch(args: dict[str, Any]) -> dict[str, Any]:
    """Read Parquet batches, score them with the artifact, write predictions; rows/s."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    import torch

    from pipelines.artifact import load_artifact
    from pipelines.loader import Normalizer

    torch.set_num_threads(args["threads"])
    started = time.perf_counter()
    model, meta = load_artifact(args["artifact"])
    normalize = Normalizer.from_stats(meta["normalization"], meta["feature_shape"])
    out = Path(args["output"])
    out.mkdir(parents=True, exist_ok=True)
    writer, rows = None, 0
    files = sorted(p for p in Path(args["path"]).glob("*.parquet") if not p.name.startswith((".", "_")))
    with torch.inference_mode():
        for f in files:
            for rb in pq.ParquetFile(f).iter_batches(batch_size=args["batch"], columns=["id", "features"]):
                n = rb.num_rows
                flat = np.asarray(rb.column(1).flatten()).reshape(n, -1)
                outputs = model.predict(normalize(flat))
                probs = outputs["probabilities"].numpy().astype(np.float32)
                offsets = pa.array(np.arange(0, (n + 1) * probs.shape[1], probs.shape[1], dtype=np.int32))
                table = pa.table({"id": rb.column(0), "prediction": outputs["prediction"].numpy(),
                                  "probabilities": pa.ListArray.from_arrays(offsets, pa.array(probs.reshape(-1)))})
                if writer is None:
                    writer = pq.ParquetWriter(str(out / "part-00000.parquet"), table.schema)
                writer.write_table(table)
                rows += n
    if writer is not None:
        writer.close()
    return {"rows": rows, "seconds": time.perf_counter() - started}


if __name__ == "__main__":
    import warnings

    warnings.filterwarnings("ignore")
    job = json.loads(sys.argv[1])
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    result = {"train": train, "infer_torch": infer_torch}[job.pop("job")](job)
    print(json.dumps(result), flush=True)
