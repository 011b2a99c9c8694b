// sysutil.h: two small system helpers several modules share.
#ifndef PARTITA_SYSUTIL_H
#define PARTITA_SYSUTIL_H

// Seconds on the monotonic clock (for intervals only).
double wall_seconds(void);

// mkdir -p; a failure is fatal, with hint naming the deck key to change.
void make_dirs(const char *path, const char *hint);

#endif
