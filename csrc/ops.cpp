// rnnkernels._C: the torch op library "rnnkernels".
//
// This file owns TORCH_LIBRARY(rnnkernels, m); each kernel family declares its
// own op schemas with TORCH_LIBRARY_FRAGMENT(rnnkernels, m) in its own file
// (csrc/rnn_ops.cpp, csrc/attention_ops.cpp, ...) and registers per-device
// implementations with TORCH_LIBRARY_IMPL(rnnkernels, CPU | CUDA, m).
// Autograd formulas and fake (meta) kernels are registered from Python
// (rnnkernels/ops.py), so torch.compile traces every op.
#include <torch/extension.h>

#include "cpu/gemm.h"

TORCH_LIBRARY(rnnkernels, m) {
  // Which optional parts this build has: lets Python tell "not built" apart
  // from "not supported on this device".
  m.def("build_info() -> str");
  // The CPU GEMM engine (csrc/cpu/gemm.h): what runs and how it was chosen;
  // set_cpu_gemm_engine("auto" | "onednn" | "blas") switches it for the process.
  m.def("cpu_gemm_engine() -> str");
  m.def("set_cpu_gemm_engine(str name) -> ()");
}

static std::string build_info() {
  std::string parts = "cpu";
#ifdef RNNKERNELS_WITH_CUDA
  parts += ",cuda";
#endif
  if (rnnkernels::gemm::onednn_built()) parts += ",onednn";
  return parts;
}

static void set_cpu_gemm_engine(c10::string_view name) { rnnkernels::gemm::set_gemm_engine(std::string(name)); }

TORCH_LIBRARY_IMPL(rnnkernels, CompositeExplicitAutograd, m) {
  m.impl("build_info", &build_info);
  m.impl("cpu_gemm_engine", &rnnkernels::gemm::gemm_engine_info);
  m.impl("set_cpu_gemm_engine", &set_cpu_gemm_engine);
}

// The .so is imported as a Python module (rnnkernels._C), which loads the op
// registrations above; it exposes no Python functions of its own.
PYBIND11_MODULE(TORCH_EXTENSION_NAME, module) {
  module.doc() = "rnnkernels compiled kernels; use them through torch.ops.rnnkernels";
}
