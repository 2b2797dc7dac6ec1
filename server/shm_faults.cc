#include "server/shm_faults.h"

#include <pthread.h>
#include <signal.h>
#include <sys/mman.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
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

[[noreturn]] void Die(bool in_worker_memory) {
  static const char kOutside[] =
      "gstabd: SIGBUS outside any worker's shared memory (a file gstabd maps, such as one of "
      "its libraries, was truncated?); gstabd stops (its jobs resume from their last "
      "checkpoint when it restarts)\n";
  static const char kNoRoom[] =
      "gstabd: SIGBUS in a worker's truncated shared memory, and not even one page of memory "
      "could be mapped in its place (the node's commit limit, vm.overcommit_memory=2, or "
      "vm.max_map_count reached); gstabd stops (its jobs resume from their last checkpoint "
      "when it restarts)\n";
  if (in_worker_memory) {
    (void)!write(STDERR_FILENO, kNoRoom, sizeof kNoRoom - 1);
  } else {
    (void)!write(STDERR_FILENO, kOutside, sizeof kOutside - 1);
  }
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
  if (info->si_code <= 0) Die(false);
  const int saved_errno = errno;  // the interrupted code's, which a failed mmap below would change
  const auto address = reinterpret_cast<uintptr_t>(info->si_addr);
  const int high = g_high.load(std::memory_order_acquire);
  for (int i = 0; i < high; ++i) {
    Slot& slot = g_slots[i];
    const auto [begin, end] = RangeOf(slot);
    if (begin == 0 || address < begin || address >= end) continue;
    // The rest of the object from the lost page on: one fault per object and step, not one
    // per page of a truncated tail. It reserves no swap, as a node's commit limit could refuse
    // a large tail. Where the limit is enforced all the same (vm.overcommit_memory=2): the tail
    // read-only, which is not charged (a failed call may have unmapped it), and the lost page
    // writable. The sums read zeros there; a scaling already past its tile's check when the
    // loss came may write beyond that page, and SIGSEGV then ends gstabd (docs/daemon.md).
    const uintptr_t page = address & ~(g_page - 1);
    const int flags = MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED | MAP_NORESERVE;
    auto* at = reinterpret_cast<void*>(page);
    if (mmap(at, end - page, PROT_READ | PROT_WRITE, flags, -1, 0) == MAP_FAILED &&
        (mmap(at, end - page, PROT_READ, flags, -1, 0) == MAP_FAILED ||
         mmap(at, g_page, PROT_READ | PROT_WRITE, flags, -1, 0) == MAP_FAILED)) {
      Die(true);
    }
    slot.faults.fetch_add(1, std::memory_order_acq_rel);
    errno = saved_errno;
    return;
  }
  Die(false);
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
