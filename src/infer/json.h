// json.h: just enough JSON for one request object per line.
//
// An object of up to JSON_MAX_KEYS members whose values are strings, numbers,
// booleans, null, or flat arrays of numbers or of strings.
#ifndef PARTITA_JSON_H
#define PARTITA_JSON_H

#include <stddef.h>

enum { JSON_NULL, JSON_BOOL, JSON_NUMBER, JSON_STRING, JSON_ARRAY };
#define JSON_MAX_KEYS 24

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
// Appends s as a JSON string literal (quoted, escaped) to out; returns the new length.
size_t json_quote(char *out, size_t cap, size_t len, const char *s);

#endif
