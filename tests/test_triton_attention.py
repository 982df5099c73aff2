"""Triton attention kernels: the cases live in tests/triton_attention_cases.py.

With a GPU, or when this process was started with TRITON_INTERPRET=1, they run
here. Otherwise one test runs them in a child process started with
TRITON_INTERPRET=1 (on CPU tensors), since the interpreter cannot be switched
on once triton has been imported, and any earlier test may have imported it.
"""
import os
import subprocess
import sys

import pytest
import torch

pytest.importorskip("triton")

from triton_helpers import run_without_interpreter  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))

if torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1":
    sys.path.insert(0, HERE)
    from triton_attention_cases import *  # noqa: F401,F403,E402
else:
    def test_triton_attention_under_the_interpreter():
        child = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", os.path.join(HERE, "triton_attention_cases.py")],
            env={**os.environ, "TRITON_INTERPRET": "1"}, capture_output=True, text=True, timeout=900)
        print(child.stdout[-3000:])
        assert child.returncode == 0, child.stdout[-8000:] + child.stderr[-3000:]
        assert " passed" in child.stdout and " failed" not in child.stdout


# The backward kernels in Triton's real compiler for an H100 (no GPU needed), in a
# process without TRITON_INTERPRET: lse and delta are float64 (see
# _backward_rows_kernel), which the interpreter does not type-check.
_COMPILE_BACKWARD_FOR_SM90 = """
from rnnkernels.triton_kernels import attention as att
from triton_helpers import compile_for_sm90 as compile_kernel

def compile_for_sm90(kernel, dtype, constexprs, fp64=()):
    def type_of(name):
        if name == "LENGTHS":
            return "*i64"
        if name in fp64:
            return "*fp64"
        if name == "LSE":
            return "*fp32"
        if name in ("Tq", "Tk", "D", "DV", "H"):
            return "i32"
        if name in ("scale_log2", "scale"):
            return "fp32"
        return "*" + dtype
    compile_kernel(kernel, constexprs, type_of)

for dtype in ("bf16", "fp32"):
    c = dict(HAS_LENGTHS=True, HAS_DW=True, CAUSAL=True, BLOCK_M=64, BLOCK_N=64, BLOCK_D=64, BLOCK_DV=64)
    compile_for_sm90(att._backward_rows_kernel, dtype, c, fp64=("LSE", "DELTA"))
    compile_for_sm90(att._backward_dkdv_kernel, dtype, c, fp64=("LSE", "DELTA"))
    compile_for_sm90(att._backward_dq_kernel, dtype, c, fp64=("LSE", "DELTA"))
    print(dtype, "compiled")
print("all compiled")
"""


def test_backward_kernels_compile_for_sm90():
    run_without_interpreter(_COMPILE_BACKWARD_FOR_SM90, done="all compiled")
