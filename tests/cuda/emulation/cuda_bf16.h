// __nv_bfloat16 under the CPU emulation (see emulation.h), with the conversions of CUDA's host
// code: a float keeps its top 16 bits, rounded to nearest even; every NaN becomes 0x7fff.
#pragma once
#include "emulation.h"

struct __nv_bfloat16 {
  unsigned short x;
};

inline float __bfloat162float(__nv_bfloat16 value) {
  const unsigned int bits = static_cast<unsigned int>(value.x) << 16;
  float result;
  std::memcpy(&result, &bits, sizeof result);
  return result;
}

inline __nv_bfloat16 __float2bfloat16_rn(float value) {
  unsigned int bits;
  std::memcpy(&bits, &value, sizeof bits);
  if ((bits & 0x7fffffffU) > 0x7f800000U) return __nv_bfloat16{0x7fffU};
  const unsigned int dropped = bits & 0xffffU;
  unsigned short kept = static_cast<unsigned short>(bits >> 16);
  if (dropped > 0x8000U || (dropped == 0x8000U && (kept & 1U) != 0U)) ++kept;
  return __nv_bfloat16{kept};
}
