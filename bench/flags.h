// Command-line flags of the benchmark programs: --name=value, each a positive number.
#pragma once

#include <cstdio>
#include <cstdlib>
#include <initializer_list>
#include <variant>

#include "absl/strings/numbers.h"
#include "absl/strings/string_view.h"
#include "absl/strings/strip.h"

namespace gstab::bench {

struct Flag {
  const char* prefix;  // "--jobs="
  std::variant<int*, double*> value;
};

// Sets the fields `flags` name from argv; exits 2 naming an argument that is no flag of them or
// whose value is not a positive number.
inline void ParseFlags(int argc, char** argv, std::initializer_list<Flag> flags) {
  for (int i = 1; i < argc; ++i) {
    absl::string_view arg = argv[i];
    bool ok = false;
    for (const Flag& f : flags) {
      if (!absl::ConsumePrefix(&arg, f.prefix)) continue;
      if (int* const* n = std::get_if<int*>(&f.value)) {
        ok = absl::SimpleAtoi(arg, *n) && **n > 0;
      } else {
        double* d = std::get<double*>(f.value);
        ok = absl::SimpleAtod(arg, d) && *d > 0;
      }
      break;
    }
    if (!ok) {
      std::fprintf(stderr, "bad argument '%s'\n", argv[i]);
      std::exit(2);
    }
  }
}

}  // namespace gstab::bench
