/* The compiled core of balms-det's LVIS evaluation engine (optional: the engine gives the same
 * numbers without it, in numpy and Python).
 *
 * scan_results: a piece of a JSON array of LVIS results (the text between two top-level
 *     elements, as balms_det.evaluation._json.iter_array cuts it) read straight into columns:
 *     image_id, category_id, score, bbox, and where the segmentation lies in the text. No
 *     Python object per detection. Anything it does not take as is (NaN literals, non-ASCII
 *     text, ids that are not plain integers, a missing key, ...) is left to the Python reader,
 *     which raises the errors.
 * decode_rles / mask_ious: COCO compressed RLE strings (pycocotools' format) decoded, and the
 *     IoUs of detection masks with the ground-truth masks of their cell, with pycocotools'
 *     rleIou's integer counts (hence bit-equal values).
 * boundary_min (the last section): boundary AP's min(mask IoU, boundary IoU), the boundaries
 *     computed from the runs of the masks (erosions of intervals, not of pixels).
 *
 * Numbers are converted correctly rounded, as Python's float() does (checked in the tests).
 * Every input comes in through the buffer protocol (numpy arrays, bytes); no numpy headers.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#if defined(__SSE2__) && (defined(__GNUC__) || defined(__clang__))
#include <emmintrin.h>
#define HAVE_SSE2 1
#endif

#define ST_OK 0
#define ST_BAD (-1)   /* not valid JSON */
#define ST_OTHER (-2) /* for the Python reader (valid or not) */
#define MAX_DEPTH 512

typedef const unsigned char *cp;

typedef struct {
    cp p, end;
    int depth;
} Cur;

static inline int is_digit(unsigned char ch) { return ch >= '0' && ch <= '9'; }

static inline void skip_ws(Cur *c) {
    while (c->p < c->end) {
        unsigned char ch = *c->p;
        if (ch == ' ' || ch == '\n' || ch == '\r' || ch == '\t')
            c->p++;
        else
            break;
    }
}

static inline int is_hex(unsigned char ch) {
    return is_digit(ch) || (ch >= 'a' && ch <= 'f') || (ch >= 'A' && ch <= 'F');
}

/* A JSON string at c->p (a '"'). On success c->p follows the closing quote, [*s, *e) are the
 * raw contents and *esc tells whether they hold an escape. */
static int scan_string(Cur *c, cp *s, cp *e, int *esc) {
    cp p = c->p + 1, end = c->end;
    int escaped = 0;
    *s = p;
    for (;;) {
#ifdef HAVE_SSE2
        /* 16 bytes at a time to the next quote, backslash, control or non-ASCII byte */
        const __m128i quote = _mm_set1_epi8('"'), bslash = _mm_set1_epi8('\\'),
                      space = _mm_set1_epi8(0x20);
        while (p + 16 <= end) {
            __m128i x = _mm_loadu_si128((const __m128i *)p);
            __m128i hit = _mm_or_si128(_mm_or_si128(_mm_cmpeq_epi8(x, quote),
                                                    _mm_cmpeq_epi8(x, bslash)),
                                       _mm_cmplt_epi8(x, space)); /* signed: >= 0x80 too */
            int mask = _mm_movemask_epi8(hit);
            if (mask) {
                p += __builtin_ctz((unsigned)mask);
                break;
            }
            p += 16;
        }
#endif
        if (p >= end)
            break;
        unsigned char ch = *p;
        if (ch == '"') {
            *e = p;
            c->p = p + 1;
            *esc = escaped;
            return ST_OK;
        }
        if (ch == '\\') {
            escaped = 1;
            if (p + 1 >= end)
                return ST_BAD;
            unsigned char n = p[1];
            if (n == 'u') {
                if (p + 6 > end)
                    return ST_BAD;
                for (int k = 2; k < 6; k++)
                    if (!is_hex(p[k]))
                        return ST_BAD;
                p += 6;
                continue;
            }
            if (n == '"' || n == '\\' || n == '/' || n == 'b' || n == 'f' || n == 'n' ||
                n == 'r' || n == 't') {
                p += 2;
                continue;
            }
            return ST_BAD;
        }
        if (ch < 0x20)
            return ST_BAD;
        if (ch >= 0x80)
            return ST_OTHER; /* UTF-8 validation: left to the Python reader */
        p++;
    }
    return ST_BAD;
}

/* A JSON number at c->p: [*s, c->p) after the call; *is_int: no fraction, no exponent. */
static int scan_number(Cur *c, cp *s, int *is_int) {
    cp p = c->p, end = c->end;
    int integer = 1;
    *s = p;
    if (p < end && *p == '-')
        p++;
    if (p >= end)
        return ST_BAD;
    if (*p == 'I')
        return ST_OTHER; /* -Infinity: Python's json takes it */
    if (*p == '0')
        p++;
    else if (*p >= '1' && *p <= '9')
        while (p < end && is_digit(*p))
            p++;
    else
        return ST_BAD;
    if (p < end && *p == '.') {
        integer = 0;
        p++;
        if (p >= end || !is_digit(*p))
            return ST_BAD;
        while (p < end && is_digit(*p))
            p++;
    }
    if (p < end && (*p == 'e' || *p == 'E')) {
        integer = 0;
        p++;
        if (p < end && (*p == '+' || *p == '-'))
            p++;
        if (p >= end || !is_digit(*p))
            return ST_BAD;
        while (p < end && is_digit(*p))
            p++;
    }
    c->p = p;
    *is_int = integer;
    return ST_OK;
}

static int literal(Cur *c, const char *word) {
    size_t n = strlen(word);
    if ((size_t)(c->end - c->p) < n || memcmp(c->p, word, n) != 0)
        return ST_BAD;
    c->p += n;
    return ST_OK;
}

static int skip_value(Cur *c);

/* At a member of an object: its key (a string: [*s, *e), *esc) and the ':' after it. */
static int member_key(Cur *c, cp *s, cp *e, int *esc) {
    int st;
    if (c->p >= c->end || *c->p != '"')
        return ST_BAD;
    if ((st = scan_string(c, s, e, esc)) != ST_OK)
        return st;
    skip_ws(c);
    if (c->p >= c->end || *c->p != ':')
        return ST_BAD;
    c->p++;
    skip_ws(c);
    return ST_OK;
}

/* After a value in an object or array: 1 past a ',' (another one follows), 0 past the closing
 * ``close``, else an error status (< 0). */
static int member_end(Cur *c, unsigned char close) {
    skip_ws(c);
    if (c->p >= c->end)
        return ST_BAD;
    if (*c->p == ',') {
        c->p++;
        skip_ws(c);
        return 1;
    }
    if (*c->p == close) {
        c->p++;
        return 0;
    }
    return ST_BAD;
}

static int skip_container(Cur *c, unsigned char close, int keyed) {
    int st;
    if (++c->depth > MAX_DEPTH)
        return ST_OTHER;
    c->p++;
    skip_ws(c);
    if (c->p < c->end && *c->p == close) {
        c->p++;
        c->depth--;
        return ST_OK;
    }
    for (;;) {
        cp s, e;
        int esc;
        if (keyed && (st = member_key(c, &s, &e, &esc)) != ST_OK)
            return st;
        if ((st = skip_value(c)) != ST_OK)
            return st;
        if ((st = member_end(c, close)) <= 0) {
            c->depth--;
            return st;
        }
    }
}

static int skip_value(Cur *c) {
    cp s, e;
    int flag;
    if (c->p >= c->end)
        return ST_BAD;
    switch (*c->p) {
    case '{':
        return skip_container(c, '}', 1);
    case '[':
        return skip_container(c, ']', 0);
    case '"':
        return scan_string(c, &s, &e, &flag);
    case 't':
        return literal(c, "true");
    case 'f':
        return literal(c, "false");
    case 'n':
        return literal(c, "null");
    case 'N':
    case 'I':
        return ST_OTHER; /* NaN, Infinity */
    default:
        return scan_number(c, &s, &flag);
    }
}

/* ---- numbers --------------------------------------------------------------------------- */
#if LDBL_MANT_DIG >= 64
static const long double P10L[28] = {
    1e0L,  1e1L,  1e2L,  1e3L,  1e4L,  1e5L,  1e6L,  1e7L,  1e8L,  1e9L,
    1e10L, 1e11L, 1e12L, 1e13L, 1e14L, 1e15L, 1e16L, 1e17L, 1e18L, 1e19L,
    1e20L, 1e21L, 1e22L, 1e23L, 1e24L, 1e25L, 1e26L, 1e27L}; /* all exact in 64 bits */
#endif
static const double P10[23] = {1e0,  1e1,  1e2,  1e3,  1e4,  1e5,  1e6,  1e7,
                               1e8,  1e9,  1e10, 1e11, 1e12, 1e13, 1e14, 1e15,
                               1e16, 1e17, 1e18, 1e19, 1e20, 1e21, 1e22};

/* The double nearest to the JSON number [s, e), as Python's float() gives it (an integer
 * token as float(int(token))). Fast exact paths, else Python's own correctly rounded
 * conversion. ST_OTHER when it cannot be converted. */
static int to_double(cp s, cp e, int is_int, double *out) {
    cp p = s;
    int neg = 0, sig = 0, exp10 = 0, exp_neg = 0, exp_val = 0;
    uint64_t m = 0;
    if (*p == '-') {
        neg = 1;
        p++;
    }
    for (; p < e && is_digit(*p); p++) {
        if (m == 0 && *p == '0')
            continue;
        if (++sig > 19)
            goto slow;
        m = m * 10 + (uint64_t)(*p - '0');
    }
    if (p < e && *p == '.') {
        for (p++; p < e && is_digit(*p); p++) {
            exp10--;
            if (m == 0 && *p == '0')
                continue;
            if (++sig > 19)
                goto slow;
            m = m * 10 + (uint64_t)(*p - '0');
        }
    }
    if (p < e && (*p == 'e' || *p == 'E')) {
        p++;
        if (*p == '+' || *p == '-')
            exp_neg = *p++ == '-';
        for (; p < e && is_digit(*p); p++) {
            if (exp_val > 10000)
                goto slow;
            exp_val = exp_val * 10 + (*p - '0');
        }
        exp10 += exp_neg ? -exp_val : exp_val;
    }
    if (m == 0) {
        *out = (neg && !is_int) ? -0.0 : 0.0;
        return ST_OK;
    }
    if (m < ((uint64_t)1 << 53) && exp10 >= -22 && exp10 <= 22) {
        /* Clinger: both operands exact, one correctly rounded operation */
        double v = exp10 < 0 ? (double)m / P10[-exp10] : (double)m * P10[exp10];
        *out = neg ? -v : v;
        return ST_OK;
    }
#if LDBL_MANT_DIG >= 64
    if (exp10 >= -27 && exp10 <= 27) {
        /* one correctly rounded operation in extended precision, then rounded to double:
         * right unless the extended result is exactly halfway between two doubles (it is
         * within half an extended ulp of the true value, and such a midpoint is representable) */
        long double r = exp10 < 0 ? (long double)m / P10L[-exp10] : (long double)m * P10L[exp10];
        double d = (double)r;
        int midpoint;
#if LDBL_MANT_DIG == 64 && (defined(__x86_64__) || defined(__i386__))
        /* x87 extended: the 64-bit significand first; r (a normal double's range here) is
         * halfway between two doubles when its 11 bits below a double's 53 are 100...0 */
        uint64_t sig;
        memcpy(&sig, &r, sizeof(sig));
        midpoint = (sig & 0x7FF) == 0x400;
#else
        long double diff = r - (long double)d;
        midpoint = 0;
        if (diff > 0)
            midpoint = diff * 2 == (long double)nextafter(d, INFINITY) - (long double)d;
        else if (diff < 0)
            midpoint = -diff * 2 == (long double)d - (long double)nextafter(d, -INFINITY);
#endif
        if (!midpoint && isfinite(d)) {
            *out = neg ? -d : d;
            return ST_OK;
        }
    }
#endif
slow: {
    char buf[128];
    size_t n = (size_t)(e - s);
    double v;
    if (n >= sizeof(buf))
        return ST_OTHER;
    memcpy(buf, s, n);
    buf[n] = 0;
    int ok = 1;
    PyGILState_STATE gil = PyGILState_Ensure(); /* scan_results runs without the GIL */
    if (is_int) { /* float(int(token)): correctly rounded, or too large (OverflowError) */
        PyObject *o = PyLong_FromString(buf, NULL, 10);
        if (o == NULL) {
            v = -1.0;
        } else {
            v = PyLong_AsDouble(o);
            Py_DECREF(o);
        }
    } else {
        v = PyOS_string_to_double(buf, NULL, NULL);
    }
    if (v == -1.0 && PyErr_Occurred()) {
        PyErr_Clear();
        ok = 0;
    }
    PyGILState_Release(gil);
    if (!ok)
        return ST_OTHER;
    *out = v;
    return ST_OK;
}
}

/* A number token at c->p ([*s, c->p) after the call); ST_OTHER for any other value (or NaN /
 * Infinity): the Python reader says what is wrong with it. */
static int number_token(Cur *c, cp *s, int *is_int) {
    if (c->p >= c->end)
        return ST_BAD;
    if (!(*c->p == '-' || is_digit(*c->p)))
        return ST_OTHER;
    return scan_number(c, s, is_int);
}

/* A JSON integer (no fraction, no exponent, at most 18 digits) into int64. */
static int to_int64(Cur *c, int64_t *out) {
    cp s;
    int is_int, st;
    if ((st = number_token(c, &s, &is_int)) != ST_OK)
        return st;
    cp p = s;
    int neg = 0;
    if (*p == '-') {
        neg = 1;
        p++;
    }
    if (!is_int || c->p - p > 18)
        return ST_OTHER;
    int64_t v = 0;
    for (; p < c->p; p++)
        v = v * 10 + (*p - '0');
    *out = neg ? -v : v;
    return ST_OK;
}

static int number_value(Cur *c, double *out) {
    cp s;
    int is_int, st;
    if ((st = number_token(c, &s, &is_int)) != ST_OK)
        return st;
    return to_double(s, c->p, is_int, out);
}

/* ---- one result ------------------------------------------------------------------------ */
#define F_BOX 1      /* has a "bbox" of 4 numbers */
#define F_SEG 2      /* has a "segmentation" */
#define F_RLE 4      /* ... a compressed RLE: {"size": [h, w], "counts": "..."} */
#define F_ESCAPED 8  /* ... whose counts hold an escape */

typedef struct {
    int64_t *img, *cat, *seg;
    double *score, *box;
    uint8_t *flags;
} Out;

static int key_is(cp s, cp e, const char *name) {
    size_t n = strlen(name);
    return (size_t)(e - s) == n && memcmp(s, name, n) == 0;
}

/* '[' v, ..., v ']' of exactly n numbers: doubles into ``dv``, or integers into ``iv`` */
static int fixed_array(Cur *c, int n, double *dv, int64_t *iv) {
    int st;
    if (c->p >= c->end || *c->p != '[')
        return ST_OTHER;
    c->p++;
    for (int k = 0; k < n; k++) {
        skip_ws(c);
        if ((st = dv ? number_value(c, dv + k) : to_int64(c, iv + k)) != ST_OK)
            return st;
        skip_ws(c);
        if (c->p >= c->end)
            return ST_BAD;
        if (*c->p != (k < n - 1 ? ',' : ']'))
            return ST_OTHER;
        c->p++;
    }
    return ST_OK;
}

/* At the '{' of an object with members: past it; ST_OTHER for anything else (or {}). */
static int open_object(Cur *c) {
    if (c->p >= c->end || *c->p != '{')
        return ST_OTHER;
    c->p++;
    skip_ws(c);
    return c->p < c->end && *c->p == '}' ? ST_OTHER : ST_OK;
}

/* A member's key, without escapes (an escaped key may spell a known one: ST_OTHER). */
static int plain_key(Cur *c, cp *s, cp *e) {
    int esc, st = member_key(c, s, e, &esc);
    return st != ST_OK ? st : esc ? ST_OTHER : ST_OK;
}

/* {"size": [h, w], "counts": "..."} (other keys skipped): seg[2..5] = h, w, counts span */
static int rle_value(Cur *c, int64_t *seg, int *escaped) {
    int st, have_size = 0, have_counts = 0;
    if ((st = open_object(c)) != ST_OK)
        return st;
    for (;;) {
        cp s, e;
        int esc;
        if ((st = plain_key(c, &s, &e)) != ST_OK)
            return st;
        if (key_is(s, e, "size")) {
            int64_t hw[2];
            if ((st = fixed_array(c, 2, NULL, hw)) != ST_OK)
                return st;
            seg[2] = hw[0];
            seg[3] = hw[1];
            have_size = 1;
        } else if (key_is(s, e, "counts")) {
            cp cs, ce;
            if (c->p >= c->end || *c->p != '"')
                return ST_OTHER;
            if ((st = scan_string(c, &cs, &ce, &esc)) != ST_OK)
                return st;
            seg[4] = (int64_t)(intptr_t)cs;
            seg[5] = (int64_t)(intptr_t)ce;
            *escaped = esc;
            have_counts = 1;
        } else if ((st = skip_value(c)) != ST_OK) {
            return st;
        }
        if ((st = member_end(c, '}')) <= 0)
            return st < 0 ? st : (have_size && have_counts ? ST_OK : ST_OTHER);
    }
}

static int one_result(Cur *c, Out *o, Py_ssize_t i, cp base) {
    int st, have = 0;
    uint8_t flags = 0;
    double *box = o->box + 4 * i;
    int64_t *seg = o->seg + 6 * i;
    box[0] = box[1] = box[2] = box[3] = NAN;
    for (int k = 0; k < 6; k++)
        seg[k] = -1;
    if ((st = open_object(c)) != ST_OK)
        return st;
    for (;;) {
        cp s, e;
        if ((st = plain_key(c, &s, &e)) != ST_OK)
            return st;
        if (key_is(s, e, "image_id")) {
            if ((st = to_int64(c, o->img + i)) != ST_OK)
                return st;
            have |= 1;
        } else if (key_is(s, e, "category_id")) {
            if ((st = to_int64(c, o->cat + i)) != ST_OK)
                return st;
            have |= 2;
        } else if (key_is(s, e, "score")) {
            if ((st = number_value(c, o->score + i)) != ST_OK)
                return st;
            have |= 4;
        } else if (key_is(s, e, "bbox")) {
            if ((st = fixed_array(c, 4, box, NULL)) != ST_OK)
                return st;
            flags |= F_BOX;
        } else if (key_is(s, e, "segmentation")) {
            Cur probe = *c;
            int escaped = 0;
            cp start = c->p;
            flags = (uint8_t)((flags | F_SEG) & ~(F_RLE | F_ESCAPED));
            seg[2] = seg[3] = seg[4] = seg[5] = -1;
            if (rle_value(&probe, seg, &escaped) == ST_OK) {
                *c = probe;
                flags |= F_RLE | (escaped ? F_ESCAPED : 0);
                seg[4] -= (int64_t)(intptr_t)base;
                seg[5] -= (int64_t)(intptr_t)base;
            } else {
                seg[2] = seg[3] = seg[4] = seg[5] = -1;
                if ((st = skip_value(c)) != ST_OK)
                    return st;
            }
            seg[0] = start - base;
            seg[1] = c->p - base;
        } else if ((st = skip_value(c)) != ST_OK) {
            return st;
        }
        if ((st = member_end(c, '}')) < 0)
            return st;
        if (st == 0)
            break;
    }
    if (have != 7)
        return ST_OTHER; /* a required key is missing: the Python reader names it */
    o->flags[i] = flags;
    return ST_OK;
}

static int get_buffers(Py_buffer *views, int n) {
    for (int k = 0; k < n; k++)
        if (!PyBuffer_IsContiguous(&views[k], 'C')) {
            PyErr_SetString(PyExc_ValueError, "buffers must be C-contiguous");
            return -1;
        }
    return 0;
}

static void release(Py_buffer *views, int n) {
    for (int k = 0; k < n; k++)
        PyBuffer_Release(&views[k]);
}

static PyObject *scan_results(PyObject *self, PyObject *args) {
    Py_buffer v[7];
    memset(v, 0, sizeof(v));
    if (!PyArg_ParseTuple(args, "y*w*w*w*w*w*w*", &v[0], &v[1], &v[2], &v[3], &v[4], &v[5],
                          &v[6]))
        return NULL;
    PyObject *res = NULL;
    if (get_buffers(v, 7) < 0)
        goto done;
    Py_ssize_t cap = v[1].len / 8;
    if (v[2].len / 8 < cap || v[3].len / 8 < cap || v[4].len / 32 < cap || v[5].len < cap ||
        v[6].len / 48 < cap) {
        PyErr_SetString(PyExc_ValueError, "output buffers of unequal capacity");
        goto done;
    }
    Out o = {(int64_t *)v[1].buf, (int64_t *)v[2].buf, (int64_t *)v[6].buf,
             (double *)v[3].buf, (double *)v[4].buf, (uint8_t *)v[5].buf};
    cp base = (cp)v[0].buf;
    Cur c = {base, base + v[0].len, 0};
    Py_ssize_t n = 0;
    int st = ST_OK;
    Py_BEGIN_ALLOW_THREADS /* the slow number path takes the GIL back (PyGILState_Ensure) */
    skip_ws(&c);
    if (c.p < c.end) {
        for (;;) {
            if (n >= cap) {
                st = ST_OTHER;
                break;
            }
            if ((st = one_result(&c, &o, n, base)) != ST_OK)
                break;
            n++;
            skip_ws(&c);
            if (c.p >= c.end)
                break;
            if (*c.p != ',') {
                st = ST_BAD;
                break;
            }
            c.p++;
            skip_ws(&c);
            if (c.p >= c.end) {
                st = ST_BAD; /* a trailing comma */
                break;
            }
        }
    }
    Py_END_ALLOW_THREADS
    res = PyLong_FromSsize_t(st == ST_OK ? n : st);
done:
    release(v, 7);
    return res;
}

/* ---- RLE ------------------------------------------------------------------------------- */
/* Decode a COCO compressed RLE string [s, e) (JSON escapes \\ and \/ undone when ``escaped``)
 * into counts, as pycocotools' rleFrString, for the strings it decodes without overflow: every
 * character in '0'..'o', at most 6 characters per count, the last one complete, every count in
 * 0..2**32 - 1 (pycocotools would wrap it around). Returns the number of counts, or -1 for a
 * string left to the Python reader (which raises for it, or gives it to pycocotools when it
 * keeps detections_io's rules). ``cnts`` holds (e - s) counts. */
static Py_ssize_t rle_decode(cp s, cp e, int escaped, uint32_t *cnts) {
    Py_ssize_t m = 0;
    int64_t x = 0;
    int k = 0;
    for (cp p = s; p < e; p++) {
        unsigned char ch = *p;
        if (escaped && ch == '\\') {
            if (p + 1 >= e || (p[1] != '\\' && p[1] != '/'))
                return -1;
            ch = *++p;
        }
        if (ch < 48 || ch > 111 || k >= 6)
            return -1;
        int v = ch - 48;
        x |= (int64_t)(v & 0x1f) << (5 * k);
        k++;
        if (!(v & 0x20)) {
            if (v & 0x10)
                x |= -((int64_t)1 << (5 * k)); /* sign extension */
            if (m > 2)
                x += (int64_t)cnts[m - 2];
            if (x < 0 || x > (int64_t)UINT32_MAX)
                return -1;
            cnts[m++] = (uint32_t)x;
            x = 0;
            k = 0;
        }
    }
    return k ? -1 : m;
}

static uint64_t rle_sum(const uint32_t *c, Py_ssize_t m) {
    uint64_t t = 0;
    for (Py_ssize_t j = 0; j < m; j++)
        t += c[j];
    return t;
}

/* A mask's area and the span of its pixels (column-major): [first, last) */
typedef struct {
    uint64_t area, first, last;
} Extent;

static Extent rle_extent(const uint32_t *c, Py_ssize_t m) {
    Extent x = {0, 0, 0};
    uint64_t pos = 0;
    for (Py_ssize_t j = 0; j < m; j++) {
        if ((j & 1) && c[j]) {
            if (!x.area)
                x.first = pos;
            x.area += c[j];
            x.last = pos + c[j];
        }
        pos += c[j];
    }
    return x;
}

/* |A & B| of two RLEs of the same image size (runs alternate 0s and 1s, 0s first) */
static uint64_t rle_intersection(const uint32_t *a, Py_ssize_t na, Extent xa, const uint32_t *b,
                                 Py_ssize_t nb, Extent xb) {
    if (!xa.area || !xb.area || xa.last <= xb.first || xb.last <= xa.first)
        return 0;
    uint64_t stop = xa.last < xb.last ? xa.last : xb.last;
    Py_ssize_t ia = 0, ib = 0;
    uint64_t ea = a[0], eb = b[0], pos = 0, inter = 0;
    int va = 0, vb = 0;
    while (ia < na && ib < nb && pos < stop) {
        uint64_t end = ea < eb ? ea : eb;
        if (va && vb)
            inter += end - pos;
        pos = end;
        if (ea == end && ++ia < na) {
            ea += a[ia];
            va = !va;
        }
        if (eb == end && ++ib < nb) {
            eb += b[ib];
            vb = !vb;
        }
    }
    return inter;
}

/* ---- polygons ----------------------------------------------------------------------------- */
typedef struct {
    uint32_t *c;
    Py_ssize_t n, cap;
} Counts;

static int counts_push(Counts *r, uint32_t v) {
    if (r->n == r->cap) {
        Py_ssize_t cap = r->cap ? 2 * r->cap : 64;
        uint32_t *c = realloc(r->c, sizeof(uint32_t) * (size_t)cap);
        if (!c)
            return -1;
        r->c = c;
        r->cap = cap;
    }
    r->c[r->n++] = v;
    return 0;
}

static int cmp_u32(const void *a, const void *b) {
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x > y ? 1 : x < y ? -1 : 0;
}

/* Sort run boundaries (x * h + y, x < w, y <= h; one of them h * w) in place: by column with
 * a counting sort, then within each column (few values) by insertion. ``tmp`` holds n values. */
static int sort_boundaries(uint32_t *a, uint32_t *tmp, Py_ssize_t n, int64_t h, int64_t w) {
    if (n < 64) {
        qsort(a, (size_t)n, sizeof(uint32_t), cmp_u32);
        return 0;
    }
    Py_ssize_t *start = calloc((size_t)(w + 2), sizeof(Py_ssize_t));
    if (!start)
        return -1;
    for (Py_ssize_t j = 0; j < n; j++) {
        uint32_t col = a[j] / (uint32_t)h; /* h * w (the end) and y = h fall in the next one */
        start[(col < (uint32_t)w ? col : (uint32_t)w) + 1]++;
    }
    for (int64_t c = 0; c <= w; c++)
        start[c + 1] += start[c];
    for (Py_ssize_t j = 0; j < n; j++) {
        uint32_t col = a[j] / (uint32_t)h;
        tmp[start[col < (uint32_t)w ? col : (uint32_t)w]++] = a[j];
    }
    /* start[c] is now the end of column c; insertion sort inside each column */
    Py_ssize_t lo = 0;
    for (int64_t c = 0; c <= w; c++) {
        Py_ssize_t hi = start[c];
        for (Py_ssize_t j = lo + 1; j < hi; j++) {
            uint32_t t = tmp[j];
            Py_ssize_t q = j;
            while (q > lo && tmp[q - 1] > t) {
                tmp[q] = tmp[q - 1];
                q--;
            }
            tmp[q] = t;
        }
        lo = hi;
    }
    memcpy(a, tmp, sizeof(uint32_t) * (size_t)n);
    free(start);
    return 0;
}

/* The RLE of a polygon (k points xy) in an h x w image, the pixels pycocotools' rleFrPoly sets:
 * the outline upsampled 5x and traced point by point, its crossings of pixel columns, each
 * column's run starting at the first pixel centre below the crossing. Appended to ``out``. */
static int polygon_rle(const double *xy, Py_ssize_t k, int64_t h, int64_t w, Counts *out) {
    const double scale = 5;
    int rc = -1;
    int *x = malloc(sizeof(int) * (size_t)(k + 1)), *y = malloc(sizeof(int) * (size_t)(k + 1));
    int *u = NULL, *v = NULL;
    uint32_t *a = NULL;
    if (!x || !y)
        goto out;
    for (Py_ssize_t j = 0; j < k; j++) {
        x[j] = (int)(scale * xy[2 * j] + .5);
        y[j] = (int)(scale * xy[2 * j + 1] + .5);
    }
    x[k] = k ? x[0] : 0;
    y[k] = k ? y[0] : 0;
    Py_ssize_t m = 0;
    for (Py_ssize_t j = 0; j < k; j++) {
        int dx = abs(x[j] - x[j + 1]), dy = abs(y[j] - y[j + 1]);
        m += (dx > dy ? dx : dy) + 1;
    }
    u = malloc(sizeof(int) * (size_t)(m + 1));
    v = malloc(sizeof(int) * (size_t)(m + 1));
    if (!u || !v)
        goto out;
    m = 0;
    for (Py_ssize_t j = 0; j < k; j++) { /* every point of each edge, along its longer axis */
        int xs = x[j], xe = x[j + 1], ys = y[j], ye = y[j + 1];
        int dx = abs(xe - xs), dy = abs(ys - ye), t;
        int flip = (dx >= dy && xs > xe) || (dx < dy && ys > ye);
        if (flip) {
            t = xs, xs = xe, xe = t;
            t = ys, ys = ye, ye = t;
        }
        double slope = dx >= dy ? (double)(ye - ys) / dx : (double)(xe - xs) / dy;
        if (dx >= dy) {
            for (int d = 0; d <= dx; d++) {
                t = flip ? dx - d : d;
                u[m] = t + xs;
                v[m] = (int)(ys + slope * t + .5);
                m++;
            }
        } else {
            for (int d = 0; d <= dy; d++) {
                t = flip ? dy - d : d;
                v[m] = t + ys;
                u[m] = (int)(xs + slope * t + .5);
                m++;
            }
        }
    }
    /* column crossings -> run boundaries (pixel index x * h + y), then the image's end */
    a = malloc(sizeof(uint32_t) * (size_t)(2 * m + 2));
    if (!a)
        goto out;
    uint32_t *sorted = a + m + 1;
    Py_ssize_t na = 0;
    for (Py_ssize_t j = 1; j < m; j++) {
        if (u[j] == u[j - 1])
            continue;
        double xd = (double)(u[j] < u[j - 1] ? u[j] : u[j] - 1);
        xd = (xd + .5) / scale - .5;
        if (floor(xd) != xd || xd < 0 || xd > (double)(w - 1))
            continue;
        double yd = (double)(v[j] < v[j - 1] ? v[j] : v[j - 1]);
        yd = (yd + .5) / scale - .5;
        if (yd < 0)
            yd = 0;
        else if (yd > (double)h)
            yd = (double)h;
        yd = ceil(yd);
        a[na++] = (uint32_t)((int)xd * (int)h + (int)yd);
    }
    a[na++] = (uint32_t)(h * w);
    if (sort_boundaries(a, sorted, na, h, w) < 0)
        goto out;
    uint32_t prev = 0;
    for (Py_ssize_t j = 0; j < na; j++) {
        uint32_t t = a[j];
        a[j] -= prev;
        prev = t;
    }
    /* runs; a zero-length run between two others joins them */
    Py_ssize_t j = 0;
    if (counts_push(out, a[j++]) < 0)
        goto out;
    while (j < na) {
        if (a[j] > 0) {
            if (counts_push(out, a[j++]) < 0)
                goto out;
        } else if (++j < na) {
            out->c[out->n - 1] += a[j++];
        }
    }
    rc = 0;
out:
    free(x);
    free(y);
    free(u);
    free(v);
    free(a);
    return rc;
}

/* The union of two masks' RLEs (same image size) appended to ``out`` (0s first). */
static int rle_union(const uint32_t *a, Py_ssize_t na, const uint32_t *b, Py_ssize_t nb,
                     Counts *out) {
    Py_ssize_t ia = 0, ib = 0;
    uint64_t ra = na ? a[0] : 0, rb = nb ? b[0] : 0, run = 0;
    int va = 0, vb = 0, cur = 0;
    for (;;) {
        while (ra == 0 && ia + 1 < na) { /* past finished (or empty) runs */
            ra = a[++ia];
            va = !va;
        }
        while (rb == 0 && ib + 1 < nb) {
            rb = b[++ib];
            vb = !vb;
        }
        if (ra == 0 || rb == 0)
            break;
        uint64_t c = ra < rb ? ra : rb;
        int state = va || vb;
        if (state != cur) {
            if (counts_push(out, (uint32_t)run) < 0)
                return -1;
            run = 0;
            cur = state;
        }
        run += c;
        ra -= c;
        rb -= c;
    }
    return counts_push(out, (uint32_t)run);
}

/* polygons_to_rles(coords float64, poly_off int64 (P + 1,), ann_off int64 (N + 1,), h int64 (N,),
 *                  w int64 (N,), off int64 (N + 1,) out) -> bytes of uint32 counts, or None
 * Annotation i is the union of the polygons ann_off[i] .. ann_off[i + 1] - 1, polygon p the
 * points coords[poly_off[p]:poly_off[p + 1]] (x, y pairs; an odd last one ignored). Its RLE is
 * counts[off[i]:off[i + 1]]. None where the input is out of the range handled here. */
static PyObject *polygons_to_rles(PyObject *self, PyObject *args) {
    Py_buffer v[6];
    memset(v, 0, sizeof(v));
    if (!PyArg_ParseTuple(args, "y*y*y*y*y*w*", &v[0], &v[1], &v[2], &v[3], &v[4], &v[5]))
        return NULL;
    PyObject *res = NULL;
    Counts all = {NULL, 0, 0}, one = {NULL, 0, 0}, acc = {NULL, 0, 0};
    if (get_buffers(v, 6) < 0)
        goto done;
    const double *xy = v[0].buf;
    const int64_t *poff = v[1].buf, *aoff = v[2].buf, *h = v[3].buf, *w = v[4].buf;
    int64_t *off = v[5].buf;
    Py_ssize_t ncoord = v[0].len / 8, P = v[1].len / 8 - 1, N = v[3].len / 8;
    if (P < 0 || v[2].len / 8 != N + 1 || v[4].len / 8 != N || v[5].len / 8 != N + 1) {
        PyErr_SetString(PyExc_ValueError, "polygons_to_rles: buffers of wrong sizes");
        goto done;
    }
    for (Py_ssize_t i = 0; i < ncoord; i++)
        if (!(fabs(xy[i]) < 1e8)) { /* NaN, or far outside any image: left to pycocotools */
            Py_INCREF(Py_None);
            res = Py_None;
            goto done;
        }
    for (Py_ssize_t p = 0; p < P; p++)
        if (poff[p] < 0 || poff[p] > poff[p + 1] || poff[p + 1] > ncoord)
            goto range;
    for (Py_ssize_t i = 0; i < N; i++)
        if (aoff[i] < 0 || aoff[i] > aoff[i + 1] || aoff[i + 1] > P || h[i] <= 0 || w[i] <= 0 ||
            (uint64_t)h[i] * (uint64_t)w[i] >= ((uint64_t)1 << 31))
            goto range;
    int nomem = 0;
    Py_BEGIN_ALLOW_THREADS
    off[0] = 0;
    for (Py_ssize_t i = 0; i < N && !nomem; i++) {
        acc.n = 0;
        for (int64_t p = aoff[i]; p < aoff[i + 1] && !nomem; p++) {
            Py_ssize_t k = (Py_ssize_t)((poff[p + 1] - poff[p]) / 2);
            one.n = 0;
            if (polygon_rle(xy + poff[p], k, h[i], w[i], &one) < 0) {
                nomem = 1;
                break;
            }
            if (p == aoff[i]) { /* acc = one */
                Counts t = acc;
                acc = one;
                one = t;
                continue;
            }
            Counts merged = {NULL, 0, 0};
            if (rle_union(acc.c, acc.n, one.c, one.n, &merged) < 0) {
                free(merged.c);
                nomem = 1;
                break;
            }
            free(acc.c);
            acc = merged;
        }
        if (aoff[i] == aoff[i + 1]) { /* no polygon: an empty mask */
            acc.n = 0;
            if (counts_push(&acc, (uint32_t)(h[i] * w[i])) < 0)
                nomem = 1;
        }
        for (Py_ssize_t j = 0; j < acc.n && !nomem; j++)
            if (counts_push(&all, acc.c[j]) < 0)
                nomem = 1;
        off[i + 1] = all.n;
    }
    Py_END_ALLOW_THREADS
    if (nomem) {
        PyErr_NoMemory();
        goto done;
    }
    res = PyBytes_FromStringAndSize((const char *)all.c, (Py_ssize_t)(sizeof(uint32_t) * all.n));
    goto done;
range:
    PyErr_SetString(PyExc_ValueError, "polygons_to_rles: offsets or image sizes out of range");
done:
    free(all.c);
    free(one.c);
    free(acc.c);
    release(v, 6);
    return res;
}

/* decode_rles(text, starts int64 (n+1,), h int64 (n,), w int64 (n,), counts uint32 (len(text),),
 *             offsets int64 (n+1,)) -> -1, or the index of the first string left to
 *             pycocotools (undecodable, or its counts do not sum to h * w < 2**32) */
static PyObject *decode_rles(PyObject *self, PyObject *args) {
    Py_buffer v[6];
    memset(v, 0, sizeof(v));
    if (!PyArg_ParseTuple(args, "y*y*y*y*w*w*", &v[0], &v[1], &v[2], &v[3], &v[4], &v[5]))
        return NULL;
    PyObject *res = NULL;
    if (get_buffers(v, 6) < 0)
        goto done;
    Py_ssize_t n = v[2].len / 8;
    const int64_t *starts = v[1].buf, *h = v[2].buf, *w = v[3].buf;
    uint32_t *cnts = v[4].buf;
    int64_t *off = v[5].buf;
    if (v[1].len / 8 != n + 1 || v[3].len / 8 != n || v[5].len / 8 != n + 1 ||
        v[4].len / 4 < v[0].len) {
        PyErr_SetString(PyExc_ValueError, "decode_rles: buffers of wrong sizes");
        goto done;
    }
    cp text = v[0].buf;
    Py_ssize_t bad = -1, pos = 0;
    off[0] = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        Py_ssize_t m = -1;
        if (starts[i] >= 0 && starts[i] <= starts[i + 1] && starts[i + 1] <= v[0].len)
            m = rle_decode(text + starts[i], text + starts[i + 1], 0, cnts + pos);
        if (m < 0 || h[i] <= 0 || w[i] <= 0 ||
            (uint64_t)h[i] * (uint64_t)w[i] >= ((uint64_t)1 << 32) ||
            rle_sum(cnts + pos, m) != (uint64_t)h[i] * (uint64_t)w[i]) {
            bad = i;
            break;
        }
        pos += m;
        off[i + 1] = pos;
    }
    res = PyLong_FromSsize_t(bad);
done:
    release(v, 6);
    return res;
}

/* mask_ious(text, spans int64 (m, 2) counts string spans in text, escaped uint8 (m,),
 *           h int64 (m,), w int64 (m,), g_first int64 (m,), g_num int64 (m,),
 *           out_off int64 (m,), gt_counts uint32, gt_off int64 (G+1,), gt_h int64 (G,),
 *           gt_w int64 (G,), out float64, area float64 (m,)) -> -1, or the index of the first
 *           detection left to pycocotools.
 * Detection j's IoUs with the ground truth g_first[j] + 0 .. g_num[j] - 1 go to
 * out[out_off[j]:][:g_num[j]], as pycocotools' rleIou (iscrowd 0) computes them: the integer
 * intersection over the integer union, 0 without intersection. area[j]: its mask area. */
static PyObject *mask_ious(PyObject *self, PyObject *args) {
    Py_buffer v[14];
    memset(v, 0, sizeof(v));
    if (!PyArg_ParseTuple(args, "y*y*y*y*y*y*y*y*y*y*y*y*w*w*", &v[0], &v[1], &v[2], &v[3],
                          &v[4], &v[5], &v[6], &v[7], &v[8], &v[9], &v[10], &v[11], &v[12],
                          &v[13]))
        return NULL;
    PyObject *res = NULL;
    uint32_t *tmp = NULL;
    Extent *gext = NULL;
    char *gdone = NULL;
    if (get_buffers(v, 14) < 0)
        goto done;
    Py_ssize_t m = v[2].len, G = v[10].len / 8;
    const int64_t *spans = v[1].buf, *h = v[3].buf, *w = v[4].buf, *gf = v[5].buf,
                  *gn = v[6].buf, *oo = v[7].buf, *goff = v[9].buf, *gh = v[10].buf,
                  *gw = v[11].buf;
    const uint8_t *esc = v[2].buf;
    const uint32_t *gc = v[8].buf;
    double *out = v[12].buf, *area = v[13].buf;
    Py_ssize_t nout = v[12].len / 8, ngc = v[8].len / 4;
    if (v[1].len / 16 != m || v[3].len / 8 != m || v[4].len / 8 != m || v[5].len / 8 != m ||
        v[6].len / 8 != m || v[7].len / 8 != m || v[9].len / 8 != G + 1 || v[11].len / 8 != G ||
        v[13].len / 8 != m) {
        PyErr_SetString(PyExc_ValueError, "mask_ious: buffers of wrong sizes");
        goto done;
    }
    cp text = v[0].buf;
    Py_ssize_t cap = 0, bad = -1;
    gext = malloc(sizeof(Extent) * (size_t)(G + 1));
    gdone = calloc((size_t)(G + 1), 1);
    if (!gext || !gdone) {
        PyErr_NoMemory();
        goto done;
    }
    int nomem = 0;
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t j = 0; j < m && bad < 0; j++) {
        int64_t s = spans[2 * j], e = spans[2 * j + 1];
        if (s < 0 || s > e || e > v[0].len || gf[j] < 0 || gn[j] < 0 || gf[j] + gn[j] > G ||
            oo[j] < 0 || oo[j] + gn[j] > nout) {
            bad = j;
            break;
        }
        if (e - s > cap) {
            cap = 2 * (e - s) + 16;
            uint32_t *t = realloc(tmp, sizeof(uint32_t) * (size_t)cap);
            if (!t) {
                nomem = 1;
                break;
            }
            tmp = t;
        }
        Py_ssize_t nd = rle_decode(text + s, text + e, esc[j], tmp);
        uint64_t hw = (uint64_t)h[j] * (uint64_t)w[j];
        if (nd < 0 || h[j] <= 0 || w[j] <= 0 || hw >= ((uint64_t)1 << 32) ||
            rle_sum(tmp, nd) != hw) {
            bad = j;
            break;
        }
        Extent xd = rle_extent(tmp, nd);
        area[j] = (double)xd.area;
        for (int64_t k = 0; k < gn[j]; k++) {
            int64_t g = gf[j] + k;
            if (gh[g] != h[j] || gw[g] != w[j] || goff[g] < 0 || goff[g + 1] > ngc ||
                goff[g] > goff[g + 1]) {
                bad = j; /* pycocotools: -1 or 0 by the boxes; left to it */
                break;
            }
            const uint32_t *gcn = gc + goff[g];
            Py_ssize_t ng = (Py_ssize_t)(goff[g + 1] - goff[g]);
            if (!gdone[g]) {
                gext[g] = rle_extent(gcn, ng);
                gdone[g] = 1;
            }
            uint64_t inter = rle_intersection(tmp, nd, xd, gcn, ng, gext[g]);
            double iou = 0.0;
            if (inter) {
                uint64_t uni = xd.area + gext[g].area - inter;
                iou = (double)(uint32_t)inter / (double)(uint32_t)uni;
            }
            out[oo[j] + k] = iou;
        }
    }
    Py_END_ALLOW_THREADS
    if (nomem) {
        PyErr_NoMemory();
        goto done;
    }
    res = PyLong_FromSsize_t(bad);
done:
    free(tmp);
    free(gext);
    free(gdone);
    release(v, 14);
    return res;
}

/* ---- matching -------------------------------------------------------------------------- */
/* pycocotools' bbIou (iscrowd 0): the same operations in the same order */
static double box_iou(const double *d, const double *g) {
    double w = fmin(d[2] + d[0], g[2] + g[0]) - fmax(d[0], g[0]);
    if (w <= 0)
        return 0.0;
    double h = fmin(d[3] + d[1], g[3] + g[1]) - fmax(d[1], g[1]);
    if (h <= 0)
        return 0.0;
    double i = w * h;
    return i / (d[2] * d[3] + g[2] * g[3] - i);
}

/* match_cells(cell int64 (C, 4): first detection, detections, first ground truth, ground truth;
 *             thr float64 (T,), det_box float64 (n, 4) or empty, gt_box float64 (G, 4) or
 *             empty, iou_off int64 (n,) or empty, iou_val float64, gig bool (G, A),
 *             gnz bool (G,), dmask bool (n, A), tp bool (n, A, T) out, fp bool (n, A, T) out)
 *
 * lvis-api's greedy matching (LVISEval.evaluate_img) of the cells: detections in score order
 * (as given), for every area range and threshold: the ground truth not yet matched with the
 * highest IoU >= threshold (the last one among equal IoUs), the regular ground truth (not
 * ignored in the area range) before the ignored one, in file order within each. IoUs: boxes
 * (det_box given) or detection j's IoUs with its cell's ground truth at iou_val[iou_off[j]:].
 * Then lvis-api's true and false positives: a detection matched to ignored ground truth is
 * neither; one matched to ground truth of id 0 counts as unmatched; an unmatched one is a false
 * positive unless dmask (its area outside the range, or its category not exhaustively annotated
 * in its image). Every detection is written, in a cell with ground truth or not. */
static PyObject *match_cells(PyObject *self, PyObject *args) {
    Py_buffer v[11];
    memset(v, 0, sizeof(v));
    if (!PyArg_ParseTuple(args, "y*y*y*y*y*y*y*y*y*w*w*", &v[0], &v[1], &v[2], &v[3], &v[4],
                          &v[5], &v[6], &v[7], &v[10], &v[8], &v[9]))
        return NULL;
    int nv = 11;
    PyObject *res = NULL;
    double *iou = NULL;
    int *order = NULL;
    char *taken = NULL;
    if (get_buffers(v, nv) < 0)
        goto done;
    const int64_t *cell = v[0].buf, *ioff = v[4].buf;
    const double *thr = v[1].buf, *dbox = v[2].buf, *gbox = v[3].buf, *ival = v[5].buf;
    const uint8_t *gig = v[6].buf, *gnz = v[7].buf;
    const uint8_t *dmask = v[10].buf;
    uint8_t *tp = v[8].buf, *fp = v[9].buf;
    Py_ssize_t C = v[0].len / 32, T = v[1].len / 8, G = v[7].len;
    Py_ssize_t n = v[2].len ? v[2].len / 32 : v[4].len / 8;
    Py_ssize_t A = G ? v[6].len / G : (n ? v[10].len / n : 0), nval = v[5].len / 8;
    int boxes = v[2].len > 0;
    if (T <= 0 || v[8].len != n * A * T || v[9].len != n * A * T || v[6].len != G * A ||
        v[10].len != n * A || (boxes && v[3].len != G * 32) || (!boxes && v[4].len != n * 8)) {
        PyErr_SetString(PyExc_ValueError, "match_cells: buffers of wrong sizes");
        goto done;
    }
    for (Py_ssize_t c = 0; c < C; c++) { /* checked first: the work runs without the GIL */
        int64_t d0 = cell[4 * c], M = cell[4 * c + 1], g0 = cell[4 * c + 2], Gc = cell[4 * c + 3];
        if (d0 < 0 || M < 0 || d0 + M > n || g0 < 0 || Gc < 0 || g0 + Gc > G) {
            PyErr_SetString(PyExc_ValueError, "match_cells: a cell out of range");
            goto done;
        }
        for (int64_t i = 0; i < M && !boxes; i++)
            if (ioff[d0 + i] < 0 || ioff[d0 + i] + Gc > nval) {
                PyErr_SetString(PyExc_ValueError, "match_cells: IoUs out of range");
                goto done;
            }
    }
    int nomem = 0;
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t d = 0; d < n; d++) /* unmatched */
        for (Py_ssize_t a = 0; a < A; a++) {
            uint8_t f = dmask[d * A + a] ? 0 : 1;
            memset(tp + (d * A + a) * T, 0, (size_t)T);
            memset(fp + (d * A + a) * T, f, (size_t)T);
        }
    Py_ssize_t cap = 0;
    for (Py_ssize_t c = 0; c < C; c++) {
        int64_t d0 = cell[4 * c], M = cell[4 * c + 1], g0 = cell[4 * c + 2], Gc = cell[4 * c + 3];
        if (M * Gc > cap || Gc > cap) {
            cap = 2 * (M * Gc > Gc ? M * Gc : Gc) + 16;
            free(iou);
            free(order);
            free(taken);
            iou = malloc(sizeof(double) * (size_t)cap);
            order = malloc(sizeof(int) * (size_t)cap);
            taken = malloc((size_t)cap);
            if (!iou || !order || !taken) {
                nomem = 1;
                break;
            }
        }
        for (int64_t i = 0; i < M; i++) {
            int64_t d = d0 + i;
            for (int64_t k = 0; k < Gc; k++) {
                double x;
                if (boxes) {
                    x = box_iou(dbox + 4 * d, gbox + 4 * (g0 + k));
                } else {
                    x = ival[ioff[d] + k];
                }
                iou[i * Gc + k] = x;
            }
        }
        for (Py_ssize_t a = 0; a < A; a++) {
            /* regular ground truth first, then the ignored, each in file order */
            int64_t nreg, p = 0;
            for (int64_t k = 0; k < Gc; k++)
                if (!gig[(g0 + k) * A + a])
                    order[p++] = (int)k;
            nreg = p;
            for (int64_t k = 0; k < Gc; k++)
                if (gig[(g0 + k) * A + a])
                    order[p++] = (int)k;
            for (Py_ssize_t t = 0; t < T; t++) {
                memset(taken, 0, (size_t)Gc);
                for (int64_t i = 0; i < M; i++) {
                    double best = thr[t];
                    int m = -1;
                    const double *row = iou + i * Gc;
                    for (int64_t q = 0; q < Gc; q++) {
                        int k = order[q];
                        if (taken[k])
                            continue;
                        if (m > -1 && q >= nreg && !gig[(g0 + m) * A + a])
                            break; /* a regular match beats every ignored ground truth */
                        if (row[k] < best)
                            continue;
                        best = row[k];
                        m = k;
                    }
                    if (m < 0)
                        continue;
                    taken[m] = 1;
                    size_t at = ((size_t)(d0 + i) * (size_t)A + (size_t)a) * (size_t)T + (size_t)t;
                    int ignored = gig[(g0 + m) * A + a] != 0, nonzero = gnz[g0 + m] != 0;
                    tp[at] = nonzero && !ignored;
                    fp[at] = !nonzero && !ignored && !dmask[(d0 + i) * A + a];
                }
            }
        }
    }
    Py_END_ALLOW_THREADS
    if (nomem) {
        PyErr_NoMemory();
        goto done;
    }
    Py_INCREF(Py_None);
    res = Py_None;
done:
    free(iou);
    free(order);
    free(taken);
    release(v, nv);
    return res;
}

/* accumulate(tp bool (n, A, T), fp bool (n, A, T), order int64, bounds int64 (K + 1,),
 *            num_gt int64 (K, A), rec_thrs float64 (R,), precision float64 (T, R, K, A) out,
 *            recall float64 (T, K, A) out)
 *
 * lvis-api's LVISEval.accumulate for groups of detections: group k is order[bounds[k]:
 * bounds[k + 1]] in accumulation order; its columns w = a * T + t (area range, threshold),
 * W = A x T of them. For every group and
 * column with ground truth: the running true / false positive counts, recall tp / num_gt,
 * precision tp / (fp + tp + eps), its envelope from the end, read at the first position whose
 * recall reaches each threshold (0 past the end); recall: the last one (0 without detections).
 * Columns without ground truth are left as they are (lvis-api: -1). */
static PyObject *accumulate(PyObject *self, PyObject *args) {
    Py_buffer v[8];
    memset(v, 0, sizeof(v));
    if (!PyArg_ParseTuple(args, "y*y*y*y*y*y*w*w*", &v[0], &v[1], &v[2], &v[3], &v[4], &v[5],
                          &v[6], &v[7]))
        return NULL;
    PyObject *res = NULL;
    double *pr = NULL;
    if (get_buffers(v, 8) < 0)
        goto done;
    const uint8_t *tp = v[0].buf, *fp = v[1].buf;
    const int64_t *order = v[2].buf, *bounds = v[3].buf, *num_gt = v[4].buf;
    const double *rt = v[5].buf;
    double *prec = v[6].buf, *recall = v[7].buf;
    Py_ssize_t K = v[3].len / 8 - 1, R = v[5].len / 8, no = v[2].len / 8;
    Py_ssize_t A = K > 0 ? v[4].len / 8 / K : 0;
    Py_ssize_t T = K > 0 && A > 0 && R > 0 ? v[6].len / 8 / (R * K * A) : 0;
    Py_ssize_t W = A * T, n = W > 0 ? v[0].len / W : 0;
    if (K < 0 || v[1].len != v[0].len || v[4].len != K * A * 8 || v[6].len != T * R * K * A * 8 ||
        v[7].len != T * K * A * 8 || (W > 0 && v[0].len != n * W)) {
        PyErr_SetString(PyExc_ValueError, "accumulate: buffers of wrong sizes");
        goto done;
    }
    for (Py_ssize_t k = 0; k < K; k++) {
        if (bounds[k] < 0 || bounds[k] > bounds[k + 1] || bounds[k + 1] > no) {
            PyErr_SetString(PyExc_ValueError, "accumulate: bounds out of range");
            goto done;
        }
    }
    for (Py_ssize_t i = 0; i < no; i++)
        if (order[i] < 0 || order[i] >= n) {
            PyErr_SetString(PyExc_ValueError, "accumulate: order out of range");
            goto done;
        }
    /* Row by row (a detection's W columns are contiguous), the columns side by side. Only the
     * precisions at true positives are kept: recall first reaches a threshold at a true positive
     * (or at the first detection, for threshold 0), and precision rises only at true
     * positives, so the envelope there is the maximum over the true positives from there on. */
    int64_t most = 0;
    for (Py_ssize_t k = 0; k < K; k++) {
        int64_t tot = 0;
        for (Py_ssize_t w = 0; w < W; w++) {
            int64_t nd = bounds[k + 1] - bounds[k], g = num_gt[k * A + w / T];
            tot += g < nd ? (g > 0 ? g : 0) : nd;
        }
        if (tot > most)
            most = tot;
    }
    pr = malloc(sizeof(double) * (size_t)(most + 1));
    int64_t *cnt = calloc((size_t)(4 * W + 1), sizeof(int64_t));
    if (!pr || !cnt) {
        free(cnt);
        PyErr_NoMemory();
        goto done;
    }
    const double eps = DBL_EPSILON; /* np.spacing(1) */
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t k = 0; k < K; k++) {
        const int64_t *ord = order + bounds[k];
        int64_t nd = bounds[k + 1] - bounds[k];
        int64_t *tps = cnt, *fps = cnt + W, *start = cnt + 2 * W, *ng = cnt + 3 * W, pos = 0;
        for (Py_ssize_t w = 0; w < W; w++) /* ground truth per column */
            ng[w] = num_gt[k * A + w / T];
        for (Py_ssize_t w = 0; w < W; w++) { /* column w's true positives: pr[start[w]:] */
            tps[w] = fps[w] = 0;
            start[w] = pos;
            pos += ng[w] < nd ? (ng[w] > 0 ? ng[w] : 0) : nd;
        }
        for (int64_t i = 0; i < nd; i++) {
            const uint8_t *trow = tp + (Py_ssize_t)ord[i] * W, *frow = fp + (Py_ssize_t)ord[i] * W;
            for (Py_ssize_t w = 0; w < W; w++) {
                if (frow[w])
                    fps[w]++;
                if (trow[w]) {
                    int64_t t = ++tps[w];
                    if (t <= ng[w]) { /* more cannot raise recall: never read */
                        double dt = (double)t;
                        pr[start[w] + t - 1] = dt / ((double)fps[w] + dt + eps);
                    }
                }
            }
        }
        for (Py_ssize_t w = 0; w < W; w++) {
            if (ng[w] <= 0)
                continue;
            Py_ssize_t a = w / T, t = w % T, stride = K * A; /* precision[t, r, k, a] */
            double *out = prec + t * R * stride + k * A + a, *p = pr + start[w];
            double dng = (double)ng[w];
            int64_t m = tps[w] < ng[w] ? tps[w] : ng[w];
            recall[t * K * A + k * A + a] = nd ? (double)tps[w] / dng : 0.0;
            for (int64_t i = m - 1; i > 0; i--)
                if (p[i] > p[i - 1])
                    p[i - 1] = p[i];
            int64_t j = 0; /* true positives needed: the least j with j / ng >= rt[r] */
            for (Py_ssize_t r = 0; r < R; r++) {
                while ((double)j / dng < rt[r] && j <= m)
                    j++;
                if (nd == 0 || j > m)
                    out[r * stride] = 0.0;
                else
                    out[r * stride] = j == 0 ? (m ? p[0] : 0.0) : p[j - 1];
            }
        }
    }
    Py_END_ALLOW_THREADS
    free(cnt);
    Py_INCREF(Py_None);
    res = Py_None;
done:
    free(pr);
    release(v, 8);
    return res;
}

static PyObject *boundary_min(PyObject *self, PyObject *args); /* below */

static PyMethodDef methods[] = {
    {"scan_results", scan_results, METH_VARARGS,
     "scan_results(text, img, cat, score, box, flags, seg) -> n, or -1 (not valid JSON), "
     "-2 (for the Python reader)"},
    {"decode_rles", decode_rles, METH_VARARGS,
     "decode_rles(text, starts, h, w, counts, offsets) -> -1 or the first undecodable index"},
    {"mask_ious", mask_ious, METH_VARARGS,
     "mask_ious(text, spans, escaped, h, w, g_first, g_num, out_off, gt_counts, gt_off, gt_h, "
     "gt_w, out, area) -> -1 or the first detection left to pycocotools"},
    {"polygons_to_rles", polygons_to_rles, METH_VARARGS,
     "polygons_to_rles(coords, poly_off, ann_off, h, w, off) -> bytes of uint32 RLE counts: "
     "each annotation the union of its polygons, rasterised as pycocotools' frPoly"},
    {"match_cells", match_cells, METH_VARARGS,
     "match_cells(cell, thr, det_box, gt_box, iou_off, iou_val, gig, gnz, dmask, tp, fp): "
     "lvis-api's greedy matching of the cells, its true and false positives written to tp, fp"},
    {"accumulate", accumulate, METH_VARARGS,
     "accumulate(tp, fp, order, bounds, num_gt, rec_thrs, precision, recall): lvis-api's "
     "precision and recall of groups of detections"},
    {"boundary_min", boundary_min, METH_VARARGS,
     "boundary_min(text, spans, escaped, h, w, d, pair_det, pair_gt, pair_val, gt_counts, "
     "gt_off, gt_h, gt_w, vals) -> -1 or the first pair left to Python: vals = min(vals, "
     "boundary IoU) of the pairs"},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_ccore",
                                    "balms-det's compiled evaluation core", -1, methods};

/* The interface version _native.py expects: a core built from older source is not used. */
#define CCORE_VERSION 2

PyMODINIT_FUNC PyInit__ccore(void) {
    PyObject *m = PyModule_Create(&module);
    if (m && PyModule_AddIntConstant(m, "VERSION", CCORE_VERSION) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}

/* ---- boundary IoU ------------------------------------------------------------------------ */
/* Boundary IoU (Cheng et al. 2021) of compressed-RLE masks, the values of
 * balms_det/evaluation/boundary.py: the boundary of a mask M is M minus its erosion by a
 * (2d + 1) x (2d + 1) square (d erosions by 3 x 3), the outside of the image counting as
 * background. A mask is held as columns of runs: per column x, its sorted, disjoint row
 * intervals [y0, y1). The erosion is separable: every interval of a column shrinks by d at both
 * ends (vertical erosion; the column's ends are the image border), then a pixel stays iff its row
 * is in the vertically eroded columns x - d .. x + d, all inside the mask's columns (horizontal
 * erosion: intersections of columns, the window of 2d + 1 columns built by doubling,
 * A_2m(x) = A_m(x) & A_m(x + m)). Everything is linear in the number of runs, not pixels. */
typedef struct {
    uint32_t y0, y1;
} Iv;

typedef struct {
    Iv *iv; /* intervals: column k's are iv[col[k] .. col[k + 1]) */
    Py_ssize_t n, cap;
    Py_ssize_t *col;
    Py_ssize_t ccap;
    int64_t x0, nc; /* first column (of the image), number of columns */
    uint64_t count; /* pixels */
} Cols;

static void cols_free(Cols *c) {
    free(c->iv);
    free(c->col);
    memset(c, 0, sizeof(*c));
}

/* room for nc columns; no intervals, no pixels */
static int cols_reset(Cols *c, int64_t x0, int64_t nc) {
    if (nc + 1 > c->ccap) {
        Py_ssize_t cap = (Py_ssize_t)nc + 1 > 2 * c->ccap ? (Py_ssize_t)nc + 1 : 2 * c->ccap;
        Py_ssize_t *col = realloc(c->col, sizeof(Py_ssize_t) * (size_t)cap);
        if (!col)
            return -1;
        c->col = col;
        c->ccap = cap;
    }
    c->x0 = x0;
    c->nc = nc;
    c->n = 0;
    c->count = 0;
    c->col[0] = 0;
    return 0;
}

static inline int cols_push(Cols *c, uint32_t y0, uint32_t y1) {
    if (c->n == c->cap) {
        Py_ssize_t cap = c->cap ? 2 * c->cap : 256;
        Iv *iv = realloc(c->iv, sizeof(Iv) * (size_t)cap);
        if (!iv)
            return -1;
        c->iv = iv;
        c->cap = cap;
    }
    c->iv[c->n].y0 = y0;
    c->iv[c->n].y1 = y1;
    c->n++;
    c->count += y1 - y0;
    return 0;
}

/* the columns of the RLE counts cnt[0 .. m) of an h x w mask (counts summing to h * w): its
 * first to its last column with a pixel (none for an empty mask); runs split at column ends,
 * touching runs of a column (zero-length runs between them) joined */
static int mask_cols(const uint32_t *cnt, Py_ssize_t m, uint32_t h, uint32_t w, Cols *M) {
    if (cols_reset(M, 0, w) < 0)
        return -1;
    M->nc = 0;
    int64_t cur = -1; /* the current column, of the image */
    uint64_t pos = 0;
    for (Py_ssize_t j = 0; j < m; j++) {
        uint64_t len = cnt[j];
        if ((j & 1) && len) {
            uint64_t p = pos, end = pos + len;
            while (p < end) {
                int64_t x = (int64_t)(p / h);
                uint32_t y = (uint32_t)(p % h);
                uint64_t stop = (uint64_t)(x + 1) * h;
                if (stop > end)
                    stop = end;
                if (cur < 0) {
                    M->x0 = cur = x;
                    M->col[0] = 0;
                }
                while (cur < x) /* columns cur + 1 .. x start here */
                    M->col[++cur - M->x0] = M->n;
                uint32_t y1 = y + (uint32_t)(stop - p);
                if (M->n > M->col[cur - M->x0] && M->iv[M->n - 1].y1 == y) {
                    M->iv[M->n - 1].y1 = y1;
                    M->count += y1 - y;
                } else if (cols_push(M, y, y1) < 0) {
                    return -1;
                }
                p = stop;
            }
        }
        pos += len;
    }
    M->nc = cur < 0 ? 0 : cur - M->x0 + 1;
    M->col[M->nc] = M->n;
    return 0;
}

/* out = [a] & [b] (sorted disjoint intervals), appended */
static int iv_and(Cols *out, const Iv *a, Py_ssize_t na, const Iv *b, Py_ssize_t nb) {
    Py_ssize_t i = 0, j = 0;
    while (i < na && j < nb) {
        uint32_t lo = a[i].y0 > b[j].y0 ? a[i].y0 : b[j].y0;
        uint32_t hi = a[i].y1 < b[j].y1 ? a[i].y1 : b[j].y1;
        if (lo < hi && cols_push(out, lo, hi) < 0)
            return -1;
        if (a[i].y1 < b[j].y1)
            i++;
        else
            j++;
    }
    return 0;
}

/* out(k) = A(k) & A(k + shift), k = 0 .. A.nc - shift - 1 */
static int cols_window(const Cols *A, int64_t shift, Cols *out) {
    int64_t nc = A->nc - shift;
    if (cols_reset(out, A->x0, nc < 0 ? 0 : nc) < 0)
        return -1;
    for (int64_t k = 0; k < out->nc; k++) {
        Py_ssize_t ia = A->col[k], ib = A->col[k + shift];
        if (iv_and(out, A->iv + ia, A->col[k + 1] - ia, A->iv + ib, A->col[k + shift + 1] - ib) < 0)
            return -1;
        out->col[k + 1] = out->n;
    }
    return 0;
}

/* Scratch of boundary_cols */
typedef struct {
    Cols M, T1, T2;
    int64_t *q; /* two deques of column indices */
    Py_ssize_t qcap;
} Work;

static void work_free(Work *w) {
    cols_free(&w->M);
    cols_free(&w->T1);
    cols_free(&w->T2);
    free(w->q);
    memset(w, 0, sizeof(*w));
}

/* E(k) = V(k) & .. & V(k + L - 1), k = 0 .. V.nc - L, of columns V holding at most one interval
 * each: the largest y0 and the least y1 of the window (sliding maximum and minimum, monotone
 * deques), empty where a column of the window is */
static int window_single(const Cols *V, int64_t L, Cols *E, Work *wk) {
    int64_t nc = V->nc;
    if (cols_reset(E, V->x0, nc - L + 1) < 0)
        return -1;
    if (2 * nc > wk->qcap) {
        int64_t *q = realloc(wk->q, sizeof(int64_t) * (size_t)(2 * nc));
        if (!q)
            return -1;
        wk->q = q;
        wk->qcap = 2 * nc;
    }
    int64_t *qa = wk->q, *qb = wk->q + nc; /* y0: decreasing; y1: increasing */
    int64_t ha = 0, ta = 0, hb = 0, tb = 0, empty = -1;
    const Iv *iv = V->iv;
    const Py_ssize_t *col = V->col;
    for (int64_t k = 0; k < nc; k++) {
        if (col[k] == col[k + 1]) {
            empty = k;
            ha = ta = hb = tb = 0;
        } else {
            uint32_t y0 = iv[col[k]].y0, y1 = iv[col[k]].y1;
            while (ta > ha && iv[col[qa[ta - 1]]].y0 <= y0)
                ta--;
            qa[ta++] = k;
            while (tb > hb && iv[col[qb[tb - 1]]].y1 >= y1)
                tb--;
            qb[tb++] = k;
        }
        int64_t s = k - L + 1; /* the window s .. k */
        if (s < 0)
            continue;
        if (empty < s) {
            while (qa[ha] < s)
                ha++;
            while (qb[hb] < s)
                hb++;
            uint32_t lo = iv[col[qa[ha]]].y0, hi = iv[col[qb[hb]]].y1;
            if (lo < hi && cols_push(E, lo, hi) < 0)
                return -1;
        }
        E->col[s + 1] = E->n;
    }
    return 0;
}

/* B = the boundary of the mask wk->M (its columns) for width d */
static int boundary_cols(Work *wk, int64_t d, Cols *B) {
    const Cols *M = &wk->M;
    int64_t L = 2 * d + 1, ne = M->nc - L + 1; /* columns of the erosion: M's d .. nc - d - 1 */
    Cols *E = NULL;
    if (ne > 0) {
        /* vertical erosion */
        Cols *V = &wk->T1;
        int single = 1;
        if (cols_reset(V, M->x0, M->nc) < 0)
            return -1;
        for (int64_t k = 0; k < M->nc; k++) {
            for (Py_ssize_t i = M->col[k]; i < M->col[k + 1]; i++) {
                int64_t y0 = (int64_t)M->iv[i].y0 + d, y1 = (int64_t)M->iv[i].y1 - d;
                if (y0 < y1 && cols_push(V, (uint32_t)y0, (uint32_t)y1) < 0)
                    return -1;
            }
            V->col[k + 1] = V->n;
            single &= V->col[k + 1] - V->col[k] <= 1;
        }
        if (V->n && single) {
            if (window_single(V, L, &wk->T2, wk) < 0)
                return -1;
            E = &wk->T2;
        } else if (V->n) {
            /* horizontal: windows of p = 1, 2, 4, .. <= L columns, then two of them overlapping */
            Cols *A = V, *other = &wk->T2;
            int64_t p = 1;
            while (2 * p <= L && A->n) {
                if (cols_window(A, p, other) < 0)
                    return -1;
                Cols *t = A;
                A = other;
                other = t;
                p *= 2;
            }
            if (A->n && p < L) {
                if (cols_window(A, L - p, other) < 0)
                    return -1;
                A = other;
            }
            E = A;
        }
        if (E && !E->n)
            E = NULL;
        /* E(k) is the erosion of M's column k + d, k = 0 .. ne - 1 */
    }
    if (cols_reset(B, M->x0, M->nc) < 0)
        return -1;
    if (!E) { /* all boundary */
        if (M->n > B->cap) {
            Iv *iv = realloc(B->iv, sizeof(Iv) * (size_t)M->n);
            if (!iv)
                return -1;
            B->iv = iv;
            B->cap = M->n;
        }
        if (M->n) /* (no intervals: iv may be NULL) */
            memcpy(B->iv, M->iv, sizeof(Iv) * (size_t)M->n);
        memcpy(B->col, M->col, sizeof(Py_ssize_t) * (size_t)(M->nc + 1));
        B->n = M->n;
        B->count = M->count;
        return 0;
    }
    for (int64_t k = 0; k < M->nc; k++) {
        Py_ssize_t e = 0, ee = 0;
        if (k >= d && k - d < ne) {
            e = E->col[k - d];
            ee = E->col[k - d + 1];
        }
        for (Py_ssize_t i = M->col[k]; i < M->col[k + 1]; i++) { /* M minus E (E inside M) */
            uint32_t cur = M->iv[i].y0, y1 = M->iv[i].y1;
            for (; e < ee && E->iv[e].y0 < y1; e++) {
                if (E->iv[e].y0 > cur && cols_push(B, cur, E->iv[e].y0) < 0)
                    return -1;
                if (E->iv[e].y1 > cur)
                    cur = E->iv[e].y1;
            }
            if (cur < y1 && cols_push(B, cur, y1) < 0)
                return -1;
        }
        B->col[k + 1] = B->n;
    }
    return 0;
}

/* |A & B| of two column sets of the same image */
static uint64_t cols_intersection(const Cols *a, const Cols *b) {
    int64_t x0 = a->x0 > b->x0 ? a->x0 : b->x0;
    int64_t x1 = a->x0 + a->nc < b->x0 + b->nc ? a->x0 + a->nc : b->x0 + b->nc;
    uint64_t inter = 0;
    for (int64_t x = x0; x < x1; x++) {
        Py_ssize_t i = a->col[x - a->x0], ie = a->col[x - a->x0 + 1];
        Py_ssize_t j = b->col[x - b->x0], je = b->col[x - b->x0 + 1];
        while (i < ie && j < je) {
            uint32_t lo = a->iv[i].y0 > b->iv[j].y0 ? a->iv[i].y0 : b->iv[j].y0;
            uint32_t hi = a->iv[i].y1 < b->iv[j].y1 ? a->iv[i].y1 : b->iv[j].y1;
            if (lo < hi)
                inter += hi - lo;
            if (a->iv[i].y1 < b->iv[j].y1)
                i++;
            else
                j++;
        }
    }
    return inter;
}

/* boundary_min(text, spans int64 (m, 2), escaped uint8 (m,), h int64 (m,), w int64 (m,),
 *              d int64 (m,), pair_det int64 (P,), pair_gt int64 (P,), pair_val int64 (P,),
 *              gt_counts uint32, gt_off int64 (G+1,), gt_h int64 (G,), gt_w int64 (G,),
 *              vals float64) -> -1, or the index of the first pair it cannot compute
 * For each pair p: vals[pair_val[p]] = min(vals[pair_val[p]], boundary IoU of detection
 * pair_det[p] (its counts string at spans, in an h x w image, boundary width d) and ground truth
 * pair_gt[p]): |Bd & Bg| / |Bd | Bg|, 0 without intersection, as boundary.boundary_iou. Pairs
 * of one detection come one after another; each ground truth's boundary is computed once. */
static PyObject *boundary_min(PyObject *self, PyObject *args) {
    Py_buffer v[14];
    memset(v, 0, sizeof(v));
    if (!PyArg_ParseTuple(args, "y*y*y*y*y*y*y*y*y*y*y*y*y*w*", &v[0], &v[1], &v[2], &v[3],
                          &v[4], &v[5], &v[6], &v[7], &v[8], &v[9], &v[10], &v[11], &v[12],
                          &v[13]))
        return NULL;
    PyObject *res = NULL;
    uint32_t *tmp = NULL;
    Cols *gb = NULL, B;
    Work wk;
    memset(&B, 0, sizeof(B));
    memset(&wk, 0, sizeof(wk));
    char *gdone = NULL;
    if (get_buffers(v, 14) < 0)
        goto done;
    Py_ssize_t m = v[2].len, P = v[6].len / 8, G = v[11].len / 8;
    const int64_t *spans = v[1].buf, *h = v[3].buf, *w = v[4].buf, *dd = v[5].buf,
                  *pd = v[6].buf, *pg = v[7].buf, *pv = v[8].buf, *goff = v[10].buf,
                  *gh = v[11].buf, *gw = v[12].buf;
    const uint8_t *esc = v[2].buf;
    const uint32_t *gc = v[9].buf;
    double *vals = v[13].buf;
    Py_ssize_t nvals = v[13].len / 8, ngc = v[9].len / 4;
    if (v[1].len / 16 != m || v[3].len / 8 != m || v[4].len / 8 != m || v[5].len / 8 != m ||
        v[7].len / 8 != P || v[8].len / 8 != P || v[10].len / 8 != G + 1 ||
        v[12].len / 8 != G) {
        PyErr_SetString(PyExc_ValueError, "boundary_min: buffers of wrong sizes");
        goto done;
    }
    cp text = v[0].buf;
    gb = calloc((size_t)(G + 1), sizeof(Cols));
    gdone = calloc((size_t)(G + 1), 1);
    if (!gb || !gdone) {
        PyErr_NoMemory();
        goto done;
    }
    Py_ssize_t cap = 0, bad = -1;
    int64_t last = -1; /* the detection whose boundary B is */
    int nomem = 0;
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t p = 0; p < P; p++) {
        int64_t j = pd[p], g = pg[p];
        if (j < 0 || j >= m || g < 0 || g >= G || pv[p] < 0 || pv[p] >= nvals || gh[g] != h[j] ||
            gw[g] != w[j] || dd[j] < 1 || goff[g] < 0 || goff[g] > goff[g + 1] ||
            goff[g + 1] > ngc) {
            bad = p;
            break;
        }
        uint64_t hw = (uint64_t)h[j] * (uint64_t)w[j];
        if (h[j] <= 0 || w[j] <= 0 || hw >= ((uint64_t)1 << 32)) {
            bad = p;
            break;
        }
        if (j != last) {
            int64_t s = spans[2 * j], e = spans[2 * j + 1];
            if (s < 0 || s > e || e > v[0].len) {
                bad = p;
                break;
            }
            if (e - s > cap) {
                cap = 2 * (e - s) + 16;
                uint32_t *t = realloc(tmp, sizeof(uint32_t) * (size_t)cap);
                if (!t) {
                    nomem = 1;
                    break;
                }
                tmp = t;
            }
            Py_ssize_t nd = rle_decode(text + s, text + e, esc[j], tmp);
            if (nd < 0 || rle_sum(tmp, nd) != hw) {
                bad = p;
                break;
            }
            if (mask_cols(tmp, nd, (uint32_t)h[j], (uint32_t)w[j], &wk.M) < 0 ||
                boundary_cols(&wk, dd[j], &B) < 0) {
                nomem = 1;
                break;
            }
            last = j;
        }
        if (!gdone[g]) {
            const uint32_t *gcn = gc + goff[g];
            Py_ssize_t ng = (Py_ssize_t)(goff[g + 1] - goff[g]);
            if (rle_sum(gcn, ng) != hw) {
                bad = p;
                break;
            }
            if (mask_cols(gcn, ng, (uint32_t)h[j], (uint32_t)w[j], &wk.M) < 0 ||
                boundary_cols(&wk, dd[j], &gb[g]) < 0) {
                nomem = 1;
                break;
            }
            gdone[g] = 1; /* (wk is scratch: B stays the detection's boundary) */
        }
        double iou = 0.0;
        if (B.count && gb[g].count) {
            uint64_t inter = cols_intersection(&B, &gb[g]);
            if (inter)
                iou = (double)inter / (double)(B.count + gb[g].count - inter);
        }
        if (iou < vals[pv[p]])
            vals[pv[p]] = iou;
    }
    Py_END_ALLOW_THREADS
    if (nomem) {
        PyErr_NoMemory();
        goto done;
    }
    res = PyLong_FromSsize_t(bad);
done:
    free(tmp);
    if (gb)
        for (Py_ssize_t g = 0; g < G; g++)
            cols_free(&gb[g]);
    free(gb);
    free(gdone);
    cols_free(&B);
    work_free(&wk);
    release(v, 14);
    return res;
}
