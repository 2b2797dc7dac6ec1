// The wire dtype (gstab.v1.DType) and the kernels' DType, in both directions.
#pragma once

#include <optional>

#include "gstab/v1/stabilizer.pb.h"
#include "kernels/dtype.h"

namespace gstab {

inline v1::DType DTypeToProto(DType dtype) {
  switch (dtype) {
    case DType::kFloat32:
      return v1::DTYPE_FLOAT32;
    case DType::kBFloat16:
      return v1::DTYPE_BFLOAT16;
    case DType::kFloat16:
      return v1::DTYPE_FLOAT16;
  }
  return v1::DTYPE_UNSPECIFIED;
}

// nullopt for DTYPE_UNSPECIFIED and values this build does not know.
inline std::optional<DType> DTypeFromProto(v1::DType dtype) {
  switch (dtype) {
    case v1::DTYPE_FLOAT32:
      return DType::kFloat32;
    case v1::DTYPE_BFLOAT16:
      return DType::kBFloat16;
    case v1::DTYPE_FLOAT16:
      return DType::kFloat16;
    default:
      return std::nullopt;
  }
}

}  // namespace gstab
