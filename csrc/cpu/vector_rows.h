// One row of the plain LSTM or GRU forward (no LayerNorm, zoneout or cell
// outputs) with explicit AVX-512 vectors: the gate math is cells.h's
// lstm_forward / gru_forward on 16 units at a time, with an exp and a
// reciprocal built on vscalefps and vrcp14ps (csrc/cpu/vector_rows.cpp),
// which the `#pragma omp simd` loops of pointwise_cpu.cpp cannot reach from
// scalar code (there 2^k is built from bits and 1/d takes three Newton
// steps), and GCC 12 ran the bfloat16 rows in 256-bit halves. On the 2-core
// Xeon (family 6 model 167), whole 1-layer layers at the suite's shapes:
// bfloat16 forward 1.08-1.27x (LSTM) and 1.05-1.17x (GRU), float32
// 0.96-1.13x (benchmarks/vector_rows.py).
#pragma once

#include <cstdint>

namespace rnnkernels {
namespace cpu {

// Whether the rows below run here: the CPU has AVX-512 F, BW, DQ and VL, and
// set_vector_rows(false) has not turned them off (tests compare both paths).
bool vector_rows_run();
void set_vector_rows(bool on);

// stored_t is float or bfloat16's bits (uint16_t), computed in float.
//
// LSTM, unit j of a row of H units: pre_g = gi[gH + j] + b_ih[gH + j] +
// gh[gH + j] + b_hh[gH + j] for gates g = i, f, g, o (gh null: already in gi); writes c_next[j],
// h_dst[j] and out_dst[j] (h), and the activations to saved[gH + j] (saved
// may be gi: unit j's gates are written after they are read; null in
// inference, which stores no gates).
template <typename stored_t>
void lstm_forward_row(int64_t H, const stored_t* gi, const stored_t* gh, const stored_t* b_ih, const stored_t* b_hh,
                      const stored_t* c_prev, stored_t* c_next, stored_t* h_dst, stored_t* out_dst, stored_t* saved);

// GRU, unit j: gi_g + b_ih_g and gh_g + b_hh_g for g = r, z, n go to cells.h's
// gru_forward with h_prev[j]; h to h_dst[j] and out_dst[j]; r, z, n and gh_n
// (b_hh's n part included) to saved[gH + j] (null: not stored).
template <typename stored_t>
void gru_forward_row(int64_t H, const stored_t* gi, const stored_t* gh, const stored_t* b_ih, const stored_t* b_hh,
                     const stored_t* h_prev, stored_t* h_dst, stored_t* out_dst, stored_t* saved);

}  // namespace cpu
}  // namespace rnnkernels
