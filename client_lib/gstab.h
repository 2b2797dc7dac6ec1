/* gstab C ABI: attach any language's training loop to gstabd.
 *
 * Every function returns a gstab_status (0 = GSTAB_OK, otherwise a gRPC status code); the
 * message of the last failure on the calling thread is gstab_last_error(). Handles are opaque
 * and owned by the caller, who frees them with the matching _destroy function. A client handle
 * must not be used from several threads at once.
 *
 *   gstab_client* c;  gstab_arena* a;
 *   gstab_connect("/run/gstab/gstabd.sock", &c);
 *   gstab_attach(c, "my-job", 0, 1, 0, 1, "stabilize");
 *   gstab_arena_create(&a);
 *   gstab_arena_add_tensor(a, "w", 4096, GSTAB_FLOAT32, "", NULL);
 *   gstab_arena_allocate(a);
 *   float* g = gstab_arena_data(a, 0);
 *   gstab_register_arena(c, a);
 *   ... fill g ...;  gstab_step(c, step, &result);
 */
#ifndef GSTAB_H_
#define GSTAB_H_

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef int gstab_status;
#define GSTAB_OK 0
#define GSTAB_INVALID_ARGUMENT 3
#define GSTAB_DEADLINE_EXCEEDED 4
#define GSTAB_FAILED_PRECONDITION 9
#define GSTAB_UNIMPLEMENTED 12
#define GSTAB_UNAVAILABLE 14
#define GSTAB_UNAUTHENTICATED 16

typedef enum { GSTAB_FLOAT32 = 0, GSTAB_BFLOAT16 = 1, GSTAB_FLOAT16 = 2 } gstab_dtype;

typedef struct gstab_client gstab_client;
typedef struct gstab_arena gstab_arena;

typedef struct {
  int skip;      /* some group was non-finite: skip the optimizer step */
  int diverging; /* some group is in the diverging state */
  int spikes;    /* groups flagged as spikes this step */
  size_t num_groups;
  double norm;            /* raw L2 norm over all groups (NaN when non-finite) */
  double stabilized_norm; /* L2 norm after scaling */
} gstab_step_result;

typedef struct {
  const char* group; /* valid until the next gstab_step on this client */
  double norm;
  double stabilized_norm;
  double scale;
  double z;
  int spike;
  int skipped;
  int diverging;
} gstab_group_result;

#define GSTAB_VERSION "0.1.0"

/* The version of the library in use (GSTAB_VERSION when it matches this header). */
const char* gstab_version(void);

/* The message of the last failed call on this thread ("" when none). */
const char* gstab_last_error(void);

gstab_status gstab_connect(const char* socket_path, gstab_client** out);
void gstab_client_destroy(gstab_client* client);

/* policy: "stabilize", "stabilize-stable-spam", "clip", "zclip" or "monitor"; NULL = default. */
gstab_status gstab_attach(gstab_client* client, const char* job, uint32_t rank, uint32_t world_size,
                          uint32_t local_rank, uint32_t local_world_size, const char* policy);
gstab_status gstab_detach(gstab_client* client);

gstab_status gstab_arena_create(gstab_arena** out);
void gstab_arena_destroy(gstab_arena* arena);
/* Flags of a tensor, for the _flags variants of the add functions (the others pass 0).
 * REPLICATED: every rank of the job holds the whole gradient, as after DDP's all-reduce, so its
 * group's norm is not summed across ranks (the default, sharded: each rank holds a slice). All
 * tensors of a group must agree. */
#define GSTAB_TENSOR_REPLICATED (1u << 0)

/* group: "" or NULL for a group of its own. *index (may be NULL) receives the tensor index. */
gstab_status gstab_arena_add_tensor(gstab_arena* arena, const char* name, uint64_t numel,
                                    gstab_dtype dtype, const char* group, size_t* index);
gstab_status gstab_arena_add_tensor_flags(gstab_arena* arena, const char* name, uint64_t numel,
                                          gstab_dtype dtype, const char* group, uint32_t flags,
                                          size_t* index);
gstab_status gstab_arena_allocate(gstab_arena* arena);
void* gstab_arena_data(gstab_arena* arena, size_t index);

gstab_status gstab_register_arena(gstab_client* client, const gstab_arena* arena);
gstab_status gstab_step(gstab_client* client, uint64_t step, gstab_step_result* result);
/* Per-group results of the last gstab_step; index < result.num_groups. */
gstab_status gstab_step_group(const gstab_client* client, size_t index, gstab_group_result* out);

/* ---- Gradients in CUDA device memory (the GPU backend) ----
 *
 * Any framework's tensors: device pointer + element count + dtype, on one device. gstabd
 * stabilizes them in place, stream-ordered: gstab_cuda_step records an event on `stream`, asks
 * gstabd to enqueue its kernels behind it and makes `stream` wait for them; no host waits on
 * the GPU. Without CUDA in this build the functions return GSTAB_UNIMPLEMENTED.
 *
 *   gstab_cuda_gradients* g;
 *   gstab_cuda_gradients_create(0, &g);
 *   gstab_cuda_add_tensor(g, "fc1.weight", ptr, numel, GSTAB_BFLOAT16, "");
 *   gstab_register_cuda(c, g);
 *   ... backward on stream ...;  gstab_cuda_step(c, g, step, stream, &result);
 *
 * `result` of gstab_cuda_step describes the newest step whose GPU work had finished when gstabd
 * answered (result_step; 0 if none yet). This step's own results are written, before the
 * stream may continue, to the device buffer of gstab_cuda_results: a gstab_results_header and
 * then one gstab_group_outcome per group, so kernels on `stream` can read the skip decision. */

typedef struct gstab_cuda_gradients gstab_cuda_gradients;

#define GSTAB_FLAG_ACCEPTED (1u << 0)
#define GSTAB_FLAG_SKIPPED (1u << 1) /* non-finite: skip the optimizer step */
#define GSTAB_FLAG_ZERO_NORM (1u << 2)
#define GSTAB_FLAG_SPIKE (1u << 3)
#define GSTAB_FLAG_SPIKE_RATIO (1u << 4)
#define GSTAB_FLAG_DIVERGING (1u << 5)
#define GSTAB_FLAG_CLIPPED (1u << 8)
#define GSTAB_FLAG_MISMATCH (1u << 9) /* nodes disagreed on the step or groups: nothing applied */

typedef struct {
  uint64_t step;       /* the step these results belong to (0: none yet) */
  uint32_t num_groups; /* gstab_group_outcome entries that follow */
  uint32_t flags;      /* OR of the groups' GSTAB_FLAG_ bits */
} gstab_results_header;

typedef struct {
  double norm;
  double stabilized_norm;
  double scale;
  double z;
  uint32_t flags;
  uint32_t reserved;
} gstab_group_outcome;

gstab_status gstab_cuda_gradients_create(int device, gstab_cuda_gradients** out);
void gstab_cuda_gradients_destroy(gstab_cuda_gradients* gradients);
/* device_ptr: device memory of the gradients' device, inside one CUDA allocation. */
gstab_status gstab_cuda_add_tensor(gstab_cuda_gradients* gradients, const char* name,
                                   void* device_ptr, uint64_t numel, gstab_dtype dtype,
                                   const char* group);
gstab_status gstab_cuda_add_tensor_flags(gstab_cuda_gradients* gradients, const char* name,
                                         void* device_ptr, uint64_t numel, gstab_dtype dtype,
                                         const char* group, uint32_t flags);
/* Allocates numel elements of device memory owned by `gradients` (freed with it, unless its
 * streams were left waiting for a step gstabd never finished) and adds them as a tensor;
 * *device_ptr receives the address. */
gstab_status gstab_cuda_allocate_tensor(gstab_cuda_gradients* gradients, const char* name,
                                        uint64_t numel, gstab_dtype dtype, const char* group,
                                        void** device_ptr);
gstab_status gstab_cuda_allocate_tensor_flags(gstab_cuda_gradients* gradients, const char* name,
                                              uint64_t numel, gstab_dtype dtype,
                                              const char* group, uint32_t flags,
                                              void** device_ptr);
gstab_status gstab_register_cuda(gstab_client* client, gstab_cuda_gradients* gradients);
/* stream: a cudaStream_t (NULL: the legacy default stream). result may be NULL; its
 * result_step says which step it describes. */
gstab_status gstab_cuda_step(gstab_client* client, gstab_cuda_gradients* gradients, uint64_t step,
                             void* stream, gstab_step_result* result, uint64_t* result_step);
/* After gstab_register_cuda: the device address of the results buffer and its size. */
const void* gstab_cuda_results(const gstab_cuda_gradients* gradients, size_t* bytes);
/* The name of group `index` of the results buffer (NULL when out of range). */
const char* gstab_cuda_group_name(const gstab_cuda_gradients* gradients, size_t index);

#ifdef __cplusplus
}
#endif

#endif /* GSTAB_H_ */
