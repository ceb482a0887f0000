"""FSDP on CPU processes, for the tests only.

accelerate applies an FSDP config on accelerators only: under `use_cpu` its state stays MULTI_CPU and the Trainer
wraps the model in DistributedDataParallel (RAFTTrainer refuses that run rather than let it go on unsharded). Made to
take the FSDP config on CPUs too, the Trainer's FSDP2 path runs over gloo as it does on GPUs: `fully_shard` on each
block, a sharded optimizer, gradients reduce-scattered, the full state dict gathered to save. What this leaves
untested is accelerate's own part on GPUs: device placement, mixed precision and NCCL.
"""

import os

import accelerate.state
from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

_initialise = accelerate.state.AcceleratorState.__init__


def _initialise_with_fsdp(self, *args, fsdp_plugin=None, **kwargs):
    _initialise(self, *args, fsdp_plugin=fsdp_plugin, **kwargs)
    # The state is shared and initialised again later without a plugin: keep the one it was first given.
    if self.distributed_type == DistributedType.MULTI_CPU and os.environ.get("ACCELERATE_USE_FSDP") == "true":
        self.fsdp_plugin = fsdp_plugin or getattr(self, "fsdp_plugin", None) or FullyShardedDataParallelPlugin()
        self.distributed_type = DistributedType.FSDP


accelerate.state.AcceleratorState.__init__ = _initialise_with_fsdp
