"""Builds rnnkernels._C from csrc/.

CPU sources (csrc/*.cpp, csrc/cpu/*.cpp) are always compiled. CUDA sources
(csrc/cuda/*.cu, csrc/cuda/*.cpp) are added only when torch is a CUDA build and
a CUDA toolkit is found; set RNNKERNELS_NO_CUDA=1 to skip them. Every new source
file dropped into those folders is picked up without editing this file.

oneDNN, the CPU GEMM engine that is fast on every x86 vendor (csrc/cpu/gemm.h),
is linked when its headers and library are found: in RNNKERNELS_ONEDNN_ROOT,
else in this Python environment's prefix, where the pip wheels
onednn-cpu-gomp and onednn-devel-cpu-gomp put them (`make install` installs
them). Without it (or with RNNKERNELS_NO_ONEDNN=1) the build uses the BLAS
inside libtorch_cpu alone.
"""
import glob
import os
import sys

from setuptools import setup
from torch.utils import cpp_extension

HERE = os.path.dirname(os.path.abspath(__file__))


def sources(pattern):
    return sorted(os.path.relpath(p, HERE) for p in glob.glob(os.path.join(HERE, pattern)))


def cuda_wanted():
    import torch

    if os.environ.get("RNNKERNELS_NO_CUDA") == "1":
        return False
    return torch.version.cuda is not None and cpp_extension.CUDA_HOME is not None


def onednn_root():
    """The prefix holding include/dnnl.hpp and lib/libdnnl.so.3, or None."""
    if os.environ.get("RNNKERNELS_NO_ONEDNN") == "1":
        return None
    roots = [os.environ.get("RNNKERNELS_ONEDNN_ROOT"), sys.prefix, sys.base_prefix]
    for root in filter(None, roots):
        lib = os.path.join(root, "lib")
        if os.path.exists(os.path.join(root, "include", "dnnl.hpp")) and (
                os.path.exists(os.path.join(lib, "libdnnl.so.3")) or os.path.exists(os.path.join(lib, "libdnnl.so"))):
            return root
    return None


cpu_sources = sources("csrc/*.cpp") + sources("csrc/cpu/*.cpp")
cxx_flags = ["-O3", "-std=c++17", "-fopenmp", "-DRNNKERNELS_CPU"]
extra_link = ["-fopenmp"]
include_dirs = [os.path.join(HERE, "csrc")]
libraries, library_dirs = [], []

ONEDNN_ROOT = onednn_root()
if ONEDNN_ROOT is not None:
    cxx_flags.append("-DRNNKERNELS_WITH_ONEDNN")
    include_dirs.append(os.path.join(ONEDNN_ROOT, "include"))
    # dnnl first in the link: libtorch_cpu also exports a few std::future
    # symbols over oneDNN's cache types, and oneDNN must bind to its own.
    libraries.append("dnnl")
    library_dirs.append(os.path.join(ONEDNN_ROOT, "lib"))
    extra_link.append("-Wl,-rpath," + os.path.join(ONEDNN_ROOT, "lib"))
print(f"rnnkernels: oneDNN {'from ' + ONEDNN_ROOT if ONEDNN_ROOT else 'not found: CPU GEMMs on BLAS only'}")

if cuda_wanted():
    extension = cpp_extension.CUDAExtension(
        "rnnkernels._C",
        cpu_sources + sources("csrc/cuda/*.cpp") + sources("csrc/cuda/*.cu"),
        include_dirs=include_dirs,
        libraries=libraries,
        library_dirs=library_dirs,
        extra_compile_args={
            "cxx": cxx_flags + ["-DRNNKERNELS_WITH_CUDA"],
            "nvcc": ["-O3", "-std=c++17", "--use_fast_math", "-DRNNKERNELS_WITH_CUDA"],
        },
        extra_link_args=extra_link,
    )
else:
    extension = cpp_extension.CppExtension(
        "rnnkernels._C",
        cpu_sources,
        include_dirs=include_dirs,
        libraries=libraries,
        library_dirs=library_dirs,
        extra_compile_args={"cxx": cxx_flags},
        extra_link_args=extra_link,
    )


def package_version():
    """rnnkernels/_version.py is the one place the version is written; read without importing the package."""
    with open(os.path.join(HERE, "rnnkernels", "_version.py")) as f:
        return next(line.split('"')[1] for line in f if line.startswith("__version__"))


def long_description():
    with open(os.path.join(HERE, "README.md"), encoding="utf-8") as f:
        return f.read()


# torch is the one hard dependency, and only as a floor: with any torch >= 2.4
# installed (CPU or CUDA build) pip keeps it; `make install` installs with
# --no-deps anyway. Triton serves only the GPU backend and the interpreter
# tests, so it is an extra: the package imports and runs without it.
EXTRAS = {
    "triton": ["triton>=3.2"],
    "plot": ["matplotlib"],
    "bleu": ["sacrebleu>=2.0"],
    "tensorboard": ["tensorboard"],
}
EXTRAS["dev"] = sorted(set(EXTRAS["triton"] + EXTRAS["plot"] + ["pytest", "hypothesis", "expecttest", "ninja", "pybind11"]))
EXTRAS["all"] = sorted({req for name, reqs in EXTRAS.items() if name != "dev" for req in reqs})

setup(
    name="rnnkernels",
    version=package_version(),
    description="Fast fused LSTM / GRU / RNN and attention kernels for PyTorch",
    long_description=long_description(),
    long_description_content_type="text/markdown",
    license="MIT",
    license_files=["LICENSE"],
    install_requires=["torch>=2.4", "tqdm"],
    extras_require=EXTRAS,
    packages=[
        "rnnkernels",
        "rnnkernels.app",
        "rnnkernels.backends",
        "rnnkernels.nn",
        "rnnkernels.models",
        "rnnkernels.data",
        "rnnkernels.triton_kernels",
        "rnnkernels.benchmarks",
    ],
    package_dir={
        "rnnkernels": "rnnkernels",
        "rnnkernels.triton_kernels": "triton_kernels",
        "rnnkernels.benchmarks": "benchmarks",
    },
    ext_modules=[extension],
    cmdclass={"build_ext": cpp_extension.BuildExtension.with_options(use_ninja=True)},
    entry_points={"console_scripts": ["rnnkernels=rnnkernels.cli:main"]},
    python_requires=">=3.9",
    classifiers=[
        "Programming Language :: Python :: 3",
        "Programming Language :: C++",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
        "Operating System :: POSIX :: Linux",
    ],
)
