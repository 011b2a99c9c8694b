// prep.h: `partita prep`: text files -> an HDF5 token file.
#ifndef PARTITA_PREP_H
#define PARTITA_PREP_H

// argv: OUT.h5 PATH... (files, or directories read recursively in name order).
// Each file is one document followed by the end-of-text token. Returns the exit code.
int prep_main(int argc, char **argv);

#endif
