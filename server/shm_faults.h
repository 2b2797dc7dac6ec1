// Surviving SIGBUS on workers' shared memory.
//
// gstabd touches a worker's pages during a step. A page that is gone (the worker truncated the
// object during the step) or that tmpfs cannot allocate (a hole the worker left, with /dev/shm
// full) raises SIGBUS on the touching thread, which would end gstabd and every job with it.
// Each mapped object holds a slot here with its address range. The SIGBUS handler looks the
// faulting address up: inside a slot's range, it maps private zero pages over the rest of that
// range, counts the fault in the slot and returns, so that the touch goes on (reading zeros,
// writing into memory the worker never sees); the step then finds the fault and fails, and the
// object is not used again. A SIGBUS anywhere else says what happened and ends gstabd as before.
//
// The handler takes no lock and allocates nothing: slots are a fixed array of atomics.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <optional>

namespace gstab {

class ShmFaults {
 public:
  // The most mappings that can hold a slot at once (above --max_mappings' default).
  static constexpr int kSlots = 1 << 15;

  // Installs the SIGBUS handler (once per process; later calls do nothing).
  static void Install();

  // Takes a free slot for [data, data + size); nullopt when all kSlots are taken.
  static std::optional<int> Watch(unsigned char* data, size_t size);
  // Frees `slot`: before its range is unmapped.
  static void Unwatch(int slot);
  // How many times a touch of `slot`'s range raised SIGBUS since Watch.
  static uint32_t Faults(int slot);
  // Where Faults counts them (valid while the slot is watched).
  static const std::atomic<uint32_t>* FaultCount(int slot);
};

}  // namespace gstab
