// sysutil.h: two small system helpers several modules share.
#ifndef PARTITA_SYSUTIL_H
#define PARTITA_SYSUTIL_H

#include <stdint.h>

// Seconds on the monotonic clock (for intervals only).
double wall_seconds(void);

// mkdir -p; a failure is fatal, with hint naming the deck key to change.
void make_dirs(const char *path, const char *hint);

// mkdir -p of the directory part of a file path ("a/b/c.h5" -> "a/b"); none for "c.h5".
void make_parent_dirs(const char *file, const char *hint);

// Kernel threads for one rank: [run] threads when > 0, else the node's online
// cores shared among the ranks on the node (at least 1). Training and generation
// both use it, so a rank never runs OpenMP on every core of a shared node.
int threads_per_rank(int64_t requested, int ranks_on_node);

#endif
