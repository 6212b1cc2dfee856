// __half under the CPU emulation: HIP-CPU's (half_float::half), whose float conversions round to
// nearest even as CUDA's do (see emulation.h).
#pragma once
#include "emulation.h"
