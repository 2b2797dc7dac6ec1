// gstabctl's commands that watch gstabd over time.
#pragma once

namespace gstab::ctl {

// `events`: recent events (--recent), of every job or --job's, or the live stream (--follow).
int Events();
// `top`: a view of every job (or --job), refreshed each --interval_ms, --iterations times or
// until interrupted; it waits through a gstabd that restarts.
int Top();

}  // namespace gstab::ctl
