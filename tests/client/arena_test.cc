// GradientArena's layout is fixed once allocated: nothing added later aliases a tensor, and
// indices that are not a tensor's give no memory; a tensor it cannot lay out is refused.
#include "client_lib/arena.h"

#include "gtest/gtest.h"

namespace gstab {
namespace {

TEST(ArenaTest, ATensorAddedAfterAllocatingIsNotAddedAndBadIndicesGiveNothing) {
  GradientArena arena;
  EXPECT_EQ(arena.AddTensor("a", 16, DType::kFloat32), 0u);
  EXPECT_EQ(arena.data(0), nullptr);  // not allocated yet
  ASSERT_TRUE(arena.Allocate().ok());
  ASSERT_NE(arena.data(0), nullptr);
  EXPECT_EQ(arena.AddTensor("late", 1 << 20, DType::kFloat32), GradientArena::kNotAdded);
  EXPECT_EQ(arena.num_tensors(), 1u);
  EXPECT_EQ(arena.data(GradientArena::kNotAdded), nullptr);
  EXPECT_EQ(arena.numel(GradientArena::kNotAdded), 0u);
  EXPECT_EQ(arena.data(1), nullptr);
  EXPECT_EQ(arena.numel(1), 0u);
  EXPECT_EQ(arena.RegistrationRequest().tensors_size(), 1);
}

// A dtype code that is none of the three (a framework's own, cast) is refused at Allocate,
// naming the tensor, before any memory is laid out for it.
TEST(ArenaTest, AnUnknownDtypeIsRefusedNamingItsTensor) {
  GradientArena arena;
  arena.AddTensor("ok", 16, DType::kBFloat16);
  arena.AddTensor("cast", 16, static_cast<DType>(5));
  const absl::Status s = arena.Allocate();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_NE(s.message().find("tensor 'cast' has dtype 5"), std::string::npos) << s;
  EXPECT_EQ(arena.data(0), nullptr);
}

}  // namespace
}  // namespace gstab
