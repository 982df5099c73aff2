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
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from rnnkernels.triton_kernels import attention as att

def compile_for_sm90(kernel, dtype, constexprs, fp64=()):
    signature = {}
    for name in kernel.arg_names:
        if name in constexprs:
            signature[name] = "constexpr"
        elif name == "LENGTHS":
            signature[name] = "*i64"
        elif name in fp64:
            signature[name] = "*fp64"
        elif name in ("LSE",):
            signature[name] = "*fp32"
        elif name in ("Tq", "Tk", "D", "DV", "H"):
            signature[name] = "i32"
        elif name in ("scale_log2", "scale"):
            signature[name] = "fp32"
        else:
            signature[name] = "*" + dtype
    compiled = triton.compile(ASTSource(kernel, signature, constexprs), target=GPUTarget("cuda", 90, 32),
                              options={"num_warps": 4})
    assert compiled.asm["cubin"]

for dtype in ("bf16", "fp32"):
    c = dict(HAS_LENGTHS=True, HAS_DW=True, CAUSAL=True, BLOCK_M=64, BLOCK_N=64, BLOCK_D=64, BLOCK_DV=64)
    compile_for_sm90(att._backward_rows_kernel, dtype, c, fp64=("LSE", "DELTA"))
    compile_for_sm90(att._backward_dkdv_kernel, dtype, c, fp64=("LSE", "DELTA"))
    compile_for_sm90(att._backward_dq_kernel, dtype, c, fp64=("LSE", "DELTA"))
    print(dtype, "compiled")
print("all compiled")
"""


def test_backward_kernels_compile_for_sm90():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    result = subprocess.run([sys.executable, "-c", _COMPILE_BACKWARD_FOR_SM90], env=env, capture_output=True,
                            text=True, timeout=300)
    assert "all compiled" in result.stdout, result.stdout + result.stderr[-3000:]
