// Math policy (exp, tanh) the CPU pointwise loops pass to cells.h.
#pragma once

#include "cells.h"

namespace rnnkernels {

template <typename T>
struct CpuMathFor {
  using type = cells::StdMath;
};

template <typename T>
using CpuMath = typename CpuMathFor<T>::type;

}  // namespace rnnkernels
