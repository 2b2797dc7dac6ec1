/* gstab C ABI: attach any language's training loop to gstabd.
 *
 * Every function returns a gstab_status (0 = GSTAB_OK, otherwise a gRPC status code); the
 * message of the last failure on the calling thread is gstab_last_error(). Handles are opaque
 * and owned by the caller, who frees them with the matching _destroy function. A client handle's
 * calls come one at a time, from any thread, save one case: a monitoring thread may call
 * gstab_get_stats_json while another thread's call (gstab_step waiting for the job's other
 * workers, say) is under way, and, after finding gstabd restarted, attach and register host
 * memory again (gstab_attach_with_options, gstab_attach_restored, gstab_update_config,
 * gstab_register_arena: the Python binding's stats() does) while that call fails or waits. A
 * handle must not be destroyed while a call on it runs. Handles
 * belong to the process that made them:
 * in a forked child every call on an inherited one fails with GSTAB_FAILED_PRECONDITION (those
 * returning a value return NULL, "" or 0, as each says for a NULL handle, with
 * gstab_last_error() saying why), and its _destroy frees nothing (the parent's session,
 * threads and shared memory stay the parent's). Nor may a child connect a client of its own
 * once its parent has connected one, or tried to and failed for want of gstabd (gRPC does not
 * survive fork): gstab_connect fails there with GSTAB_FAILED_PRECONDITION; start workers anew
 * (exec, spawn) instead. A function's out-parameters are set when it fails too: pointers to
 * NULL, sizes, counts, versions and step numbers to 0, a tensor index to SIZE_MAX, results to
 * all zeros (NULL names), an instance to "".
 *
 *   gstab_client* c = NULL;  gstab_arena* a = NULL;
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
#define GSTAB_NOT_FOUND 5
#define GSTAB_PERMISSION_DENIED 7 /* e.g. a job of another uid or certificate (--jobs_by_uid) */
#define GSTAB_RESOURCE_EXHAUSTED 8
#define GSTAB_FAILED_PRECONDITION 9
/* A step of a job across nodes that another node refused (nothing changed: go on with the next
 * step); a configuration change while the job's GPUs enqueue a step (try again); else this
 * session was replaced (another process attached as its rank: the message says which). */
#define GSTAB_ABORTED 10
#define GSTAB_UNIMPLEMENTED 12
#define GSTAB_INTERNAL 13    /* the system refused something else (the message says what) */
#define GSTAB_UNAVAILABLE 14 /* gstabd is not there, or is stopping: attach again once it serves \
                              */
#define GSTAB_DATA_LOSS 15   /* gstab_step: gstabd went away while it scaled (see gstab_step) */
#define GSTAB_UNAUTHENTICATED                                     \
  16 /* gstabd does not know the session (restarted, or the lease \
        ran out): attach and register again */

typedef enum { GSTAB_FLOAT32 = 0, GSTAB_BFLOAT16 = 1, GSTAB_FLOAT16 = 2 } gstab_dtype;

typedef struct gstab_client gstab_client;
typedef struct gstab_arena gstab_arena;

typedef struct {
  int skip;      /* some group was non-finite: skip the optimizer step */
  int diverging; /* some group is in the diverging state */
  int spikes;    /* groups flagged as spikes this step */
  size_t num_groups;
  double norm;            /* raw L2 norm over all groups (NaN or +Inf when non-finite: test skip) */
  double stabilized_norm; /* L2 norm after scaling */
} gstab_step_result;

typedef struct {
  const char* group; /* valid until the next step (gstab_step, gstab_cuda_step) or the
                        client's gstab_client_destroy */
  double norm;
  double stabilized_norm;
  double scale;
  double z;
  int spike;
  int skipped; /* the step is skipped: this group's norm is non-finite, or another group's is
                  (then this one's norm is finite, its statistics untouched), or its scale
                  was refused (statistics gstabd never writes, an import's) */
  int diverging;
} gstab_group_result;

#define GSTAB_VERSION "0.2.0"

/* The version of the library in use (GSTAB_VERSION when it matches this header). */
const char* gstab_version(void);

/* The message of the last failed call on this thread ("" when none has failed); a call that
 * succeeds leaves it as it is. */
/* Valid until the calling thread's next failing gstab call: copy it to keep it. Per OS thread:
 * a binding whose calls may move between threads (Go's goroutines) reads it on the thread of
 * the failed call (runtime.LockOSThread, or one C function making both calls). */
const char* gstab_last_error(void);

/* socket_path: gstabd's unix socket, or HOST:PORT of its TCP port (gstabd --listen), reached
 * with mutual TLS from the PEM files that GSTAB_TLS_CA, GSTAB_TLS_CERT and GSTAB_TLS_KEY name
 * (GSTAB_TLS_NAME: the name in gstabd's certificate, if not the host); NULL or "":
 * $GSTAB_SOCKET, else /run/gstab/gstabd.sock, as gstabctl and the Python package dial.
 * Waits up to 10 s for a gstabd that serves: GSTAB_UNAVAILABLE when none answers, or only one
 * that is stopping; GSTAB_FAILED_PRECONDITION when the server there is not gstabd;
 * GSTAB_INVALID_ARGUMENT, naming it, when GSTAB_CALL_TIMEOUT_S (seconds, 1 or more),
 * GSTAB_KEEPALIVE_MS or GSTAB_KEEPALIVE_TIMEOUT_MS (milliseconds, 1000 or more) is set to
 * anything else. */
gstab_status gstab_connect(const char* socket_path, gstab_client** out);
void gstab_client_destroy(gstab_client* client);

/* policy: "stabilize", "stabilize-stable-spam", "clip", "zclip" or "monitor", for a job new on
 * gstabd (later workers must agree with it: "stabilize" is the v4 preset's betas, and a worker
 * naming the other preset's is refused, unless the job's betas were tuned since to neither's);
 * NULL or "": none asked for: the job's
 * own configuration (an existing job's, one restored from gstabd's checkpoint, or the default,
 * stabilize, for a new job). world_size and local_world_size 0 are taken as 1 (a worker alone),
 * as an unset field is on the wire. Attaching again ends the earlier session once the new attach
 * has succeeded (register again); a failed attach leaves the earlier one as it was, except one
 * that got no answer in time (or was cut off) which gstabd took all the same: an attach as the
 * earlier session's job and local rank ends it there, and its next call fails with
 * GSTAB_ABORTED ("was replaced"): attach again. */
gstab_status gstab_attach(gstab_client* client, const char* job, uint32_t rank, uint32_t world_size,
                          uint32_t local_rank, uint32_t local_world_size, const char* policy);
gstab_status gstab_detach(gstab_client* client);

gstab_status gstab_arena_create(gstab_arena** out);
void gstab_arena_destroy(gstab_arena* arena);
/* Flags of a tensor, for the _flags variants of the add functions (the others pass 0): how its
 * group's norm combines the ranks' gradients. All tensors of a group must agree.
 * No flag, sharded: each rank holds a slice; the norm sums every rank's squares.
 * REPLICATED: every rank of the job holds the whole gradient, as after DDP's all-reduce, so its
 * group's norm is not summed across ranks.
 * NODE_SHARDED: each node holds the whole gradient, sliced across its ranks (HSDP: sharded
 * within a node, replicated across nodes); the norm sums one node's squares. */
#define GSTAB_TENSOR_REPLICATED (1u << 0)
#define GSTAB_TENSOR_NODE_SHARDED (1u << 1)

/* name, and group when given: 1 to 256 characters of [A-Za-z0-9._/:-], each tensor's name its
 * own (GSTAB_INVALID_ARGUMENT otherwise). group: "" or NULL for a group of its own, named after
 * the tensor (gstab_register_arena refuses another tensor naming that group: name it for both to
 * share it). *index (may be NULL) receives the tensor index.
 * Every tensor is added before gstab_arena_allocate (GSTAB_FAILED_PRECONDITION after it). */
gstab_status gstab_arena_add_tensor(gstab_arena* arena, const char* name, uint64_t numel,
                                    gstab_dtype dtype, const char* group, size_t* index);
gstab_status gstab_arena_add_tensor_flags(gstab_arena* arena, const char* name, uint64_t numel,
                                          gstab_dtype dtype, const char* group, uint32_t flags,
                                          size_t* index);
/* Reserves the arena's shared memory in /dev/shm: GSTAB_RESOURCE_EXHAUSTED when it lacks room,
 * the process is out of file descriptors or the memory cannot be mapped,
 * GSTAB_PERMISSION_DENIED when /dev/shm refuses this user, GSTAB_INTERNAL for another refusal
 * (the message says which); GSTAB_INVALID_ARGUMENT for an arena of no tensors or of more than
 * 2^50 bytes, GSTAB_FAILED_PRECONDITION for one allocated already. */
gstab_status gstab_arena_allocate(gstab_arena* arena);
/* NULL until gstab_arena_allocate has succeeded, for an index past the last tensor, or in a
 * forked child (an arena is its maker's): gstab_last_error() says which. */
void* gstab_arena_data(gstab_arena* arena, size_t index);
/* Removes the arena's shared-memory object from /dev/shm now, its memory still mapped and
 * usable (no registration can find it any more): for a process on its way out whose arena
 * outlives its exit, as the Python package does at exit. gstab_arena_destroy also removes it. */
void gstab_arena_unlink(gstab_arena* arena);

/* Replaces the client's earlier registration. Failed, it leaves none: gstab_step and
 * gstab_cuda_step are refused (GSTAB_FAILED_PRECONDITION, naming why) until a registration
 * succeeds or the client attaches again. */
gstab_status gstab_register_arena(gstab_client* client, const gstab_arena* arena);
/* `step` increases from one call to the next and stays below 2^62 (INVALID_ARGUMENT past it).
 * GSTAB_UNAVAILABLE or GSTAB_UNAUTHENTICATED: gstabd did not touch the gradients (it was gone,
 * stopping, or restarted, or went away before it scaled them): attach and register again, then
 * step again. GSTAB_DATA_LOSS: gstabd went away (killed, or crashed) after it had begun to scale
 * them, as the arena's progress word showed, or may have (the first step after a registration,
 * or a gstabd that does not mark the word): part of them, or all, may be scaled, so skip this
 * step (zero them) rather than step them again, then attach and register again once gstabd
 * serves. So too when gstabd, sent the step, did not answer within the call timeout
 * ($GSTAB_CALL_TIMEOUT_S) or stopped answering the connection's pings: stopped or stuck, it may
 * scale them when it runs again. GSTAB_DEADLINE_EXCEEDED is gstabd's own answer: the step's wait
 * for the job's other workers (local, or on other nodes) ran out before the gradients were
 * touched; GSTAB_ABORTED (a job across nodes): another node refused the step, and nothing
 * changed; GSTAB_FAILED_PRECONDITION: this worker came late to a step the others gave up on,
 * or the message says what to do. In each of those three, go on from the next step;
 * docs/daemon.md and docs/multinode.md say more. */
gstab_status gstab_step(gstab_client* client, uint64_t step, gstab_step_result* result);
/* 1 when the calling thread's last gstab_step or gstab_cuda_step failed with GSTAB_DATA_LOSS
 * because gstabd, sent the step, did not answer it (above: stopped or stuck, it may still scale
 * the gradients when it runs again, so an attach to it now would wait for it once more); 0
 * otherwise, also for a step gstabd was cut off from by going away. */
int gstab_last_step_unanswered(void);
/* Per-group results of the last gstab_step or gstab_cuda_step, when it succeeded (a failed one
 * leaves none: GSTAB_INVALID_ARGUMENT); index < result.num_groups. */
gstab_status gstab_step_group(const gstab_client* client, size_t index, gstab_group_result* out);
/* The last gstab_step of a job across nodes (the CPU backend): by how many steps this node's
 * statistics went back when it took node 0's at the job's new rendezvous, having counted more
 * (node 0 restarted from an older checkpoint, or imported an older state; a
 * STATISTICS_ROLLED_BACK event says the same); else 0 (and 0 for a NULL client). */
uint64_t gstab_step_statistics_rolled_back(const gstab_client* client);
/* Why nothing was applied to the step the last gstab_step or gstab_cuda_step's results belong
 * to: a CUDA step voided on the GPU (a node or local GPU of the job lost, the all-reduce
 * aborted; GSTAB_FLAG_VOIDED) or one the job's nodes disagreed on (GSTAB_FLAG_MISMATCH). Its
 * result's skip is set then, and its groups' norms are NaN: nothing was measured, and the
 * statistics did not move. "" when it was applied (and for a NULL client). Valid until the
 * client's next step. */
const char* gstab_step_not_applied(const gstab_client* client);

/* ---- Configuration, jobs across nodes, checkpoints ----
 *
 * Configuration settings are text: KEY=VALUE pairs separated by spaces, commas or newlines,
 * with the keys of gstab.v1.PolicyConfig (gstab/v1/config.proto) as `gstabctl config set`
 * takes them, applied in order: "policy=zclip zclip.z_threshold=3",
 * "stabilize.preset=stable-spam", "policy=clip clip.max_norm=0.5 non_finite_action=keep".
 *
 * Bytes and text these functions return are the caller's, freed with gstab_free. */

typedef struct {
  uint32_t rank;             /* global rank, below world_size */
  uint32_t world_size;       /* 0 is taken as 1, as in gstab_attach */
  uint32_t local_rank;       /* rank on this node, below local_world_size */
  uint32_t local_world_size; /* 0 is taken as 1, as in gstab_attach */
  uint32_t node_rank;        /* this node among the job's nodes, below node_count */
  uint32_t node_count;       /* 0 or 1: the job runs on this node alone */
  /* node_count > 1: the blob global rank 0 got from gstab_create_rendezvous, broadcast by the
   * job. NULL: the environment variable GSTAB_RENDEZVOUS (the blob in base64); an empty one
   * (not NULL, rendezvous_size 0) is refused there. */
  const void* rendezvous;
  size_t rendezvous_size;
  const char* policy; /* as for gstab_attach; NULL: none asked for */
  const char* config; /* settings applied over `policy`; NULL or "": none */
} gstab_attach_options;

/* gstab_attach with every option. */
gstab_status gstab_attach_with_options(gstab_client* client, const char* job,
                                       const gstab_attach_options* options);
/* 1 when the job of the client's last attach came back from gstabd's checkpoint (its
 * statistics and configuration; after a gstabd restart, or its retirement when idle); else 0
 * (and 0 for a client inherited from a parent process). */
int gstab_attach_restored(const gstab_client* client);
/* Global rank 0 of a job across node_count > 1 nodes, before anyone attaches: a new rendezvous
 * blob to broadcast to every worker. cuda != 0: the job registers CUDA gradients (the blob then
 * carries an NCCL id too). */
gstab_status gstab_create_rendezvous(gstab_client* client, const char* job, uint32_t node_count,
                                     int cuda, void** blob, size_t* size);
/* The instance of the gstabd `client` talks to, needing no attach: GSTAB_INSTANCE_SIZE - 1 hex
 * digits, random at each start of gstabd, written with a NUL to `instance`. Workers of a job
 * that get the same instance talk to one gstabd and are one node of the job (its local ranks),
 * whatever their hosts' or containers' names; gather them to number the job's nodes.
 * GSTAB_UNIMPLEMENTED from a gstabd of an earlier release. */
#define GSTAB_INSTANCE_SIZE 33
gstab_status gstab_daemon_instance(gstab_client* client, char* instance);
/* Changes the job's configuration from its next step; *version (may be NULL) receives the
 * configuration's new version. GSTAB_ABORTED while the job's GPUs are enqueueing a step: try
 * again. */
gstab_status gstab_update_config(gstab_client* client, const char* settings, uint64_t* version);
/* The job's statistics as versioned bytes, for the job's own checkpoint. */
gstab_status gstab_export_state(gstab_client* client, void** state, size_t* size);
/* Restores statistics gstab_export_state gave (the job's step count and configuration resume
 * from them). A job on the CUDA backend with several GPUs imports before its workers register.
 * *groups (may be NULL) receives the number of groups imported. */
gstab_status gstab_import_state(gstab_client* client, const void* state, size_t size,
                                uint32_t* groups);
/* gstab_import_state, except that the job keeps its configuration: only the statistics
 * (re-expressed for it) and the step count are imported, whatever configuration the state
 * carries. */
gstab_status gstab_import_statistics(gstab_client* client, const void* state, size_t size,
                                     uint32_t* groups);
/* gstabd's GetStatsResponse for the job as JSON text: proto3's JSON mapping with the .proto's
 * field names and every field, zero ones included (64-bit integers are strings there). */
gstab_status gstab_get_stats_json(gstab_client* client, char** json);
/* Frees what the functions above returned (NULL is fine). */
void gstab_free(void* p);

/* ---- Gradients in CUDA device memory (the GPU backend) ----
 *
 * Any framework's tensors: device pointer + element count + dtype, on one device. gstabd
 * stabilizes them in place, stream-ordered: gstab_cuda_step writes the step's `ready` word on
 * `stream`, asks gstabd to enqueue its kernels behind it (its stream waits for that word) and
 * makes `stream` wait for gstabd's `done` word; no host waits on the GPU. Without CUDA in this
 * build the functions return GSTAB_UNIMPLEMENTED.
 *
 *   gstab_cuda_gradients* g;
 *   gstab_cuda_gradients_create(0, &g);
 *   gstab_cuda_add_tensor(g, "fc1.weight", ptr, numel, GSTAB_BFLOAT16, "");
 *   gstab_register_cuda(c, g);
 *   ... backward on stream ...;  gstab_cuda_step(c, g, step, stream, &result, &result_step);
 *
 * `result` of gstab_cuda_step describes the newest step whose GPU work had finished when gstabd
 * answered (*result_step; 0 if none yet). This step's own results are written, before the
 * stream may continue, to the device buffer of gstab_cuda_results: a gstab_results_header and
 * then one gstab_group_outcome per group, so kernels on `stream` can read the skip decision.
 * A header whose step is not the one passed means this step's results were never written: its
 * gstabd was lost before its kernels ran (the library then lets the stream go on, and a later
 * call fails), and the gradients may be partly stabilized: skip the optimizer step. */

typedef struct gstab_cuda_gradients gstab_cuda_gradients;

#define GSTAB_FLAG_ACCEPTED (1u << 0)
#define GSTAB_FLAG_SKIPPED (1u << 1) /* non-finite: skip the optimizer step */
#define GSTAB_FLAG_ZERO_NORM (1u << 2)
#define GSTAB_FLAG_SPIKE (1u << 3)
#define GSTAB_FLAG_SPIKE_RATIO (1u << 4)
#define GSTAB_FLAG_DIVERGING (1u << 5)
#define GSTAB_FLAG_CLIPPED (1u << 8)
#define GSTAB_FLAG_MISMATCH (1u << 9) /* nodes disagreed on the step or groups: nothing applied */
/* The step was voided (a node or local GPU of the job was lost, its all-reduce aborted): nothing
 * applied. Set with GSTAB_FLAG_SKIPPED; the norms are NaN, as nothing was measured. */
#define GSTAB_FLAG_VOIDED (1u << 10)
/* The group's norm was finite, but another group's was not: the step is skipped whole, so this
 * group's statistics are untouched and its gradients zeroed or kept as the non-finite one's.
 * Set with GSTAB_FLAG_SKIPPED. */
#define GSTAB_FLAG_WITH_STEP (1u << 11)
/* No worker registers the group (an import or a checkpoint brought its statistics, or, in a
 * job of one GPU, its worker registered it earlier and no longer does), so its statistics stay
 * as they are: norm 0, scale 1. */
#define GSTAB_FLAG_UNREGISTERED (1u << 12)

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
/* Registered gradients go after their client's session, or after the registration that
 * replaced them: gstab_detach, gstab_client_destroy (which detaches) and a registration through
 * the same client wait (up to 2 s) for gstabd to close its mappings of them. Destroyed first,
 * the memory gstab_cuda_allocate_tensor made is freed while gstabd still has it open through CUDA
 * IPC, which CUDA leaves undefined. */
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
 * *device_ptr receives the address. Each allocation is a multiple of 2 MiB (CUDA IPC shares
 * memory in such blocks): for many small tensors, allocate one and add its slices.
 * GSTAB_RESOURCE_EXHAUSTED when the device is out of memory. */
gstab_status gstab_cuda_allocate_tensor(gstab_cuda_gradients* gradients, const char* name,
                                        uint64_t numel, gstab_dtype dtype, const char* group,
                                        void** device_ptr);
gstab_status gstab_cuda_allocate_tensor_flags(gstab_cuda_gradients* gradients, const char* name,
                                              uint64_t numel, gstab_dtype dtype,
                                              const char* group, uint32_t flags,
                                              void** device_ptr);
/* As gstab_register_arena: failed, it leaves the client no registration. */
gstab_status gstab_register_cuda(gstab_client* client, gstab_cuda_gradients* gradients);
/* stream: a cudaStream_t (NULL: the legacy default stream). result and result_step may be
 * NULL; *result_step says which step *result describes. `gradients` are those last registered
 * through `client` (GSTAB_FAILED_PRECONDITION otherwise). */
gstab_status gstab_cuda_step(gstab_client* client, gstab_cuda_gradients* gradients, uint64_t step,
                             void* stream, gstab_step_result* result, uint64_t* result_step);
/* After gstab_register_cuda: the device address of the results buffer and its size; valid
 * until `gradients` registers again or is destroyed, or another registration through its client
 * replaces it. */
const void* gstab_cuda_results(const gstab_cuda_gradients* gradients, size_t* bytes);
/* The name of group `index` of the results buffer (NULL when out of range); valid until
 * `gradients` registers again or is destroyed. */
const char* gstab_cuda_group_name(const gstab_cuda_gradients* gradients, size_t index);

#ifdef __cplusplus
}
#endif

#endif /* GSTAB_H_ */
