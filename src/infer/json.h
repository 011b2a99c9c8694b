// json.h: just enough JSON for one request object per line (JSONL).
//
// An object of up to JSON_MAX_KEYS members whose values are strings, numbers,
// booleans, null, or flat arrays (up to JSON_MAX_ARRAY elements) of numbers or
// of strings. Strict: see json.c for everything it refuses. Strings come out
// as valid UTF-8 without NUL bytes.
#ifndef PARTITA_JSON_H
#define PARTITA_JSON_H

#include <stddef.h>
#include <stdio.h>

enum { JSON_NULL, JSON_BOOL, JSON_NUMBER, JSON_STRING, JSON_ARRAY };
#define JSON_MAX_KEYS 24
#define JSON_MAX_ARRAY (1 << 20)

typedef struct JsonValue {
    int type;
    double num;             // JSON_NUMBER, JSON_BOOL (0/1)
    char *str;              // JSON_STRING (UTF-8, NUL-terminated)
    int n;                  // JSON_ARRAY length
    int of_strings;         // JSON_ARRAY: 1 if its elements are strings
    double *nums;           // JSON_ARRAY of numbers
    char **strs;            // JSON_ARRAY of strings
} JsonValue;

typedef struct JsonObject {
    int n;
    char *keys[JSON_MAX_KEYS];
    JsonValue vals[JSON_MAX_KEYS];
} JsonObject;

// Parses text (one object, surrounding whitespace allowed). Returns 0, or -1
// with a message naming the column in err.
int json_parse_object(const char *text, JsonObject *obj, char *err, size_t errlen);
void json_free(JsonObject *obj);
const JsonValue *json_get(const JsonObject *obj, const char *key);
// Appends s as a JSON string literal (quoted, escaped) at out[len], writing only
// inside out[0..cap) and NUL-terminating there; returns the length the whole
// literal needs (len + its size), so json_quote(NULL, 0, 0, s) measures it.
size_t json_quote(char *out, size_t cap, size_t len, const char *s);

// Reads one line (without its newline) of at most max bytes into *buf (grown
// to max + 2 bytes once), its length in *len. Returns 1 for a line, 0 at the end
// of the file, -1 on a read error (errno), 2 for a line holding a NUL byte, 3 for
// a line longer than max (read to its end and dropped: memory stays bounded).
int jsonl_read_line(FILE *f, char **buf, size_t *cap, size_t max, size_t *len);

#endif
