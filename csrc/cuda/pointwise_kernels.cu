// CUDA kernels of the fused pointwise pass of one time step (see
// csrc/pointwise.h for the contract, csrc/cpu/pointwise_cpu.cpp for the CPU
// twin): one thread per (batch row, hidden unit), the gate math of cells.h.
// The sequence loop and the GEMMs stay in csrc/rnn_layer.cpp.
#include "cells.h"
#include "cuda/device_utils.cuh"
#include "cuda/launchers.h"

namespace rnnkernels {
namespace cuda {
namespace {

// ------------------------------------------------------------------ forward
// Thread (b, j), j < H. Without projection P == H, so index b*H + j also
// addresses h_prev, h_next and out.
template <typename T, Cell kCell>
__global__ void forward_step_kernel(const ForwardStepArgs<T> a) {
  using A = acc_t<T>;
  const int64_t H = a.H, n = a.B * H;
  for (int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; idx < n; idx += int64_t(gridDim.x) * blockDim.x) {
    const int64_t b = idx / H, j = idx - b * H;
    const int64_t row = b * (kCell == Cell::Lstm ? 4 : kCell == Cell::Gru ? 3 : 1) * H;
    const T* gi = a.gi + row;
    const T* gh = a.gh + row;
    // Input and recurrent side of gate unit k, biases included (the CPU step's order).
    auto in = [&](int64_t k) { return to_acc(gi[k]) + to_acc(a.b_ih[k]); };
    auto rec = [&](int64_t k) { return to_acc(gh[k]) + to_acc(a.b_hh[k]); };
    auto pre = [&](int64_t k) { return in(k) + to_acc(gh[k]) + to_acc(a.b_hh[k]); };
    T* saved = a.saved != nullptr ? a.saved + b * 4 * H : nullptr;
    if (!row_alive(a.lengths, b, a.t)) {  // frozen state, zero output
      if (kCell == Cell::Lstm) a.c_next[idx] = a.c_prev[idx];
      if (a.h_raw != nullptr) {
        a.h_raw[idx] = from_acc<T>(A(0));  // projected and then discarded by commit_projection
      } else {
        a.h_next[idx] = a.h_prev[idx];
        a.out[idx] = from_acc<T>(A(0));
      }
      if (saved != nullptr) {
#pragma unroll
        for (int g = 0; g < 4; ++g) saved[g * H + j] = from_acc<T>(A(0));
      }
      continue;
    }
    A h;
    if (kCell == Cell::Lstm) {
      cells::LstmActivations<A> act;
      A c;
      cells::lstm_forward<A>(pre(j), pre(H + j), pre(2 * H + j), pre(3 * H + j), to_acc(a.c_prev[idx]), act, c, h);
      a.c_next[idx] = from_acc<T>(c);
      if (saved != nullptr) {
        saved[j] = from_acc<T>(act.i);
        saved[H + j] = from_acc<T>(act.f);
        saved[2 * H + j] = from_acc<T>(act.g);
        saved[3 * H + j] = from_acc<T>(act.o);
      }
    } else if (kCell == Cell::Gru) {
      cells::GruActivations<A> act;
      h = cells::gru_forward<A>(in(j), in(H + j), in(2 * H + j), rec(j), rec(H + j), rec(2 * H + j),
                                to_acc(a.h_prev[idx]), act);
      if (saved != nullptr) {
        saved[j] = from_acc<T>(act.r);
        saved[H + j] = from_acc<T>(act.z);
        saved[2 * H + j] = from_acc<T>(act.n);
        saved[3 * H + j] = from_acc<T>(act.gh_n);
      }
    } else if (kCell == Cell::RnnTanh) {
      h = cells::rnn_tanh_forward<A>(pre(j));
    } else {
      h = cells::rnn_relu_forward<A>(pre(j));
    }
    const T h_stored = from_acc<T>(h);
    if (a.h_raw != nullptr) {
      a.h_raw[idx] = h_stored;
    } else {
      a.h_next[idx] = h_stored;
      a.out[idx] = h_stored;
    }
  }
}

// ----------------------------------------------------------------- backward
// Thread (b, j), j < max(H, P): units j < H do the gate math, j < P write
// dh_prev (P != H only for lstm with projection).
template <typename T, Cell kCell>
__global__ void backward_step_kernel(const BackwardStepArgs<T> a) {
  using A = acc_t<T>;
  constexpr int G = kCell == Cell::Lstm ? 4 : kCell == Cell::Gru ? 3 : 1;
  const int64_t H = a.H, P = a.P, W = H > P ? H : P, n = a.B * W;
  for (int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; idx < n; idx += int64_t(gridDim.x) * blockDim.x) {
    const int64_t b = idx / W, j = idx - b * W;
    T* d_pre = a.d_pre + b * G * H;
    if (!row_alive(a.lengths, b, a.t)) {  // the state passed through unchanged: so does its gradient
      if (j < P) a.dh_prev[b * P + j] = a.dh[b * P + j];
      if (j < H) {
#pragma unroll
        for (int g = 0; g < G; ++g) d_pre[g * H + j] = from_acc<T>(A(0));
        if (kCell == Cell::Gru) {
#pragma unroll
          for (int g = 0; g < 3; ++g) a.d_gh[b * 3 * H + g * H + j] = from_acc<T>(A(0));
        }
      }
      continue;  // dc (lstm) stays as it is
    }
    if (j < H) {
      // The gradient of this step's h: through the projection, or carry + output.
      A dh;
      if (a.dh_raw != nullptr) {
        dh = to_acc(a.dh_raw[b * H + j]);
      } else {
        dh = to_acc(a.dh[b * P + j]);
        if (a.grad_out != nullptr) dh += to_acc(a.grad_out[b * P + j]);
      }
      const int64_t hj = b * H + j;
      if (kCell == Cell::Lstm) {
        const T* saved = a.saved + b * 4 * H;
        const cells::LstmActivations<A> act{to_acc(saved[j]), to_acc(saved[H + j]), to_acc(saved[2 * H + j]),
                                            to_acc(saved[3 * H + j])};
        A d_i, d_f, d_g, d_o, dc_prev;
        cells::lstm_backward<A>(dh, to_acc(a.dc[hj]), act, to_acc(a.c_prev[hj]), to_acc(a.c_next[hj]), d_i, d_f,
                                d_g, d_o, dc_prev);
        d_pre[j] = from_acc<T>(d_i);
        d_pre[H + j] = from_acc<T>(d_f);
        d_pre[2 * H + j] = from_acc<T>(d_g);
        d_pre[3 * H + j] = from_acc<T>(d_o);
        a.dc[hj] = from_acc<T>(dc_prev);
      } else if (kCell == Cell::Gru) {
        const T* saved = a.saved + b * 4 * H;
        T* d_gh = a.d_gh + b * 3 * H;
        const cells::GruActivations<A> act{to_acc(saved[j]), to_acc(saved[H + j]), to_acc(saved[2 * H + j]),
                                           to_acc(saved[3 * H + j])};
        A d_r, d_z, d_n, d_hn, dh_direct;
        cells::gru_backward<A>(dh, act, to_acc(a.h_prev[b * P + j]), d_r, d_z, d_n, d_hn, dh_direct);
        d_pre[j] = d_gh[j] = from_acc<T>(d_r);
        d_pre[H + j] = d_gh[H + j] = from_acc<T>(d_z);
        d_pre[2 * H + j] = from_acc<T>(d_n);
        d_gh[2 * H + j] = from_acc<T>(d_hn);
        a.dh_prev[b * P + j] = from_acc<T>(dh_direct);
      } else if (kCell == Cell::RnnTanh) {
        d_pre[j] = from_acc<T>(cells::rnn_tanh_backward<A>(dh, to_acc(a.h_next[b * P + j])));
      } else {
        d_pre[j] = from_acc<T>(cells::rnn_relu_backward<A>(dh, to_acc(a.h_next[b * P + j])));
      }
    }
    // lstm and rnn: h_prev reaches the loss only through W_hh.
    if (kCell != Cell::Gru && j < P) a.dh_prev[b * P + j] = from_acc<T>(A(0));
  }
}

// --------------------------------------------------------------- projection

template <typename T>
__global__ void commit_projection_kernel(int64_t t, int64_t B, int64_t P, const int64_t* lengths, T* out,
                                         const T* h_prev, T* h_next) {
  const int64_t n = B * P;
  for (int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; idx < n; idx += int64_t(gridDim.x) * blockDim.x) {
    if (row_alive(lengths, idx / P, t)) {
      h_next[idx] = out[idx];
    } else {
      h_next[idx] = h_prev[idx];
      out[idx] = from_acc<T>(acc_t<T>(0));
    }
  }
}

template <typename T>
__global__ void gather_projected_grad_kernel(int64_t t, int64_t B, int64_t P, const int64_t* lengths, const T* dh,
                                             const T* grad_out, T* dst) {
  const int64_t n = B * P;
  for (int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; idx < n; idx += int64_t(gridDim.x) * blockDim.x) {
    if (!row_alive(lengths, idx / P, t)) {
      dst[idx] = from_acc<T>(acc_t<T>(0));
    } else {
      dst[idx] = grad_out != nullptr ? from_acc<T>(to_acc(dh[idx]) + to_acc(grad_out[idx])) : dh[idx];
    }
  }
}

}  // namespace

template <typename T>
cudaError_t launch_forward_step(const ForwardStepArgs<T>& a, cudaStream_t stream) {
  const int64_t n = a.B * a.H;
  if (n == 0) return cudaSuccess;
  const dim3 grid(elementwise_blocks(n)), block(kElementwiseThreads);
  switch (a.cell) {
    case Cell::Lstm: forward_step_kernel<T, Cell::Lstm><<<grid, block, 0, stream>>>(a); break;
    case Cell::Gru: forward_step_kernel<T, Cell::Gru><<<grid, block, 0, stream>>>(a); break;
    case Cell::RnnTanh: forward_step_kernel<T, Cell::RnnTanh><<<grid, block, 0, stream>>>(a); break;
    case Cell::RnnRelu: forward_step_kernel<T, Cell::RnnRelu><<<grid, block, 0, stream>>>(a); break;
  }
  return cudaGetLastError();
}

template <typename T>
cudaError_t launch_backward_step(const BackwardStepArgs<T>& a, cudaStream_t stream) {
  const int64_t n = a.B * (a.H > a.P ? a.H : a.P);
  if (n == 0) return cudaSuccess;
  const dim3 grid(elementwise_blocks(n)), block(kElementwiseThreads);
  switch (a.cell) {
    case Cell::Lstm: backward_step_kernel<T, Cell::Lstm><<<grid, block, 0, stream>>>(a); break;
    case Cell::Gru: backward_step_kernel<T, Cell::Gru><<<grid, block, 0, stream>>>(a); break;
    case Cell::RnnTanh: backward_step_kernel<T, Cell::RnnTanh><<<grid, block, 0, stream>>>(a); break;
    case Cell::RnnRelu: backward_step_kernel<T, Cell::RnnRelu><<<grid, block, 0, stream>>>(a); break;
  }
  return cudaGetLastError();
}

template <typename T>
cudaError_t launch_commit_projection(int64_t t, int64_t B, int64_t P, const int64_t* lengths, T* out,
                                     const T* h_prev, T* h_next, cudaStream_t stream) {
  if (B * P == 0) return cudaSuccess;
  commit_projection_kernel<T><<<elementwise_blocks(B * P), kElementwiseThreads, 0, stream>>>(t, B, P, lengths, out,
                                                                                             h_prev, h_next);
  return cudaGetLastError();
}

template <typename T>
cudaError_t launch_gather_projected_grad(int64_t t, int64_t B, int64_t P, const int64_t* lengths, const T* dh,
                                         const T* grad_out, T* dst, cudaStream_t stream) {
  if (B * P == 0) return cudaSuccess;
  gather_projected_grad_kernel<T><<<elementwise_blocks(B * P), kElementwiseThreads, 0, stream>>>(t, B, P, lengths,
                                                                                                 dh, grad_out, dst);
  return cudaGetLastError();
}

#define RK_INSTANTIATE_STEP_LAUNCHERS(T)                                                                          \
  template cudaError_t launch_forward_step<T>(const ForwardStepArgs<T>&, cudaStream_t);                          \
  template cudaError_t launch_backward_step<T>(const BackwardStepArgs<T>&, cudaStream_t);                        \
  template cudaError_t launch_commit_projection<T>(int64_t, int64_t, int64_t, const int64_t*, T*, const T*, T*,  \
                                                   cudaStream_t);                                                \
  template cudaError_t launch_gather_projected_grad<T>(int64_t, int64_t, int64_t, const int64_t*, const T*,      \
                                                       const T*, T*, cudaStream_t);

RK_INSTANTIATE_STEP_LAUNCHERS(float)
RK_INSTANTIATE_STEP_LAUNCHERS(double)
RK_INSTANTIATE_STEP_LAUNCHERS(__half)
RK_INSTANTIATE_STEP_LAUNCHERS(__nv_bfloat16)

}  // namespace cuda
}  // namespace rnnkernels
