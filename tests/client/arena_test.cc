// GradientArena's layout is fixed once allocated: nothing added later aliases a tensor, and
// indices that are not a tensor's give no memory.
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

}  // namespace
}  // namespace gstab
