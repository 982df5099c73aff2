"""What the Triton test files share: importing the kernels under Triton's
interpreter, and Triton's real compiler for an H100 (sm_90, no GPU needed)
in a child process started without it."""
import contextlib
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


@contextlib.contextmanager
def interpreter_on():
    """TRITON_INTERPRET=1 while the block runs (Triton reads it when a kernel
    module is imported), then as it was."""
    previous = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1"
    try:
        yield
    finally:
        if previous is None:
            del os.environ["TRITON_INTERPRET"]
        else:
            os.environ["TRITON_INTERPRET"] = previous


def compile_for_sm90(kernel, constexprs, type_of, num_warps=4):
    """kernel through TTIR -> TTGIR -> LLVM -> PTX -> cubin for sm_90: every
    argument not in constexprs typed by type_of(name) ("*fp32", "i32", ...)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    signature = {name: "constexpr" if name in constexprs else type_of(name) for name in kernel.arg_names}
    compiled = triton.compile(ASTSource(kernel, signature, constexprs), target=GPUTarget("cuda", 90, 32),
                              options={"num_warps": num_warps})
    assert compiled.asm["cubin"]
    return compiled


def rnn_argument_types(dtype, fp32_buffers):
    """type_of for the recurrent kernels: lengths int32, fp32_buffers float32,
    the other pointers `dtype`, everything else int32."""
    def type_of(name):
        if name == "lengths_ptr":
            return "*i32"
        if name.endswith("_ptr"):
            return "*fp32" if name in fp32_buffers else "*" + dtype
        return "i32"
    return type_of


def run_without_interpreter(script, done, timeout=300):
    """Runs `script` in a fresh Python without TRITON_INTERPRET (this module
    importable there) and checks that it printed `done`."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [HERE, env.get("PYTHONPATH")]))
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True,
                            timeout=timeout)
    assert done in result.stdout, result.stdout + result.stderr[-3000:]
    return result
