// The update loops of every rule for x86-64 CPUs with AVX2, FMA and F16C, chosen at run time (cpu_step.cpp).
#if defined(__x86_64__) && defined(__GNUC__)
#pragma GCC target("avx2,fma,f16c")
// g++ does not define the feature macros for a target pragma (gcc does); ATen's AVX2 vectors and
// the Sleef declarations they use are guarded by them.
#ifndef __AVX__
#define __AVX__ 1
#endif
#ifndef __AVX2__
#define __AVX2__ 1
#endif
#ifndef __FMA__
#define __FMA__ 1
#endif
#ifndef __F16C__
#define __F16C__ 1  // every CPU with AVX2 has F16C (ATen's AVX2 build assumes it too)
#endif
#ifndef CPU_CAPABILITY_AVX2
#define CPU_CAPABILITY_AVX2
#endif
#define CPU_CAPABILITY AVX2
#endif

#define LRFUSED_CPU_VARIANT cpu_avx2
#include "adam_update_loop.h"
#include "rule_update_loop.h"

namespace lrfused::cpu_avx2 {
RangeUpdate range_update(ElementType type, int32_t rule, int32_t flags) { return select_any_update(type, rule, flags); }
}  // namespace lrfused::cpu_avx2
