// Fused dot-product attention on the CPU: flash-style forward and backward.
//
// Semantics: rnnkernels/attention.py (reference_attention). Inputs are 4-D
// (B, H, T, D). Both masks are prefix masks: query row i sees the keys
// j < visible_end(i) = min(key_lengths[b], i + Tk - Tq + 1 if causal), so a
// row needs no dense mask, and key blocks past a row block's last visible key
// are never touched.
//
// Forward, per (batch, head, block of query rows), over blocks of keys:
//   S = scale * Q K^T (Bq, Bk) -> online softmax (running max m, running sum l)
//   -> O += P V. The (Tq, Tk) scores never exist; lse = m + log(l) is saved.
// With return_weights the key block is the whole key range, so the block's P
// divided by l *is* the exact weight row, written once (no second pass).
// Backward, per (batch, head), per block of query rows over all their visible
// keys: P is rebuilt from lse, then dV += P^T dO, dP = dO V^T (+ dW),
// dS = P * (dP - delta), dQ = scale dS K, dK += scale dS^T Q, with
// delta_i = sum_j P_ij dP_ij / sum_j P_ij taken in double from the same P and dP
// (softmax_backward_row: why not dO . O).
//
// Small GEMMs go to the BLAS that libtorch_cpu exports (MKL on x86 builds);
// without one (or with RNNKERNELS_NO_BLAS=1) a plain loop GEMM runs instead.
// float32 accumulates in float32 (but delta, in double), float64 in float64.

// Lets GCC if-convert FastFloatMath's selects in the simd loops (as in
// pointwise_cpu.cpp); nothing here relies on floating-point exceptions.
#pragma GCC optimize("no-trapping-math")
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <vector>

#include "cpu/blas.h"
#include "cpu/fast_math.h"

namespace rnnkernels {
namespace {

constexpr int64_t kQueryBlock = 64;
constexpr int64_t kKeyBlock = 128;

bool blas_wanted() {
  const char* off = std::getenv("RNNKERNELS_NO_BLAS");
  return !(off != nullptr && off[0] == '1');
}

// Row-major C (m, n) = alpha * op(A) (m, k) * op(B) (k, n) + beta * C.
template <typename T>
void gemm(bool blas, bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, T alpha, const T* a, int64_t lda,
          const T* b, int64_t ldb, T beta, T* c, int64_t ldc) {
  if (m == 0 || n == 0) return;
  if (blas && blas::gemm(trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)) return;
  for (int64_t i = 0; i < m; ++i) {
    T* ci = c + i * ldc;
    if (beta == T(0)) {
      std::fill(ci, ci + n, T(0));
    } else if (beta != T(1)) {
      for (int64_t j = 0; j < n; ++j) ci[j] *= beta;
    }
    for (int64_t p = 0; p < k; ++p) {
      const T aip = alpha * (trans_a ? a[p * lda + i] : a[i * lda + p]);
      if (trans_b) {
        for (int64_t j = 0; j < n; ++j) ci[j] += aip * b[j * ldb + p];
      } else {
        const T* bp = b + p * ldb;
#pragma omp simd
        for (int64_t j = 0; j < n; ++j) ci[j] += aip * bp[j];
      }
    }
  }
}

// exp for a whole row: CpuMath<T>::exp (csrc/cpu/fast_math.h), so float32 gets
// FastFloatMath's polynomial (about 1 ulp) which the simd loop vectorises, and
// float64 keeps std::exp for the 1e-10 accuracy. The float32 row is cloned for
// AVX-512, AVX2 and the baseline (chosen at load time), since the build itself
// targets plain x86-64: this pass costs as much as the GEMMs on SSE2.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define RNNKERNELS_SIMD_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define RNNKERNELS_SIMD_CLONES
#endif

// s[j] = exp(s[j] - shift) for j < seen, 0 for seen <= j < cols; returns the sum.
template <typename T>
__attribute__((always_inline)) inline T exp_row_of(T* s, int64_t seen, int64_t cols, T shift) {
  T sum = T(0);
#pragma omp simd reduction(+ : sum)
  for (int64_t j = 0; j < seen; ++j) {
    s[j] = CpuMath<T>::exp(s[j] - shift);
    sum += s[j];
  }
  std::fill(s + seen, s + cols, T(0));
  return sum;
}

RNNKERNELS_SIMD_CLONES float exp_row(float* s, int64_t seen, int64_t cols, float shift) {
  return exp_row_of(s, seen, cols, shift);
}

inline double exp_row(double* s, int64_t seen, int64_t cols, double shift) {
  return exp_row_of(s, seen, cols, shift);
}

// max of s[0, n), n >= 1; lanes break the 4-cycle maxss dependency chain.
typedef float float16 __attribute__((vector_size(64)));
RNNKERNELS_SIMD_CLONES float max_of_row(const float* s, int64_t n) {
  float16 best = float16{} - std::numeric_limits<float>::infinity();
  int64_t j = 0;
  for (; j + 16 <= n; j += 16) {
    float16 x;
    std::memcpy(&x, s + j, sizeof(x));
    best = x > best ? x : best;
  }
  float total = best[0];
  for (int k = 1; k < 16; ++k) total = std::max(total, best[k]);
  for (; j < n; ++j) total = std::max(total, s[j]);
  return total;
}

inline double max_of_row(const double* s, int64_t n) { return *std::max_element(s, s + n); }


struct Geometry {
  int64_t batch, heads, tq, tk, d, dv;
  bool causal;
  const int64_t* lengths;  // (B,) or null

  int64_t length(int64_t b) const { return lengths ? lengths[b] : tk; }
  // Keys j < visible_end(b, i) are seen by query row i; non-decreasing in i.
  int64_t visible_end(int64_t b, int64_t i) const {
    int64_t end = length(b);
    if (causal) end = std::min(end, std::max<int64_t>(i + tk - tq + 1, 0));
    return end;
  }
};

template <typename T>
void forward_kernel(const Geometry& g, const T* q, const T* k, const T* v, T scale, bool blas, T* out, T* lse,
                    T* weights) {
  const int64_t q_blocks = (g.tq + kQueryBlock - 1) / kQueryBlock;
  const int64_t key_block = weights ? std::max<int64_t>(g.tk, 1) : kKeyBlock;
  at::parallel_for(0, g.batch * g.heads * q_blocks, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> scores(kQueryBlock * key_block);  // (Bq, Bk): S, then unnormalised P
    std::vector<T> row_max(kQueryBlock), row_sum(kQueryBlock);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t bh = task / q_blocks, b = bh / g.heads;
      const int64_t i0 = (task % q_blocks) * kQueryBlock, rows = std::min(kQueryBlock, g.tq - i0);
      const T* q_rows = q + (bh * g.tq + i0) * g.d;      // (rows, D)
      const T* k_all = k + bh * g.tk * g.d;               // (Tk, D)
      const T* v_all = v + bh * g.tk * g.dv;              // (Tk, Dv)
      T* out_rows = out + (bh * g.tq + i0) * g.dv;        // (rows, Dv)
      std::fill(out_rows, out_rows + rows * g.dv, T(0));
      std::fill(row_max.begin(), row_max.end(), -std::numeric_limits<T>::infinity());
      std::fill(row_sum.begin(), row_sum.end(), T(0));
      const int64_t keys = g.visible_end(b, i0 + rows - 1);
      for (int64_t k0 = 0; k0 < keys; k0 += key_block) {
        const int64_t cols = std::min(key_block, keys - k0);
        gemm<T>(blas, false, true, rows, cols, g.d, scale, q_rows, g.d, k_all + k0 * g.d, g.d, T(0), scores.data(),
                key_block);
        for (int64_t r = 0; r < rows; ++r) {
          T* s = scores.data() + r * key_block;
          const int64_t seen = std::min(std::max<int64_t>(g.visible_end(b, i0 + r) - k0, 0), cols);
          if (seen == 0) {
            std::fill(s, s + cols, T(0));
            continue;
          }
          const T new_max = std::max(row_max[r], max_of_row(s, seen));
          const T correction = std::exp(row_max[r] - new_max);  // 0 on the first seen block
          row_sum[r] = row_sum[r] * correction + exp_row(s, seen, cols, new_max);
          row_max[r] = new_max;
          if (correction != T(1)) {
            T* o = out_rows + r * g.dv;
            for (int64_t c = 0; c < g.dv; ++c) o[c] *= correction;
          }
        }
        gemm<T>(blas, false, false, rows, g.dv, cols, T(1), scores.data(), key_block, v_all + k0 * g.dv, g.dv, T(1),
                out_rows, g.dv);
      }
      for (int64_t r = 0; r < rows; ++r) {
        const int64_t i = i0 + r;
        // A row with no visible key keeps a zero context and zero weights.
        const T inv_sum = row_sum[r] > T(0) ? T(1) / row_sum[r] : T(0);
        lse[bh * g.tq + i] = row_sum[r] > T(0) ? row_max[r] + std::log(row_sum[r])
                                               : -std::numeric_limits<T>::infinity();
        T* o = out_rows + r * g.dv;
        for (int64_t c = 0; c < g.dv; ++c) o[c] *= inv_sum;
        if (weights) {  // one key block covered [0, keys): scores holds the row's P
          T* w = weights + (bh * g.tq + i) * g.tk;
          const T* s = scores.data() + r * key_block;
          for (int64_t j = 0; j < keys; ++j) w[j] = s[j] * inv_sum;
          std::fill(w + keys, w + g.tk, T(0));
        }
      }
    }
  });
}

// dS for one row of a softmax: ds[j] = p[j] * (dp[j] - delta) for j < seen (dp
// arrives in ds), 0 for seen <= j < cols. delta = sum_j p dP / sum_j p over the
// row's own P and dP, in double: for a near one-hot row, dP_max - delta is
// sum_j p_j (dP_max - dP_j), far smaller than dP_max, and a delta taken from
// another rounding of the same sum (dO . O with O stored in float32, or float32
// partial sums) cancels to noise of eps * |dP| there. Dividing by the row's
// sum of P (1 up to rounding) cancels the rounding of P itself the same way.
template <typename T>
void softmax_backward_row(const T* p, T* ds, int64_t seen, int64_t cols) {
  double weighted = 0.0, total = 0.0;
#pragma omp simd reduction(+ : weighted, total)
  for (int64_t j = 0; j < seen; ++j) {
    weighted += double(p[j]) * double(ds[j]);
    total += double(p[j]);
  }
  const double delta = total > 0.0 ? weighted / total : 0.0;
#pragma omp simd
  for (int64_t j = 0; j < seen; ++j) ds[j] = T(double(p[j]) * (double(ds[j]) - delta));
  std::fill(ds + seen, ds + cols, T(0));
}

template <typename T>
void backward_kernel(const Geometry& g, const T* grad_out, const T* grad_weights, const T* q, const T* k, const T* v,
                     const T* lse, T scale, bool blas, T* grad_q, T* grad_k, T* grad_v) {
  // Per (batch, head), query blocks outer and all their visible keys at once, so
  // each row's delta comes from the P and dP that its dS uses (see above).
  const int64_t width = std::max<int64_t>(g.tk, 1);
  at::parallel_for(0, g.batch * g.heads, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> probs(kQueryBlock * width);   // (Bq, Tk): P
    std::vector<T> dprobs(kQueryBlock * width);  // (Bq, Tk): dP, then dS
    for (int64_t bh = begin; bh < end; ++bh) {
      const int64_t b = bh / g.heads;
      const T* q_bh = q + bh * g.tq * g.d;            // (Tq, D)
      const T* k_bh = k + bh * g.tk * g.d;            // (Tk, D)
      const T* v_bh = v + bh * g.tk * g.dv;           // (Tk, Dv)
      const T* do_bh = grad_out + bh * g.tq * g.dv;   // (Tq, Dv)
      const T* lse_bh = lse + bh * g.tq;              // (Tq,)
      T* dq_bh = grad_q + bh * g.tq * g.d;
      T* dk_bh = grad_k + bh * g.tk * g.d;
      T* dv_bh = grad_v + bh * g.tk * g.dv;
      std::fill(dq_bh, dq_bh + g.tq * g.d, T(0));
      std::fill(dk_bh, dk_bh + g.tk * g.d, T(0));
      std::fill(dv_bh, dv_bh + g.tk * g.dv, T(0));
      for (int64_t i0 = 0; i0 < g.tq; i0 += kQueryBlock) {
        const int64_t rows = std::min(kQueryBlock, g.tq - i0);
        const int64_t keys = g.visible_end(b, i0 + rows - 1);  // keys past it are hidden from every row
        if (keys == 0) continue;
        gemm<T>(blas, false, true, rows, keys, g.d, scale, q_bh + i0 * g.d, g.d, k_bh, g.d, T(0), probs.data(),
                width);
        for (int64_t r = 0; r < rows; ++r) {
          const int64_t seen = std::min(g.visible_end(b, i0 + r), keys);
          exp_row(probs.data() + r * width, seen, keys, seen > 0 ? lse_bh[i0 + r] : T(0));
        }
        // dV (keys, Dv) += P^T dO
        gemm<T>(blas, true, false, keys, g.dv, rows, T(1), probs.data(), width, do_bh + i0 * g.dv, g.dv, T(1), dv_bh,
                g.dv);
        // dP (rows, keys) = dO V^T (+ dW)
        gemm<T>(blas, false, true, rows, keys, g.dv, T(1), do_bh + i0 * g.dv, g.dv, v_bh, g.dv, T(0), dprobs.data(),
                width);
        for (int64_t r = 0; r < rows; ++r) {
          T* ds = dprobs.data() + r * width;
          const int64_t seen = std::min(g.visible_end(b, i0 + r), keys);
          if (seen <= 1) {  // one visible key: its weight is 1 whatever the score,
            std::fill(ds, ds + keys, T(0));  // so the score gets exactly no gradient
            continue;
          }
          if (grad_weights) {
            const T* dw = grad_weights + (bh * g.tq + i0 + r) * g.tk;
            for (int64_t j = 0; j < seen; ++j) ds[j] += dw[j];
          }
          softmax_backward_row(probs.data() + r * width, ds, seen, keys);
        }
        // dQ (rows, D) = scale dS K ; dK (keys, D) += scale dS^T Q
        gemm<T>(blas, false, false, rows, g.d, keys, scale, dprobs.data(), width, k_bh, g.d, T(0), dq_bh + i0 * g.d,
                g.d);
        gemm<T>(blas, true, false, keys, g.d, rows, scale, dprobs.data(), width, q_bh + i0 * g.d, g.d, T(1), dk_bh,
                g.d);
      }
    }
  });
}

void check_inputs(const at::Tensor& query, const at::Tensor& key, const at::Tensor& value,
                  const c10::optional<at::Tensor>& key_lengths) {
  TORCH_CHECK(query.dim() == 4 && key.dim() == 4 && value.dim() == 4,
              "attention_forward: query, key and value must be 4-D (B, H, T, D), got ", query.dim(), "-D, ",
              key.dim(), "-D, ", value.dim(), "-D");
  TORCH_CHECK(query.scalar_type() == at::kFloat || query.scalar_type() == at::kDouble,
              "attention (cpu backend): dtype must be float32 or float64, got ", query.scalar_type());
  TORCH_CHECK(key.scalar_type() == query.scalar_type() && value.scalar_type() == query.scalar_type(),
              "attention: query, key and value must share a dtype");
  TORCH_CHECK(query.device().is_cpu() && key.device().is_cpu() && value.device().is_cpu(),
              "attention (cpu backend): query, key and value must be CPU tensors");
  const auto B = query.size(0), H = query.size(1), D = query.size(3), Tk = key.size(2);
  TORCH_CHECK(key.size(0) == B && key.size(1) == H && value.size(0) == B && value.size(1) == H,
              "attention: query, key and value must agree on (batch, heads)");
  TORCH_CHECK(key.size(3) == D, "attention: key's last dim must equal query's (", D, "), got ", key.size(3));
  TORCH_CHECK(value.size(2) == Tk, "attention: value must have as many steps as key (", Tk, "), got ",
              value.size(2));
  if (key_lengths.has_value()) {
    const auto& lengths = *key_lengths;
    TORCH_CHECK(lengths.scalar_type() == at::kLong, "attention: key_lengths must be int64, got ",
                lengths.scalar_type());
    TORCH_CHECK(lengths.device().is_cpu(), "attention (cpu backend): key_lengths must be on the CPU, got ",
                lengths.device());
    TORCH_CHECK(lengths.dim() == 1 && lengths.size(0) == B, "attention: key_lengths must have shape (", B,
                ",), got ", lengths.sizes());
    if (B > 0) {
      const auto low = lengths.min().item<int64_t>(), high = lengths.max().item<int64_t>();
      TORCH_CHECK(low >= 0 && high <= Tk, "attention: key_lengths must lie in [0, ", Tk, "], got min ", low,
                  ", max ", high);
    }
  }
}

Geometry geometry(const at::Tensor& query, const at::Tensor& key, const at::Tensor& value, bool causal,
                  const c10::optional<at::Tensor>& lengths) {
  return Geometry{query.size(0), query.size(1), query.size(2), key.size(2), query.size(3), value.size(3), causal,
                  lengths.has_value() ? lengths->data_ptr<int64_t>() : nullptr};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> attention_forward_cpu(const at::Tensor& query_in,
                                                                     const at::Tensor& key_in,
                                                                     const at::Tensor& value_in,
                                                                     const c10::optional<at::Tensor>& key_lengths_in,
                                                                     bool causal, double scale, bool return_weights) {
  check_inputs(query_in, key_in, value_in, key_lengths_in);
  const auto query = query_in.contiguous(), key = key_in.contiguous(), value = value_in.contiguous();
  c10::optional<at::Tensor> key_lengths;
  if (key_lengths_in.has_value()) key_lengths = key_lengths_in->contiguous();
  const Geometry g = geometry(query, key, value, causal, key_lengths);
  auto context = at::empty({g.batch, g.heads, g.tq, g.dv}, query.options());
  auto lse = at::empty({g.batch, g.heads, g.tq}, query.options());
  auto weights = return_weights ? at::empty({g.batch, g.heads, g.tq, g.tk}, query.options())
                                : at::empty({0}, query.options());
  const bool blas = blas_wanted();
  AT_DISPATCH_FLOATING_TYPES(query.scalar_type(), "attention_forward_cpu", [&] {
    forward_kernel<scalar_t>(g, query.data_ptr<scalar_t>(), key.data_ptr<scalar_t>(), value.data_ptr<scalar_t>(),
                             scalar_t(scale), blas, context.data_ptr<scalar_t>(), lse.data_ptr<scalar_t>(),
                             return_weights ? weights.data_ptr<scalar_t>() : nullptr);
  });
  return {context, lse, weights};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> attention_backward_cpu(
    const at::Tensor& grad_context_in, const c10::optional<at::Tensor>& grad_weights_in, const at::Tensor& query_in,
    const at::Tensor& key_in, const at::Tensor& value_in, const at::Tensor& context_in, const at::Tensor& lse_in,
    const c10::optional<at::Tensor>& weights_in, const c10::optional<at::Tensor>& key_lengths_in, bool causal,
    double scale) {
  check_inputs(query_in, key_in, value_in, key_lengths_in);
  const auto query = query_in.contiguous(), key = key_in.contiguous(), value = value_in.contiguous();
  const auto grad_context = grad_context_in.contiguous(), context = context_in.contiguous(),
             lse = lse_in.contiguous();
  c10::optional<at::Tensor> key_lengths;
  if (key_lengths_in.has_value()) key_lengths = key_lengths_in->contiguous();
  const Geometry g = geometry(query, key, value, causal, key_lengths);
  TORCH_CHECK(grad_context.sizes() == context.sizes() && context.sizes() == at::IntArrayRef({g.batch, g.heads, g.tq, g.dv}),
              "attention_backward: grad_context and context must have shape (B, H, Tq, Dv)");
  TORCH_CHECK(lse.sizes() == at::IntArrayRef({g.batch, g.heads, g.tq}), "attention_backward: lse must be (B, H, Tq)");
  at::Tensor grad_weights, weights;
  if (grad_weights_in.has_value()) {
    TORCH_CHECK(weights_in.has_value(), "attention_backward: grad_weights needs the weights");
    grad_weights = grad_weights_in->contiguous();
    weights = weights_in->contiguous();
    const std::vector<int64_t> weights_shape{g.batch, g.heads, g.tq, g.tk};
    TORCH_CHECK(grad_weights.sizes() == at::IntArrayRef(weights_shape) && weights.sizes() == at::IntArrayRef(weights_shape),
                "attention_backward: weights and grad_weights must be (B, H, Tq, Tk)");
  }
  auto grad_query = at::empty_like(query), grad_key = at::empty_like(key), grad_value = at::empty_like(value);
  const bool blas = blas_wanted();
  AT_DISPATCH_FLOATING_TYPES(query.scalar_type(), "attention_backward_cpu", [&] {
    backward_kernel<scalar_t>(g, grad_context.data_ptr<scalar_t>(),
                              grad_weights.defined() ? grad_weights.data_ptr<scalar_t>() : nullptr,
                              query.data_ptr<scalar_t>(), key.data_ptr<scalar_t>(), value.data_ptr<scalar_t>(),
                              lse.data_ptr<scalar_t>(), scalar_t(scale), blas,
                              grad_query.data_ptr<scalar_t>(), grad_key.data_ptr<scalar_t>(),
                              grad_value.data_ptr<scalar_t>());
  });
  return {grad_query, grad_key, grad_value};
}

}  // namespace

TORCH_LIBRARY_IMPL(rnnkernels, CPU, m) {
  m.impl("attention_forward", &attention_forward_cpu);
  m.impl("attention_backward", &attention_backward_cpu);
}

}  // namespace rnnkernels
