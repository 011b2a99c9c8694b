// version.c: the version string; the Makefile passes PARTITA_GIT to this file alone.
#include "version.h"

#ifndef PARTITA_GIT
#define PARTITA_GIT "unknown"
#endif

const char *partita_version(void) { return PARTITA_RELEASE " (git " PARTITA_GIT ")"; }
