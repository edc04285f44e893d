"""Fully sharded data parallelism (FSDP2, ``fully_shard``): each rank keeps 1/N of every parameter,
gradient and optimizer state; layers all-gather their parameters just before they run and
reduce-scatter their gradients. Checkpoints and the artifact still hold the full, unsharded state."""
from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any, cast

import torch

from models import DlpipeModel
from pipelines.train.strategies.base import OptimizerFactory
from pipelines.train.strategies.torch_dist import TorchDistributedStrategy


class FSDPStrategy(TorchDistributedStrategy):
    name = "fsdp"
    precisions = ("fp32", "bf16")  # each rank holds part of the gradients: one fp16 loss scaler per rank could disagree
    lockstep_eval = True  # every forward all-gathers parameters
    accumulates = True  # set_requires_gradient_sync(False) for all but the last batch of a step

    def setup(self, model: DlpipeModel, make_optimizer: OptimizerFactory) -> None:
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        self.setup_phases(model, make_optimizer)  # a model with several optimizers: a clear error
        # fully_shard picks a CUDA mesh when it can: name the rank's device type explicitly.
        mesh = init_device_mesh(self.device.type, (self.size,))
        for module in model.modules():  # each layer with weights of its own is one unit, then the root
            if module is not model and next(module.parameters(recurse=False), None) is not None:
                fully_shard(module, mesh=mesh)
        self.sharded = fully_shard(model, mesh=mesh)  # the same module, now with FSDP's methods
        self.model = model
        self.optimizer = make_optimizer(model.parameters())

    @contextlib.contextmanager
    def no_sync(self) -> Iterator[None]:
        self.sharded.set_requires_gradient_sync(False)  # gradients stay unsharded and accumulate locally
        try:
            yield
        finally:
            self.sharded.set_requires_gradient_sync(True)

    def _options(self) -> Any:
        from torch.distributed.checkpoint.state_dict import StateDictOptions

        return StateDictOptions(full_state_dict=True, cpu_offload=True)

    def state(self) -> tuple[dict[str, torch.Tensor], Any]:
        from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

        # full_state_dict=True: plain tensors under the model's own names (ValueType in torch's stub)
        model_state = cast(dict[str, torch.Tensor], get_model_state_dict(self.model, options=self._options()))
        return model_state, get_optimizer_state_dict(self.model, self.optimizer, options=self._options())

    def load(self, model_state: dict[str, torch.Tensor], optimizer_state: Any) -> None:
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            set_model_state_dict,
            set_optimizer_state_dict,
        )

        options = StateDictOptions(full_state_dict=True)
        set_model_state_dict(self.model, dict[str, Any](model_state), options=options)
        set_optimizer_state_dict(self.model, self.optimizer, optimizer_state, options=options)
