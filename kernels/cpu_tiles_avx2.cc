#define GSTAB_TILES_NS cpu_tiles_avx2
#include "kernels/cpu_tiles_impl.inc"
