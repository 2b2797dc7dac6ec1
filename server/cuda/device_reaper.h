// Releases GPU memory off the request path. cudaFree, cudaFreeHost and cudaIpcCloseMemHandle
// may wait for work queued anywhere on the device, and a stream can wait a long time: on a
// worker that died before its ready write (until its lease expires and gstabd releases the
// step) or on a peer node that stalls (until the watchdog aborts the communicator). Run under
// the job's or the daemon's lock, such a wait would hold up every other job, and the release
// that ends it needs that lock too. Releases therefore run on background threads, one a device,
// in order: a device whose work is held up holds up no other device's releases.
#pragma once

#include <functional>

#include "absl/time/time.h"

namespace gstab {

// Runs `release` (of memory on `device`) on that device's reaper thread, after every release
// deferred before it for that device.
void DeferDeviceRelease(int device, std::function<void()> release);

// Runs `abort` (an ncclCommAbort) on a background thread of its own, never behind a release or
// another abort: ncclCommAbort first lets go of kernels waiting for peers, then frees the
// communicator's memory on the calling thread, waiting as a free does; and a release (or another
// abort's free) may itself be waiting for the kernel that this abort lets go.
void DeferCommunicatorAbort(std::function<void()> abort);

// Waits until every abort and release deferred so far (on every device) has run, or `timeout`;
// whether they all ran.
bool FlushDeviceReleases(absl::Duration timeout);

}  // namespace gstab
