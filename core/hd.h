// GSTAB_HD marks functions that compile for both the host and CUDA devices.
#pragma once

#if defined(__CUDACC__)
#define GSTAB_HD __host__ __device__
#else
#define GSTAB_HD
#endif
