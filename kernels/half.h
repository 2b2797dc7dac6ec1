// Branch-free conversions between float and the 16-bit float formats, written so that loops
// over them vectorise. Rounding is to nearest-even and NaN stays NaN, matching the CUDA
// intrinsics (__float2bfloat16_rn, __float2half_rn), so both backends write the same bits for
// every finite value (a NaN's payload may differ; a group holding one is only ever scaled by
// exactly 0 or 1, which write zeros or nothing). Each file has its own copies (static): the
// AVX2 tiles compile them with instructions the generic tiles must not meet, which the linker
// could otherwise pick for both.
#pragma once

#include <cstdint>
#include <cstring>

namespace gstab {

static inline float BitsToFloat(uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

static inline uint32_t FloatToBits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  return u;
}

static inline float BFloat16ToFloat(uint16_t h) {
  return BitsToFloat(static_cast<uint32_t>(h) << 16);
}

static inline uint16_t FloatToBFloat16(float f) {
  const uint32_t u = FloatToBits(f);
  const uint32_t rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
  const uint32_t quiet_nan = (u >> 16) | 0x40u;
  const bool is_nan = (u & 0x7fffffffu) > 0x7f800000u;
  return static_cast<uint16_t>(is_nan ? quiet_nan : rounded);
}

static inline float Float16ToFloat(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t magnitude = h & 0x7fffu;
  // Shifting the exponent and mantissa into float position and multiplying by 2^112 rebias
  // the exponent; it also normalises half subnormals, which land on float subnormals.
  const float scaled = BitsToFloat(magnitude << 13) * 0x1p112f;
  const uint32_t inf_or_nan = (magnitude << 13) | 0x7f800000u;
  const uint32_t bits = magnitude >= 0x7c00u ? inf_or_nan : FloatToBits(scaled);
  return BitsToFloat(sign | bits);
}

static inline uint16_t FloatToFloat16(float f) {
  const uint32_t u = FloatToBits(f);
  const uint32_t sign = (u >> 16) & 0x8000u;
  const uint32_t abs_bits = u & 0x7fffffffu;
  // Scaling by 2^112 and back by 2^-110 turns values beyond the half range into infinity and
  // leaves the rest multiplied by 4.
  float base = (BitsToFloat(abs_bits) * 0x1p112f) * 0x1p-110f;
  // Adding 2^(e + 15), where 2^e is |f|'s leading power (at least 2^-14, the smallest half
  // exponent), makes the float adder round 4|f| to the 10 mantissa bits half keeps, ties to
  // even; the sum's exponent and mantissa fields then hold the half's fields.
  uint32_t exponent = abs_bits & 0x7f800000u;
  exponent = exponent < 0x38800000u ? 0x38800000u : exponent;
  base += BitsToFloat(exponent + 0x07800000u);
  const uint32_t b = FloatToBits(base);
  const uint32_t result = ((b >> 13) & 0x7c00u) + (b & 0x0fffu);
  return static_cast<uint16_t>(sign | (abs_bits > 0x7f800000u ? 0x7e00u : result));
}

}  // namespace gstab
