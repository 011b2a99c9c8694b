// json.h: request objects read with jansson, bounded: one JSON object per line
// (generate's JSONL) or per HTTP body (serve).
//
// What is refused, each with its column: anything but one object; text that is
// not JSON (RFC 8259, jansson's strict decoder: no NaN, no leading zeros, no
// trailing text); invalid UTF-8 and \u0000 (a C string would be cut there);
// duplicate keys; nesting deeper than JSON_MAX_DEPTH; an object of more than
// JSON_MAX_KEYS members; an array of more than JSON_MAX_ARRAY elements.
#ifndef PARTITA_JSON_H
#define PARTITA_JSON_H

#include <jansson.h>
#include <stddef.h>
#include <stdio.h>

#define JSON_MAX_DEPTH 8
#define JSON_MAX_KEYS 64
#define JSON_MAX_ARRAY (1 << 20)

// Parses text[0..len) as one object. Returns it (json_decref when done), or
// NULL with a message naming the column in err.
json_t *json_parse_object(const char *text, size_t len, char *err, size_t errlen);

// v as one compact line of JSON (no newline); malloc'd, the caller frees it.
// Aborts with a message when out of memory.
char *json_line(const json_t *v);

// A number's value (integer or real) in *x; 0, or -1 when v is no number.
int json_number(const json_t *v, double *x);

// Reads one line (without its newline) of at most max bytes into *buf (grown
// to max + 2 bytes once), its length in *len. Returns 1 for a line, 0 at the end
// of the file, -1 on a read error (errno), 2 for a line holding a NUL byte, 3 for
// a line longer than max (read to its end and dropped: memory stays bounded).
int jsonl_read_line(FILE *f, char **buf, size_t *cap, size_t max, size_t *len);

#endif
