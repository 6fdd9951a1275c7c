/* The JSON scanner: a results array (LVIS results, as Detectron2 writes them) read straight into
 * columns, without a Python object per detection. It checks the whole text is valid JSON (UTF-8
 * included) and reads the values the engine takes in the forms it takes them; an element whose
 * required values are of another form is flagged (E_BAD) and read again by the reader, which
 * says what is wrong with it. Time and memory are linear in the text: every byte is looked at
 * once, nothing is retried. */
#include "core.h"

#include <float.h>
#include <locale.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#if defined(__SSE2__) && (defined(__GNUC__) || defined(__clang__))
#include <emmintrin.h>
#define HAVE_SSE2 1
#endif
#if defined(__APPLE__)
#include <xlocale.h>
#endif

#define ST_OK 0
#define ST_BAD (-1) /* not valid JSON */
#define ST_END (-2) /* the text ends inside the value */

typedef const unsigned char *cp;
typedef struct {
    cp p, end;
    int depth;
    const char *why;
} Cur;

static int bad(Cur *c, const char *why) {
    c->why = why;
    return ST_BAD;
}

static inline int at_end(Cur *c) { return c->p >= c->end; }
static inline int is_digit(unsigned char ch) { return ch >= '0' && ch <= '9'; }
static inline int is_hex(unsigned char ch) {
    return is_digit(ch) || (ch >= 'a' && ch <= 'f') || (ch >= 'A' && ch <= 'F');
}

static inline void skip_ws(Cur *c) {
    while (c->p < c->end && (*c->p == ' ' || *c->p == '\n' || *c->p == '\r' || *c->p == '\t'))
        c->p++;
}

/* One UTF-8 character at p (a byte >= 0x80): its length, or 0 when it is not valid UTF-8 (an
 * overlong form, a surrogate, beyond U+10FFFF, a stray byte); -1: the text ends inside it. */
static int utf8_length(cp p, cp end) {
    unsigned char b = p[0];
    int n = b >= 0xF0 ? 4 : b >= 0xE0 ? 3 : b >= 0xC2 ? 2 : 0;
    if (!n || b > 0xF4)
        return 0;
    if (end - p < n)
        return -1;
    for (int k = 1; k < n; k++)
        if ((p[k] & 0xC0) != 0x80)
            return 0;
    if ((b == 0xE0 && p[1] < 0xA0) || (b == 0xED && p[1] >= 0xA0) || (b == 0xF0 && p[1] < 0x90) ||
        (b == 0xF4 && p[1] >= 0x90))
        return 0; /* overlong, surrogate, beyond U+10FFFF */
    return n;
}

/* A string at c->p (a '"'): [*s, *e) its raw contents, *esc whether they hold an escape. */
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
            __m128i hit = _mm_or_si128(
                _mm_or_si128(_mm_cmpeq_epi8(x, quote), _mm_cmpeq_epi8(x, bslash)),
                _mm_cmplt_epi8(x, space)); /* signed: >= 0x80 too */
            int mask = _mm_movemask_epi8(hit);
            if (mask) {
                p += __builtin_ctz((unsigned)mask);
                break;
            }
            p += 16;
        }
#endif
        if (p >= end) {
            c->p = p;
            return ST_END;
        }
        unsigned char ch = *p;
        if (ch == '"') {
            *e = p;
            c->p = p + 1;
            *esc = escaped;
            return ST_OK;
        }
        if (ch == '\\') {
            escaped = 1;
            if (p + 1 >= end || (p[1] == 'u' && p + 6 > end)) {
                c->p = p;
                return ST_END;
            }
            if (p[1] == 'u') {
                for (int k = 2; k < 6; k++)
                    if (!is_hex(p[k])) {
                        c->p = p;
                        return bad(c, "a \\u escape needs 4 hexadecimal digits");
                    }
                p += 6;
            } else if (strchr("\"\\/bfnrt", p[1]) && p[1]) {
                p += 2;
            } else {
                c->p = p;
                return bad(c, "an invalid escape in a string");
            }
            continue;
        }
        if (ch < 0x20) {
            c->p = p;
            return bad(c, "a control character in a string");
        }
        if (ch >= 0x80) {
            int n = utf8_length(p, end);
            if (n < 0) {
                c->p = p;
                return ST_END;
            }
            if (n == 0) {
                c->p = p;
                return bad(c, "not valid UTF-8");
            }
            p += n;
            continue;
        }
        p++;
    }
}

/* A number at c->p: [*s, c->p) after the call; *is_int: no fraction, no exponent. NaN,
 * Infinity and -Infinity (which Python's json reads) are numbers too (*special). */
static int scan_number(Cur *c, cp *s, int *is_int, int *special) {
    cp p = c->p, end = c->end;
    *s = p;
    *is_int = 1;
    *special = 0;
    if (p < end && *p == '-')
        p++;
    if (p >= end)
        return ST_END;
    if (*p == 'I' || *p == 'N') {
        const char *word = *p == 'I' ? "Infinity" : "NaN";
        size_t n = strlen(word);
        if (*p == 'N' && p != *s)
            return bad(c, "not a value");
        for (size_t k = 0; k < n; k++, p++) {
            if (p >= end)
                return ST_END;
            if (*p != (unsigned char)word[k])
                return bad(c, "not a value");
        }
        c->p = p;
        *is_int = 0;
        *special = 1;
        return ST_OK;
    }
    if (*p == '0')
        p++;
    else if (*p >= '1' && *p <= '9')
        while (p < end && is_digit(*p))
            p++;
    else
        return bad(c, "not a value");
    if (p < end && *p == '.') {
        *is_int = 0;
        if (++p >= end)
            return ST_END;
        if (!is_digit(*p))
            return bad(c, "a digit must follow the decimal point");
        while (p < end && is_digit(*p))
            p++;
    }
    if (p < end && (*p == 'e' || *p == 'E')) {
        *is_int = 0;
        if (++p < end && (*p == '+' || *p == '-'))
            p++;
        if (p >= end)
            return ST_END;
        if (!is_digit(*p))
            return bad(c, "an exponent needs digits");
        while (p < end && is_digit(*p))
            p++;
    }
    if (p >= end)
        return ST_END; /* more digits may follow */
    c->p = p;
    return ST_OK;
}

static int literal(Cur *c, const char *word) {
    for (const char *w = word; *w; w++, c->p++) {
        if (at_end(c))
            return ST_END;
        if (*c->p != (unsigned char)*w)
            return bad(c, "not a value");
    }
    return ST_OK;
}

static int skip_value(Cur *c);

/* At a member: its key (a string) and the ':' after it. */
static int member_key(Cur *c, cp *s, cp *e, int *esc) {
    int st;
    if (at_end(c))
        return ST_END;
    if (*c->p != '"')
        return bad(c, "an object's key must be a string");
    if ((st = scan_string(c, s, e, esc)) != ST_OK)
        return st;
    skip_ws(c);
    if (at_end(c))
        return ST_END;
    if (*c->p != ':')
        return bad(c, "':' must follow an object's key");
    c->p++;
    skip_ws(c);
    return ST_OK;
}

/* After a value in an object or array: 1 past a ',' (another follows), 0 past ``close``. */
static int member_end(Cur *c, unsigned char close) {
    skip_ws(c);
    if (at_end(c))
        return ST_END;
    if (*c->p == ',') {
        c->p++;
        skip_ws(c);
        return 1;
    }
    if (*c->p == close) {
        c->p++;
        return 0;
    }
    return bad(c, close == '}' ? "',' or '}' must follow a member" : "',' or ']' must follow an element");
}

/* Past the '{' or '[' at c->p: 1 if the container is empty (and past its end), else 0. */
static int open_container(Cur *c, unsigned char close) {
    if (++c->depth > MAX_DEPTH)
        return bad(c, "nested too deeply");
    c->p++;
    skip_ws(c);
    if (at_end(c))
        return ST_END;
    if (*c->p == close) {
        c->p++;
        c->depth--;
        return 1;
    }
    return 0;
}

static int skip_container(Cur *c, unsigned char close) {
    int st = open_container(c, close);
    if (st != 0)
        return st < 0 ? st : ST_OK;
    for (;;) {
        cp s, e;
        int esc;
        if (close == '}' && (st = member_key(c, &s, &e, &esc)) != ST_OK)
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
    int a, b;
    if (at_end(c))
        return ST_END;
    switch (*c->p) {
    case '{':
        return skip_container(c, '}');
    case '[':
        return skip_container(c, ']');
    case '"':
        return scan_string(c, &s, &e, &a);
    case 't':
        return literal(c, "true");
    case 'f':
        return literal(c, "false");
    case 'n':
        return literal(c, "null");
    default:
        return scan_number(c, &s, &a, &b);
    }
}

/* ---- numbers ------------------------------------------------------------------------------- */
#if LDBL_MANT_DIG >= 64
static const long double P10L[28] = {
    1e0L,  1e1L,  1e2L,  1e3L,  1e4L,  1e5L,  1e6L,  1e7L,  1e8L,  1e9L,
    1e10L, 1e11L, 1e12L, 1e13L, 1e14L, 1e15L, 1e16L, 1e17L, 1e18L, 1e19L,
    1e20L, 1e21L, 1e22L, 1e23L, 1e24L, 1e25L, 1e26L, 1e27L}; /* all exact in 64 bits */
#endif
static const double P10[23] = {1e0,  1e1,  1e2,  1e3,  1e4,  1e5,  1e6,  1e7,
                               1e8,  1e9,  1e10, 1e11, 1e12, 1e13, 1e14, 1e15,
                               1e16, 1e17, 1e18, 1e19, 1e20, 1e21, 1e22};

/* The double nearest to the number [s, e), as Python's float() gives it (an integer as
 * float(int(token)), an integer too large for a double: -1, it is not a number of 64 bits).
 * Fast exact paths, else the C library's correctly rounded strtod in the C locale. */
static int to_double(cp s, cp e, int is_int, double *out) {
    cp p = s;
    int neg = 0, sig = 0, exp10 = 0, exp_neg = 0, exp_val = 0;
    uint64_t m = 0;
    if (*p == '-') {
        neg = 1;
        p++;
    }
    if (*p == 'I' || *p == 'N') {
        *out = *p == 'N' ? NAN : neg ? -INFINITY : INFINITY;
        return 0;
    }
    for (; p < e && is_digit(*p); p++) {
        if (m == 0 && *p == '0')
            continue;
        if (++sig > 19)
            goto slow;
        m = m * 10 + (uint64_t)(*p - '0');
    }
    if (p < e && *p == '.')
        for (p++; p < e && is_digit(*p); p++) {
            exp10--;
            if (m == 0 && *p == '0')
                continue;
            if (++sig > 19)
                goto slow;
            m = m * 10 + (uint64_t)(*p - '0');
        }
    if (p < e && (*p == 'e' || *p == 'E')) {
        p++;
        if (*p == '+' || *p == '-')
            exp_neg = *p++ == '-';
        for (; p < e && is_digit(*p); p++) {
            if (exp_val > 100000)
                goto slow;
            exp_val = exp_val * 10 + (*p - '0');
        }
        exp10 += exp_neg ? -exp_val : exp_val;
    }
    if (m == 0) {
        *out = (neg && !is_int) ? -0.0 : 0.0;
        return 0;
    }
    if (m < ((uint64_t)1 << 53) && exp10 >= -22 && exp10 <= 22) {
        /* Clinger: both operands exact, one correctly rounded operation */
        double v = exp10 < 0 ? (double)m / P10[-exp10] : (double)m * P10[exp10];
        *out = neg ? -v : v;
        return 0;
    }
#if LDBL_MANT_DIG == 64 && (defined(__x86_64__) || defined(__i386__))
    if (exp10 >= -27 && exp10 <= 27) {
        /* one correctly rounded operation in x87 extended precision, then rounded to double:
         * right unless the extended result is exactly halfway between two doubles (its 11 bits
         * below a double's 53 are 100...0) */
        long double r = exp10 < 0 ? (long double)m / P10L[-exp10] : (long double)m * P10L[exp10];
        double d = (double)r;
        uint64_t bits;
        memcpy(&bits, &r, sizeof(bits));
        if ((bits & 0x7FF) != 0x400 && isfinite(d)) {
            *out = neg ? -d : d;
            return 0;
        }
    }
#endif
slow: {
    static locale_t c_locale = (locale_t)0;
    if (c_locale == (locale_t)0)
        c_locale = newlocale(LC_NUMERIC_MASK, "C", (locale_t)0);
    size_t n = (size_t)(e - s);
    char small[128], *buf = n < sizeof(small) ? small : malloc(n + 1);
    if (!buf)
        return -1;
    memcpy(buf, s, n);
    buf[n] = 0;
    double v = strtod_l(buf, NULL, c_locale);
    if (buf != small)
        free(buf);
    if (is_int && isinf(v))
        return -1; /* float(int(token)) raises OverflowError */
    *out = v;
    return 0;
}
}

/* ---- one element ----------------------------------------------------------------------------- */
enum { NUM_FINITE, NUM_ID, NUM_COUNT }; /* what number() takes */

/* A value at c->p, read when it is a number of the kind asked for (*ok = 1): NUM_FINITE a finite
 * double (*v); NUM_ID an integer of int64, or a float of integral value in its range (*iv);
 * NUM_COUNT an integer token of int64. Any other value is skipped (*ok = 0). */
static int number(Cur *c, int kind, double *v, int64_t *iv, int *ok) {
    cp s;
    int is_int, special, st;
    *ok = 0;
    if (at_end(c))
        return ST_END;
    unsigned char ch = *c->p;
    if (!(ch == '-' || is_digit(ch) || ch == 'N' || ch == 'I'))
        return skip_value(c);
    if ((st = scan_number(c, &s, &is_int, &special)) != ST_OK)
        return st;
    if (kind != NUM_FINITE && is_int) { /* an integer token: exactly, within int64 */
        uint64_t m = 0;
        for (cp p = s + (*s == '-'); p < c->p; p++) {
            if (m > (UINT64_MAX - 9) / 10)
                return ST_OK;
            m = m * 10 + (uint64_t)(*p - '0');
        }
        if (m > (*s == '-' ? (uint64_t)1 << 63 : ((uint64_t)1 << 63) - 1))
            return ST_OK;
        *iv = *s == '-' ? (int64_t)(0 - m) : (int64_t)m;
        *ok = 1;
        return ST_OK;
    }
    if (kind == NUM_COUNT || to_double(s, c->p, is_int, v) < 0)
        return ST_OK;
    if (kind == NUM_ID) {
        if (!(isfinite(*v) && *v == floor(*v) && *v >= -9223372036854775808.0 &&
              *v < 9223372036854775808.0))
            return ST_OK;
        *iv = (int64_t)*v;
    }
    *ok = kind == NUM_ID || isfinite(*v);
    return ST_OK;
}

/* An array of numbers of kind ``kind`` at c->p, pushed to ``to`` (doubles, or int64 for ids and
 * counts) or written to dv; *n: how many; *ok = 0 where it is not an array, an element is not
 * such a number, or there are more than ``most`` (-1: any). The whole value is read. */
static int number_array(Cur *c, int kind, double *dv, Vec *to, int64_t most, int64_t *n, int *ok) {
    int st, good;
    *ok = 1;
    *n = 0;
    if (at_end(c))
        return ST_END;
    if (*c->p != '[') {
        *ok = 0;
        return skip_value(c);
    }
    if ((st = open_container(c, ']')) != 0)
        return st < 0 ? st : ST_OK;
    for (;;) {
        double v = 0;
        int64_t iv = 0;
        if ((st = number(c, kind, &v, &iv, &good)) != ST_OK)
            return st;
        if (!good || (most >= 0 && *n >= most) || (kind == NUM_COUNT && iv < 0))
            *ok = 0;
        else if (dv)
            dv[*n] = kind == NUM_FINITE ? v : (double)iv;
        else if (kind == NUM_FINITE ? VEC_PUSH(*to, double, v) : VEC_PUSH(*to, int64_t, iv))
            return bad(c, "out of memory");
        (*n)++;
        if ((st = member_end(c, ']')) <= 0) {
            if (st == 0)
                c->depth--;
            return st;
        }
    }
}

static int key_is(cp s, cp e, const char *name) {
    size_t n = strlen(name);
    return (size_t)(e - s) == n && memcmp(s, name, n) == 0;
}

/* A key with escapes undone into buf (a known key is short: a longer one is left as it is) */
static void unescape_key(cp *s, cp *e, unsigned char *buf, size_t cap) {
    size_t n = 0;
    for (cp p = *s; p < *e; p++) {
        unsigned int ch = *p;
        if (ch == '\\') {
            if (p[1] == 'u') {
                ch = 0;
                for (int k = 2; k < 6; k++)
                    ch = ch * 16 + (unsigned)(is_digit(p[k]) ? p[k] - '0' : (p[k] | 0x20) - 'a' + 10);
                p += 5;
                if (ch >= 0x80)
                    return; /* not a known key */
            } else {
                const char *from = "\"\\/bfnrt", *to = "\"\\/\b\f\n\r\t";
                ch = (unsigned char)to[strchr(from, p[1]) - from];
                p++;
            }
        }
        if (n == cap)
            return;
        buf[n++] = (unsigned char)ch;
    }
    *s = buf;
    *e = buf + n;
}

typedef struct {
    int64_t coords, poly_off, num; /* the vectors' lengths when the element began */
} Marks;

/* {"size": [h, w], "counts": "..." or [non-negative integers]} at c->p (other keys skipped):
 * its kind (SEG_STRING, SEG_LIST, else SEG_OTHER) and seg[2..5] */
static int rle_value(Cur *c, Scan *o, const Marks *mk, cp base, int64_t *seg, uint8_t *kind,
                     uint8_t *flags) {
    int st, ok = 1, have = 0;
    if ((st = open_container(c, '}')) != 0) {
        *kind = SEG_OTHER;
        return st < 0 ? st : ST_OK;
    }
    for (;;) {
        cp s, e;
        int esc, good;
        int64_t n;
        if ((st = member_key(c, &s, &e, &esc)) != ST_OK)
            return st;
        ok &= !esc; /* (the reader says what such a key is) */
        if (key_is(s, e, "size")) {
            double hw[2];
            if ((st = number_array(c, NUM_FINITE, hw, NULL, 2, &n, &good)) != ST_OK)
                return st;
            good &= n == 2 && hw[0] == floor(hw[0]) && hw[1] == floor(hw[1]) &&
                    fabs(hw[0]) < 9e18 && fabs(hw[1]) < 9e18;
            seg[2] = good ? (int64_t)hw[0] : -1;
            seg[3] = good ? (int64_t)hw[1] : -1;
            have = good ? have | 1 : have & ~1;
        } else if (key_is(s, e, "counts")) {
            o->num.n = mk->num;
            have &= 1;
            if (!at_end(c) && *c->p == '"') {
                cp cs, ce;
                if ((st = scan_string(c, &cs, &ce, &esc)) != ST_OK)
                    return st;
                seg[4] = cs - base;
                seg[5] = ce - base;
                *flags = (uint8_t)((*flags & ~E_ESCAPED) | (esc ? E_ESCAPED : 0));
                have |= 2;
            } else {
                if ((st = number_array(c, NUM_COUNT, NULL, &o->num, -1, &n, &good)) != ST_OK)
                    return st;
                seg[4] = mk->num;
                seg[5] = n;
                have |= good ? 4 : 0;
            }
        } else if ((st = skip_value(c)) != ST_OK) {
            return st;
        }
        if ((st = member_end(c, '}')) < 0)
            return st;
        if (st == 0) {
            c->depth--;
            break;
        }
    }
    *kind = !ok || (have & 1) == 0 ? SEG_OTHER : (have & 2) ? SEG_STRING : (have & 4) ? SEG_LIST
                                                                                     : SEG_OTHER;
    return ST_OK;
}

/* The segmentation at c->p: its kind, where its value lies (seg[0..1]) and its data (seg[2..5]:
 * h, w and the counts string's bytes; h, w, first count in ``num`` and their number; first
 * polygon and the number of polygons). */
static int segmentation(Cur *c, Scan *o, const Marks *mk, cp base, int64_t *seg, uint8_t *kind,
                        uint8_t *flags) {
    int st = ST_OK, ok = 1;
    o->coords.n = mk->coords; /* a segmentation given twice: the last one counts */
    o->poly_off.n = mk->poly_off;
    o->num.n = mk->num;
    seg[0] = c->p - base;
    seg[2] = seg[3] = seg[4] = seg[5] = -1;
    *kind = SEG_OTHER;
    if (*c->p == 'n') {
        *kind = SEG_NONE;
        st = literal(c, "null");
    } else if (*c->p == '[') { /* polygons: lists of numbers, each an even count of 6 or more */
        int64_t npoly = 0, n;
        int good;
        if ((st = open_container(c, ']')) != 0) {
            st = st < 0 ? st : ST_OK;
            ok = 0; /* no polygon */
        } else {
            for (;;) {
                if (VEC_PUSH(o->poly_off, int64_t, o->coords.n) < 0)
                    return bad(c, "out of memory");
                if ((st = number_array(c, NUM_FINITE, NULL, &o->coords, -1, &n, &good)) != ST_OK)
                    return st;
                ok &= good && n >= 6 && n % 2 == 0;
                npoly++;
                if ((st = member_end(c, ']')) < 0)
                    return st;
                if (st == 0) {
                    c->depth--;
                    break;
                }
            }
        }
        if (ok) {
            *kind = SEG_POLYGONS;
            seg[4] = mk->poly_off;
            seg[5] = npoly;
        }
    } else if (*c->p == '{') {
        st = rle_value(c, o, mk, base, seg, kind, flags);
    } else {
        st = skip_value(c);
    }
    if (*kind != SEG_LIST)
        o->num.n = mk->num;
    if (*kind != SEG_POLYGONS) {
        o->coords.n = mk->coords;
        o->poly_off.n = mk->poly_off;
    }
    seg[1] = c->p - base;
    return st;
}

enum { K_IMG = 1, K_CAT = 2, K_SCORE = 4, K_BOX = 8, K_SEG = 16 };

/* One element of the array at c->p into the columns (flags: E_*; kind: SEG_*) */
static int one_result(Cur *c, Scan *o, cp base) {
    int st, ok;
    int64_t img = 0, cat = 0, n, seg[6] = {-1, -1, -1, -1, -1, -1};
    double score = 0, box[4] = {NAN, NAN, NAN, NAN};
    uint8_t flags = 0, kind = SEG_NONE;
    int have = 0, good = 0; /* keys seen; values of the accepted kind (K_*) */
    Marks mk = {o->coords.n, o->poly_off.n, o->num.n};
    cp start = c->p;
    if (*c->p != '{') {
        if ((st = skip_value(c)) != ST_OK)
            return st;
        flags = E_BAD;
    } else if ((st = open_container(c, '}')) != 0) {
        if (st < 0)
            return st;
        flags = E_BAD; /* {} */
    } else {
        for (;;) {
            cp s, e;
            int esc;
            unsigned char buf[16];
            if ((st = member_key(c, &s, &e, &esc)) != ST_OK)
                return st;
            if (esc)
                unescape_key(&s, &e, buf, sizeof(buf));
            int key = key_is(s, e, "image_id")       ? K_IMG
                      : key_is(s, e, "category_id")  ? K_CAT
                      : key_is(s, e, "score")        ? K_SCORE
                      : key_is(s, e, "bbox")         ? K_BOX
                      : key_is(s, e, "segmentation") ? K_SEG
                                                     : 0;
            have |= key;
            if (key == K_IMG || key == K_CAT) {
                double unused;
                st = number(c, NUM_ID, &unused, key == K_IMG ? &img : &cat, &ok);
            } else if (key == K_SCORE) {
                st = number(c, NUM_FINITE, &score, NULL, &ok);
            } else if (key == K_BOX) {
                if (*c->p == 'n') { /* null: no box */
                    have &= ~K_BOX;
                    ok = 0;
                    st = literal(c, "null");
                } else {
                    st = number_array(c, NUM_FINITE, box, NULL, 4, &n, &ok);
                    ok &= n == 4;
                }
            } else if (key == K_SEG) {
                st = segmentation(c, o, &mk, base, seg, &kind, &flags);
                ok = 1;
            } else {
                st = skip_value(c);
            }
            if (st != ST_OK)
                return st;
            good = ok ? good | key : good & ~key;
            if ((st = member_end(c, '}')) < 0)
                return st;
            if (st == 0) {
                c->depth--;
                break;
            }
        }
        int need = K_IMG | K_CAT | K_SCORE;
        if ((good & need) != need || ((have & K_BOX) && !(good & K_BOX)))
            flags |= E_BAD;
        flags |= (good & K_IMG ? E_IMG : 0) | (good & K_CAT ? E_CAT : 0) |
                 (good & K_SCORE ? E_SCORE : 0) | (good & K_BOX ? E_BOX : 0) |
                 (have & K_BOX ? E_HAS_BOX : 0) | (have & K_SEG ? E_SEGKEY : 0);
        o->any_box |= (have & K_BOX) != 0;
        o->any_seg |= (have & K_SEG) != 0;
    }
    if (!(good & K_BOX))
        box[0] = box[1] = box[2] = box[3] = NAN;
    int64_t span[2] = {start - base, c->p - base};
    if (VEC_PUSH(o->img, int64_t, img) || VEC_PUSH(o->cat, int64_t, cat) ||
        VEC_PUSH(o->score, double, score) || VEC_PUSH(o->flags, uint8_t, flags) ||
        VEC_PUSH(o->kind, uint8_t, kind) || vec_reserve(&o->box, 4, sizeof(double)) ||
        vec_reserve(&o->span, 2, sizeof(int64_t)) || vec_reserve(&o->seg, 6, sizeof(int64_t)))
        return bad(c, "out of memory");
    memcpy(VEC_AT(o->box, double) + o->box.n, box, sizeof(box));
    memcpy(VEC_AT(o->span, int64_t) + o->span.n, span, sizeof(span));
    memcpy(VEC_AT(o->seg, int64_t) + o->seg.n, seg, sizeof(seg));
    o->box.n += 4;
    o->span.n += 2;
    o->seg.n += 6;
    return ST_OK;
}

/* ---- the array ------------------------------------------------------------------------------- */
int scan_results(const char *text, int64_t len, int *mode, int final, Scan *out, int64_t *pos,
                 const char **why) {
    cp base = (cp)text;
    Cur c = {base, base + len, 0, NULL};
    int st = ST_OK;
    for (;;) {
        skip_ws(&c);
        cp here = c.p;
        if (at_end(&c))
            break;
        if (*mode == MODE_OPEN) {
            if (*c.p != '[') {
                st = bad(&c, "the file must hold an array (of results)");
                break;
            }
            c.p++;
            *mode = MODE_FIRST;
        } else if (*mode == MODE_FIRST && *c.p == ']') {
            c.p++;
            *mode = MODE_CLOSED;
        } else if (*mode == MODE_ELEMENT && *c.p == ']') {
            st = bad(&c, "an element is missing after ','");
            break;
        } else if (*mode == MODE_FIRST || *mode == MODE_ELEMENT) {
            c.depth = 0;
            st = one_result(&c, out, base);
            if (st == ST_END && !final) { /* from the element's start, with more text */
                c.p = here;
                st = ST_OK;
                break;
            }
            if (st != ST_OK)
                break;
            *mode = MODE_AFTER;
        } else if (*mode == MODE_AFTER && (*c.p == ',' || *c.p == ']')) {
            *mode = *c.p == ',' ? MODE_ELEMENT : MODE_CLOSED;
            c.p++;
        } else {
            st = bad(&c, *mode == MODE_AFTER ? "',' or ']' must follow an element"
                                             : "text after the end of the array");
            break;
        }
    }
    *pos = c.p - base;
    if (st == ST_END)
        st = bad(&c, "the file ends inside a value");
    *why = c.why;
    return st == ST_OK ? (*mode == MODE_CLOSED ? SCAN_DONE : SCAN_MORE) : SCAN_BAD;
}

void scan_free(Scan *s) {
    Vec *v[] = {&s->img, &s->cat, &s->score, &s->box, &s->flags, &s->kind, &s->span, &s->seg,
                &s->coords, &s->poly_off, &s->num};
    for (size_t k = 0; k < sizeof(v) / sizeof(v[0]); k++)
        vec_free(v[k]);
}

int vec_reserve(Vec *v, int64_t n, size_t elem) {
    if (v->n + n <= v->cap)
        return 0;
    int64_t cap = v->cap ? 2 * v->cap : 256;
    while (cap < v->n + n)
        cap *= 2;
    void *p = realloc(v->p, (size_t)cap * elem);
    if (!p)
        return -1;
    v->p = p;
    v->cap = cap;
    return 0;
}

void vec_free(Vec *v) {
    free(v->p);
    v->p = NULL;
    v->n = v->cap = 0;
}
