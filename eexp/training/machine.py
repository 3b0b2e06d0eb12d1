"""The machine a model is trained on, for its card (`machine`): training diverges between CPUs, so a seed's result is
checked against a run on the same kind of machine and kernels."""

from __future__ import annotations

import os
import platform

import torch


def machine_card() -> dict:
    """The CPU's model name and, on x86 Linux, its family and model (a name such as "AMD EPYC" covers CPUs of several
    generations), the instruction set torch's CPU kernels dispatch to (ATEN_CPU_CAPABILITY chooses it; the recipes
    set avx2 so that AVX512 and AVX2 machines sum in the same order), MKL's reproducibility branch as asked (MKL_CBWR),
    torch's threads and version, and the GPU when one trains."""
    cpu = platform.processor() or platform.machine()
    fields: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:  # each processor's fields in turn; the first one's are kept (one kind of CPU)
                key, _, value = line.partition(":")
                fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    out = {"cpu": fields.get("model name", cpu)}
    if "cpu family" in fields and "model" in fields:
        out["cpuid"] = f"family {fields['cpu family']}, model {fields['model']}"
    out |= {
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "mkl_cbwr": os.environ.get("MKL_CBWR", ""),
        "threads": str(torch.get_num_threads()),
        "torch": str(torch.__version__),
    }
    if torch.cuda.is_available():
        out["device"] = str(torch.cuda.get_device_name())
    return out
