"""Triton kernels, installed as rnnkernels.triton_kernels (a top-level name would clash with the package of that name that ships with Triton)."""
