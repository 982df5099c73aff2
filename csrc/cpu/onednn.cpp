// oneDNN's matmul primitive for the recurrent loop's GEMMs (see onednn.h).
#ifdef RNNKERNELS_WITH_ONEDNN

#include "cpu/onednn.h"

#include <dnnl.hpp>

#include <map>
#include <tuple>

namespace rnnkernels {
namespace gemm {
namespace onednn {
namespace {

using dnnl::memory;

dnnl::engine& cpu_engine() {
  static dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  return engine;
}

// One stream per thread: a CPU stream is only an execution context (the
// primitives run on the calling thread's OpenMP team), made once.
dnnl::stream& cpu_stream() {
  thread_local dnnl::stream stream(cpu_engine());
  return stream;
}

memory::data_type data_type(at::ScalarType dtype) {
  return dtype == at::kBFloat16 ? memory::data_type::bf16 : memory::data_type::f32;
}

// A 2-D strided tensor as a oneDNN descriptor. Size-1 dims may carry any
// stride in torch; oneDNN wants them consistent with a plain layout.
memory::desc desc_of(const at::Tensor& t) {
  int64_t s0 = t.stride(0), s1 = t.stride(1);
  const int64_t rows = t.size(0), cols = t.size(1);
  if (cols == 1) s1 = 1;
  if (rows == 1) s0 = s1 == 1 ? cols : 1;
  if (cols == 1 && s0 < 1) s0 = 1;
  return memory::desc({rows, cols}, data_type(t.scalar_type()), {s0, s1});
}

dnnl::primitive_attr attributes(bool accumulate) {
  dnnl::primitive_attr attr;
  if (accumulate) {  // dst = a b + dst: the sum post-op reads dst before it is written
    dnnl::post_ops ops;
    ops.append_sum(1.0f);
    attr.set_post_ops(ops);
  }
  return attr;
}

void* data(const at::Tensor& t) { return const_cast<void*>(t.const_data_ptr()); }

}  // namespace

bool takes(at::ScalarType dtype) { return dtype == at::kFloat || dtype == at::kBFloat16; }

std::string version() {
  const dnnl_version_t* v = dnnl_version();
  std::string isa;
  switch (dnnl::get_effective_cpu_isa()) {
    case dnnl::cpu_isa::avx512_core_amx: isa = "avx512_core_amx"; break;
    case dnnl::cpu_isa::avx512_core_bf16: isa = "avx512_core_bf16"; break;
    case dnnl::cpu_isa::avx512_core_vnni: isa = "avx512_core_vnni"; break;
    case dnnl::cpu_isa::avx512_core: isa = "avx512_core"; break;
    case dnnl::cpu_isa::avx2_vnni: isa = "avx2_vnni"; break;
    case dnnl::cpu_isa::avx2: isa = "avx2"; break;
    default: isa = "other ISA"; break;
  }
  return "oneDNN " + std::to_string(v->major) + "." + std::to_string(v->minor) + "." + std::to_string(v->patch) +
         " (" + isa + ")";
}

struct RepeatedMatmul::Impl {
  int64_t k, n, max_m;
  memory::data_type dtype;
  dnnl::primitive_attr attr;
  memory::desc weights_desc;  // the blocked layout every primitive below reads
  memory weights;
  // Per (m, lda, ldc): the primitive and the two memory objects whose data
  // handles are reset each call.
  struct Rows {
    dnnl::matmul primitive;
    memory src, dst;
  };
  mutable std::map<std::tuple<int64_t, int64_t, int64_t>, Rows> by_rows;

  const Rows& rows(int64_t m, int64_t lda, int64_t ldc) const {
    const auto key = std::make_tuple(m, lda, ldc);
    auto found = by_rows.find(key);
    if (found != by_rows.end()) return found->second;
    const memory::desc src({m, k}, dtype, {lda, 1}), dst({m, n}, dtype, {ldc, 1});
    const dnnl::matmul::primitive_desc pd(cpu_engine(), src, weights_desc, dst, attr);
    Rows made{dnnl::matmul(pd), memory(src, cpu_engine(), DNNL_MEMORY_NONE),
              memory(dst, cpu_engine(), DNNL_MEMORY_NONE)};
    return by_rows.emplace(key, std::move(made)).first->second;
  }
};

RepeatedMatmul::RepeatedMatmul(const at::Tensor& stored, bool transpose, int64_t max_m, bool accumulate) {
  const at::Tensor w = transpose ? stored.t() : stored;  // (k, n), a view
  auto impl = std::make_unique<Impl>();
  impl->k = w.size(0);
  impl->n = w.size(1);
  impl->max_m = max_m;
  impl->dtype = data_type(w.scalar_type());
  impl->attr = attributes(accumulate);
  try {
    const memory::desc src({max_m, impl->k}, impl->dtype, memory::format_tag::ab);
    const memory::desc any({impl->k, impl->n}, impl->dtype, memory::format_tag::any);
    const memory::desc dst({max_m, impl->n}, impl->dtype, memory::format_tag::ab);
    const dnnl::matmul::primitive_desc pd(cpu_engine(), src, any, dst, impl->attr);
    impl->weights_desc = pd.weights_desc();
    impl->weights = memory(impl->weights_desc, cpu_engine());
    memory given(desc_of(w), cpu_engine(), data(w));
    dnnl::reorder(given, impl->weights).execute(cpu_stream(), given, impl->weights);
    cpu_stream().wait();
  } catch (const dnnl::error& e) {
    TORCH_CHECK(false, "rnnkernels: oneDNN has no matmul for a (", max_m, ", ", impl->k, ") x (", impl->k, ", ",
                impl->n, ") ", w.scalar_type(), " product: ", e.what());
  }
  impl_ = std::move(impl);
}

RepeatedMatmul::~RepeatedMatmul() = default;

void RepeatedMatmul::multiply(const at::Tensor& out, const at::Tensor& a) const {
  const int64_t m = a.size(0);
  if (m == 0) return;
  TORCH_INTERNAL_ASSERT(m <= impl_->max_m && a.size(1) == impl_->k && out.size(1) == impl_->n);
  const auto& rows = impl_->rows(m, m == 1 ? impl_->k : a.stride(0), m == 1 ? impl_->n : out.stride(0));
  rows.src.set_data_handle(data(a));
  rows.dst.set_data_handle(data(out));
  rows.primitive.execute(cpu_stream(),
                         {{DNNL_ARG_SRC, rows.src}, {DNNL_ARG_WEIGHTS, impl_->weights}, {DNNL_ARG_DST, rows.dst}});
}

bool matmul(const at::Tensor& out, const at::Tensor& a, const at::Tensor& b, bool accumulate) {
  if (out.numel() == 0) return true;
  try {
    const memory::desc src = desc_of(a), weights = desc_of(b), dst = desc_of(out);
    const dnnl::matmul::primitive_desc pd(cpu_engine(), src, weights, dst, attributes(accumulate));
    memory src_mem(src, cpu_engine(), data(a)), weights_mem(weights, cpu_engine(), data(b)),
        dst_mem(dst, cpu_engine(), data(out));
    dnnl::matmul(pd).execute(cpu_stream(),
                             {{DNNL_ARG_SRC, src_mem}, {DNNL_ARG_WEIGHTS, weights_mem}, {DNNL_ARG_DST, dst_mem}});
  } catch (const dnnl::error&) {
    return false;
  }
  return true;
}

}  // namespace onednn
}  // namespace gemm
}  // namespace rnnkernels

#endif  // RNNKERNELS_WITH_ONEDNN
