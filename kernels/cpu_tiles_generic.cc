#define GSTAB_TILES_NS cpu_tiles_generic
#include "kernels/cpu_tiles_impl.inc"

namespace gstab {

const CpuTileFunctions& BestCpuTileFunctions() {
  static const CpuTileFunctions generic{cpu_tiles_generic::SumOfSquares, cpu_tiles_generic::Scale,
                                        "generic"};
#if defined(__x86_64__) && defined(GSTAB_HAVE_AVX2_TILES)
  static const CpuTileFunctions avx2{cpu_tiles_avx2::SumOfSquares, cpu_tiles_avx2::Scale, "avx2"};
  static const bool has_avx2 = __builtin_cpu_supports("avx2");
  return has_avx2 ? avx2 : generic;
#else
  return generic;
#endif
}

}  // namespace gstab
