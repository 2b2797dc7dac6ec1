#include "kernels/half.h"

#include <cmath>
#include <random>

#include "gtest/gtest.h"

namespace gstab {
namespace {

// Round-to-nearest-even of a finite float to `mantissa_bits` with the given exponent range,
// written with plain arithmetic as an independent reference.
float RoundToFormat(float f, int mantissa_bits, int min_exponent, float max_finite) {
  if (std::isnan(f) || std::isinf(f) || f == 0.0f) return f;
  int e;
  std::frexp(f, &e);  // f = m * 2^e, 0.5 <= |m| < 1
  e = std::max(e - 1, min_exponent);
  const double ulp = std::ldexp(1.0, e - mantissa_bits);
  const double r = std::nearbyint(static_cast<double>(f) / ulp) * ulp;
  // Values at or beyond max + ulp/2 round to infinity.
  if (std::fabs(r) > max_finite) return std::copysign(INFINITY, f);
  return static_cast<float>(r);
}

TEST(HalfTest, Float16ToFloatIsExactForEveryBitPattern) {
  for (uint32_t h = 0; h < 65536; ++h) {
    const float got = Float16ToFloat(static_cast<uint16_t>(h));
    const uint32_t e = (h >> 10) & 31, m = h & 1023;
    const float sign = (h & 0x8000) ? -1.0f : 1.0f;
    if (e == 31) {
      EXPECT_TRUE(m ? std::isnan(got) : std::isinf(got)) << h;
      continue;
    }
    const double magnitude =
        e == 0 ? std::ldexp(m, -24) : std::ldexp(1024 + m, static_cast<int>(e) - 25);
    ASSERT_EQ(got, sign * static_cast<float>(magnitude)) << h;
  }
}

TEST(HalfTest, BFloat16ToFloatIsExactForEveryBitPattern) {
  for (uint32_t h = 0; h < 65536; ++h) {
    const float got = BFloat16ToFloat(static_cast<uint16_t>(h));
    ASSERT_EQ(FloatToBits(got), h << 16) << h;
  }
}

TEST(HalfTest, FloatToHalfRoundsToNearestEven) {
  std::mt19937 rng(5);
  std::uniform_int_distribution<uint32_t> bits;
  int checked = 0;
  for (int i = 0; i < 2000000; ++i) {
    uint32_t u = bits(rng);
    // Concentrate on the half range (|x| < 2^17), where rounding is interesting.
    if (i % 2) u = (u & 0x80000000u) | (u & 0x007fffffu) | (((u >> 23) % 45 + 98) << 23);
    const float f = BitsToFloat(u);
    if (std::isnan(f)) {
      EXPECT_TRUE(std::isnan(Float16ToFloat(FloatToFloat16(f))));
      EXPECT_TRUE(std::isnan(BFloat16ToFloat(FloatToBFloat16(f))));
      continue;
    }
    ASSERT_EQ(Float16ToFloat(FloatToFloat16(f)), RoundToFormat(f, 10, -14, 65504.0f)) << f;
    ASSERT_EQ(BFloat16ToFloat(FloatToBFloat16(f)),
              RoundToFormat(f, 7, -126, BitsToFloat(0x7f7f0000u)))
        << f;
    ++checked;
  }
  EXPECT_GT(checked, 1000000);
}

TEST(HalfTest, TiesGoToEven) {
  // 1 + 2^-11 lies halfway between 1 and 1 + 2^-10: even mantissa (1) wins.
  EXPECT_EQ(FloatToFloat16(1.0f + 0x1p-11f), 0x3c00);
  EXPECT_EQ(FloatToFloat16(1.0f + 3 * 0x1p-11f), 0x3c02);
  EXPECT_EQ(FloatToFloat16(65520.0f), 0x7c00);  // halfway past the largest half: infinity
  EXPECT_EQ(FloatToBFloat16(BitsToFloat(0x3f808000u)), 0x3f80);
  EXPECT_EQ(FloatToBFloat16(BitsToFloat(0x3f818000u)), 0x3f82);
}

}  // namespace
}  // namespace gstab
