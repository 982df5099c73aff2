// The CPU GEMM engines of the recurrent loop and how one is chosen (gemm.h).
#include "cpu/gemm.h"

#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <map>
#include <mutex>
#include <tuple>
#include <sstream>

#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Parallel.h>
#include <ATen/Dispatch.h>

#include "cpu/blas.h"
#include "cpu/onednn.h"
#include "cpu/panel_gemm.h"
#include "cpu/rows_times_weight.h"

namespace rnnkernels {
namespace gemm {
namespace {

// Below this many multiply-adds per step (rows x weight size) MKL's packed
// copy does not pay for itself, and a plain sgemm on a (k, n) copy runs
// (measured on the 2-core Xeon: B = 1, H = 128 is below; B = 8, H = 256 is not).
constexpr int64_t kPackMacs = 1 << 18;

// A step weight used fewer times than this is multiplied as stored (see StepWeight).
constexpr int64_t kMinUsesToPrepare = 4;

struct Choice {
  bool made = false;
  GemmEngine float32 = GemmEngine::Blas;  // the engine of float32 step products
  // The engine (oneDNN or BLAS) of float32 products over all steps (matmul
  // below) when pinned; otherwise (`per_shape`) each shape's faster one,
  // timed at its first call: on the AMD EPYC Zen 2 oneDNN 3.2 ran input
  // projections 1.1-1.5x faster than MKL but weight gradients at (1024,
  // 2048, 256) 0.7x as fast, and one global choice lost either way.
  GemmEngine float32_matmul = GemmEngine::Blas;
  bool per_shape = false;
  bool pinned_blas = false;  // "blas" asked for: no oneDNN at all
  std::string how;
};

std::mutex choice_mutex;
Choice choice;

bool built_onednn() {
#ifdef RNNKERNELS_WITH_ONEDNN
  return true;
#else
  return false;
#endif
}

// Whether products of this dtype run on oneDNN under the current choice:
// float32 as measured (`engine`: the step or the all-steps one), bfloat16
// whenever it is built (BLAS has no bfloat16 GEMM here; ATen's would repack
// the weight every step).
bool onednn_runs(at::ScalarType dtype, const Choice& c, GemmEngine engine) {
#ifdef RNNKERNELS_WITH_ONEDNN
  if (!onednn::takes(dtype) || c.pinned_blas) return false;
  return dtype == at::kBFloat16 || engine == GemmEngine::OneDnn;
#else
  (void)dtype;
  (void)c;
  (void)engine;
  return false;
#endif
}

const Choice& current_choice();

}  // namespace

struct StepWeight::Prepared {
  std::unique_ptr<blas::PackedMatrix> packed;
  std::unique_ptr<cpu::PanelMatrix> panels;
#ifdef RNNKERNELS_WITH_ONEDNN
  std::unique_ptr<onednn::RepeatedMatmul> onednn;
#endif
};

namespace {

// StepWeight's set-up on an explicit choice (the measurement below runs both).
std::unique_ptr<StepWeight::Prepared> prepare(const at::Tensor& stored, bool transpose, int64_t max_m,
                                              bool accumulate, const Choice& c) {
  if (!stored.is_cpu() || !stored.is_contiguous() || max_m <= 0 || stored.numel() == 0) return nullptr;
  auto prepared = std::make_unique<StepWeight::Prepared>();
  if (stored.scalar_type() == at::kFloat && c.float32 == GemmEngine::Panels && cpu::panel_gemm_runs()) {
    const int64_t k = transpose ? stored.size(1) : stored.size(0), n = transpose ? stored.size(0) : stored.size(1);
    prepared->panels =
        std::make_unique<cpu::PanelMatrix>(stored.data_ptr<float>(), stored.size(1), transpose, k, n);
    return prepared;
  }
#ifdef RNNKERNELS_WITH_ONEDNN
  if (onednn_runs(stored.scalar_type(), c, c.float32)) {
    try {
      prepared->onednn = std::make_unique<onednn::RepeatedMatmul>(stored, transpose, max_m, accumulate);
      return prepared;
    } catch (const c10::Error&) {  // no oneDNN primitive for these sizes: BLAS or ATen below
    }
  }
#endif
  (void)accumulate;
  if (stored.scalar_type() == at::kFloat && max_m * stored.numel() > kPackMacs) {
    const int64_t k = transpose ? stored.size(1) : stored.size(0), n = transpose ? stored.size(0) : stored.size(1);
    prepared->packed = std::make_unique<blas::PackedMatrix>(stored.data_ptr<float>(), transpose, k, n, max_m);
    if (prepared->packed->ok()) return prepared;
  }
  return nullptr;
}

// The BLAS leading dimension of a row-major 2-D tensor, or -1 when its
// layout is not one (size-1 dims may carry any stride).
int64_t leading_dim(const at::Tensor& t) {
  if (t.size(1) > 1 && t.stride(1) != 1) return -1;
  if (t.size(0) == 1) return std::max<int64_t>(t.size(1), 1);
  return t.stride(0) >= t.size(1) ? t.stride(0) : -1;
}

// out = a b (or out += a b) for a few rows of a, b (k, n) being the
// transposed view of a row-major float32 W (n, k) (a single step's product on
// the weight as stored): cpu::rows_times_weight, which reads W as it is,
// where it runs.
bool few_rows_times_transposed(const at::Tensor& out, const at::Tensor& a, const at::Tensor& b, bool accumulate) {
  if (!out.is_cpu() || !cpu::rows_times_weight_takes(a.size(0), a.size(1))) return false;
  for (const at::Tensor* t : {&out, &a, &b}) {
    if (t->scalar_type() != at::kFloat) return false;
  }
  const at::Tensor w = b.t();
  const int64_t lda = leading_dim(a), ldw = leading_dim(w), ldc = leading_dim(out);
  if (lda <= 0 || ldw <= 0 || ldc <= 0) return false;
  return cpu::rows_times_weight(a.size(0), w.size(0), a.size(1), a.data_ptr<float>(), lda, w.data_ptr<float>(), ldw,
                                out.data_ptr<float>(), ldc, accumulate);
}

void multiply_prepared(const StepWeight::Prepared& w, const at::Tensor& out, const at::Tensor& a, bool accumulate) {
#ifdef RNNKERNELS_WITH_ONEDNN
  if (w.onednn) return w.onednn->multiply(out, a);
#endif
  const int64_t lda = leading_dim(a), ldc = leading_dim(out);
  TORCH_INTERNAL_ASSERT(lda > 0 && ldc > 0, "rnnkernels: step GEMM operands must be row-major");
  if (w.panels) return w.panels->multiply(a.size(0), a.data_ptr<float>(), lda, out.data_ptr<float>(), ldc, accumulate);
  w.packed->multiply(a.size(0), a.data_ptr<float>(), lda, accumulate ? 1.0f : 0.0f, out.data_ptr<float>(), ldc);
}

// ---- choosing the float32 engine by measurement
//
// Both engines multiply step-shaped products, (m, k) x (k, n) with the weight
// prepared as the loop prepares it, interleaved, best of a few rounds; the
// faster (geometric mean over the shapes) runs every float32 product of the
// process. About 25 ms (oneDNN JIT included), once per process.

double seconds_now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

const char* engine_name(GemmEngine e) {
  return e == GemmEngine::OneDnn ? "onednn" : e == GemmEngine::Panels ? "panels" : "blas";
}

struct Measured {
  // GFLOP/s of each engine (geometric mean over the shapes); 0: not in this build or CPU
  double gflops[3] = {0, 0, 0};  // indexed by GemmEngine
};

Measured measure_float32() {
  struct Shape {
    int64_t m, k, n, repeats;
  };
  // LSTM steps, (B, H) x (H, 4H), from the suite's smallest to a large one:
  // the small ones carry each engine's per-call cost, which decides on the
  // Xeon (family 6 model 167: oneDNN's matmul ties MKL's packed GEMM at B =
  // 16 and 64 but lost 20% of the whole forward at B = 1, H = 128 and 12% at
  // B = 20, H = 200), while on the EPYC (Zen 5) oneDNN was 3.5-5x faster at
  // every size, and on the EPYC Zen 2 the panels 0.98-2.6x as fast as oneDNN.
  const Shape shapes[] = {{1, 128, 512, 64}, {20, 200, 800, 16}, {64, 512, 2048, 2}};
  constexpr int kShapes = sizeof(shapes) / sizeof(shapes[0]);
  const GemmEngine engines[] = {GemmEngine::OneDnn, GemmEngine::Blas, GemmEngine::Panels};
  Choice as[3];
  bool available[3];
  for (int e = 0; e < 3; ++e) {
    as[e].float32 = engines[e];
    available[e] = engines[e] == GemmEngine::Blas ||
                   (engines[e] == GemmEngine::OneDnn ? built_onednn() : cpu::panel_gemm_runs());
  }
  double log_gflops[3] = {0, 0, 0};
  at::AutoDispatchBelowAutograd no_autograd;
  // A generator of its own: drawing from torch's default one would change
  // the caller's random stream (zoneout masks drawn after the first call).
  at::Generator generator = at::detail::createCPUGenerator(/*seed_in=*/0);
  for (const Shape& s : shapes) {
    const auto opts = at::TensorOptions().dtype(at::kFloat);
    const at::Tensor a = at::rand({s.m, s.k}, generator, opts), w = at::rand({s.n, s.k}, generator, opts);
    const at::Tensor out = at::empty({s.m, s.n}, opts);
    const at::Tensor w_plain = w.t().contiguous();
    std::unique_ptr<StepWeight::Prepared> prepared[3];
    for (int e = 0; e < 3; ++e) {
      if (available[e]) prepared[e] = prepare(w, /*transpose=*/true, s.m, false, as[e]);
    }
    auto run = [&](int e) {
      for (int64_t i = 0; i < s.repeats; ++i) {
        if (prepared[e]) multiply_prepared(*prepared[e], out, a, false);
        else at::mm_out(const_cast<at::Tensor&>(out), a, w_plain);
      }
    };
    double best[3] = {1e30, 1e30, 1e30};
    for (int e = 0; e < 3; ++e) {
      if (available[e]) run(e);  // first calls: JIT and page faults
    }
    for (int round = 0; round < 4; ++round) {  // interleaved, so a slow spell of the machine hits all
      for (int e = 0; e < 3; ++e) {
        if (!available[e]) continue;
        const double t0 = seconds_now();
        run(e);
        best[e] = std::min(best[e], seconds_now() - t0);
      }
    }
    const double flop = 2.0 * s.m * s.k * s.n * s.repeats;
    for (int e = 0; e < 3; ++e) log_gflops[e] += std::log(flop / best[e] / 1e9);
  }
  Measured result;
  for (int e = 0; e < 3; ++e) {
    if (available[e]) result.gflops[int(engines[e])] = std::exp(log_gflops[e] / kShapes);
  }
  return result;
}

std::string fixed(double v) {
  std::ostringstream s;
  s.setf(std::ios::fixed);
  s.precision(0);
  s << v;
  return s.str();
}

Choice make_choice(const std::string& requested) {
  Choice c;
  c.made = true;
  if (requested == "blas") {
    c.pinned_blas = true;
    c.how = "blas (pinned)";
  } else if (requested == "onednn") {
    c.float32 = c.float32_matmul = GemmEngine::OneDnn;
    c.how = "onednn (pinned)";
  } else if (requested == "panels") {
    c.float32 = GemmEngine::Panels;
    c.float32_matmul = built_onednn() ? GemmEngine::OneDnn : GemmEngine::Blas;
    c.how = std::string("panels (pinned, ") + cpu::panel_isa_name() + " tiles; products over all steps: " +
            engine_name(c.float32_matmul) + ")";
  } else {
    const Measured m = measure_float32();
    const double* g = m.gflops;
    const auto onednn = int(GemmEngine::OneDnn), blas = int(GemmEngine::Blas), panels = int(GemmEngine::Panels);
    c.per_shape = built_onednn();
    const GemmEngine faster = g[onednn] >= g[blas] ? GemmEngine::OneDnn : GemmEngine::Blas;
    c.float32 = g[panels] > g[int(faster)] ? GemmEngine::Panels : faster;
    std::string measured;
    for (const int e : {onednn, blas, panels}) {
      if (g[e] <= 0) continue;  // not in this build or CPU
      measured += std::string(measured.empty() ? "" : ", ") + engine_name(GemmEngine(e)) + " " + fixed(g[e]);
    }
    const std::string tiles =
        c.float32 == GemmEngine::Panels ? std::string(", ") + cpu::panel_isa_name() + " tiles" : std::string();
    c.how = std::string(engine_name(c.float32)) + tiles + " (measured on float32 steps, GFLOP/s: " + measured + ")";
    if (!built_onednn()) c.how += " (this build has no oneDNN)";
    if (built_onednn()) c.how += "; float32 products over all steps: onednn or blas per shape, timed at its first call";
  }
  return c;
}

void check_engine_name(const std::string& name) {
  TORCH_CHECK(name == "auto" || name == "onednn" || name == "blas" || name == "panels",
              "rnnkernels: the CPU GEMM engine must be 'auto', 'onednn', 'blas' or 'panels', got '", name, "'");
  TORCH_CHECK(name != "onednn" || built_onednn(),
              "rnnkernels: the CPU GEMM engine 'onednn' is not in this build (setup.py found no oneDNN; "
              "pip install onednn-cpu-gomp onednn-devel-cpu-gomp, then rebuild)");
  TORCH_CHECK(name != "panels" || cpu::panel_gemm_runs(),
              "rnnkernels: the CPU GEMM engine 'panels' needs an x86-64 CPU with AVX2 and FMA");
}

const Choice& current_choice() {
  std::lock_guard<std::mutex> lock(choice_mutex);
  if (!choice.made) {
    const char* env = std::getenv("RNNKERNELS_CPU_GEMM");
    const std::string requested = env != nullptr && *env != '\0' ? env : "auto";
    check_engine_name(requested);
    choice = make_choice(requested);
  }
  return choice;
}

}  // namespace

GemmEngine gemm_engine() { return current_choice().float32; }

std::string gemm_engine_info() {
  const Choice& c = current_choice();
  std::string info = "float32: " + c.how + "; bfloat16: " +
                     (onednn_runs(at::kBFloat16, c, c.float32) ? "onednn" : "aten") + "; float64: blas";
#ifdef RNNKERNELS_WITH_ONEDNN
  info += "; " + onednn::version();
#endif
  return info;
}

void set_gemm_engine(const std::string& name) {
  check_engine_name(name);
  Choice made = make_choice(name);
  std::lock_guard<std::mutex> lock(choice_mutex);
  choice = std::move(made);
}

bool onednn_built() { return built_onednn(); }

namespace {
// Whether a step weight too small for MKL's pack (W (n, k) float32 used
// transposed, at most max_m rows, max_m * n * k <= kPackMacs) is multiplied
// on cpu/rows_times_weight.h, on W as stored, under the onednn and blas engines. Whole
// layers at (T, B, I, H) = (200, 1, 64, 128) on the Xeon (family 6 model
// 167), 2 threads, forward, torch.nn time / rk time: against MKL's sgemm on a
// (k, n) copy, LSTM 0.81 -> 0.87, GRU 2.94 -> 3.67, RNN-tanh 2.39 -> 2.89;
// oneDNN's matmul there took 1.24x the time of rows_times_weight.
bool rows_times_stored(const at::Tensor& stored, bool transpose, int64_t max_m) {
  return transpose && stored.is_cpu() && stored.scalar_type() == at::kFloat && max_m * stored.numel() <= kPackMacs &&
         cpu::rows_times_weight_runs() && cpu::rows_times_weight_takes(max_m, stored.size(1));
}
}  // namespace

StepWeight::StepWeight(const at::Tensor& stored, bool transpose, int64_t max_m, bool accumulate, int64_t uses)
    : accumulate_(accumulate) {
  // Preparing (oneDNN's reorder, MKL's pack, or a contiguous (k, n) copy, on
  // which MKL ran these GEMMs 1.2-1.8x faster than on a transposed view) costs
  // about one pass over W; a layer of a few steps (a cell: one) multiplies
  // the stored weight as it is, and so do small steps that rows_times_weight
  // takes (rows_times_stored).
  // Under the panels engine they take the small steps too: an LSTM forward at
  // (T, B, I, H) = (200, 1, 64, 128) took 1.70 ms on them against 1.97 ms on
  // rows_times_weight's AVX2 dot products (AMD EPYC Zen 2, medians of 5 runs).
  const Choice& c = current_choice();
  if (uses >= kMinUsesToPrepare && (c.float32 == GemmEngine::Panels || !rows_times_stored(stored, transpose, max_m))) {
    prepared_ = prepare(stored, transpose, max_m, accumulate, c);
    if (!prepared_ && transpose) {
      matrix_ = stored.t().contiguous();
      return;
    }
  }
  if (!prepared_) matrix_ = transpose ? stored.t() : stored;
}

StepWeight::~StepWeight() = default;

void StepWeight::multiply(const at::Tensor& out, const at::Tensor& a) const {
  if (out.size(0) == 0) return;
  if (prepared_) return multiply_prepared(*prepared_, out, a, accumulate_);
  const at::Tensor& b = matrix_;  // (k, n), row-major or a transposed view
  if (few_rows_times_transposed(out, a, b, accumulate_)) return;
  const bool b_transposed = b.size(1) > 1 && b.stride(1) != 1;
  const int64_t lda = leading_dim(a), ldb = b_transposed ? leading_dim(b.t()) : leading_dim(b), ldc = leading_dim(out);
  if (out.is_cpu() && (out.scalar_type() == at::kFloat || out.scalar_type() == at::kDouble) && lda > 0 &&
      ldb > 0 && ldc > 0) {
    bool done = false;
    AT_DISPATCH_FLOATING_TYPES(out.scalar_type(), "rnnkernels_step_gemm", [&] {
      done = blas::gemm<scalar_t>(false, b_transposed, a.size(0), b.size(1), a.size(1), scalar_t(1),
                                  a.data_ptr<scalar_t>(), lda, b.data_ptr<scalar_t>(), ldb,
                                  scalar_t(accumulate_ ? 1 : 0), out.data_ptr<scalar_t>(), ldc);
    });
    if (done) return;
  }
  at::Tensor result = out;
  if (accumulate_) result.addmm_(a, b); else at::mm_out(result, a, b);
}

namespace {

void blas_matmul(const at::Tensor& out, const at::Tensor& a, const at::Tensor& b, bool accumulate) {
  at::Tensor result = out;
  if (accumulate) result.addmm_(a, b); else at::mm_out(result, a, b);
}

#ifdef RNNKERNELS_WITH_ONEDNN
// A size's class: sizes up to 64 are their own; above, four classes per
// octave, whose sizes lie within 25% of each other.
int64_t size_class(int64_t size) {
  if (size <= 64) return size;
  const int octave = 63 - __builtin_clzll(static_cast<uint64_t>(size));  // floor(log2(size)) >= 6
  return 65 + 4 * (octave - 6) + ((size >> (octave - 2)) & 3);
}

// The faster of oneDNN and BLAS for this float32 product's shape, layouts and
// thread count: both run three times on a scratch output at the shape's first
// call (the first run of each pays oneDNN's JIT and page faults), the best of
// the other two counts;
// later calls look it up. The caller then computes `out` on the winner, so
// every call of a shape gives the same bits.
//
// Shapes are keyed by size class, not by exact size: with uneven lengths m
// or k is the packed row count, sum(lengths), new with nearly every batch,
// and a measurement (six products) per new count made an LSTM's training
// step with fresh lengths each call 3x slower ((35, 20, 200, 200): 6.7 ->
// 20.0 ms, AMD EPYC Zen 4).
GemmEngine engine_for_shape(const at::Tensor& out, const at::Tensor& a, const at::Tensor& b, bool accumulate) {
  using Key = std::tuple<int64_t, int64_t, int64_t, bool, bool, bool, int>;
  static std::mutex mutex;
  static std::map<Key, GemmEngine> chosen;
  auto transposed = [](const at::Tensor& t) { return t.size(0) > 1 && t.size(1) > 1 && t.stride(0) == 1; };
  const Key key{size_class(a.size(0)), size_class(a.size(1)), size_class(b.size(1)), transposed(a), transposed(b),
                accumulate, at::in_parallel_region() ? 1 : at::get_num_threads()};
  {
    std::lock_guard<std::mutex> lock(mutex);
    const auto found = chosen.find(key);
    if (found != chosen.end()) return found->second;
  }
  const at::Tensor scratch = at::empty_like(out);  // for `accumulate`, a copy of out before each run
  double seconds[2] = {1e30, 1e30};  // oneDNN, BLAS
  // The best of two timed runs: on the shared EPYC Zen 4 box, whose speed
  // varied 1.5x within minutes, one run alone could pick the slower engine.
  for (int run = 0; run < 3; ++run) {
    for (int e = 0; e < 2; ++e) {
      if (accumulate) scratch.copy_(out);
      const double t0 = seconds_now();
      bool ran = true;
      if (e == 0) ran = onednn::matmul(scratch, a, b, accumulate);
      else blas_matmul(scratch, a, b, accumulate);
      if (!ran) seconds[e] = 2e30;  // no oneDNN primitive: BLAS
      else if (run > 0) seconds[e] = std::min(seconds[e], seconds_now() - t0);
    }
  }
  const GemmEngine engine = seconds[0] <= seconds[1] ? GemmEngine::OneDnn : GemmEngine::Blas;
  std::lock_guard<std::mutex> lock(mutex);
  return chosen.emplace(key, engine).first->second;
}
#endif

}  // namespace

void matmul(const at::Tensor& out, const at::Tensor& a, const at::Tensor& b, bool accumulate) {
  if (out.numel() == 0) return;
  at::Tensor result = out;
  if (a.size(1) == 0) {  // an empty sum
    if (!accumulate) result.zero_();
    return;
  }
  if (few_rows_times_transposed(out, a, b, accumulate)) return;
#ifdef RNNKERNELS_WITH_ONEDNN
  const Choice& c = current_choice();
  if (out.is_cpu()) {
    const GemmEngine engine = out.scalar_type() == at::kFloat && c.per_shape ? engine_for_shape(out, a, b, accumulate)
                                                                             : c.float32_matmul;
    if (onednn_runs(out.scalar_type(), c, engine) && onednn::matmul(out, a, b, accumulate)) return;
  }
#endif
  blas_matmul(out, a, b, accumulate);
}

SingleThreaded::SingleThreaded(bool active) : active_(active) {
  current_choice();  // a first-call measurement must see the caller's threads, not one
  if (!active_) return;
  omp_threads_ = omp_get_max_threads();
  omp_set_num_threads(1);
  if (MKL_Set_Num_Threads_Local != nullptr) mkl_threads_ = MKL_Set_Num_Threads_Local(1);
}

SingleThreaded::~SingleThreaded() {
  if (!active_) return;
  // MKL's setter may touch OpenMP's count too (with MKL's GNU-OpenMP layer it
  // left torch.get_num_threads() at 1): OpenMP's is restored last.
  if (MKL_Set_Num_Threads_Local != nullptr) MKL_Set_Num_Threads_Local(mkl_threads_);
  omp_set_num_threads(omp_threads_);
}

}  // namespace gemm
}  // namespace rnnkernels
