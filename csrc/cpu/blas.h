// Row-major GEMM straight into the BLAS that libtorch_cpu links (MKL or
// OpenBLAS), for the small per-step products: at::mm_out's dispatch, checks
// and TensorIterator set-up cost microseconds per call, which a recurrent
// layer pays T times (GRU, B = 1, T = 200, forward: 2.8 -> 3.1x torch.nn when
// the steps skipped them). The Fortran
// symbols are weak: when libtorch_cpu does not export them the caller falls
// back to ATen (`gemm` returns false).
#pragma once

#include <cstdint>
#include <cstdlib>
#include <initializer_list>
#include <memory>

extern "C" {
void sgemm_(const char* transa, const char* transb, const int* m, const int* n, const int* k, const float* alpha,
            const float* a, const int* lda, const float* b, const int* ldb, const float* beta, float* c,
            const int* ldc) __attribute__((weak));
void dgemm_(const char* transa, const char* transb, const int* m, const int* n, const int* k, const double* alpha,
            const double* a, const int* lda, const double* b, const int* ldb, const double* beta, double* c,
            const int* ldc) __attribute__((weak));
// MKL's per-thread thread count (returns the previous one; 0 = the global setting);
// csrc/cpu/gemm.h's SingleThreaded sets it.
int MKL_Set_Num_Threads_Local(int nthreads) __attribute__((weak));
// MKL's packed GEMM (CBLAS enums as ints; MKL_INT is int in the LP64 MKL torch links).
size_t cblas_sgemm_pack_get_size(int identifier, int m, int n, int k) __attribute__((weak));
void cblas_sgemm_pack(int layout, int identifier, int trans, int m, int n, int k, float alpha, const float* src,
                      int ld, float* dest) __attribute__((weak));
void cblas_sgemm_compute(int layout, int transa, int transb, int m, int n, int k, const float* a, int lda,
                         const float* b, int ldb, float beta, float* c, int ldc) __attribute__((weak));
}

namespace rnnkernels {
namespace blas {

// The BLAS routine for T (null when libtorch_cpu does not export it).
inline decltype(&sgemm_) routine(float) { return sgemm_; }
inline decltype(&dgemm_) routine(double) { return dgemm_; }

// Row-major C (m, n) = alpha op(A) (m, k) op(B) (k, n) + beta C, by BLAS;
// false (nothing done) when there is none, k is 0 or a size overflows int.
template <typename T>
inline bool gemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, T alpha, const T* a, int64_t lda,
                 const T* b, int64_t ldb, T beta, T* c, int64_t ldc) {
  const auto fn = routine(T());
  constexpr int64_t kIntMax = 2147483647;
  if (fn == nullptr || k == 0) return false;
  for (const int64_t size : {m, n, k, lda, ldb, ldc}) {
    if (size > kIntMax) return false;
  }
  if (m == 0 || n == 0) return true;
  // Column-major BLAS sees row-major matrices transposed: C^T = op(B)^T op(A)^T.
  const char ta = trans_b ? 'T' : 'N', tb = trans_a ? 'T' : 'N';
  const int M = int(n), N = int(m), K = int(k), LDA = int(ldb), LDB = int(lda), LDC = int(ldc);
  fn(&ta, &tb, &M, &N, &K, &alpha, b, &LDA, a, &LDB, &beta, c, &LDC);
  return true;
}

// A float matrix B (k, n) packed once into MKL's GEMM-kernel layout, for
// C (m, n) = A (m, k) B + beta C with m <= max_m: the recurrent weight is
// multiplied every step, and unpacked GEMMs re-pack it on every call.
// `source` is B row-major, or B^T (n, k) row-major with `transposed`.
// ok() is false when the BLAS has no packed GEMM (then use gemm()).
class PackedMatrix {
 public:
  PackedMatrix(const float* source, bool transposed, int64_t k, int64_t n, int64_t max_m) {
    constexpr int kRowMajor = 101, kNoTrans = 111, kTrans = 112, kBMatrix = 162;
    if (cblas_sgemm_pack_get_size == nullptr || cblas_sgemm_pack == nullptr || cblas_sgemm_compute == nullptr) return;
    for (const int64_t size : {k, n, max_m}) {
      if (size <= 0 || size > 2147483647) return;
    }
    const size_t bytes = cblas_sgemm_pack_get_size(kBMatrix, int(max_m), int(n), int(k));
    buffer_.reset(static_cast<float*>(std::aligned_alloc(64, (bytes + 63) / 64 * 64)));
    if (!buffer_) return;
    cblas_sgemm_pack(kRowMajor, kBMatrix, transposed ? kTrans : kNoTrans, int(max_m), int(n), int(k), 1.0f, source,
                     transposed ? int(k) : int(n), buffer_.get());
    k_ = int(k);
    n_ = int(n);
  }
  bool ok() const { return buffer_ != nullptr; }

  // C (m, n) = A (m, k) B + beta C, all row-major.
  void multiply(int64_t m, const float* a, int64_t lda, float beta, float* c, int64_t ldc) const {
    constexpr int kRowMajor = 101, kNoTrans = 111, kPacked = 151;
    if (m == 0) return;
    cblas_sgemm_compute(kRowMajor, kNoTrans, kPacked, int(m), n_, k_, a, int(lda), buffer_.get(), n_, beta, c,
                        int(ldc));
  }

 private:
  struct Free {
    void operator()(float* p) const { std::free(p); }
  };
  std::unique_ptr<float, Free> buffer_;
  int k_ = 0, n_ = 0;
};

}  // namespace blas
}  // namespace rnnkernels
