// CUDA kernels of the extended rows of one time step: LayerNorm of h W_hh^T
// and of c, zoneout and per-step cell outputs (csrc/pointwise.h's
// ForwardExtras / BackwardExtras). The algorithm is the CPU's extended rows
// (csrc/cpu/pointwise_cpu.cpp, forward_rows_extended / backward_rows_extended)
// pass for pass: same buffers, same saved layout, same order of operations
// per element, so that the one loop of csrc/rnn_layer.cpp drives both with
// one saved layout. The plain rows (csrc/cuda/pointwise_kernels.cu) are
// untouched: a step without extras never comes here.
//
// Geometry: one thread block per batch row b = blockIdx.x; blockDim.x a
// multiple of 32 (32..512, about one thread per hidden unit). Thread tid
// takes units j = tid, tid + blockDim.x, ... of the row in every pass (and
// k = tid, ... over the G*H gate units in the LayerNorm passes), so a value
// it parks in shared memory between two passes is its own: only what crosses
// threads needs a barrier (the normalised gh before the gate pass; d_gh
// before LN(h W_hh^T)'s backward; the block reductions). A row's alive test
// is uniform over its block, so every thread meets every barrier.
//
// Row reductions (LayerNorm's mean, then the mean of squared deviations from
// it, two passes as on the CPU; backward's two row means) are block sums:
// a butterfly of warp shuffles, one partial per warp through shared memory,
// and every thread adds the partials in the same order.
//
// Dynamic shared memory (compute type A = float, or double for double):
//   scratch  (2 * 32,)  per-warp partials of block_sum (up to two sums)
//   lstm forward:  c_fresh (H,) the c before zoneout; gate_o (H,) sigmoid(o)
//   lstm backward: dy_row  (H,) gradient of tanh's argument; c_hat (H,) LN(c)'s x_hat
#include "cells.h"
#include "cuda/device_utils.cuh"
#include "cuda/launchers.h"

namespace rnnkernels {
namespace cuda {
namespace {

constexpr int kWarp = 32;
constexpr int kMaxExtThreads = 512;               // 16 warps
constexpr int kScratchValues = 2 * kWarp;         // block_sum of up to two values
constexpr size_t kDefaultSharedBytes = 48 * 1024;  // beyond this a kernel must opt in

constexpr int gates_of(Cell cell) { return cell == Cell::Lstm ? 4 : cell == Cell::Gru ? 3 : 1; }

// Threads per block: H rounded up to whole warps, within [32, 512].
inline int ext_threads(int64_t H) {
  const int64_t warps = (H + kWarp - 1) / kWarp;
  const int64_t threads = warps * kWarp;
  return threads < kWarp ? kWarp : threads > kMaxExtThreads ? kMaxExtThreads : int(threads);
}

// v[0..N) summed over the block: every thread gets the same totals. Every
// thread of the block must call it (blockDim.x a multiple of 32); scratch
// holds N * 32 values. The leading barrier lets the previous call's readers
// finish before its partials are overwritten.
template <int N, typename A>
__device__ __forceinline__ void block_sum(A (&v)[N], A* scratch) {
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp, warps = blockDim.x / kWarp;
#pragma unroll
  for (int i = 0; i < N; ++i) {
#pragma unroll
    for (int offset = kWarp / 2; offset > 0; offset /= 2) v[i] += __shfl_xor_sync(0xffffffffu, v[i], offset);
  }
  __syncthreads();
  if (lane == 0) {
#pragma unroll
    for (int i = 0; i < N; ++i) scratch[i * kWarp + warp] = v[i];
  }
  __syncthreads();
#pragma unroll
  for (int i = 0; i < N; ++i) {
    A total = A(0);
    for (int w = 0; w < warps; ++w) total += scratch[i * kWarp + w];
    v[i] = total;
  }
}

// The mean and the rstd of a row of n values load(0..n) (two passes, see
// cells.h): the block's threads share the row; all of them get both.
template <typename A, typename Load>
__device__ __forceinline__ void row_moments(int64_t n, const Load& load, A* scratch, A& mean, A& rstd) {
  A sum[1] = {A(0)};
  for (int64_t k = threadIdx.x; k < n; k += blockDim.x) sum[0] += load(k);
  block_sum(sum, scratch);
  mean = sum[0] / A(n);
  A squares[1] = {A(0)};
  for (int64_t k = threadIdx.x; k < n; k += blockDim.x) {
    const A d = load(k) - mean;
    squares[0] += d * d;
  }
  block_sum(squares, scratch);
  rstd = cells::layer_norm_rstd<A>(squares[0] / A(n));
}

// The two row means LayerNorm's backward needs: of dyg and of dyg * x_hat.
template <typename A, typename DygLoad, typename XhatLoad>
__device__ __forceinline__ void backward_means(int64_t n, const DygLoad& dyg, const XhatLoad& x_hat, A* scratch,
                                               A& mean_dyg, A& mean_dyg_x_hat) {
  A sums[2] = {A(0), A(0)};
  for (int64_t k = threadIdx.x; k < n; k += blockDim.x) {
    const A d = dyg(k);
    sums[0] += d;
    sums[1] += d * x_hat(k);
  }
  block_sum(sums, scratch);
  mean_dyg = sums[0] / A(n);
  mean_dyg_x_hat = sums[1] / A(n);
}

// The block's shared rows (see the top): scratch, then lstm's two (H,) rows.
template <typename A>
__device__ __forceinline__ A* shared_values() {
  extern __shared__ __align__(16) unsigned char ext_shared[];
  return reinterpret_cast<A*>(ext_shared);
}

// ------------------------------------------------------------------ forward
// Block b = blockIdx.x: row b of every (B, n) buffer. No projection: h_prev,
// h_next, out and c are (B, H).
template <typename T, Cell kCell>
__global__ void __launch_bounds__(kMaxExtThreads)
    forward_step_ext_kernel(const ForwardStepArgs<T> a, const ForwardExtrasArgs<T> e) {
  using A = acc_t<T>;
  constexpr int G = gates_of(kCell);
  constexpr bool kLstm = kCell == Cell::Lstm, kGru = kCell == Cell::Gru;
  const int64_t b = blockIdx.x, H = a.H, GH = G * H;
  const int64_t n_saved = kLstm || kGru ? 4 * H : 0;
  const int64_t tid = threadIdx.x, step = blockDim.x;
  A* scratch = shared_values<A>();  // (64,)
  A* c_fresh = scratch + kScratchValues;  // (H,) lstm
  A* gate_o = c_fresh + H;                // (H,) lstm
  // Row b of each buffer.
  const T* gi = a.gi + b * GH;                                        // (G*H,)
  const T* gh = a.gh + b * GH;                                        // (G*H,) normalised in place below
  const T* h_prev = a.h_prev + b * H;                                 // (H,)
  T* h_next = a.h_next + b * H;                                       // (H,)
  T* out = a.out + b * H;                                             // (H,)
  const T* c_prev = kLstm ? a.c_prev + b * H : nullptr;               // (H,)
  T* c_next = kLstm ? a.c_next + b * H : nullptr;                     // (H,)
  T* saved = a.saved != nullptr ? a.saved + b * n_saved : nullptr;    // (4H,) or none (inference)
  T* xhat_hh = e.xhat_hh != nullptr ? e.xhat_hh + b * GH : nullptr;   // (G*H,)
  T* stats = e.row_stats != nullptr ? e.row_stats + b * e.stats_stride : nullptr;  // (3,) of (stride,)
  T* fresh = e.fresh != nullptr ? e.fresh + b * H : nullptr;          // (H,)
  T* cell_out = e.cell_out != nullptr ? e.cell_out + b * H : nullptr;  // (H,)
  const T* keep_h = e.keep_h != nullptr ? e.keep_h + b * H : nullptr;  // (H,)
  const T* keep_c = e.keep_c != nullptr ? e.keep_c + b * H : nullptr;  // (H,)
  const T* ln_c_w = e.ln_cell_weight;                                  // (H,)
  const T* ln_c_b = e.ln_cell_bias;                                    // (H,)

  if (!row_alive(a.lengths, b, a.t)) {  // frozen state, zero outputs and saved rows (block-uniform)
    for (int64_t j = tid; j < H; j += step) {
      if (kLstm) c_next[j] = c_prev[j];
      h_next[j] = h_prev[j];
      out[j] = from_acc<T>(A(0));
      if (cell_out != nullptr) cell_out[j] = from_acc<T>(A(0));
      if (fresh != nullptr) fresh[j] = from_acc<T>(A(0));
    }
    if (saved != nullptr) {
      for (int64_t k = tid; k < n_saved; k += step) saved[k] = from_acc<T>(A(0));
    }
    if (xhat_hh != nullptr) {
      for (int64_t k = tid; k < GH; k += step) xhat_hh[k] = from_acc<T>(A(0));
    }
    if (stats != nullptr && tid < 3) stats[tid] = from_acc<T>(A(0));
    return;
  }

  if (e.ln_hh_weight != nullptr) {  // gh <- gamma_hh * LN(gh), the normalised row saved
    T* gh_row = e.gh + b * GH;  // the same row as gh, writable
    A mean, rstd;
    row_moments<A>(GH, [&](int64_t k) { return to_acc(gh_row[k]); }, scratch, mean, rstd);
    for (int64_t k = tid; k < GH; k += step) {
      const A x_hat = (to_acc(gh_row[k]) - mean) * rstd;
      if (xhat_hh != nullptr) xhat_hh[k] = from_acc<T>(x_hat);
      gh_row[k] = from_acc<T>(to_acc(e.ln_hh_weight[k]) * x_hat);
    }
    if (stats != nullptr && tid == 0) stats[0] = from_acc<T>(rstd);
    __syncthreads();  // the gate pass reads gate units other threads normalised
  }

  // Pre-activation of gate unit k: both GEMM outputs plus both biases (the CPU's order).
  auto pre = [&](int64_t k) { return to_acc(gi[k]) + to_acc(a.b_ih[k]) + to_acc(gh[k]) + to_acc(a.b_hh[k]); };
  auto keep = [&](const T* k, int64_t j) { return k != nullptr ? to_acc(k[j]) : A(0); };
  if (kLstm) {
    for (int64_t j = tid; j < H; j += step) {
      cells::LstmActivations<A> act;
      c_fresh[j] = cells::lstm_cell_forward<A>(pre(j), pre(H + j), pre(2 * H + j), pre(3 * H + j), to_acc(c_prev[j]),
                                               act);
      gate_o[j] = act.o;
      if (saved != nullptr) {
        saved[j] = from_acc<T>(act.i);
        saved[H + j] = from_acc<T>(act.f);
        saved[2 * H + j] = from_acc<T>(act.g);
        saved[3 * H + j] = from_acc<T>(act.o);
      }
    }
    A mean = A(0), rstd = A(1);
    if (ln_c_w != nullptr) {  // c_fresh's units are this thread's own: no barrier before
      row_moments<A>(H, [&](int64_t j) { return c_fresh[j]; }, scratch, mean, rstd);
      if (stats != nullptr && tid == 0) {
        stats[1] = from_acc<T>(mean);
        stats[2] = from_acc<T>(rstd);
      }
    }
    for (int64_t j = tid; j < H; j += step) {
      const A cf = c_fresh[j];
      const A y = ln_c_w != nullptr ? to_acc(ln_c_w[j]) * (cf - mean) * rstd + to_acc(ln_c_b[j]) : cf;
      const A h_fresh = gate_o[j] * cells::StdMath::tanh(y);
      const A c = keep_c != nullptr ? cells::zoneout(keep(keep_c, j), to_acc(c_prev[j]), cf) : cf;
      const A h = keep_h != nullptr ? cells::zoneout(keep(keep_h, j), to_acc(h_prev[j]), h_fresh) : h_fresh;
      const T c_stored = from_acc<T>(c), h_stored = from_acc<T>(h);
      c_next[j] = c_stored;
      if (cell_out != nullptr) cell_out[j] = c_stored;
      if (fresh != nullptr) fresh[j] = from_acc<T>(cf);
      h_next[j] = h_stored;
      out[j] = h_stored;
    }
  } else if (kGru) {
    auto in = [&](int64_t k) { return to_acc(gi[k]) + to_acc(a.b_ih[k]); };
    auto rec = [&](int64_t k) { return to_acc(gh[k]) + to_acc(a.b_hh[k]); };
    for (int64_t j = tid; j < H; j += step) {
      cells::GruActivations<A> act;
      const A h_fresh = cells::gru_forward<A>(in(j), in(H + j), in(2 * H + j), rec(j), rec(H + j), rec(2 * H + j),
                                              to_acc(h_prev[j]), act);
      const A h = keep_h != nullptr ? cells::zoneout(keep(keep_h, j), to_acc(h_prev[j]), h_fresh) : h_fresh;
      const T h_stored = from_acc<T>(h);
      h_next[j] = h_stored;
      out[j] = h_stored;
      if (saved != nullptr) {
        saved[j] = from_acc<T>(act.r);
        saved[H + j] = from_acc<T>(act.z);
        saved[2 * H + j] = from_acc<T>(act.n);
        saved[3 * H + j] = from_acc<T>(act.gh_n);
      }
    }
  } else {
    for (int64_t j = tid; j < H; j += step) {
      const A h_fresh = kCell == Cell::RnnTanh ? cells::rnn_tanh_forward<A>(pre(j)) : cells::rnn_relu_forward<A>(pre(j));
      const A h = keep_h != nullptr ? cells::zoneout(keep(keep_h, j), to_acc(h_prev[j]), h_fresh) : h_fresh;
      const T h_stored = from_acc<T>(h);
      h_next[j] = h_stored;
      out[j] = h_stored;
      if (fresh != nullptr) fresh[j] = from_acc<T>(h_fresh);
    }
  }
}

// ----------------------------------------------------------------- backward
// Block b = blockIdx.x, as in forward. d_gh is the gradient of the
// (normalised) h W_hh^T + b_hh: gru's own buffer, lstm's and rnn's d_pre.
template <typename T, Cell kCell>
__global__ void __launch_bounds__(kMaxExtThreads)
    backward_step_ext_kernel(const BackwardStepArgs<T> a, const BackwardExtrasArgs<T> e) {
  using A = acc_t<T>;
  constexpr int G = gates_of(kCell);
  constexpr bool kLstm = kCell == Cell::Lstm, kGru = kCell == Cell::Gru;
  const int64_t b = blockIdx.x, H = a.H, GH = G * H;
  const int64_t tid = threadIdx.x, step = blockDim.x;
  A* scratch = shared_values<A>();       // (64,)
  A* dy_row = scratch + kScratchValues;  // (H,) lstm
  A* c_hat = dy_row + H;                 // (H,) lstm
  // Row b of each buffer.
  const T* dh_carry = a.dh + b * H;                                       // (H,) gradient of the state after the step
  const T* grad_out = a.grad_out != nullptr ? a.grad_out + b * H : nullptr;  // (H,)
  T* dh_prev = a.dh_prev + b * H;                                         // (H,) out
  T* d_pre = a.d_pre + b * GH;                                            // (G*H,) out
  T* d_gh = kGru ? a.d_gh + b * GH : d_pre;                               // (G*H,) out (gru), else d_pre
  const T* saved = kLstm || kGru ? a.saved + b * 4 * H : nullptr;         // (4H,)
  T* d_gh_raw = e.d_gh_raw != nullptr ? e.d_gh_raw + b * GH : nullptr;    // (G*H,) out
  T* d_ln_cell = e.d_ln_cell != nullptr ? e.d_ln_cell + b * 2 * H : nullptr;  // (2H,) out
  const T* stats = e.row_stats != nullptr ? e.row_stats + b * e.stats_stride : nullptr;  // (3,) of (stride,)
  const T* fresh = e.fresh != nullptr ? e.fresh + b * H : nullptr;             // (H,)
  const T* keep_h = e.keep_h != nullptr ? e.keep_h + b * H : nullptr;          // (H,)
  const T* keep_c = e.keep_c != nullptr ? e.keep_c + b * H : nullptr;          // (H,)
  const T* grad_cell_out = e.grad_cell_out != nullptr ? e.grad_cell_out + b * H : nullptr;  // (H,)
  const T* ln_c_w = e.ln_cell_weight;                                          // (H,)
  const T* ln_c_b = e.ln_cell_bias;                                            // (H,)

  if (!row_alive(a.lengths, b, a.t)) {  // the state passed through unchanged: so does its gradient
    for (int64_t j = tid; j < H; j += step) dh_prev[j] = dh_carry[j];
    for (int64_t k = tid; k < GH; k += step) {
      d_pre[k] = from_acc<T>(A(0));
      if (kGru) d_gh[k] = from_acc<T>(A(0));
      if (d_gh_raw != nullptr) d_gh_raw[k] = from_acc<T>(A(0));
    }
    if (d_ln_cell != nullptr) {
      for (int64_t k = tid; k < 2 * H; k += step) d_ln_cell[k] = from_acc<T>(A(0));
    }
    return;  // dc (lstm) stays as it is
  }

  auto keep = [&](const T* k, int64_t j) { return k != nullptr ? to_acc(k[j]) : A(0); };
  // The gradient of this step's h (carry + output); h = keep * h_prev + (1 - keep) * fresh h.
  auto dh_of = [&](int64_t j) {
    return to_acc(dh_carry[j]) + (grad_out != nullptr ? to_acc(grad_out[j]) : A(0));
  };
  if (kLstm) {
    const T* c_prev = a.c_prev + b * H;  // (H,)
    const T* c_next = a.c_next + b * H;  // (H,)
    T* dc = a.dc + b * H;                // (H,) d c_next in, d c_prev out
    const A mean_c = ln_c_w != nullptr ? to_acc(stats[1]) : A(0);
    const A rstd_c = ln_c_w != nullptr ? to_acc(stats[2]) : A(1);
    // h_fresh = o * tanh(y), y = c_fresh or LN(c_fresh): d_o and dy.
    for (int64_t j = tid; j < H; j += step) {
      const A dh_fresh = (A(1) - keep(keep_h, j)) * dh_of(j);
      const A cf = fresh != nullptr ? to_acc(fresh[j]) : to_acc(c_next[j]);
      c_hat[j] = (cf - mean_c) * rstd_c;
      const A y = ln_c_w != nullptr ? to_acc(ln_c_w[j]) * c_hat[j] + to_acc(ln_c_b[j]) : cf;
      A d_o, dy;
      cells::lstm_output_backward<A>(dh_fresh, to_acc(saved[3 * H + j]), cells::StdMath::tanh(y), d_o, dy);
      d_pre[3 * H + j] = from_acc<T>(d_o);
      dy_row[j] = dy;
    }
    A mean_dyg = A(0), mean_dyg_c_hat = A(0);
    if (ln_c_w != nullptr) {  // dy_row's and c_hat's units are this thread's own
      backward_means<A>(H, [&](int64_t j) { return dy_row[j] * to_acc(ln_c_w[j]); }, [&](int64_t j) { return c_hat[j]; },
                        scratch, mean_dyg, mean_dyg_c_hat);
    }
    for (int64_t j = tid; j < H; j += step) {
      const cells::LstmActivations<A> act{to_acc(saved[j]), to_acc(saved[H + j]), to_acc(saved[2 * H + j]),
                                          to_acc(saved[3 * H + j])};
      const A dc_from_h = ln_c_w != nullptr ? cells::layer_norm_backward<A>(dy_row[j] * to_acc(ln_c_w[j]), c_hat[j],
                                                                            rstd_c, mean_dyg, mean_dyg_c_hat)
                                            : dy_row[j];
      if (d_ln_cell != nullptr) {
        d_ln_cell[j] = from_acc<T>(dy_row[j] * c_hat[j]);
        d_ln_cell[H + j] = from_acc<T>(dy_row[j]);
      }
      // c = keep * c_prev + (1 - keep) * c_fresh; the cell output's gradient joins c's.
      const A dc_total = to_acc(dc[j]) + (grad_cell_out != nullptr ? to_acc(grad_cell_out[j]) : A(0));
      const A k = keep(keep_c, j);
      A d_i, d_f, d_g, dc_prev;
      cells::lstm_cell_backward<A>((A(1) - k) * dc_total + dc_from_h, act, to_acc(c_prev[j]), d_i, d_f, d_g, dc_prev);
      d_pre[j] = from_acc<T>(d_i);
      d_pre[H + j] = from_acc<T>(d_f);
      d_pre[2 * H + j] = from_acc<T>(d_g);
      dc[j] = from_acc<T>(dc_prev + k * dc_total);
      dh_prev[j] = from_acc<T>(keep(keep_h, j) * dh_of(j));  // h_prev's zoneout share; the rest goes through W_hh
    }
  } else if (kGru) {
    const T* h_prev = a.h_prev + b * H;  // (H,)
    for (int64_t j = tid; j < H; j += step) {
      const A dh = dh_of(j), k = keep(keep_h, j);
      const cells::GruActivations<A> act{to_acc(saved[j]), to_acc(saved[H + j]), to_acc(saved[2 * H + j]),
                                         to_acc(saved[3 * H + j])};
      A d_r, d_z, d_n, d_hn, dh_direct;
      cells::gru_backward<A>((A(1) - k) * dh, act, to_acc(h_prev[j]), d_r, d_z, d_n, d_hn, dh_direct);
      const T d_r_stored = from_acc<T>(d_r), d_z_stored = from_acc<T>(d_z);
      d_pre[j] = d_r_stored;
      d_gh[j] = d_r_stored;
      d_pre[H + j] = d_z_stored;
      d_gh[H + j] = d_z_stored;
      d_pre[2 * H + j] = from_acc<T>(d_n);
      d_gh[2 * H + j] = from_acc<T>(d_hn);
      dh_prev[j] = from_acc<T>(dh_direct + k * dh);
    }
  } else {
    const T* h_next = a.h_next + b * H;  // (H,)
    for (int64_t j = tid; j < H; j += step) {
      const A dh = dh_of(j), k = keep(keep_h, j);
      const A dh_fresh = (A(1) - k) * dh;
      const A h_fresh = fresh != nullptr ? to_acc(fresh[j]) : to_acc(h_next[j]);
      d_pre[j] = from_acc<T>(kCell == Cell::RnnTanh ? cells::rnn_tanh_backward<A>(dh_fresh, h_fresh)
                                                    : cells::rnn_relu_backward<A>(dh_fresh, h_fresh));
      dh_prev[j] = from_acc<T>(k * dh);
    }
  }
  if (e.ln_hh_weight != nullptr) {  // back through gh = gamma_hh * LN(h W_hh^T)
    __syncthreads();  // d_gh's gate units were written by other threads
    const T* xhat = e.xhat_hh + b * GH;  // (G*H,)
    const T* gamma = e.ln_hh_weight;     // (G*H,)
    const A rstd = to_acc(stats[0]);
    A mean_dyg, mean_dyg_x_hat;
    backward_means<A>(GH, [&](int64_t k) { return to_acc(d_gh[k]) * to_acc(gamma[k]); },
                      [&](int64_t k) { return to_acc(xhat[k]); }, scratch, mean_dyg, mean_dyg_x_hat);
    for (int64_t k = tid; k < GH; k += step) {
      d_gh_raw[k] = from_acc<T>(cells::layer_norm_backward<A>(to_acc(d_gh[k]) * to_acc(gamma[k]), to_acc(xhat[k]),
                                                               rstd, mean_dyg, mean_dyg_x_hat));
    }
  }
}

// One block per batch row, `shared` bytes of dynamic shared memory (opted in
// beyond the default 48 KiB).
template <typename Kernel, typename StepArgs, typename ExtrasArgs>
cudaError_t launch_rows(Kernel kernel, const StepArgs& a, const ExtrasArgs& e, size_t shared, cudaStream_t stream) {
  if (shared > kDefaultSharedBytes) {
    RK_CUDA_RETURN_IF_ERROR(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(shared)));
  }
  kernel<<<dim3(static_cast<unsigned int>(a.B)), dim3(ext_threads(a.H)), shared, stream>>>(a, e);
  return cudaGetLastError();
}

}  // namespace

template <typename T>
size_t ext_step_shared_bytes(Cell cell, int64_t H) {
  const int64_t rows = cell == Cell::Lstm ? 2 * H : 0;
  return size_t(kScratchValues + rows) * sizeof(acc_t<T>);
}

template <typename T>
cudaError_t ext_step_fits(Cell cell, int64_t H, bool* fits) {
  int device = 0, optin = 0;
  RK_CUDA_RETURN_IF_ERROR(cudaGetDevice(&device));
  RK_CUDA_RETURN_IF_ERROR(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
  const size_t limit = size_t(optin) > kDefaultSharedBytes ? size_t(optin) : kDefaultSharedBytes;
  *fits = ext_step_shared_bytes<T>(cell, H) <= limit;
  return cudaSuccess;
}

template <typename T>
cudaError_t launch_forward_step_ext(const ForwardStepArgs<T>& a, const ForwardExtrasArgs<T>& e, cudaStream_t stream) {
  if (a.B == 0 || a.H == 0) return cudaSuccess;
  const size_t shared = ext_step_shared_bytes<T>(a.cell, a.H);
  switch (a.cell) {
    case Cell::Lstm: return launch_rows(forward_step_ext_kernel<T, Cell::Lstm>, a, e, shared, stream);
    case Cell::Gru: return launch_rows(forward_step_ext_kernel<T, Cell::Gru>, a, e, shared, stream);
    case Cell::RnnTanh: return launch_rows(forward_step_ext_kernel<T, Cell::RnnTanh>, a, e, shared, stream);
    case Cell::RnnRelu: return launch_rows(forward_step_ext_kernel<T, Cell::RnnRelu>, a, e, shared, stream);
  }
  return cudaErrorInvalidValue;
}

template <typename T>
cudaError_t launch_backward_step_ext(const BackwardStepArgs<T>& a, const BackwardExtrasArgs<T>& e,
                                     cudaStream_t stream) {
  if (a.B == 0 || a.H == 0) return cudaSuccess;
  const size_t shared = ext_step_shared_bytes<T>(a.cell, a.H);
  switch (a.cell) {
    case Cell::Lstm: return launch_rows(backward_step_ext_kernel<T, Cell::Lstm>, a, e, shared, stream);
    case Cell::Gru: return launch_rows(backward_step_ext_kernel<T, Cell::Gru>, a, e, shared, stream);
    case Cell::RnnTanh: return launch_rows(backward_step_ext_kernel<T, Cell::RnnTanh>, a, e, shared, stream);
    case Cell::RnnRelu: return launch_rows(backward_step_ext_kernel<T, Cell::RnnRelu>, a, e, shared, stream);
  }
  return cudaErrorInvalidValue;
}

#define RK_INSTANTIATE_EXT_LAUNCHERS(T)                                                                    \
  template size_t ext_step_shared_bytes<T>(Cell, int64_t);                                                 \
  template cudaError_t ext_step_fits<T>(Cell, int64_t, bool*);                                             \
  template cudaError_t launch_forward_step_ext<T>(const ForwardStepArgs<T>&, const ForwardExtrasArgs<T>&,  \
                                                  cudaStream_t);                                           \
  template cudaError_t launch_backward_step_ext<T>(const BackwardStepArgs<T>&, const BackwardExtrasArgs<T>&, \
                                                   cudaStream_t);

RK_INSTANTIATE_EXT_LAUNCHERS(float)
RK_INSTANTIATE_EXT_LAUNCHERS(double)
RK_INSTANTIATE_EXT_LAUNCHERS(__nv_bfloat16)

}  // namespace cuda
}  // namespace rnnkernels
