"""What the torch.distributed strategies share: the process group (joined through the driver's
TCPStore) and object/tensor collectives: over NCCL when the rank runs on a GPU, else Gloo."""
from __future__ import annotations

import datetime
from typing import Any

import torch

from pipelines.device import backend_for
from pipelines.events import Joined
from pipelines.launcher.rank import RankContext
from pipelines.train.rendezvous import TorchStoreRendezvous
from pipelines.train.strategies.base import Strategy


def join_process_group(ctx: RankContext, backend: str = "gloo") -> None:
    """``torch.distributed.init_process_group`` through the driver's store (``ctx.rendezvous_*``).

    Collectives time out after the launch's failure timeout, so a dead peer ends this rank.
    """
    import torch.distributed as dist

    timeout = datetime.timedelta(seconds=ctx.stall_timeout_s)
    store = dist.TCPStore(ctx.rendezvous_addr, ctx.rendezvous_port, ctx.size, is_master=False, timeout=timeout)
    dist.init_process_group(backend, store=store, rank=ctx.rank, world_size=ctx.size, timeout=timeout)


class TorchDistributedStrategy(Strategy):
    """Base of ddp, fsdp and pipeline: they meet through a torch.distributed store on the driver."""

    rendezvous = TorchStoreRendezvous

    def start(self) -> None:
        join_process_group(self.ctx, backend=backend_for(self.device))
        self.ctx.emit(Joined())

    def stop(self) -> None:
        """Leave the group as it is: the rank process ends right after (``exit_now``), which closes
        every connection. ``destroy_process_group`` while a peer is still finishing its last step
        races Gloo's own teardown, and a rank that lost that race aborted ("terminate called without
        an active exception") after a run that had succeeded."""

    def broadcast_parameters(self, model: torch.nn.Module) -> None:
        import torch.distributed as dist

        for tensor in model.state_dict().values():
            dist.broadcast(tensor, src=0)

    def average_gradients(self, params: list[torch.nn.Parameter], name: str) -> None:
        import torch.distributed as dist

        grads = [p.grad for p in params if p.grad is not None]
        flat = torch.cat([g.reshape(-1) for g in grads])  # one collective for the phase
        if self.compress_dtype is not None:  # divided before the sum, as DDP's compress hooks do
            flat = flat.to(self.compress_dtype).div_(self.size)
            dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        else:
            dist.all_reduce(flat, op=dist.ReduceOp.SUM)
            flat /= self.size
        offset = 0
        for g in grads:
            g.copy_(flat[offset:offset + g.numel()].view_as(g))
            offset += g.numel()

    def broadcast_object(self, obj: Any, src: int = 0) -> Any:
        import torch.distributed as dist

        box = [obj]
        dist.broadcast_object_list(box, src=src)
        return box[0]

    def allgather_object(self, obj: Any) -> list[Any]:
        import torch.distributed as dist

        out: list[Any] = [None] * self.size
        dist.all_gather_object(out, obj)
        return out

    def allreduce_sum(self, values: torch.Tensor, name: str) -> torch.Tensor:
        import torch.distributed as dist

        values = values.to(self.device, copy=True)  # NCCL reduces only tensors on the GPU
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
        return values.cpu()
