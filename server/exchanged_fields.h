// Where the fields of the structures nodes exchange as raw bytes lie (node 0's rule and
// statistics, broadcast to the other nodes): part of the record layout a rendezvous blob names.
#pragma once

#include <cstdint>

namespace gstab {

// A hash of every RuleParams and GroupStats field's offset and size, in order: a release that
// reorders them, or resizes one, would otherwise pass the structures' sizes and have the other
// nodes misread node 0's bytes. (A type changed for another of its size is not seen: such a
// change needs a new layout string by hand.) Every field must be listed (checked at compile
// time), so that one added in padding, which the offsets would not show, changes it too.
uint64_t ExchangedFieldsHash();

}  // namespace gstab
