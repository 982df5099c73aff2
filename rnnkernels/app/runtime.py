"""Device, dtype, backend, threads and (under torchrun) the process group of one command."""
import contextlib
import os
from typing import Optional

import torch
import torch.distributed as dist

from .. import backends
from .errors import UserError

DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16, "float16": torch.float16}


def launched_by_torchrun() -> bool:
    """Whether this process is a rank that torchrun (torch.distributed.run) started."""
    return "LOCAL_RANK" in os.environ and "WORLD_SIZE" in os.environ


class Runtime:
    """Device, dtype, backend and (under torchrun) the process group of this run."""

    def __init__(self, device: str, backend: str, dtype: str, allow_distributed: bool, threads: Optional[int] = None):
        self._threads_before = torch.get_num_threads()  # given back by close(): a command run in process leaves none
        try:
            self._setup(device, backend, dtype, allow_distributed, threads)
        except BaseException:
            self.close()
            raise

    def _setup(self, device: str, backend: str, dtype: str, allow_distributed: bool, threads: Optional[int]):
        self.distributed = False
        if threads is not None:
            if threads < 1:
                raise UserError(f"--threads must be >= 1, got {threads}")
            torch.set_num_threads(threads)
        self.world, self.rank, self.local_rank = 1, 0, 0
        self.distributed = allow_distributed and launched_by_torchrun()
        if self.distributed:
            self.world, self.rank = int(os.environ["WORLD_SIZE"]), int(os.environ["RANK"])
            self.local_rank = int(os.environ["LOCAL_RANK"])
        self.device = self._device(device)
        self.dtype = DTYPES[dtype]
        # float64 converts the model; bfloat16/float16 run it under autocast with float32 weights.
        self.autocast_dtype = self.dtype if self.dtype in (torch.bfloat16, torch.float16) else None
        self.param_dtype = torch.float64 if self.dtype == torch.float64 else torch.float32
        self.backend = backend
        if backend != "auto":
            for op in ("rnn", "attention"):
                reason = backends.unavailable_reason(backend, self.device, op, self.param_dtype)
                if reason is not None:
                    raise UserError(f"--backend {backend}: {reason}")
        if self.distributed:
            if self.device.type == "cpu" and threads is None:  # share the cores between the local processes
                local_world = int(os.environ.get("LOCAL_WORLD_SIZE", self.world))
                torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_world))
            dist.init_process_group("nccl" if self.device.type == "cuda" else "gloo")

    def _device(self, name: str) -> torch.device:
        if name == "auto":
            name = "cuda" if torch.cuda.is_available() else "cpu"
        try:
            device = torch.device(name)
        except (RuntimeError, ValueError):
            raise UserError(f"--device {name!r} is not a device (expected cpu, cuda or cuda:N)") from None
        if device.type not in ("cpu", "cuda"):
            raise UserError(f"--device {name!r}: only cpu and cuda are supported")
        if device.type == "cuda":
            if not torch.cuda.is_available():
                raise UserError(f"--device {name}: no CUDA device is available (this torch: {torch.__version__})")
            if self.distributed:
                device = torch.device("cuda", self.local_rank)
            if device.index is not None and device.index >= torch.cuda.device_count():
                raise UserError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s)")
            torch.cuda.set_device(device)
        return device

    @property
    def main(self) -> bool:
        return self.rank == 0

    def backend_for(self, op: str) -> str:
        """The backend that runs `op` ("rnn" or "attention") in this run: the one asked for, or auto's pick."""
        try:
            return backends.resolve(self.backend, self.device, op, self.param_dtype)[0]
        except backends.BackendUnavailableError as error:
            raise UserError(str(error)) from None

    def describe(self) -> str:
        """One line for the start of a run: device, processes, threads, dtype and the backends chosen."""
        device = str(self.device)
        if self.device.type == "cuda":
            device += f" ({torch.cuda.get_device_name(self.device)})"
        chosen = f"rnn {self.backend_for('rnn')}, attention {self.backend_for('attention')}"
        processes = f"{self.world} processes" if self.world > 1 else "1 process"
        threads = torch.get_num_threads()
        return (f"device {device}, {processes}, {threads} thread{'s' if threads > 1 else ''} per process | "
                f"{str(self.dtype).replace('torch.', '')} | backend {self.backend} ({chosen})")

    def autocast(self):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def use_backend(self):
        return backends.use_backend(self.backend)

    def close(self):
        """Leaves the process group and gives torch its thread count back."""
        if getattr(self, "distributed", False) and dist.is_initialized():
            dist.destroy_process_group()
        if torch.get_num_threads() != self._threads_before:
            torch.set_num_threads(self._threads_before)

    def __enter__(self) -> "Runtime":
        return self

    def __exit__(self, *exc) -> bool:
        self.close()
        return False
