// libgstab.so is the C ABI of gstab.h: the static client libraries, whole (see CMakeLists.txt).
// CMake needs one source of its own for it; this is that source.
#include "client_lib/gstab.h"
