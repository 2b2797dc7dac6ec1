// gstabd's command line: its flags (gstabd_flags.cc, whose flags --help lists), checked, and
// the options they make. Each function says what is wrong with a flag on stderr (gstabd then
// exits 2: a bad command line).
#pragma once

#include <cstddef>
#include <optional>
#include <string>

#include "server/server.h"

namespace gstab {

// The file that defines gstabd's flags, for --help.
inline constexpr char kGstabdFlagsFile[] = "server/gstabd_flags.cc";

// --log_queue_bytes, checked before anything is logged.
std::optional<size_t> LogQueueBytesFromFlag();
// --backend: "auto", "cpu" or "cuda".
std::optional<std::string> BackendFromFlag();
// Every other flag, checked alone and together, gathered into gstabd's options (all but
// whether the CUDA backend serves, which main finds).
std::optional<ServerOptions> OptionsFromFlags();

}  // namespace gstab
