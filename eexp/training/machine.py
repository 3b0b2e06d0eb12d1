"""The machine a model is trained on, for its card (`machine`): training diverges between CPUs, so a seed's result is
checked against a run on the same kind of machine and kernels."""

from __future__ import annotations

import os
import platform

import torch


def machine_card() -> dict:
    """The CPU's model name, the instruction set torch's CPU kernels dispatch to (ATEN_CPU_CAPABILITY chooses it; the
    recipes set avx2 so that AVX512 and AVX2 machines sum in the same order), MKL's reproducibility branch
    (MKL_CBWR), torch's threads and version, and the GPU when one trains."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    out = {
        "cpu": cpu,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "mkl_cbwr": os.environ.get("MKL_CBWR", ""),
        "threads": str(torch.get_num_threads()),
        "torch": str(torch.__version__),
    }
    if torch.cuda.is_available():
        out["device"] = str(torch.cuda.get_device_name())
    return out
