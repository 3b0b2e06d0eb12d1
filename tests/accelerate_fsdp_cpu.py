"""`python tests/accelerate_fsdp_cpu.py ARGS` = `python -m eexp ARGS`, with accelerate's FSDP on CPU processes.

accelerate enables FSDP only for accelerator devices (accelerate/state.py: a CPU run stays MULTI_CPU, plain data
parallelism, whatever the config says). tests/test_multiprocess.py launches eexp through this file with
recipes/accelerate/fsdp.yaml so that the FSDP2 path (sharded loading, prepare, full state dict) runs on 2 CPU
processes over gloo; nothing else is changed.
"""

import runpy
import sys

import accelerate.state as state
from accelerate.utils import DistributedType

_init = state.AcceleratorState.__init__


def _fsdp_on_cpu(self, *args, fsdp_plugin=None, **kwargs):
    _init(self, *args, fsdp_plugin=fsdp_plugin, **kwargs)
    if fsdp_plugin is not None and self.distributed_type == DistributedType.MULTI_CPU:
        self.distributed_type = DistributedType.FSDP
        self.fsdp_plugin = fsdp_plugin
        state.PartialState._shared_state["distributed_type"] = DistributedType.FSDP


state.AcceleratorState.__init__ = _fsdp_on_cpu

sys.argv = ["eexp", *sys.argv[1:]]
runpy.run_module("eexp", run_name="__main__", alter_sys=True)
