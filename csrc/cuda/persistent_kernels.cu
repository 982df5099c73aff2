// Persistent forward and backward kernels of lstm and gru layers for small
// batches (see the PersistentPlan comment in launchers.h, and the selection
// heuristic in csrc/cuda/rnn_cuda.cpp).
//
// Forward, per step, block i (units j0 = i*U .. j0+U-1, rows r = g*U + u of its W_hh
// slice, R = G*U rows, all in shared memory):
//   1. recurrent GEMV: acc[r][b] = sum_k W_hh[g*H + j0 + u][k] * h_prev[b][k]
//      h_prev is staged in chunks of KC columns into shared memory; a warp
//      owns a row, its lanes split k and hold one partial per batch row; a
//      warp reduce-scatter leaves the total for b in one lane.
//   2. pointwise: thread (u, b) adds the input projection (precomputed for
//      all steps by one GEMM) and both biases and applies the cells.h cell; h goes to global
//      memory (the next step's input of every block), the LSTM cell state
//      stays in shared memory in float.
//   3. grid.sync(): the next step reads the h every block just wrote.
// The state h is exchanged through global memory in the storage type (like
// the step path); loads use __ldcg (L2) because L1 is not coherent across
// blocks and the inference layout reuses two state slots.
//
// Backward, per step (in reverse processing order), block i keeps the
// columns j0 .. j0+U-1 of W_hh (all G*H rows of each) in shared memory and
// the gradients of its units' h (and c) in float:
//   1. pointwise: thread (u, b) turns d h (carry + output gradient) into the
//      gate gradients d_pre[t] (global: the weight gradients need them all)
//      and the part of d h_prev that bypasses W_hh;
//   2. grid.sync(): every block's d_pre[t] is written;
//   3. d h_prev[b][j] = bypass + sum_r d_gh[t][b][r] * W_hh[r][j] for its own
//      units j, the same warp GEMV as the forward with W_hh's columns as rows.
// Its own units' carry never leaves the block, so one grid.sync per step.
#include <cooperative_groups.h>

#include <map>
#include <mutex>
#include <tuple>

#include "cells.h"
#include "cuda/device_utils.cuh"
#include "cuda/launchers.h"

namespace cg = cooperative_groups;

namespace rnnkernels {
namespace cuda {
namespace {

constexpr int kPersistentThreads = 256;

constexpr int gates_of(Cell cell) { return cell == Cell::Lstm ? 4 : 3; }

template <int N>
struct Log2 {
  static constexpr int value = 1 + Log2<N / 2>::value;
};
template <>
struct Log2<1> {
  static constexpr int value = 0;
};

// Columns of h_prev staged per chunk: 32 KiB of floats for the batch tile.
__host__ __device__ constexpr int chunk_columns(int H, int max_batch) {
  return ((H + 31) / 32 * 32) < 8192 / max_batch ? ((H + 31) / 32 * 32) : 8192 / max_batch;
}

// Dynamic shared memory of one block with U units: the float buffers listed
// at the top of each kernel, then its slice of W_hh (G*U*H elements).
template <typename T>
size_t shared_bytes(int G, int U, int H, int max_batch, bool backward) {
  const size_t floats = backward ? 3 * size_t(U) * max_batch + size_t(max_batch) * chunk_columns(G * H, max_batch)
                                 : size_t(G) * U * max_batch + size_t(U) * max_batch +
                                       size_t(max_batch) * chunk_columns(H, max_batch);
  return sizeof(float) * floats + sizeof(T) * size_t(G) * U * H;
}

// v[b] holds each lane's partial sum for batch row b. Afterwards lane
// (b << kShift), kShift = log2(32 / MAX_B), holds the warp's total for b in
// v[0]: recursive halving (each lane keeps half of its values and adds its
// partner's copy of them; template recursion keeps every index a constant,
// so v stays in registers), then a plain reduction over the lanes left.
template <int HALF, int SHIFT, int N>
__device__ __forceinline__ void halve_and_add(float (&v)[N], int lane) {
  if constexpr (HALF >= 1) {
    constexpr int offset = HALF << SHIFT;
    const bool upper = (lane & offset) != 0;
#pragma unroll
    for (int i = 0; i < HALF; ++i) {
      const float send = upper ? v[i] : v[i + HALF];
      const float keep = upper ? v[i + HALF] : v[i];
      v[i] = keep + __shfl_xor_sync(0xffffffffu, send, offset);
    }
    halve_and_add<HALF / 2, SHIFT>(v, lane);
  }
}

template <int MAX_B>
__device__ __forceinline__ void warp_reduce_scatter(float (&v)[MAX_B], int lane) {
  constexpr int kShift = 5 - Log2<MAX_B>::value;
  halve_and_add<MAX_B / 2, kShift>(v, lane);
#pragma unroll
  for (int offset = (1 << kShift) / 2; offset >= 1; offset /= 2) v[0] += __shfl_xor_sync(0xffffffffu, v[0], offset);
}

// For each row r < R of mat_s (shared memory, rows of length L) and each
// vector b < B of vec (global memory, vector b at vec + b * ld, length L):
// total = sum_l mat_s[r][l] * vec[b][l], in chunks of KC columns staged in
// stage_s (MAX_B, KC). A warp owns a row; its lanes split the columns and
// hold one partial per vector. emit(r, b, partial, first_chunk) runs on one
// lane per (r, b), the same lane for every chunk, and must add up partials.
// Begins and ends with __syncthreads.
template <typename T, int MAX_B, typename Emit>
__device__ __forceinline__ void rows_dot_vectors(const T* mat_s, int R, int L, const T* vec, int64_t ld, int B,
                                                 float* stage_s, int KC, const Emit& emit) {
  constexpr int kShift = 5 - Log2<MAX_B>::value;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  for (int l0 = 0; l0 < L; l0 += KC) {
    const int lc = L - l0 < KC ? L - l0 : KC;
    __syncthreads();  // the previous chunk (or phase) is done with stage_s
    for (int idx = threadIdx.x; idx < MAX_B * KC; idx += blockDim.x) {
      const int b = idx / KC, l = idx - b * KC;
      stage_s[idx] = (b < B && l < lc) ? to_acc(__ldcg(vec + b * ld + l0 + l)) : 0.f;
    }
    __syncthreads();
    for (int r = warp; r < R; r += warps) {
      float part[MAX_B];
#pragma unroll
      for (int b = 0; b < MAX_B; ++b) part[b] = 0.f;
      const T* row = mat_s + int64_t(r) * L + l0;
      for (int l = lane; l < lc; l += 32) {
        const float w = to_acc(row[l]);
#pragma unroll
        for (int b = 0; b < MAX_B; ++b) part[b] = fmaf(w, stage_s[b * KC + l], part[b]);
      }
      warp_reduce_scatter<MAX_B>(part, lane);
      if ((lane & ((1 << kShift) - 1)) == 0) emit(r, lane >> kShift, part[0], l0 == 0);
    }
  }
  __syncthreads();
}

template <typename T, Cell kCell, int MAX_B>
__global__ void __launch_bounds__(kPersistentThreads)
    persistent_forward_kernel(const PersistentForwardArgs<T> a, const int U) {
  constexpr int G = gates_of(kCell);
  cg::grid_group grid = cg::this_grid();
  extern __shared__ __align__(16) unsigned char shared_raw[];
  const int H = a.H, B = a.B, KC = chunk_columns(H, MAX_B), R = G * U;
  float* acc_s = reinterpret_cast<float*>(shared_raw);  // (R, MAX_B) recurrent pre-activations of this step
  float* c_s = acc_s + R * MAX_B;                        // (U, MAX_B) lstm cell state of this block's units
  float* h_s = c_s + U * MAX_B;                          // (MAX_B, KC) a chunk of h_prev
  T* w_s = reinterpret_cast<T*>(h_s + MAX_B * KC);       // (R, H) row g*U + u is W_hh row g*H + j0 + u
  const int j0 = blockIdx.x * U;
  const int64_t BH = int64_t(B) * H;
  // Which slot of states / cells holds the state before the k-th processed step.
  auto slot = [&](int k) -> int64_t { return a.training ? (a.reverse ? a.steps - k : k) : (k & 1); };

  for (int64_t idx = threadIdx.x; idx < int64_t(R) * H; idx += blockDim.x) {
    const int r = int(idx / H), k = int(idx - int64_t(r) * H);
    const int g = r / U, j = j0 + (r - g * U);
    w_s[idx] = j < H ? a.w_hh[(int64_t(g) * H + j) * H + k] : from_acc<T>(0.f);
  }
  if (kCell == Cell::Lstm) {
    for (int idx = threadIdx.x; idx < U * MAX_B; idx += blockDim.x) {
      const int u = idx / MAX_B, b = idx - u * MAX_B, j = j0 + u;
      c_s[idx] = (j < H && b < B) ? to_acc(a.cells[slot(0) * BH + int64_t(b) * H + j]) : 0.f;
    }
  }

  for (int k = 0; k < a.steps; ++k) {
    const int t = a.reverse ? a.steps - 1 - k : k;
    const T* h_prev = a.states + slot(k) * BH;
    T* h_next = a.states + slot(k + 1) * BH;

    // 1. acc = W_hh slice x h_prev.
    rows_dot_vectors<T, MAX_B>(w_s, R, H, h_prev, H, B, h_s, KC, [&](int r, int b, float part, bool first) {
      float* dst = acc_s + r * MAX_B + b;
      *dst = (first ? 0.f : *dst) + part;
    });

    // 2. The cell, thread (u, b).
    for (int idx = threadIdx.x; idx < U * MAX_B; idx += blockDim.x) {
      const int u = idx / MAX_B, b = idx - u * MAX_B, j = j0 + u;
      if (j >= H || b >= B) continue;
      const int64_t hj = int64_t(b) * H + j;
      T* out = a.out + int64_t(t) * BH + hj;
      T* saved = a.gates != nullptr ? a.gates + (int64_t(t) * B + b) * 4 * H : nullptr;
      T* c_next = kCell == Cell::Lstm ? a.cells + slot(k + 1) * BH + hj : nullptr;
      if (!row_alive(a.lengths, b, t)) {  // frozen state, zero output
        h_next[hj] = __ldcg(h_prev + hj);
        *out = from_acc<T>(0.f);
        if (saved != nullptr) {
#pragma unroll
          for (int g = 0; g < 4; ++g) saved[g * H + j] = from_acc<T>(0.f);
        }
        if (kCell == Cell::Lstm) *c_next = from_acc<T>(c_s[idx]);
        continue;
      }
      // Input side (x W_ih^T + b_ih) and recurrent side (h W_hh^T + b_hh) of each gate.
      const T* gi = a.gi + (int64_t(t) * B + b) * G * H;
      float in[G], rec[G];
#pragma unroll
      for (int g = 0; g < G; ++g) {
        in[g] = to_acc(gi[g * H + j]) + (a.b_ih != nullptr ? to_acc(a.b_ih[g * H + j]) : 0.f);
        rec[g] = acc_s[(g * U + u) * MAX_B + b] + (a.b_hh != nullptr ? to_acc(a.b_hh[g * H + j]) : 0.f);
      }
      float h;
      if (kCell == Cell::Lstm) {
        cells::LstmActivations<float> act;
        float c;
        cells::lstm_forward<float>(in[0] + rec[0], in[1] + rec[1], in[2] + rec[2], in[3] + rec[3], c_s[idx], act, c,
                                   h);
        c_s[idx] = c;
        *c_next = from_acc<T>(c);
        if (saved != nullptr) {
          saved[j] = from_acc<T>(act.i);
          saved[H + j] = from_acc<T>(act.f);
          saved[2 * H + j] = from_acc<T>(act.g);
          saved[3 * H + j] = from_acc<T>(act.o);
        }
      } else {
        cells::GruActivations<float> act;
        h = cells::gru_forward<float>(in[0], in[1], in[2], rec[0], rec[1], rec[2], to_acc(__ldcg(h_prev + hj)), act);
        if (saved != nullptr) {
          saved[j] = from_acc<T>(act.r);
          saved[H + j] = from_acc<T>(act.z);
          saved[2 * H + j] = from_acc<T>(act.n);
          saved[3 * H + j] = from_acc<T>(act.gh_n);
        }
      }
      const T h_stored = from_acc<T>(h);
      h_next[hj] = h_stored;
      *out = h_stored;
    }

    // 3. Every block's h_next is written (grid.sync orders the memory too).
    grid.sync();
  }
}

template <typename T, Cell kCell, int MAX_B>
__global__ void __launch_bounds__(kPersistentThreads)
    persistent_backward_kernel(const PersistentBackwardArgs<T> a, const int U) {
  constexpr int G = gates_of(kCell);
  cg::grid_group grid = cg::this_grid();
  extern __shared__ __align__(16) unsigned char shared_raw[];
  const int H = a.H, B = a.B, GH = G * H, KC = chunk_columns(GH, MAX_B);
  float* dh_s = reinterpret_cast<float*>(shared_raw);  // (U, MAX_B) d h after the step being processed
  float* dc_s = dh_s + U * MAX_B;                       // (U, MAX_B) lstm: d c after that step
  float* bypass_s = dc_s + U * MAX_B;                   // (U, MAX_B) the part of d h_prev not through W_hh
  float* stage_s = bypass_s + U * MAX_B;                // (MAX_B, KC) a chunk of d_gh[t]
  T* wt_s = reinterpret_cast<T*>(stage_s + MAX_B * KC); // (U, G*H) row u is column j0 + u of W_hh
  const int j0 = blockIdx.x * U;
  const int64_t BH = int64_t(B) * H;
  auto slot = [&](int k) -> int64_t { return a.reverse ? a.steps - k : k; };

  // Consecutive threads read consecutive columns of a W_hh row (coalesced).
  for (int64_t idx = threadIdx.x; idx < int64_t(U) * GH; idx += blockDim.x) {
    const int r = int(idx / U), u = int(idx - int64_t(r) * U), j = j0 + u;
    wt_s[int64_t(u) * GH + r] = j < H ? a.w_hh[int64_t(r) * H + j] : from_acc<T>(0.f);
  }
  for (int idx = threadIdx.x; idx < U * MAX_B; idx += blockDim.x) {  // same (u, b) mapping as below
    const int u = idx / MAX_B, b = idx - u * MAX_B, j = j0 + u;
    const bool valid = j < H && b < B;
    dh_s[idx] = valid && a.grad_h_n != nullptr ? to_acc(a.grad_h_n[int64_t(b) * H + j]) : 0.f;
    dc_s[idx] = valid && a.grad_c_n != nullptr ? to_acc(a.grad_c_n[int64_t(b) * H + j]) : 0.f;
  }

  for (int k = a.steps - 1; k >= 0; --k) {
    const int t = a.reverse ? a.steps - 1 - k : k;

    // 1. Gate gradients of this block's units, thread (u, b).
    for (int idx = threadIdx.x; idx < U * MAX_B; idx += blockDim.x) {
      const int u = idx / MAX_B, b = idx - u * MAX_B, j = j0 + u;
      if (j >= H || b >= B) continue;
      const int64_t hj = int64_t(b) * H + j;
      T* d_pre = a.d_pre + (int64_t(t) * B + b) * GH;
      T* d_gh = kCell == Cell::Gru ? a.d_gh + (int64_t(t) * B + b) * GH : nullptr;
      if (!row_alive(a.lengths, b, t)) {  // the state passed through unchanged: so does its gradient
#pragma unroll
        for (int g = 0; g < G; ++g) d_pre[g * H + j] = from_acc<T>(0.f);
        if (kCell == Cell::Gru) {
#pragma unroll
          for (int g = 0; g < 3; ++g) d_gh[g * H + j] = from_acc<T>(0.f);
        }
        bypass_s[idx] = dh_s[idx];  // dc (lstm) stays as it is
        continue;
      }
      const float dh = dh_s[idx] + (a.grad_output != nullptr ? to_acc(a.grad_output[int64_t(t) * BH + hj]) : 0.f);
      const T* saved = a.gates + (int64_t(t) * B + b) * 4 * H;
      if (kCell == Cell::Lstm) {
        const cells::LstmActivations<float> act{to_acc(saved[j]), to_acc(saved[H + j]), to_acc(saved[2 * H + j]),
                                                to_acc(saved[3 * H + j])};
        float d_i, d_f, d_g, d_o, dc_prev;
        cells::lstm_backward<float>(dh, dc_s[idx], act, to_acc(a.cells[slot(k) * BH + hj]),
                                    to_acc(a.cells[slot(k + 1) * BH + hj]), d_i, d_f, d_g, d_o, dc_prev);
        d_pre[j] = from_acc<T>(d_i);
        d_pre[H + j] = from_acc<T>(d_f);
        d_pre[2 * H + j] = from_acc<T>(d_g);
        d_pre[3 * H + j] = from_acc<T>(d_o);
        dc_s[idx] = dc_prev;
        bypass_s[idx] = 0.f;  // h_prev reaches the loss only through W_hh
      } else {
        const cells::GruActivations<float> act{to_acc(saved[j]), to_acc(saved[H + j]), to_acc(saved[2 * H + j]),
                                               to_acc(saved[3 * H + j])};
        float d_r, d_z, d_n, d_hn, dh_direct;
        cells::gru_backward<float>(dh, act, to_acc(a.states[slot(k) * BH + hj]), d_r, d_z, d_n, d_hn, dh_direct);
        d_pre[j] = d_gh[j] = from_acc<T>(d_r);
        d_pre[H + j] = d_gh[H + j] = from_acc<T>(d_z);
        d_pre[2 * H + j] = from_acc<T>(d_n);
        d_gh[2 * H + j] = from_acc<T>(d_hn);
        bypass_s[idx] = dh_direct;
      }
    }

    // 2. Every block's gate gradients of step t are written.
    grid.sync();

    // 3. d h_prev of this block's units = bypass + d_gh[t] W_hh[:, j].
    const T* d_rec = (kCell == Cell::Gru ? a.d_gh : a.d_pre) + int64_t(t) * B * GH;
    rows_dot_vectors<T, MAX_B>(wt_s, U, GH, d_rec, GH, B, stage_s, KC, [&](int u, int b, float part, bool first) {
      const int i = u * MAX_B + b;
      dh_s[i] = (first ? bypass_s[i] : dh_s[i]) + part;
    });
  }

  for (int idx = threadIdx.x; idx < U * MAX_B; idx += blockDim.x) {
    const int u = idx / MAX_B, b = idx - u * MAX_B, j = j0 + u;
    if (j >= H || b >= B) continue;
    a.grad_h0[int64_t(b) * H + j] = from_acc<T>(dh_s[idx]);
    if (kCell == Cell::Lstm) a.grad_c0[int64_t(b) * H + j] = from_acc<T>(dc_s[idx]);
  }
}

using KernelPtr = const void*;

template <typename T, int MAX_B>
KernelPtr persistent_kernel_for(Cell cell, bool backward) {
  if (cell == Cell::Lstm) {
    return backward ? reinterpret_cast<KernelPtr>(&persistent_backward_kernel<T, Cell::Lstm, MAX_B>)
                    : reinterpret_cast<KernelPtr>(&persistent_forward_kernel<T, Cell::Lstm, MAX_B>);
  }
  return backward ? reinterpret_cast<KernelPtr>(&persistent_backward_kernel<T, Cell::Gru, MAX_B>)
                  : reinterpret_cast<KernelPtr>(&persistent_forward_kernel<T, Cell::Gru, MAX_B>);
}

template <typename T>
KernelPtr persistent_kernel(Cell cell, int max_batch, bool backward) {
  return max_batch <= 8 ? persistent_kernel_for<T, 8>(cell, backward) : persistent_kernel_for<T, 32>(cell, backward);
}

// One block per SM, each with U = ceil(H / SMs) units. Fewer, larger blocks
// would leave SMs idle; more, smaller ones would share an SM's shared memory
// (the weights take as much in total) and each restage h from L2, whose
// traffic (blocks * B * H per step) is the other main cost of a step. The
// grid fits when one block's slice of W_hh plus its buffers fits in the
// opt-in shared memory of a block and the blocks are co-resident.
template <typename T>
cudaError_t search_plan(Cell cell, int max_batch, int H, bool backward, PersistentPlan* plan) {
  int device = 0, cooperative = 0, sms = 0, shared_optin = 0;
  RK_CUDA_RETURN_IF_ERROR(cudaGetDevice(&device));
  RK_CUDA_RETURN_IF_ERROR(cudaDeviceGetAttribute(&cooperative, cudaDevAttrCooperativeLaunch, device));
  RK_CUDA_RETURN_IF_ERROR(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
  RK_CUDA_RETURN_IF_ERROR(cudaDeviceGetAttribute(&shared_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
  if (!cooperative || sms < 1) return cudaSuccess;
  const int units = (H + sms - 1) / sms, blocks = (H + units - 1) / units;
  const size_t bytes = shared_bytes<T>(gates_of(cell), units, H, max_batch, backward);
  if (bytes > size_t(shared_optin)) return cudaSuccess;
  const KernelPtr kernel = persistent_kernel<T>(cell, max_batch, backward);
  // The maximum, not `bytes`: plans of other H share this kernel and stay cached.
  RK_CUDA_RETURN_IF_ERROR(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, shared_optin));
  RK_CUDA_RETURN_IF_ERROR(
      cudaFuncSetAttribute(kernel, cudaFuncAttributePreferredSharedMemoryCarveout, cudaSharedmemCarveoutMaxShared));
  int per_sm = 0;
  RK_CUDA_RETURN_IF_ERROR(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, kPersistentThreads, bytes));
  if (int64_t(per_sm) * sms < blocks) return cudaSuccess;
  plan->fits = true;
  plan->units_per_block = units;
  plan->blocks = blocks;
  plan->threads = kPersistentThreads;
  plan->max_batch = max_batch;
  plan->shared_bytes = bytes;
  return cudaSuccess;
}

// Both passes launch alike: Args is PersistentForwardArgs<T> (backward
// false) or PersistentBackwardArgs<T> (backward true).
template <typename T, typename Args>
cudaError_t launch_persistent(const Args& args, const PersistentPlan& plan, bool backward, cudaStream_t stream) {
  if (!plan.fits || args.B > plan.max_batch) return cudaErrorInvalidValue;
  if (args.steps == 0) return cudaSuccess;
  Args kernel_args = args;
  int units = plan.units_per_block;
  void* params[] = {&kernel_args, &units};
  RK_CUDA_RETURN_IF_ERROR(cudaLaunchCooperativeKernel(persistent_kernel<T>(args.cell, plan.max_batch, backward),
                                                      dim3(plan.blocks), dim3(plan.threads), params,
                                                      plan.shared_bytes, stream));
  return cudaGetLastError();
}

}  // namespace

template <typename T>
cudaError_t plan_persistent(Cell cell, int B, int H, bool backward, PersistentPlan* plan) {
  *plan = PersistentPlan();
  if ((cell != Cell::Lstm && cell != Cell::Gru) || B < 1 || B > 32 || H < 1) return cudaSuccess;
  const int max_batch = B <= 8 ? 8 : 32;
  int device = 0;
  RK_CUDA_RETURN_IF_ERROR(cudaGetDevice(&device));
  // Plans depend only on these, so each is searched once per process.
  using Key = std::tuple<int, int, int, int, bool>;
  static std::mutex mutex;
  static std::map<Key, PersistentPlan> cache;
  const Key key{device, int(cell), max_batch, H, backward};
  std::lock_guard<std::mutex> lock(mutex);
  const auto found = cache.find(key);
  if (found != cache.end()) {
    *plan = found->second;
    return cudaSuccess;
  }
  RK_CUDA_RETURN_IF_ERROR(search_plan<T>(cell, max_batch, H, backward, plan));
  cache.emplace(key, *plan);
  return cudaSuccess;
}

template <typename T>
cudaError_t launch_persistent_forward(const PersistentForwardArgs<T>& args, const PersistentPlan& plan,
                                      cudaStream_t stream) {
  return launch_persistent<T>(args, plan, /*backward=*/false, stream);
}

template <typename T>
cudaError_t launch_persistent_backward(const PersistentBackwardArgs<T>& args, const PersistentPlan& plan,
                                       cudaStream_t stream) {
  return launch_persistent<T>(args, plan, /*backward=*/true, stream);
}

#define RK_INSTANTIATE_PERSISTENT(T)                                                                         \
  template cudaError_t plan_persistent<T>(Cell, int, int, bool, PersistentPlan*);                            \
  template cudaError_t launch_persistent_forward<T>(const PersistentForwardArgs<T>&, const PersistentPlan&,  \
                                                    cudaStream_t);                                           \
  template cudaError_t launch_persistent_backward<T>(const PersistentBackwardArgs<T>&, const PersistentPlan&, \
                                                     cudaStream_t);

RK_INSTANTIATE_PERSISTENT(float)
RK_INSTANTIATE_PERSISTENT(__half)
RK_INSTANTIATE_PERSISTENT(__nv_bfloat16)

}  // namespace cuda
}  // namespace rnnkernels
