// json.c: a strict, bounded recursive-descent reader for flat JSON objects (RFC 8259).
//
// What is refused, each with the column: anything but one object; nested objects and arrays
// (the depth is 1 by construction, so no input can recurse); duplicate keys; more than
// JSON_MAX_KEYS members or JSON_MAX_ARRAY array elements; numbers outside JSON's grammar
// (no leading '+', no leading zeros, no '.5', no hex, inf or nan), longer than
// JSON_MAX_NUMBER characters, or too large for a double; strings that are not valid UTF-8
// (overlong forms, surrogates, above U+10FFFF), that hold a raw control character, a lone
// \u surrogate or \u0000 (a C string would be cut there); trailing text after the object.
#include "json.h"
#include "utf8.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define JSON_MAX_NUMBER 64  // characters of one number

typedef struct Parser {
    const char *s, *p;
    char *err;
    size_t errlen;
} Parser;

static int fail(Parser *ps, const char *what) {
    if (ps->err && ps->errlen) snprintf(ps->err, ps->errlen, "%s at column %zu", what, (size_t)(ps->p - ps->s) + 1);
    return -1;
}

static void skip_ws(Parser *ps) {
    while (*ps->p == ' ' || *ps->p == '\t' || *ps->p == '\r' || *ps->p == '\n') ps->p++;
}

static void put_utf8(char **o, unsigned cp) {
    if (cp < 0x80) *(*o)++ = (char)cp;
    else if (cp < 0x800) { *(*o)++ = (char)(0xC0 | (cp >> 6)); *(*o)++ = (char)(0x80 | (cp & 63)); }
    else if (cp < 0x10000) { *(*o)++ = (char)(0xE0 | (cp >> 12)); *(*o)++ = (char)(0x80 | ((cp >> 6) & 63)); *(*o)++ = (char)(0x80 | (cp & 63)); }
    else { *(*o)++ = (char)(0xF0 | (cp >> 18)); *(*o)++ = (char)(0x80 | ((cp >> 12) & 63)); *(*o)++ = (char)(0x80 | ((cp >> 6) & 63)); *(*o)++ = (char)(0x80 | (cp & 63)); }
}

static int hex4(const char *p, unsigned *v) {
    *v = 0;
    for (int i = 0; i < 4; i++) {
        char c = p[i];
        unsigned d = c >= '0' && c <= '9' ? (unsigned)(c - '0') : c >= 'a' && c <= 'f' ? (unsigned)(c - 'a' + 10)
                   : c >= 'A' && c <= 'F' ? (unsigned)(c - 'A' + 10) : 99;
        if (d == 99) return -1;
        *v = *v * 16 + d;
    }
    return 0;
}

// Bytes from p (just after the opening quote) to the closing quote, or -1 if none.
static long raw_length(const char *p) {
    const char *q = p;
    while (*q && *q != '"') q += (*q == '\\' && q[1]) ? 2 : 1;
    return *q == '"' ? (long)(q - p) : -1;
}

// A \u escape at ps->p (after the 'u'): one code point, a surrogate pair joined.
static int parse_u_escape(Parser *ps, unsigned *cp) {
    if (hex4(ps->p, cp)) return fail(ps, "bad \\u escape (expected 4 hex digits)");
    ps->p += 4;
    if (*cp >= 0xDC00 && *cp < 0xE000) return fail(ps, "lone low surrogate in a \\u escape");
    if (*cp >= 0xD800 && *cp < 0xDC00) {
        unsigned lo;
        if (ps->p[0] != '\\' || ps->p[1] != 'u' || hex4(ps->p + 2, &lo) || lo < 0xDC00 || lo >= 0xE000)
            return fail(ps, "lone high surrogate in a \\u escape (expected a \\uDC00-\\uDFFF after it)");
        *cp = 0x10000 + ((*cp - 0xD800) << 10) + (lo - 0xDC00);
        ps->p += 6;
    }
    if (*cp == 0) return fail(ps, "\\u0000 (NUL) is not allowed in a string");
    return 0;
}

static int parse_string(Parser *ps, char **out) {
    if (*ps->p != '"') return fail(ps, "expected a string");
    ps->p++;
    long raw = raw_length(ps->p);
    if (raw < 0) return fail(ps, "unterminated string");
    char *buf = malloc((size_t)raw + 1), *o = buf;   // the decoded text is never longer
    if (!buf) return fail(ps, "out of memory");
    while (*ps->p != '"') {
        unsigned char c = (unsigned char)*ps->p;
        if (c < 0x20) { free(buf); return fail(ps, "control character in a string (escape it)"); }
        if (c >= 0x80) {
            size_t k = utf8_seq_len(ps->p, strnlen(ps->p, 4));
            if (!k) { free(buf); return fail(ps, "invalid UTF-8 in a string"); }
            memcpy(o, ps->p, k);
            o += k;
            ps->p += k;
            continue;
        }
        if (c != '\\') { *o++ = (char)c; ps->p++; continue; }
        ps->p++;
        char e = *ps->p++;
        switch (e) {
        case '"': *o++ = '"'; break;
        case '\\': *o++ = '\\'; break;
        case '/': *o++ = '/'; break;
        case 'b': *o++ = '\b'; break;
        case 'f': *o++ = '\f'; break;
        case 'n': *o++ = '\n'; break;
        case 'r': *o++ = '\r'; break;
        case 't': *o++ = '\t'; break;
        case 'u': {
            unsigned cp;
            if (parse_u_escape(ps, &cp)) { free(buf); return -1; }
            put_utf8(&o, cp);
            break;
        }
        default: ps->p--; free(buf); return fail(ps, "bad escape in a string");
        }
    }
    ps->p++;
    *o = 0;
    *out = buf;
    return 0;
}

// JSON's number grammar: -?(0|[1-9][0-9]*)(.[0-9]+)?([eE][+-]?[0-9]+)?, then strtod.
static int parse_number(Parser *ps, double *v) {
    const char *q = ps->p;
    if (*q == '-') q++;
    if (*q == '0') q++;
    else if (*q >= '1' && *q <= '9') while (*q >= '0' && *q <= '9') q++;
    else return fail(ps, "expected a value (a string, a number, true, false, null or an array)");
    if (*q == '.') {
        q++;
        if (!(*q >= '0' && *q <= '9')) return fail(ps, "expected a digit after '.' in a number");
        while (*q >= '0' && *q <= '9') q++;
    }
    if (*q == 'e' || *q == 'E') {
        q++;
        if (*q == '+' || *q == '-') q++;
        if (!(*q >= '0' && *q <= '9')) return fail(ps, "expected a digit in a number's exponent");
        while (*q >= '0' && *q <= '9') q++;
    }
    size_t n = (size_t)(q - ps->p);
    if (n > JSON_MAX_NUMBER) return fail(ps, "number longer than 64 characters");
    char tmp[JSON_MAX_NUMBER + 1];
    memcpy(tmp, ps->p, n);
    tmp[n] = 0;
    *v = strtod(tmp, NULL);
    if (!isfinite(*v)) return fail(ps, "number too large for a double");
    ps->p = q;
    return 0;
}

static int grow(JsonValue *v, int is_str, int *cap) {
    int n = *cap ? *cap * 2 : 16;
    if (is_str) {
        char **p = realloc(v->strs, sizeof(char *) * (size_t)n);
        if (!p) return -1;
        v->strs = p;
    } else {
        double *p = realloc(v->nums, sizeof(double) * (size_t)n);
        if (!p) return -1;
        v->nums = p;
    }
    *cap = n;
    return 0;
}

static int parse_array(Parser *ps, JsonValue *v) {
    ps->p++;
    v->type = JSON_ARRAY;
    int cap = 0;
    skip_ws(ps);
    if (*ps->p == ']') { ps->p++; return 0; }
    for (;;) {
        skip_ws(ps);
        if (*ps->p == '[' || *ps->p == '{') return fail(ps, "nested arrays and objects are not supported");
        int is_str = *ps->p == '"';
        if (v->n == 0) v->of_strings = is_str;
        else if (is_str != v->of_strings) return fail(ps, "array mixes strings and numbers");
        if (v->n == JSON_MAX_ARRAY) return fail(ps, "array longer than JSON_MAX_ARRAY (1048576) elements");
        if (v->n == cap && grow(v, is_str, &cap)) return fail(ps, "out of memory");
        if (is_str) { if (parse_string(ps, &v->strs[v->n])) return -1; }
        else if (parse_number(ps, &v->nums[v->n])) return -1;
        v->n++;
        skip_ws(ps);
        if (*ps->p == ',') { ps->p++; continue; }
        if (*ps->p == ']') { ps->p++; return 0; }
        return fail(ps, "expected ',' or ']' in an array");
    }
}

static int parse_value(Parser *ps, JsonValue *v) {
    skip_ws(ps);
    memset(v, 0, sizeof *v);
    if (*ps->p == '"') { v->type = JSON_STRING; return parse_string(ps, &v->str); }
    if (*ps->p == '[') return parse_array(ps, v);
    if (!strncmp(ps->p, "true", 4)) { ps->p += 4; v->type = JSON_BOOL; v->num = 1; return 0; }
    if (!strncmp(ps->p, "false", 5)) { ps->p += 5; v->type = JSON_BOOL; return 0; }
    if (!strncmp(ps->p, "null", 4)) { ps->p += 4; v->type = JSON_NULL; return 0; }
    if (*ps->p == '{') return fail(ps, "nested objects are not supported");
    v->type = JSON_NUMBER;
    return parse_number(ps, &v->num);
}

// One "key": value member into obj (counted in obj->n even on failure, so json_free frees it).
static int parse_member(Parser *ps, JsonObject *obj) {
    if (obj->n == JSON_MAX_KEYS) return fail(ps, "too many members (at most 24)");
    char *key;
    const char *at = ps->p;
    if (parse_string(ps, &key)) return -1;
    for (int i = 0; i < obj->n; i++) {
        if (strcmp(obj->keys[i], key) == 0) {
            free(key);
            ps->p = at;
            return fail(ps, "duplicate key");
        }
    }
    obj->keys[obj->n] = key;
    memset(&obj->vals[obj->n], 0, sizeof obj->vals[obj->n]);
    obj->n++;
    skip_ws(ps);
    if (*ps->p != ':') return fail(ps, "expected ':'");
    ps->p++;
    return parse_value(ps, &obj->vals[obj->n - 1]);
}

int json_parse_object(const char *text, JsonObject *obj, char *err, size_t errlen) {
    Parser ps = {text, text, err, errlen};
    memset(obj, 0, sizeof *obj);
    skip_ws(&ps);
    if (*ps.p != '{') return fail(&ps, "expected '{'");
    ps.p++;
    skip_ws(&ps);
    if (*ps.p == '}') ps.p++;
    else for (;;) {
        skip_ws(&ps);
        if (parse_member(&ps, obj)) { json_free(obj); return -1; }
        skip_ws(&ps);
        if (*ps.p == ',') { ps.p++; continue; }
        if (*ps.p == '}') { ps.p++; break; }
        json_free(obj);
        return fail(&ps, "expected ',' or '}'");
    }
    skip_ws(&ps);
    if (*ps.p) { json_free(obj); return fail(&ps, "trailing characters after the object"); }
    return 0;
}

void json_free(JsonObject *obj) {
    for (int i = 0; i < obj->n; i++) {
        JsonValue *v = &obj->vals[i];
        free(obj->keys[i]);
        free(v->str);
        free(v->nums);
        if (v->strs) for (int k = 0; k < v->n; k++) free(v->strs[k]);
        free(v->strs);
    }
    memset(obj, 0, sizeof *obj);
}

const JsonValue *json_get(const JsonObject *obj, const char *key) {
    for (int i = 0; i < obj->n; i++)
        if (strcmp(obj->keys[i], key) == 0) return &obj->vals[i];
    return NULL;
}

size_t json_quote(char *out, size_t cap, size_t len, const char *s) {
#define PUT(c) do { if (len + 1 < cap) out[len] = (c); len++; } while (0)
    PUT('"');
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (*p == '"' || *p == '\\') { PUT('\\'); PUT((char)*p); }
        else if (*p == '\n') { PUT('\\'); PUT('n'); }
        else if (*p == '\t') { PUT('\\'); PUT('t'); }
        else if (*p == '\r') { PUT('\\'); PUT('r'); }
        else if (*p < 0x20 || *p == 0x7F) {
            char u[8];
            snprintf(u, sizeof u, "\\u%04x", *p);
            for (char *q = u; *q; q++) PUT(*q);
        } else PUT((char)*p);
    }
    PUT('"');
    if (len < cap) out[len] = 0;
    else if (cap) out[cap - 1] = 0;
    return len;
#undef PUT
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
