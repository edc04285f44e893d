"""Rank bodies for tests/unit/train/test_strategies.py: one training step of a strategy, no Spark.

Spawned processes import this module by name (``tests/`` is on the path), so it lives outside the
test module.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

BATCH = 16  # rows of the whole step; data-parallel ranks take half each


def make_batch() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(7)
    return {"features": torch.randn(BATCH, 1, 8, 8, generator=g), "label": torch.randint(0, 10, (BATCH,), generator=g)}


def make_model():
    import models

    torch.manual_seed(0)
    return models.build("cnn", feature_shape=(1, 8, 8), num_classes=10, dropout=0.0)


def record_compute_dtypes(model: torch.nn.Module) -> dict[str, set[str]]:
    """Record, for every convolution and linear layer of ``model``, the dtypes its forward produced
    and its output's gradient had (the backward matmuls run in that dtype): filled as the model runs.

    This is what tells bf16 from fp32 deterministically: the loss of a freshly initialized model
    barely moves under bf16 (its logits are near 0, so the loss is near ln(classes) whatever their
    rounding), while these dtypes are bfloat16 exactly when autocast was in effect."""
    seen: dict[str, set[str]] = {}

    def hook(name: str):
        def on_forward(_module, _inputs, output: torch.Tensor) -> None:
            if output.device.type == "meta":  # a pipeline stage's shape inference, not a computation
                return
            seen.setdefault(f"{name} forward", set()).add(str(output.dtype))
            if output.requires_grad:
                output.register_hook(lambda grad: seen.setdefault(f"{name} backward", set()).add(str(grad.dtype)))
        return on_forward

    for name, module in model.named_modules():
        if isinstance(module, (torch.nn.Conv2d, torch.nn.Linear)):
            module.register_forward_hook(hook(name))
    return seen


def context(rank: int, world: int, port: int):
    """The RankContext a launcher would hand this rank: the parent's store is its rendezvous."""
    from pipelines.launcher.rank import RankContext

    return RankContext(rank, world, rank, local_size=world, rendezvous_addr="127.0.0.1", rendezvous_port=port,
                       stall_timeout_s=60)


def one_step(rank: int, world: int, port: int, strategy_name: str, microbatches: int, out: str,
             precision: str = "fp32", compression: str = "none", accumulation: int = 1) -> None:
    """Join the group through the parent's TCPStore, run one step, save figures, gradients, held parameters.
    ``accumulation``: the rank's rows come as that many batches of one step (train.grad_accumulation)."""
    from pipelines.config import PipelineParallelConfig, TrainConfig
    from pipelines.launcher.rank import exit_now
    from pipelines.train.strategies import STRATEGIES

    os.environ["GLOO_SOCKET_IFNAME"] = "lo"
    torch.set_num_threads(1)
    tc = TrainConfig(strategy=strategy_name, batch_size=BATCH, pipeline=PipelineParallelConfig(microbatches=microbatches),
                     precision=precision, grad_compression=compression, grad_accumulation=accumulation)
    strategy = STRATEGIES[strategy_name](context(rank, world, port), tc)
    strategy.start()
    try:
        model = make_model()
        dtypes = record_compute_dtypes(model)
        strategy.setup(model, lambda params: torch.optim.SGD(params, lr=0.0))  # lr 0: compare gradients only
        batch = make_batch()
        if strategy.data_parallel:
            half = BATCH // world
            batch = {k: v[rank * half:(rank + 1) * half] for k, v in batch.items()}
        rows = len(batch["label"]) // accumulation
        figures = strategy.train_step(*({k: v[i * rows:(i + 1) * rows] for k, v in batch.items()}
                                        for i in range(accumulation)))
        grads = _gradients(strategy)
        full_state, _ = strategy.state()
        torch.save({"figures": figures, "grads": grads, "held": strategy.held_parameters(),
                    "state_keys": sorted(full_state), "dtypes": {k: sorted(v) for k, v in dtypes.items()}},
                   Path(out) / f"rank{rank}.pt")
    finally:
        strategy.stop()
    exit_now(0)  # as a real rank does: no interpreter finalization with a process group's objects alive


def _gradients(strategy) -> dict[str, torch.Tensor]:
    """This rank's gradients under the model's own parameter names (FSDP: gathered to full tensors)."""
    if strategy.name == "pipeline":
        return {strategy.names[k]: p.grad.clone() for k, p in strategy.module.named_parameters()}
    grads = {}
    for name, p in strategy.model.named_parameters():
        grad = p.grad
        grads[name] = (grad.full_tensor() if hasattr(grad, "full_tensor") else grad).clone()
    return grads


# --- a GAN step: two optimizers, each phase's gradients averaged once -------------------------

LATENT = 4


def make_gan():
    import models

    torch.manual_seed(0)
    return models.build("gan", feature_shape=(1, 8, 8), num_classes=10, latent_dim=LATENT,
                        generator_channels=[8, 4], discriminator_channels=[4, 8])


def make_gan_batch() -> dict[str, torch.Tensor]:
    """Images and the noise each row's generated image comes from: a step is then reproducible."""
    g = torch.Generator().manual_seed(11)
    return {"features": torch.randn(BATCH, 1, 8, 8, generator=g), "noise": torch.randn(BATCH, LATENT, generator=g)}


def gan_step(strategy) -> dict:
    """One GAN step with lr 0 (gradients only) on this rank's half of the batch; what the test compares."""
    strategy.setup(make_gan(), lambda params: torch.optim.SGD(params, lr=0.0))
    batch = make_gan_batch()
    half = BATCH // strategy.size
    batch = {k: v[strategy.rank * half:(strategy.rank + 1) * half] for k, v in batch.items()}
    figures = strategy.train_step(batch)
    grads = {name: p.grad.clone() for name, p in strategy.model.named_parameters()}
    _, optimizer_state = strategy.state()
    return {"figures": figures, "grads": grads, "optimizers": sorted(optimizer_state)}


def gan_one_step(rank: int, world: int, port: int, strategy_name: str, out: str) -> None:
    """mp.spawn body: a torch.distributed strategy's GAN step, saved for the parent."""
    from pipelines.config import TrainConfig
    from pipelines.launcher.rank import exit_now
    from pipelines.train.strategies import STRATEGIES

    os.environ["GLOO_SOCKET_IFNAME"] = "lo"
    torch.set_num_threads(1)
    strategy = STRATEGIES[strategy_name](context(rank, world, port), TrainConfig(strategy=strategy_name))
    strategy.start()
    try:
        torch.save(gan_step(strategy), Path(out) / f"rank{rank}.pt")
    finally:
        strategy.stop()
    exit_now(0)


def gan_step_entry(payload: dict, ctx) -> dict:
    """Launcher entry (a real barrier stage): the Horovod strategy's GAN step; rank 0's gradients
    and figures as lists (the result travels as JSON)."""
    from pipelines.config import TrainConfig
    from pipelines.train.strategies import STRATEGIES

    strategy = STRATEGIES["horovod"](ctx, TrainConfig())
    strategy.start()
    try:
        result = gan_step(strategy)
    finally:
        strategy.stop()
    return {"figures": result["figures"], "optimizers": result["optimizers"],
            "grads": {k: v.flatten().tolist() for k, v in result["grads"].items()}}


def gan_reference() -> tuple[dict[str, float], dict[str, torch.Tensor]]:
    """One process, the whole batch: each phase's loss and the gradients a GAN step leaves."""
    model = make_gan()
    batch = make_gan_batch()
    figures, grads = {}, {}
    for phase in model.training_phases():
        model.zero_grad()
        loss, _ = phase.loss(batch)
        loss.backward()
        figures[f"{phase.name}_loss"] = loss.item()
        grads.update({f"{phase.name}.{n}": p.grad.clone() for n, p in phase.module.named_parameters()})
    return figures, grads


def horovod_step_entry(payload: dict, ctx) -> dict:
    """Launcher entry: one Horovod step of the CNN on this rank's half of the batch, given as
    ``payload["accumulation"]`` batches with ``payload["compression"]`` (and ``payload["precision"]``,
    fp32 unless given); rank 0's gradients as lists and its layers' compute dtypes."""
    from pipelines.config import TrainConfig
    from pipelines.train.strategies import STRATEGIES

    accumulation = payload["accumulation"]
    strategy = STRATEGIES["horovod"](ctx, TrainConfig(grad_compression=payload["compression"],
                                                      grad_accumulation=accumulation,
                                                      precision=payload.get("precision", "fp32")))
    strategy.start()
    try:
        model = make_model()
        dtypes = record_compute_dtypes(model)
        strategy.setup(model, lambda params: torch.optim.SGD(params, lr=0.0))  # lr 0: gradients only
        half = BATCH // strategy.size
        rows = half // accumulation
        batch = {k: v[strategy.rank * half:(strategy.rank + 1) * half] for k, v in make_batch().items()}
        figures = strategy.train_step(*({k: v[i * rows:(i + 1) * rows] for k, v in batch.items()}
                                        for i in range(accumulation)))
        grads = {name: p.grad.flatten().tolist() for name, p in strategy.model.named_parameters()}
    finally:
        strategy.stop()
    return {"figures": figures, "grads": grads, "dtypes": {k: sorted(v) for k, v in dtypes.items()}}


def reference_gradients() -> dict[str, torch.Tensor]:
    """One process, the whole batch, one backward: the gradients a data-parallel step must average to."""
    model = make_model()
    loss, _ = model.loss(make_batch())
    loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters()}
