// json.c: a strict recursive-descent reader for flat JSON objects.
#include "json.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct Parser {
    const char *s, *p;
    char *err;
    size_t errlen;
} Parser;

static int fail(Parser *ps, const char *what) {
    snprintf(ps->err, ps->errlen, "%s at column %d", what, (int)(ps->p - ps->s) + 1);
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

static int parse_string(Parser *ps, char **out) {
    if (*ps->p != '"') return fail(ps, "expected a string");
    ps->p++;
    size_t cap = strlen(ps->p) + 1;
    char *buf = malloc(cap), *o = buf;
    if (!buf) return fail(ps, "out of memory");
    while (*ps->p != '"') {
        unsigned char c = (unsigned char)*ps->p;
        if (!c) { free(buf); return fail(ps, "unterminated string"); }
        if (c < 0x20) { free(buf); return fail(ps, "control character in string"); }
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
            if (hex4(ps->p, &cp)) { free(buf); return fail(ps, "bad \\u escape"); }
            ps->p += 4;
            if (cp >= 0xD800 && cp < 0xDC00 && ps->p[0] == '\\' && ps->p[1] == 'u') {
                unsigned lo;
                if (!hex4(ps->p + 2, &lo) && lo >= 0xDC00 && lo < 0xE000) {
                    cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
                    ps->p += 6;
                }
            }
            put_utf8(&o, cp);
            break;
        }
        default: free(buf); return fail(ps, "bad escape in string");
        }
    }
    ps->p++;
    *o = 0;
    *out = buf;
    return 0;
}

static int parse_number(Parser *ps, double *v) {
    char *end;
    *v = strtod(ps->p, &end);
    if (end == ps->p || !isfinite(*v)) return fail(ps, "expected a value");
    ps->p = end;
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
        int is_str = *ps->p == '"';
        if (v->n == 0) v->of_strings = is_str;
        else if (is_str != v->of_strings) return fail(ps, "array mixes strings and numbers");
        if (v->n == cap) {
            cap = cap ? cap * 2 : 16;
            if (is_str) v->strs = realloc(v->strs, sizeof(char *) * (size_t)cap);
            else v->nums = realloc(v->nums, sizeof(double) * (size_t)cap);
            if (is_str ? !v->strs : !v->nums) return fail(ps, "out of memory");
        }
        if (is_str) { if (parse_string(ps, &v->strs[v->n])) return -1; }
        else if (parse_number(ps, &v->nums[v->n])) return -1;
        v->n++;
        skip_ws(ps);
        if (*ps->p == ',') { ps->p++; continue; }
        if (*ps->p == ']') { ps->p++; return 0; }
        return fail(ps, "expected ',' or ']' in array");
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
        if (obj->n == JSON_MAX_KEYS) { json_free(obj); return fail(&ps, "too many members"); }
        char *key;
        if (parse_string(&ps, &key)) { json_free(obj); return -1; }
        obj->keys[obj->n] = key;
        skip_ws(&ps);
        if (*ps.p != ':') { obj->n++; json_free(obj); return fail(&ps, "expected ':'"); }
        ps.p++;
        int rc = parse_value(&ps, &obj->vals[obj->n]);
        obj->n++;
        if (rc) { json_free(obj); return -1; }
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
        else if (*p < 0x20) {
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
