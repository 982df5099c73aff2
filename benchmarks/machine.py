"""The machine a benchmark ran on, written into every table: a speed claim
holds only for the machine it was measured on.

    describe(device) -> {"cpu": ..., "vendor": ..., "isa": ..., "cores": ...,
                         "threads": ..., "fma_peak_gflops": ..., "gemm_engine": ..., ...}

The float32 FMA peak is measured here (torch.ops.rnnkernels.fma_peak_gflops:
independent FMA chains at the widest vector width, on the benchmark's thread
count), so that every kernel's GFLOP/s can be given as a fraction of it.
"""
import datetime
import os
import platform
from typing import Dict, Optional

import torch

# /proc/cpuinfo flags worth naming, in the order they are listed.
_ISA_FLAGS = [("avx512f", "AVX-512"), ("avx512_bf16", "AVX512-BF16"), ("amx_tile", "AMX"), ("avx2", "AVX2"),
              ("fma", "FMA")]


def _cpuinfo() -> Dict[str, str]:
    fields: Dict[str, str] = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if ":" not in line:
                    if fields:
                        break  # the first processor is enough
                    continue
                key, value = (part.strip() for part in line.split(":", 1))
                fields.setdefault(key, value)
    except OSError:
        pass
    return fields


def _vendor_and_model(info: Dict[str, str]) -> str:
    vendor = info.get("vendor_id", "unknown")
    if "cpu family" in info and "model" in info:
        return f"{vendor} family {info['cpu family']} model {info['model']}"
    return vendor


def cpu_description() -> Dict[str, str]:
    """Model, vendor, ISA extensions and core count of this CPU."""
    info = _cpuinfo()
    flags = set(info.get("flags", "").split())
    isa = [name for flag, name in _ISA_FLAGS if flag in flags]
    if "AVX-512" in isa:  # AVX2 and FMA go without saying
        isa = [name for name in isa if name not in ("AVX2", "FMA")]
    return {
        "cpu": info.get("model name") or platform.processor() or platform.machine(),
        # Under a hypervisor the model name is often generic ("Intel(R) Xeon(R) Processor"):
        # family and model tell two such machines apart.
        "vendor": _vendor_and_model(info),
        "isa": " + ".join(isa) if isa else platform.machine(),
        "cores": str(os.cpu_count()),
    }


def fma_peak_gflops(threads: Optional[int] = None) -> Optional[float]:
    """Measured float32 FMA peak on `threads` threads (default torch's), or
    None where the extension is not built or the CPU has no AVX2/AVX-512."""
    try:
        from rnnkernels import _ext

        if _ext.load_error() is not None:
            return None
        return float(torch.ops.rnnkernels.fma_peak_gflops(threads or torch.get_num_threads()))
    except RuntimeError:
        return None


def gemm_engine() -> str:
    """The CPU GEMM engine of the cpu backend and how it was chosen."""
    from rnnkernels import _ext

    if _ext.load_error() is not None:
        return "none (extension not built)"
    return torch.ops.rnnkernels.cpu_gemm_engine()


def describe(device=None) -> Dict[str, str]:
    """Everything a results table records about where it was measured."""
    device = torch.device(device or "cpu")
    info = {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}
    info.update(cpu_description())
    info["threads"] = str(torch.get_num_threads())
    peak = fma_peak_gflops()
    info["fma_peak_gflops"] = f"{peak:.0f}" if peak else "unknown"
    info["gemm_engine"] = gemm_engine()
    info["python"] = platform.python_version()
    info["torch"] = torch.__version__
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = str(torch.version.cuda)
    try:
        import triton

        info["triton"] = triton.__version__
    except ImportError:
        pass
    return info


def one_line(info: Dict[str, str]) -> str:
    """The machine in one line, for the head of a table."""
    line = (f"{info['cpu']} ({info['vendor']}, {info['isa']}), {info['cores']} cores, {info['threads']} threads, "
            f"measured FMA peak {info['fma_peak_gflops']} GFLOP/s; torch {info['torch']}; "
            f"CPU GEMM engine: {info['gemm_engine']}")
    if "gpu" in info:
        line += f"; GPU {info['gpu']} (CUDA {info['cuda']})"
    return line
