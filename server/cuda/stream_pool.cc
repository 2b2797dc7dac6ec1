#include "server/cuda/stream_pool.h"

#include <map>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "kernels/cuda/cuda_check.h"

namespace gstab {
namespace {

struct Pool {
  absl::Mutex mu;
  std::map<int, std::vector<cudaStream_t>> free ABSL_GUARDED_BY(mu);  // per device
};

Pool& ThePool() {
  static Pool* pool = new Pool;  // lives as long as the process: streams are returned late
  return *pool;
}

}  // namespace

absl::StatusOr<cudaStream_t> AcquireStream(int device) {
  Pool& pool = ThePool();
  {
    absl::MutexLock lock(&pool.mu);
    std::vector<cudaStream_t>& free = pool.free[device];
    if (!free.empty()) {
      cudaStream_t s = free.back();
      free.pop_back();
      return s;
    }
  }
  cudaStream_t s = nullptr;
  RETURN_IF_CUDA_ERROR(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  return s;
}

void ReturnStream(int device, cudaStream_t stream) {
  if (stream == nullptr) return;
  if (cudaStreamQuery(stream) != cudaSuccess) {
    ClearStaleCudaError();  // cudaErrorNotReady must not surface in a later check
    cudaStreamDestroy(stream);
    return;
  }
  Pool& pool = ThePool();
  absl::MutexLock lock(&pool.mu);
  pool.free[device].push_back(stream);
}

}  // namespace gstab
