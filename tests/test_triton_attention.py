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
