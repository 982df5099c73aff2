"""Put this folder first on PYTHONPATH to run as if Triton were not installed, in this process and in
every Python process it starts (`make test-without-triton`; tests/test_packaging.py):
`import triton` raises ModuleNotFoundError and importlib.util.find_spec("triton") is None."""
import sys

sys.modules["triton"] = None
