// The panels engine's step GEMM (csrc/cpu/panel_gemm.h) against oneDNN's
// matmul with the weight reordered once (what the onednn engine runs), at
// the step shapes (m, k, n) = (B, H, 4H), interleaved, best of 5; and its
// largest error against a float64 product. Build and run (from the repo root,
// with the onednn wheels of `make install`):
//
//   PY=python; INC=$($PY -c "import torch.utils.cpp_extension as c; print(' '.join('-I'+p for p in c.include_paths()))")
//   LIB=$($PY -c "import torch, os; print(os.path.dirname(torch.__file__) + '/lib')"); PRE=$($PY -c "import sys; print(sys.prefix)")
//   g++ -O3 -std=c++17 -fopenmp -Icsrc $INC -I$PRE/include benchmarks/panel_gemm_bench.cpp csrc/cpu/panel_gemm.cpp \
//       -o build/panel_gemm_bench -L$PRE/lib -ldnnl -L$LIB -ltorch_cpu -lc10 -Wl,-rpath,$LIB -Wl,-rpath,$PRE/lib
//   T=2 build/panel_gemm_bench      # T: threads
#include "cpu/panel_gemm.h"
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <dnnl.hpp>
#include <chrono>
#include <cstdio>
#include <random>
#include <utility>
#include <vector>
using namespace rnnkernels::cpu;
double now(){return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();}
int main(){
  at::set_num_threads(getenv("T")?atoi(getenv("T")):2);
  dnnl::engine eng(dnnl::engine::kind::cpu,0); dnnl::stream st(eng);
  const int64_t shapes[][3] = {{1, 128, 512}, {1, 512, 2048}, {8, 256, 1024}, {16, 128, 512}, {20, 200, 800},
                               {20, 650, 2600}, {64, 256, 1024}, {64, 512, 2048}, {256, 128, 512}, {9, 90, 360}};
  std::mt19937 g(1); std::normal_distribution<float> nd;
  for(auto&s:shapes){int64_t m=s[0],k=s[1],n=s[2];
    std::vector<float> a(m*k),w(n*k),c(m*n),c2(m*n);
    for(auto&x:a)x=nd(g); for(auto&x:w)x=nd(g);
    // the panels on each ISA this CPU has (AVX2 tiles, then AVX-512 tiles)
    std::vector<std::pair<const char*, VectorIsa>> isas;
    if(panel_gemm_runs(VectorIsa::Avx2)) isas.push_back({"avx2",VectorIsa::Avx2});
    if(panel_gemm_runs(VectorIsa::Avx512)) isas.push_back({"avx512",VectorIsa::Avx512});
    std::vector<PanelMatrix> pms; for(auto&i:isas) pms.emplace_back(w.data(),k,true,k,n,i.second);
    double maxerr=0;
    for(auto&pm:pms){pm.multiply(m,a.data(),k,c.data(),n,false);
      for(int64_t i=0;i<m;i++)for(int64_t j=0;j<n;j++){double r=0;for(int64_t q=0;q<k;q++)r+=double(a[i*k+q])*w[j*k+q];maxerr=std::max(maxerr,std::abs(r-c[i*n+j]));}}
    using md=dnnl::memory::desc; using dt=dnnl::memory::data_type; using ft=dnnl::memory::format_tag;
    md src({m,k},dt::f32,ft::ab), any({k,n},dt::f32,ft::any), dst({m,n},dt::f32,ft::ab), wdesc({k,n},dt::f32,ft::ba);
    dnnl::matmul::primitive_desc pd(eng,src,any,dst);
    dnnl::memory wm(pd.weights_desc(),eng), given(wdesc,eng,w.data());
    dnnl::reorder(given,wm).execute(st,given,wm); st.wait();
    dnnl::matmul mm(pd); dnnl::memory sm(src,eng,a.data()), dm(dst,eng,c2.data());
    int reps=std::max<int64_t>(10, 200000000/(m*k*n));
    auto run_d=[&]{for(int r=0;r<reps;r++)mm.execute(st,{{DNNL_ARG_SRC,sm},{DNNL_ARG_WEIGHTS,wm},{DNNL_ARG_DST,dm}});};
    auto run_p=[&](const PanelMatrix&pm){for(int r=0;r<reps;r++)pm.multiply(m,a.data(),k,c.data(),n,false);};
    run_d(); for(auto&pm:pms)run_p(pm);
    double bd=1e9; std::vector<double> bp(pms.size(),1e9);
    for(int round=0;round<5;round++){double t0=now();run_d();bd=std::min(bd,now()-t0);
      for(size_t i=0;i<pms.size();i++){double t1=now();run_p(pms[i]);bp[i]=std::min(bp[i],now()-t1);}}
    double fl=2.0*m*k*n*reps;
    printf("(%ld,%ld,%ld) onednn %.0f",m,k,n,fl/bd/1e9);
    for(size_t i=0;i<pms.size();i++)printf("  panels %s %.0f",isas[i].first,fl/bp[i]/1e9);
    printf(" GFLOP/s  maxerr %.2e\n",maxerr);
  }
}
