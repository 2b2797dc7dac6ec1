#include "common/command_line.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <set>
#include <string>
#include <utility>

#include "absl/flags/commandlineflag.h"
#include "absl/flags/parse.h"
#include "absl/flags/reflection.h"
#include "absl/flags/usage.h"
#include "absl/flags/usage_config.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"

namespace gstab {
namespace {

constexpr size_t kHelpWidth = 80;

// abseil's flags that read flags from elsewhere or let unknown ones through: with them, only
// abseil's parser knows what is defined, so Read leaves the checking to it.
bool DefersToAbseil(absl::string_view name) {
  return name == "flagfile" || name == "fromenv" || name == "tryfromenv" || name == "undefok";
}

// abseil's own usage flags, which its parser handles and no registry lists.
bool IsAbseilUsageFlag(absl::string_view name) {
  return name == "version" || name == "only_check_args" || name == "helpon" ||
         name == "helpmatch" || name == "helppackage";
}

// "--name=value", "-name value", "--noname": the name without dashes, and the value after '='.
struct FlagArg {
  absl::string_view name;
  absl::string_view value;
  bool has_value = false;
};

FlagArg Split(absl::string_view arg) {
  arg.remove_prefix(absl::StartsWith(arg, "--") ? 2 : 1);
  FlagArg f;
  const size_t eq = arg.find('=');
  f.name = arg.substr(0, eq);
  if (eq != absl::string_view::npos) {
    f.value = arg.substr(eq + 1);
    f.has_value = true;
  }
  return f;
}

bool IsFlag(absl::string_view arg) { return arg.size() > 1 && arg[0] == '-'; }

bool IsHelp(absl::string_view name) {
  return name == "help" || name == "h" || name == "helpshort" || name == "helpfull";
}

// Appends `text` to `out`, words wrapped at kHelpWidth, each line after the first indented.
void Wrap(absl::string_view text, size_t indent, std::string* out) {
  size_t column = indent;
  bool first = true;
  for (absl::string_view word : absl::StrSplit(text, ' ', absl::SkipEmpty())) {
    if (!first && column + 1 + word.size() > kHelpWidth) {
      absl::StrAppend(out, "\n", std::string(indent, ' '));
      column = indent;
    } else if (!first) {
      out->push_back(' ');
      ++column;
    }
    absl::StrAppend(out, word);
    column += word.size();
    first = false;
  }
}

// What the command line asks for: help (which, when asked, wins over any problem), or the
// first problem with its flags ("" for none). Sets the flags it checks, as parsing would.
struct Reading {
  absl::string_view help;  // "help", "helpfull"...; empty when not asked for
  std::string problem;
};

Reading Read(int argc, char** argv) {
  Reading r;
  auto note = [&r](std::string problem) {
    if (r.problem.empty()) r.problem = std::move(problem);
  };
  bool defer = false;  // flags that leave the command line to abseil, anywhere
  for (int i = 1; i < argc && absl::string_view(argv[i]) != "--"; ++i) {
    defer |= IsFlag(argv[i]) && DefersToAbseil(Split(argv[i]).name);
  }
  for (int i = 1; i < argc; ++i) {
    const absl::string_view arg = argv[i];
    if (arg == "--") break;  // what follows is positional
    if (!IsFlag(arg)) continue;
    const FlagArg f = Split(arg);
    if (IsHelp(f.name)) {
      r.help = f.name;
      return r;
    }
    if (defer || IsAbseilUsageFlag(f.name)) continue;
    if (f.name.empty()) {
      note(absl::StrCat("'", arg, "' names no flag"));
      continue;
    }
    absl::CommandLineFlag* flag = absl::FindCommandLineFlag(f.name);
    if (flag == nullptr && absl::StartsWith(f.name, "no")) {  // --nofoo: a boolean set false
      absl::CommandLineFlag* negated = absl::FindCommandLineFlag(f.name.substr(2));
      if (negated != nullptr && negated->IsOfType<bool>()) {
        if (f.has_value) note(absl::StrCat("--", f.name, " takes no value, not '", f.value, "'"));
        continue;
      }
    }
    if (flag == nullptr) {
      note(absl::StrCat("unknown flag --", f.name, " (--help lists them)"));
      continue;
    }
    absl::string_view value = f.value;
    if (!f.has_value) {
      if (flag->IsOfType<bool>()) continue;  // --foo: true
      if (i + 1 == argc) {
        note(absl::StrCat("--", f.name, " needs a value (--", f.name, "=VALUE)"));
        continue;
      }
      value = argv[++i];  // --foo VALUE: the value is not read as a flag
      // Unless it is one: a value forgotten (`--job --follow`) would take the next flag as the
      // value, and the command would run without it (on a job named "--follow").
      if (absl::StartsWith(value, "--") && value.size() > 2) {
        note(absl::StrCat("--", f.name, " needs a value, and '", value, "' after it is a flag (--",
                          f.name, "=", value, " for a value that starts with --)"));
        continue;
      }
    }
    std::string error;
    if (!flag->ParseFrom(value, &error)) {
      note(absl::StrCat("--", f.name, ": '", value, "' is not a value it takes (", error, ")"));
    }
  }
  return r;
}

// `program`'s help: `usage`, then the flags defined in files whose path ends with
// `flags_file` (every flag when it is empty), each with its help and default.
std::string FlagsHelp(absl::string_view program, absl::string_view usage,
                      absl::string_view flags_file) {
  std::vector<absl::CommandLineFlag*> flags;
  for (const auto& [name, flag] : absl::GetAllFlags()) {
    if (flags_file.empty() || absl::EndsWith(flag->Filename(), flags_file)) flags.push_back(flag);
  }
  std::sort(flags.begin(), flags.end(), [](absl::CommandLineFlag* a, absl::CommandLineFlag* b) {
    return a->Name() < b->Name();
  });
  std::string out = absl::StrCat("Usage: ", program, " ", usage, "\n\nFlags:\n");
  for (const absl::CommandLineFlag* flag : flags) {
    absl::StrAppend(&out, "  --", flag->Name(), "\n      ");
    const std::string fallback = flag->DefaultValue();
    Wrap(absl::StrCat(flag->Help(), " (default: ", fallback.empty() ? "\"\"" : fallback, ")"), 6,
         &out);
    out.push_back('\n');
  }
  return out;
}

}  // namespace

std::set<std::string> FlagsOnCommandLine(int argc, char** argv) {
  std::set<std::string> given;
  for (int i = 1; i < argc; ++i) {
    const absl::string_view arg = argv[i];
    if (arg == "--") break;
    if (!IsFlag(arg)) continue;
    const FlagArg f = Split(arg);
    if (DefersToAbseil(f.name)) {  // abseil's own, no command's (--flagfile=F)
      if (!f.has_value) ++i;
      continue;
    }
    const absl::CommandLineFlag* flag = absl::FindCommandLineFlag(f.name);
    if (flag == nullptr && absl::StartsWith(f.name, "no")) {
      const absl::CommandLineFlag* negated = absl::FindCommandLineFlag(f.name.substr(2));
      if (negated != nullptr && negated->IsOfType<bool>()) given.emplace(negated->Name());
      continue;
    }
    if (flag == nullptr) continue;
    given.emplace(flag->Name());
    if (!f.has_value && !flag->IsOfType<bool>()) ++i;  // --foo VALUE
  }
  return given;
}

std::vector<char*> ParseCommandLineOrExit(int argc, char** argv, absl::string_view program,
                                          absl::string_view usage, absl::string_view flags_file) {
  const Reading r = Read(argc, argv);
  if (!r.help.empty()) {
    const std::string help = FlagsHelp(program, usage, r.help == "helpfull" ? "" : flags_file);
    std::fputs(help.c_str(), stdout);
    std::exit(std::fflush(stdout) == 0 ? 0 : 1);
  }
  if (!r.problem.empty()) {
    std::fprintf(stderr, "%.*s: %s\n", static_cast<int>(program.size()), program.data(),
                 r.problem.c_str());
    std::exit(2);
  }
  absl::SetProgramUsageMessage(usage);
  absl::FlagsUsageConfig config;  // --version
  config.version_string = [name = std::string(program)] {
    return absl::StrCat(name, " ", GSTAB_RELEASE, "\n");
  };
  absl::SetFlagsUsageConfig(config);
  return absl::ParseCommandLine(argc, argv);
}

void OpenStandardDescriptors() {
  for (int fd = 0; fd <= 2; ++fd) {
    if (fcntl(fd, F_GETFD) != -1 || errno != EBADF) continue;
    // The lowest free descriptor: `fd`, as those below it are open by now.
    const int opened = open("/dev/null", fd == 0 ? O_RDONLY : O_WRONLY);
    if (opened != fd) {
      if (opened >= 0) close(opened);
      _exit(1);  // nothing is there to say why
    }
  }
}

}  // namespace gstab
