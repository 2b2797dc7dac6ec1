// Releases GPU memory off the request path. cudaFree, cudaFreeHost and cudaIpcCloseMemHandle
// may wait for work queued anywhere on the device, and a stream can wait a long time: on a
// worker that died before its ready write (until its lease expires and gstabd releases the
// step) or on a peer node that stalls (until the watchdog aborts the communicator). Run under
// the job's or the daemon's lock, such a wait would hold up every other job, and the release
// that ends it needs that lock too. Releases therefore run on one background thread, in order.
#pragma once

#include <functional>

#include "absl/time/time.h"

namespace gstab {

// Runs `release` on the reaper thread, after every release deferred before it.
void DeferDeviceRelease(std::function<void()> release);

// Waits until every release deferred so far has run, or `timeout`; whether they all ran.
bool FlushDeviceReleases(absl::Duration timeout);

}  // namespace gstab
