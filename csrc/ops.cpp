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
#include "cpu/panel_gemm.h"
#include "cpu/vector_rows.h"
#include "cpu/rows_times_weight.h"

TORCH_LIBRARY(rnnkernels, m) {
  // Which optional parts this build has: lets Python tell "not built" apart
  // from "not supported on this device".
  m.def("build_info() -> str");
  // The CPU GEMM engine (csrc/cpu/gemm.h): what runs and how it was chosen;
  // set_cpu_gemm_engine("auto" | "onednn" | "blas" | "panels") switches it for the process.
  m.def("cpu_gemm_engine() -> str");
  m.def("set_cpu_gemm_engine(str name) -> ()");
  // a (m, k) w (n, k)^T by csrc/cpu/rows_times_weight.h, the kernel of a
  // single step's products, for its tests and benchmarks/rows_times_weight.py;
  // isa "best" | "avx2" | "avx512" (tests run each width the CPU has).
  m.def("cpu_rows_times_weight(Tensor a, Tensor w, str isa=\"best\") -> Tensor");
  // c + a (m, k) w (n, k)^T, or with transpose=False c + a w (k, n) (c None:
  // no c), by the panels engine's tiles on isa "avx2" | "avx512"
  // (csrc/cpu/panel_gemm.h), for its tests.
  m.def("cpu_panel_matmul(Tensor a, Tensor w, str isa, Tensor? c=None, bool transpose=True) -> Tensor");
  // Whether the LSTM and GRU forward rows run csrc/cpu/vector_rows.h (AVX-512 CPUs);
  // set_cpu_vector_rows(False) runs the scalar-vectorised rows instead (tests,
  // benchmarks; RNNKERNELS_CPU_VECTOR_ROWS=0 sets it at start).
  m.def("cpu_vector_rows() -> bool");
  m.def("set_cpu_vector_rows(bool on) -> ()");
}

static std::string build_info() {
  std::string parts = "cpu";
#ifdef RNNKERNELS_WITH_CUDA
  parts += ",cuda";
#endif
  if (rnnkernels::gemm::onednn_built()) parts += ",onednn";
  return parts;
}

// The test ops' `isa` argument: "avx2", "avx512", or "best" where the op takes it.
static rnnkernels::cpu::VectorIsa vector_isa_named(c10::string_view name, const char* op, bool takes_best) {
  using rnnkernels::cpu::VectorIsa;
  if (name == "avx2") return VectorIsa::Avx2;
  if (name == "avx512") return VectorIsa::Avx512;
  TORCH_CHECK(takes_best && name == "best", "rnnkernels.", op, ": isa must be ", takes_best ? "'best', " : "",
              "'avx2' or 'avx512', got '", name, "'");
  return VectorIsa::Best;
}

static at::Tensor cpu_rows_times_weight(const at::Tensor& a, const at::Tensor& w, c10::string_view isa_name) {
  const auto isa = vector_isa_named(isa_name, "cpu_rows_times_weight", /*takes_best=*/true);
  TORCH_CHECK(a.dim() == 2 && w.dim() == 2 && a.size(1) == w.size(1),
              "rnnkernels.cpu_rows_times_weight: expected a (m, k) and w (n, k), got ", a.sizes(), " and ", w.sizes());
  TORCH_CHECK(a.scalar_type() == at::kFloat && w.scalar_type() == at::kFloat && a.is_cpu() && w.is_cpu(),
              "rnnkernels.cpu_rows_times_weight: expected float32 CPU tensors");
  const at::Tensor a_rows = a.contiguous(), w_rows = w.contiguous();
  at::Tensor out = at::empty({a.size(0), w.size(0)}, a.options());
  TORCH_CHECK(rnnkernels::cpu::rows_times_weight(a.size(0), w.size(0), a.size(1), a_rows.data_ptr<float>(),
                                                 a.size(1), w_rows.data_ptr<float>(), w.size(1),
                                                 out.data_ptr<float>(), w.size(0), /*accumulate=*/false, isa),
              "rnnkernels.cpu_rows_times_weight: does not run here (needs AVX-512 or AVX2 + FMA, or the isa asked "
              "for, k >= 1 and 1 <= m <= 32, or m <= 64 with k >= 512), got m = ", a.size(0), ", k = ", a.size(1),
              ", isa ", isa_name);
  return out;
}

static at::Tensor cpu_panel_matmul(const at::Tensor& a, const at::Tensor& w, c10::string_view isa_name,
                                   const c10::optional<at::Tensor>& c, bool transpose) {
  const auto isa = vector_isa_named(isa_name, "cpu_panel_matmul", /*takes_best=*/false);
  TORCH_CHECK(rnnkernels::cpu::panel_gemm_runs(isa), "rnnkernels.cpu_panel_matmul: ", isa_name,
              " tiles do not run on this CPU or build");
  const int64_t k = a.dim() == 2 ? a.size(1) : 0, n = w.dim() == 2 ? w.size(transpose ? 0 : 1) : 0;
  TORCH_CHECK(a.dim() == 2 && w.dim() == 2 && w.size(transpose ? 1 : 0) == k && k > 0,
              "rnnkernels.cpu_panel_matmul: expected a (m, k) and w ", transpose ? "(n, k)" : "(k, n)",
              ", k >= 1, got ", a.sizes(), " and ", w.sizes());
  TORCH_CHECK(a.scalar_type() == at::kFloat && w.scalar_type() == at::kFloat && a.is_cpu() && w.is_cpu(),
              "rnnkernels.cpu_panel_matmul: expected float32 CPU tensors");
  const at::Tensor a_rows = a.contiguous(), w_rows = w.contiguous();
  at::Tensor out = c.has_value() ? c->contiguous().clone() : at::empty({a.size(0), n}, a.options());
  TORCH_CHECK(out.sizes() == at::IntArrayRef({a.size(0), n}) && out.scalar_type() == at::kFloat,
              "rnnkernels.cpu_panel_matmul: c must be float32 (m, n), got ", out.sizes());
  const rnnkernels::cpu::PanelMatrix panels(w_rows.data_ptr<float>(), w.size(1), transpose, k, n, isa);
  panels.multiply(a.size(0), a_rows.data_ptr<float>(), k, out.data_ptr<float>(), n, c.has_value());
  return out;
}

static void set_cpu_gemm_engine(c10::string_view name) { rnnkernels::gemm::set_gemm_engine(std::string(name)); }

TORCH_LIBRARY_IMPL(rnnkernels, CompositeExplicitAutograd, m) {
  m.impl("build_info", &build_info);
  m.impl("cpu_gemm_engine", &rnnkernels::gemm::gemm_engine_info);
  m.impl("set_cpu_gemm_engine", &set_cpu_gemm_engine);
  m.impl("cpu_vector_rows", [] { return rnnkernels::cpu::vector_rows_run(); });
  m.impl("set_cpu_vector_rows", [](bool on) { rnnkernels::cpu::set_vector_rows(on); });
}

TORCH_LIBRARY_IMPL(rnnkernels, CPU, m) {
  m.impl("cpu_rows_times_weight", &cpu_rows_times_weight);
  m.impl("cpu_panel_matmul", &cpu_panel_matmul);
}

// The .so is imported as a Python module (rnnkernels._C), which loads the op
// registrations above; it exposes no Python functions of its own.
PYBIND11_MODULE(TORCH_EXTENSION_NAME, module) {
  module.doc() = "rnnkernels compiled kernels; use them through torch.ops.rnnkernels";
}
