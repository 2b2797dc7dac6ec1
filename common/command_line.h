// The command line of gstabd and gstabctl: abseil's flags, with the exit codes of a Unix tool.
// abseil's own parser exits 1 for --help and for a command line it cannot read, which scripts
// cannot tell apart from a failure; here --help exits 0 and a bad command line 2.
#pragma once

#include <set>
#include <string>
#include <vector>

#include "absl/strings/string_view.h"

namespace gstab {

// Parses the command line and returns its positional arguments (argv[0] first). --help (-h)
// prints `usage` and the flags defined in files whose path ends with `flags_file`, each with
// its help and default, to stdout and exits 0 (--helpfull: every flag). An unknown flag, a
// value its flag cannot take or a missing value is named on stderr and exits 2.
std::vector<char*> ParseCommandLineOrExit(int argc, char** argv, absl::string_view program,
                                          absl::string_view usage, absl::string_view flags_file);

// The flags the command line sets, by name (--nofoo as foo), for a program whose commands each
// take some of its flags; abseil's own (--flagfile, --fromenv...) are left out, and so are the
// flags they set. Meant after ParseCommandLineOrExit, which has checked them.
std::set<std::string> FlagsOnCommandLine(int argc, char** argv);

// Descriptors 0, 1 and 2 open, on /dev/null where the caller closed one (`gstabctl status >&-`,
// a launcher's `gstabd 2>&-`): the next descriptor opened (a socket, a lock file, a device)
// would otherwise take its number, and output meant for stdout or the log be written into it.
// Exits 1 where it cannot. First thing in main, before any thread.
void OpenStandardDescriptors();

}  // namespace gstab
