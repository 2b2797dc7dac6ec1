/* The smallest C program using gstab: attach, register one gradient tensor, run a few steps
 * with a spike, print what gstabd did.   minimal_c SOCKET [JOB]
 * gstabd holds the job afterwards: a second run on the same gstabd, from step 1 again, needs
 * another JOB, or `gstabctl forget --job=minimal-c` first. */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include <gstab/gstab.h>

int main(int argc, char** argv) {
  if (argc > 1 && argv[1][0] == '-') {
    fprintf(stderr, "usage: minimal_c [SOCKET [JOB]]  (SOCKET: gstabd's, /run/gstab/gstabd.sock "
                    "by default; JOB: minimal-c)\n");
    return argv[1][1] == 'h' || strcmp(argv[1], "--help") == 0 ? 0 : 2;
  }
  const char* socket = argc > 1 ? argv[1] : "/run/gstab/gstabd.sock";
  const char* job = argc > 2 ? argv[2] : "minimal-c";
  gstab_client* client = NULL;
  gstab_arena* arena = NULL;
  int rc = 1;
  if (gstab_connect(socket, &client) != GSTAB_OK ||
      gstab_attach(client, job, 0, 1, 0, 1, "stabilize") != GSTAB_OK ||
      gstab_arena_create(&arena) != GSTAB_OK ||
      gstab_arena_add_tensor(arena, "w", 1000, GSTAB_FLOAT32, "", NULL) != GSTAB_OK ||
      gstab_arena_allocate(arena) != GSTAB_OK || gstab_register_arena(client, arena) != GSTAB_OK) {
    fprintf(stderr, "minimal_c: %s\n", gstab_last_error());
    goto done;
  }
  float* g = (float*)gstab_arena_data(arena, 0);
  for (uint64_t step = 1; step <= 40; ++step) {
    const float factor = step == 30 ? 1e6f : 1.0f;
    for (int i = 0; i < 1000; ++i) g[i] = factor * (float)sin(0.1 * i + (double)step);
    gstab_step_result r;
    if (gstab_step(client, step, &r) != GSTAB_OK) {
      fprintf(stderr, "minimal_c: step %llu: %s\n", (unsigned long long)step, gstab_last_error());
      goto done;
    }
    if (step >= 28) {
      printf("step %llu raw %.4g stabilized %.4g spikes %d skip %d\n", (unsigned long long)step,
             r.norm, r.stabilized_norm, r.spikes, r.skip);
    }
  }
  rc = 0;
done: /* the session ends and the arena's shared memory goes, whatever failed */
  if (client != NULL) gstab_detach(client);
  gstab_arena_destroy(arena);
  gstab_client_destroy(client);
  return rc;
}
