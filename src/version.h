// version.h: what this binary is: the release and the `git describe` of its source.
#ifndef PARTITA_VERSION_H
#define PARTITA_VERSION_H

#define PARTITA_RELEASE "0.1.0"

// "0.1.0 (git v0.1-123-gabcdef0-dirty)": the release and `git describe --always
// --dirty` of the tree it was built from (baked in by the Makefile; "unknown"
// outside a git checkout).
const char *partita_version(void);

#endif
