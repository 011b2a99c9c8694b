// json.c: jansson's strict decoder plus the bounds of json.h.
#include "json.h"

#include <stdlib.h>
#include <string.h>

// The first bound v breaks (depth counted from 1 at the top), as a message; 0 if none.
static int check_bounds(const json_t *v, int depth, char *err, size_t errlen) {
    if (json_is_object(v) || json_is_array(v)) {
        if (depth > JSON_MAX_DEPTH) {
            snprintf(err, errlen, "objects and arrays nested deeper than %d levels", JSON_MAX_DEPTH);
            return -1;
        }
    }
    if (json_is_object(v)) {
        if (json_object_size(v) > JSON_MAX_KEYS) {
            snprintf(err, errlen, "an object of %zu members (at most %d)", json_object_size(v), JSON_MAX_KEYS);
            return -1;
        }
        const char *k;
        json_t *x;
        json_object_foreach((json_t *)v, k, x) if (check_bounds(x, depth + 1, err, errlen)) return -1;
    } else if (json_is_array(v)) {
        if (json_array_size(v) > JSON_MAX_ARRAY) {
            snprintf(err, errlen, "an array longer than %d elements", JSON_MAX_ARRAY);
            return -1;
        }
        size_t i;
        json_t *x;
        json_array_foreach(v, i, x) if (check_bounds(x, depth + 1, err, errlen)) return -1;
    }
    return 0;
}

json_t *json_parse_object(const char *text, size_t len, char *err, size_t errlen) {
    json_error_t je;
    // jansson's own depth limit (2048) bounds its recursion; ours is checked after.
    json_t *v = json_loadb(text, len, JSON_REJECT_DUPLICATES, &je);
    if (!v) {
        snprintf(err, errlen, "%s at column %d", je.text, je.column > 0 ? je.column : (int)je.position + 1);
        return NULL;
    }
    if (!json_is_object(v)) {
        snprintf(err, errlen, "expected an object ('{'), got %s", json_is_array(v) ? "an array" : "a value");
        json_decref(v);
        return NULL;
    }
    if (check_bounds(v, 1, err, errlen)) {
        json_decref(v);
        return NULL;
    }
    return v;
}

char *json_line(const json_t *v) {
    char *s = json_dumps(v, JSON_COMPACT | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(17));
    if (!s) {
        fprintf(stderr, "error: out of memory formatting a JSON line\n");
        abort();
    }
    return s;
}

int json_number(const json_t *v, double *x) {
    if (!json_is_number(v)) return -1;
    *x = json_number_value(v);
    return 0;
}

int jsonl_read_line(FILE *f, char **buf, size_t *cap, size_t max, size_t *len) {
    if (*cap < max + 2) {
        char *p = realloc(*buf, max + 2);
        if (!p) return -1;
        *buf = p;
        *cap = max + 2;
    }
    size_t n = 0;
    int ch, too_long = 0;
    while ((ch = getc(f)) != EOF) {
        if (ch == '\n') break;
        if (n < max) (*buf)[n++] = (char)ch;
        else too_long = 1;   // the rest of the line is read and dropped
    }
    if (ch == EOF && n == 0 && !too_long) return ferror(f) ? -1 : 0;
    (*buf)[n] = 0;
    *len = n;
    if (too_long) return 3;
    if (memchr(*buf, 0, n)) return 2;
    return 1;
}
