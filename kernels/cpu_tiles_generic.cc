#define GSTAB_TILES_NS cpu_tiles_generic
#include "kernels/cpu_tiles_impl.inc"

#if defined(__x86_64__) && defined(GSTAB_HAVE_AVX2_TILES)
#include <cpuid.h>
#endif

namespace gstab {

const CpuTileFunctions& BestCpuTileFunctions() {
  static const CpuTileFunctions generic{cpu_tiles_generic::SumOfSquares, cpu_tiles_generic::Scale,
                                        "generic"};
#if defined(__x86_64__) && defined(GSTAB_HAVE_AVX2_TILES)
  static const CpuTileFunctions avx2{cpu_tiles_avx2::SumOfSquares, cpu_tiles_avx2::Scale, "avx2"};
  // The AVX2 tiles convert halves with F16C too, which a CPU (or a VM's view of it) may lack.
  static const bool has_avx2 = [] {
    unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
    const bool f16c = __get_cpuid(1, &eax, &ebx, &ecx, &edx) != 0 && (ecx & bit_F16C) != 0;
    return f16c && __builtin_cpu_supports("avx2");
  }();
  return has_avx2 ? avx2 : generic;
#else
  return generic;
#endif
}

}  // namespace gstab
