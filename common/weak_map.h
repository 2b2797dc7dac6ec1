// Registries that share one live object per key (mappings of shared memory or of CUDA IPC
// allocations) keep weak pointers; this counts the live ones and forgets the dead.
#pragma once

#include <map>
#include <memory>

namespace gstab {

template <typename Key, typename Value>
int PruneAndCountLive(std::map<Key, std::weak_ptr<Value>>* map) {
  int live = 0;
  for (auto it = map->begin(); it != map->end();) {
    if (it->second.expired()) {
      it = map->erase(it);
    } else {
      ++live;
      ++it;
    }
  }
  return live;
}

}  // namespace gstab
