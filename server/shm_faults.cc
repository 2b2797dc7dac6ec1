#include "server/shm_faults.h"

#include <pthread.h>
#include <signal.h>
#include <sys/mman.h>
#include <unistd.h>

#include <atomic>
#include <mutex>
#include <utility>

namespace gstab {
namespace {

struct Slot {
  std::atomic<bool> taken{false};
  // Odd while Watch or Unwatch changes the range: the handler reads a range whole (a seqlock),
  // never one mapping's begin with the next one's end.
  std::atomic<uint32_t> generation{0};
  std::atomic<uintptr_t> begin{0};  // 0: nothing watched
  std::atomic<uintptr_t> end{0};
  std::atomic<uint32_t> faults{0};
};

// `slot`'s range, read whole; {0, 0} when nothing is watched there.
std::pair<uintptr_t, uintptr_t> RangeOf(const Slot& slot) {
  for (;;) {
    const uint32_t before = slot.generation.load();
    if (before % 2 == 0) {
      const uintptr_t begin = slot.begin.load();
      const uintptr_t end = slot.end.load();
      if (slot.generation.load() == before) return {begin, end};
    }
  }
}

Slot g_slots[ShmFaults::kSlots];
std::atomic<int> g_high{0};  // no slot at or above this was ever taken
uintptr_t g_page = 4096;

[[noreturn]] void Die() {
  static const char kMessage[] =
      "gstabd: SIGBUS outside any worker's shared memory (a file gstabd maps, such as one of "
      "its libraries, was truncated?); gstabd stops (its jobs resume from their last "
      "checkpoint when it restarts)\n";
  (void)!write(STDERR_FILENO, kMessage, sizeof kMessage - 1);
  // Ended by the signal itself (a core dump where enabled), which is blocked in its handler.
  signal(SIGBUS, SIG_DFL);
  sigset_t bus;
  sigemptyset(&bus);
  sigaddset(&bus, SIGBUS);
  pthread_sigmask(SIG_UNBLOCK, &bus, nullptr);
  raise(SIGBUS);
  _exit(128 + SIGBUS);
}

// Only async-signal-safe work: atomics, mmap (a system call), write.
void OnSigbus(int, siginfo_t* info, void*) {
  // Sent by a process (kill, tgkill, sigqueue), not raised by a touch: no address to look up
  // (and the thread may be inside Watch or Unwatch, whose slot the lookup would wait for).
  if (info->si_code <= 0) Die();
  const auto address = reinterpret_cast<uintptr_t>(info->si_addr);
  const int high = g_high.load(std::memory_order_acquire);
  for (int i = 0; i < high; ++i) {
    Slot& slot = g_slots[i];
    const auto [begin, end] = RangeOf(slot);
    if (begin == 0 || address < begin || address >= end) continue;
    // The rest of the object from the lost page on: one fault per object and step, not one
    // per page of a truncated tail.
    const uintptr_t page = address & ~(g_page - 1);
    if (mmap(reinterpret_cast<void*>(page), end - page, PROT_READ | PROT_WRITE,
             MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0) == MAP_FAILED) {
      break;
    }
    slot.faults.fetch_add(1, std::memory_order_acq_rel);
    return;
  }
  Die();
}

}  // namespace

void ShmFaults::Install() {
  static std::once_flag once;
  std::call_once(once, [] {
    if (const long page = sysconf(_SC_PAGESIZE); page > 0) g_page = static_cast<uintptr_t>(page);
    struct sigaction action = {};
    action.sa_sigaction = OnSigbus;
    action.sa_flags = SA_SIGINFO;
    sigemptyset(&action.sa_mask);
    sigaction(SIGBUS, &action, nullptr);
  });
}

std::optional<int> ShmFaults::Watch(unsigned char* data, size_t size) {
  const auto begin = reinterpret_cast<uintptr_t>(data);
  const uintptr_t end = (begin + size + g_page - 1) & ~(g_page - 1);  // the mapping's last page
  for (int i = 0; i < kSlots; ++i) {
    Slot& slot = g_slots[i];
    bool free = false;
    if (!slot.taken.compare_exchange_strong(free, true, std::memory_order_acq_rel)) continue;
    slot.generation.fetch_add(1);  // odd: changing
    slot.faults.store(0);
    slot.end.store(end);
    slot.begin.store(begin);
    slot.generation.fetch_add(1);
    for (int high = g_high.load(); high < i + 1 && !g_high.compare_exchange_weak(high, i + 1);) {
    }
    return i;
  }
  return std::nullopt;
}

void ShmFaults::Unwatch(int slot) {
  Slot& s = g_slots[slot];
  s.generation.fetch_add(1);
  s.begin.store(0);
  s.end.store(0);
  s.generation.fetch_add(1);
  s.taken.store(false);
}

uint32_t ShmFaults::Faults(int slot) {
  return g_slots[slot].faults.load(std::memory_order_acquire);
}

const std::atomic<uint32_t>* ShmFaults::FaultCount(int slot) { return &g_slots[slot].faults; }

}  // namespace gstab
