// Element types of gradient buffers, shared by the CPU and CUDA kernels and the wire contract.
#pragma once

#include <cstddef>
#include <cstdint>

namespace gstab {

enum class DType : uint32_t {
  kFloat32 = 0,
  kBFloat16 = 1,
  kFloat16 = 2,
};

inline constexpr size_t ElementSize(DType dtype) { return dtype == DType::kFloat32 ? 4 : 2; }

inline constexpr bool IsValidDType(uint32_t raw) { return raw <= 2; }

inline const char* DTypeName(DType dtype) {
  switch (dtype) {
    case DType::kFloat32:
      return "float32";
    case DType::kBFloat16:
      return "bfloat16";
    case DType::kFloat16:
      return "float16";
  }
  return "unknown";
}

}  // namespace gstab
