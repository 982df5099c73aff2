// One row of the plain LSTM forward (no LayerNorm, zoneout or cell outputs)
// with explicit AVX-512 vectors: the gate math is cells.h's lstm_forward on
// 16 units at a time, with an exp and a reciprocal built on vscalefps and
// vrcp14ps (csrc/cpu/lstm_row_avx512.cpp), which the `#pragma omp simd`
// loops of pointwise_cpu.cpp cannot reach from scalar code (there 2^k is
// built from bits and 1/d takes three Newton steps), and GCC 12 ran the
// bfloat16 rows in 256-bit halves. On the 2-core Xeon (family 6 model 167),
// whole 1-layer LSTM layers at the suite's shapes: bfloat16 forward
// 1.09-1.30x, float32 0.99-1.14x (benchmarks/vector_rows.py).
#pragma once

#include <cstdint>

namespace rnnkernels {
namespace cpu {

// Whether lstm_forward_row runs here: the CPU has AVX-512 F, BW, DQ and VL,
// and set_vector_rows(false) has not turned it off (tests compare both paths).
bool vector_rows_run();
void set_vector_rows(bool on);

// Unit j of a row of H units: pre_g = gi[gH + j] + b_ih[gH + j] + gh[gH + j] +
// b_hh[gH + j] for gates g = i, f, g, o; writes c_next[j], h_dst[j] and
// out_dst[j] (h), and the activations to saved[gH + j] (saved may be gi:
// unit j's gates are written after they are read). stored_t is float or
// bfloat16's bits (uint16_t), computed in float.
template <typename stored_t>
void lstm_forward_row(int64_t H, const stored_t* gi, const stored_t* gh, const stored_t* b_ih, const stored_t* b_hh,
                      const stored_t* c_prev, stored_t* c_next, stored_t* h_dst, stored_t* out_dst, stored_t* saved);

}  // namespace cpu
}  // namespace rnnkernels
