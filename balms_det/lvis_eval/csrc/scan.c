/* The JSON scanner: a results array (LVIS results, as Detectron2 writes them) read straight into
 * columns, without a Python object per detection. It checks the whole text is valid JSON (UTF-8
 * included) and reads the values the engine takes in the forms it takes them; an element whose
 * required values are of another form is flagged (E_BAD) and read again by the reader, which
 * says what is wrong with it. Every byte is looked at once: time and memory linear in the text. */
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

static int fail(Cur *c, cp at, const char *why) { /* not valid JSON at ``at`` */
    c->p = at;
    c->why = why;
    return ST_BAD;
}

static inline int is_digit(unsigned char ch) { return ch >= '0' && ch <= '9'; }

static inline void skip_ws(Cur *c) {
    while (c->p < c->end && (*c->p == ' ' || *c->p == '\n' || *c->p == '\r' || *c->p == '\t'))
        c->p++;
}

/* The length of the UTF-8 character at p (a byte >= 0x80), 0 when it is not valid UTF-8 (an
 * overlong form, a surrogate, beyond U+10FFFF, a stray byte), -1 when the text ends inside it */
static int utf8_length(cp p, cp end) {
    unsigned char b = p[0];
    int n = b > 0xF4 ? 0 : b >= 0xF0 ? 4 : b >= 0xE0 ? 3 : b >= 0xC2 ? 2 : 0;
    if (n && end - p < n)
        return -1;
    for (int k = 1; k < n; k++)
        if ((p[k] & 0xC0) != 0x80)
            return 0;
    if ((b == 0xE0 && p[1] < 0xA0) || (b == 0xED && p[1] >= 0xA0) || (b == 0xF0 && p[1] < 0x90) ||
        (b == 0xF4 && p[1] >= 0x90))
        return 0;
    return n;
}

/* A string at c->p (a '"'): [*s, *e) its raw contents, *esc whether they hold an escape */
static int scan_string(Cur *c, cp *s, cp *e, int *esc) {
    cp p = c->p + 1, end = c->end;
    *s = p;
    *esc = 0;
    for (;;) {
#ifdef HAVE_SSE2
        /* 16 bytes at a time to the next quote, backslash, control or non-ASCII byte */
        const __m128i quote = _mm_set1_epi8('"'), bslash = _mm_set1_epi8('\\'),
                      space = _mm_set1_epi8(0x20);
        for (; p + 16 <= end; p += 16) {
            __m128i x = _mm_loadu_si128((const __m128i *)p);
            int mask = _mm_movemask_epi8(_mm_or_si128(
                _mm_or_si128(_mm_cmpeq_epi8(x, quote), _mm_cmpeq_epi8(x, bslash)),
                _mm_cmplt_epi8(x, space))); /* signed: >= 0x80 too */
            if (mask) {
                p += __builtin_ctz((unsigned)mask);
                break;
            }
        }
#endif
        if (p >= end || (*p == '\\' && (p + 1 >= end || (p[1] == 'u' && p + 6 > end)))) {
            c->p = p;
            return ST_END;
        }
        if (*p == '"') {
            *e = p;
            c->p = p + 1;
            return ST_OK;
        }
        if (*p == '\\') {
            *esc = 1;
            if (p[1] == 'u') {
                for (int k = 2; k < 6; k++)
                    if (!(is_digit(p[k]) || ((p[k] | 0x20) >= 'a' && (p[k] | 0x20) <= 'f')))
                        return fail(c, p, "a \\u escape needs 4 hexadecimal digits");
                p += 6;
            } else if (p[1] && strchr("\"\\/bfnrt", p[1])) {
                p += 2;
            } else {
                return fail(c, p, "an invalid escape in a string");
            }
        } else if (*p < 0x20) {
            return fail(c, p, "a control character in a string");
        } else if (*p >= 0x80) {
            int n = utf8_length(p, end);
            if (n <= 0) {
                c->p = p;
                return n < 0 ? ST_END : fail(c, p, "not valid UTF-8");
            }
            p += n;
        } else {
            p++;
        }
    }
}

static int literal(Cur *c, const char *word) {
    for (; *word; word++, c->p++)
        if (c->p >= c->end || *c->p != (unsigned char)*word)
            return c->p >= c->end ? ST_END : fail(c, c->p, "not a value");
    return ST_OK;
}

/* A number at c->p: [*s, c->p) after the call; *is_int: no fraction, no exponent. NaN,
 * Infinity and -Infinity (which Python's json reads) are numbers too. */
static int scan_number(Cur *c, cp *s, int *is_int) {
    cp p = c->p, end = c->end;
    *s = p;
    *is_int = 1;
    if (p < end && *p == '-')
        p++;
    if (p < end && (*p == 'I' || (*p == 'N' && p == *s))) {
        c->p = p;
        *is_int = 0;
        return literal(c, *p == 'I' ? "Infinity" : "NaN");
    }
    if (p < end && *p == '0')
        p++;
    else if (p < end && *p >= '1' && *p <= '9')
        while (p < end && is_digit(*p))
            p++;
    else
        return p >= end ? ST_END : fail(c, p, "not a value");
    for (int part = 0; part < 2; part++) { /* the fraction, then the exponent */
        if (p >= end || *p != (part ? 'e' : '.') - (part && *p == 'E' ? 'e' - 'E' : 0))
            continue;
        *is_int = 0;
        if (++p < end && part && (*p == '+' || *p == '-'))
            p++;
        if (p < end && !is_digit(*p))
            return fail(c, p, part ? "an exponent needs digits"
                                   : "a digit must follow the decimal point");
        while (p < end && is_digit(*p))
            p++;
    }
    if (p >= end)
        return ST_END; /* more digits may follow */
    c->p = p;
    return ST_OK;
}

static int skip_value(Cur *c);

/* At a member: its key (a string) and the ':' after it */
static int member_key(Cur *c, cp *s, cp *e, int *esc) {
    int st;
    if (c->p < c->end && *c->p != '"')
        return fail(c, c->p, "an object's key must be a string");
    if (c->p >= c->end || (st = scan_string(c, s, e, esc)) != ST_OK)
        return c->p >= c->end ? ST_END : st;
    skip_ws(c);
    if (c->p >= c->end || *c->p != ':')
        return c->p >= c->end ? ST_END : fail(c, c->p, "':' must follow an object's key");
    c->p++;
    skip_ws(c);
    return c->p >= c->end ? ST_END : ST_OK;
}

/* After a value of an object or array: 1 past a ',' (another follows), 0 past ``close`` */
static int member_end(Cur *c, unsigned char close) {
    skip_ws(c);
    if (c->p >= c->end)
        return ST_END;
    if (*c->p != ',' && *c->p != close)
        return fail(c, c->p, close == '}' ? "',' or '}' must follow a member"
                                          : "',' or ']' must follow an element");
    if (*c->p++ == close)
        return c->depth--, 0;
    skip_ws(c);
    return c->p >= c->end ? ST_END : 1;
}

/* Past the '{' or '[' at c->p: 1 if the container is empty (and past its end), else 0 */
static int open_container(Cur *c, unsigned char close) {
    if (++c->depth > MAX_DEPTH)
        return fail(c, c->p, "nested too deeply");
    c->p++;
    skip_ws(c);
    if (c->p >= c->end)
        return ST_END;
    if (*c->p != close)
        return 0;
    c->p++;
    c->depth--;
    return 1;
}

static int skip_value(Cur *c) {
    cp s, e;
    int st, esc;
    unsigned char close = *c->p == '{' ? '}' : ']';
    if (*c->p == '"')
        return scan_string(c, &s, &e, &esc);
    if (*c->p == 't' || *c->p == 'f' || *c->p == 'n')
        return literal(c, *c->p == 't' ? "true" : *c->p == 'f' ? "false" : "null");
    if (*c->p != '{' && *c->p != '[')
        return scan_number(c, &s, &esc);
    if ((st = open_container(c, close)) != 0)
        return st < 0 ? st : ST_OK;
    do {
        if ((close == '}' && (st = member_key(c, &s, &e, &esc)) != ST_OK) ||
            (st = skip_value(c)) != ST_OK)
            return st;
    } while ((st = member_end(c, close)) == 1);
    return st;
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
 * float(int(token)); one too large for a double: -1, it is not a number of 64 bits). Fast exact
 * paths, else the C library's correctly rounded strtod in the C locale. */
static int to_double(cp s, cp e, int is_int, double *out) {
    cp p = s + (*s == '-');
    int neg = *s == '-', sig = 0, exp10 = 0, exp_val = 0, frac = 0;
    uint64_t m = 0;
    if (*p == 'I' || *p == 'N') {
        *out = *p == 'N' ? NAN : neg ? -INFINITY : INFINITY;
        return 0;
    }
    for (; p < e && (is_digit(*p) || (*p == '.' && !frac)); p++) {
        if (*p == '.' || (exp10 -= frac, m == 0 && *p == '0')) {
            frac |= *p == '.';
            continue;
        }
        if (++sig > 19)
            goto slow;
        m = m * 10 + (uint64_t)(*p - '0');
    }
    if (p < e) { /* the exponent */
        int exp_neg = *++p == '-';
        for (p += *p == '+' || *p == '-'; p < e; p++)
            if ((exp_val = exp_val * 10 + (*p - '0')) > 100000)
                goto slow;
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
    *out = strtod_l(buf, NULL, c_locale);
    if (buf != small)
        free(buf);
    return is_int && isinf(*out) ? -1 : 0; /* float(int(token)) raises OverflowError */
}
}

enum { NUM_FINITE, NUM_ID, NUM_COUNT }; /* what number() takes */

/* A value at c->p, read when it is a number of the kind asked for (*ok = 1): NUM_FINITE a finite
 * double (*v); NUM_ID an integer of int64, or a float of integral value in its range (*iv);
 * NUM_COUNT a non-negative integer token of int64. Any other value is skipped (*ok = 0). */
static int number(Cur *c, int kind, double *v, int64_t *iv, int *ok) {
    cp s;
    int is_int, st;
    *ok = 0;
    if (!(*c->p == '-' || is_digit(*c->p) || *c->p == 'N' || *c->p == 'I'))
        return skip_value(c);
    if ((st = scan_number(c, &s, &is_int)) != ST_OK)
        return st;
    if (kind != NUM_FINITE && is_int) { /* an integer token: exactly, within int64 */
        uint64_t m = 0;
        for (cp p = s + (*s == '-'); p < c->p; p++) {
            if (m > (UINT64_MAX - 9) / 10)
                return ST_OK;
            m = m * 10 + (uint64_t)(*p - '0');
        }
        *iv = *s == '-' ? (int64_t)(0 - m) : (int64_t)m;
        *ok = m <= ((uint64_t)1 << 63) - (*s != '-') && !(kind == NUM_COUNT && *s == '-' && m);
        return ST_OK;
    }
    if (kind == NUM_COUNT || to_double(s, c->p, is_int, v) < 0)
        return ST_OK;
    if (kind == NUM_ID && isfinite(*v) && *v == floor(*v) && *v >= -9223372036854775808.0 &&
        *v < 9223372036854775808.0)
        *iv = (int64_t)*v, *ok = 1;
    *ok |= kind == NUM_FINITE && isfinite(*v);
    return ST_OK;
}

/* An array of numbers of kind ``kind`` at c->p, pushed to ``to`` (doubles, or int64 counts) or
 * written to dv (at most ``most``); *n: how many; *ok = 0 where it is not an array, an element is
 * not such a number, or there are more than ``most``. The whole value is read. */
static int number_array(Cur *c, int kind, double *dv, Vec *to, int64_t most, int64_t *n, int *ok) {
    int st, good;
    *ok = *c->p == '[';
    *n = 0;
    if (!*ok)
        return skip_value(c);
    if ((st = open_container(c, ']')) < 0)
        return st;
    for (st = !st; st == 1; st = member_end(c, ']')) {
        double v = 0;
        int64_t iv = 0;
        if ((st = number(c, kind, &v, &iv, &good)) != ST_OK)
            return st;
        if (!good || (dv && *n >= most))
            *ok = 0;
        else if (dv)
            dv[*n] = v;
        else if (kind == NUM_FINITE ? VEC_PUSH(*to, double, v) : VEC_PUSH(*to, int64_t, iv))
            return fail(c, c->p, "out of memory");
        (*n)++;
    }
    return st;
}

static int key_is(cp s, cp e, const char *name) {
    size_t n = strlen(name);
    return (size_t)(e - s) == n && memcmp(s, name, n) == 0;
}

/* A key with escapes undone into buf (a known key is short: a longer one is left as it is) */
static void unescape_key(cp *s, cp *e, unsigned char *buf, size_t cap) {
    size_t n = 0;
    for (cp p = *s; p < *e && n < cap; p++) {
        unsigned int ch = *p;
        if (ch == '\\' && *++p == 'u') {
            ch = (unsigned)strtol((char[5]){(char)p[1], (char)p[2], (char)p[3], (char)p[4], 0},
                                  NULL, 16);
            p += 4;
        } else if (ch == '\\') {
            ch = (unsigned char)"\"\\/\b\f\n\r\t"[strchr("\"\\/bfnrt", *p) - "\"\\/bfnrt"];
        }
        if (ch >= 0x80)
            return; /* not a known key */
        buf[n++] = (unsigned char)ch;
    }
    *s = buf;
    *e = buf + n;
}

/* The segmentation at c->p (vectors' lengths at the element's start: mk): its kind (SEG_*),
 * where its value lies (seg[0..1]) and its data (seg[2..5]: h, w and the counts string's bytes;
 * h, w, first count in ``num`` and their number; -, -, first polygon, number of polygons). */
static int segmentation(Cur *c, Scan *o, const int64_t *mk, cp base, int64_t *seg, uint8_t *kind,
                        uint8_t *flags) {
    int st = 1, ok, good, have = 0;
    int64_t n, count = 0;
    o->coords.n = mk[0]; /* a segmentation given twice: the last one counts */
    o->poly_off.n = mk[1];
    o->num.n = mk[2];
    seg[0] = c->p - base;
    seg[2] = seg[3] = seg[4] = seg[5] = -1;
    *kind = SEG_OTHER;
    if (*c->p == 'n') {
        *kind = SEG_NONE;
        st = literal(c, "null");
    } else if (*c->p == '[') { /* polygons: lists of numbers, each an even count of 6 or more */
        if ((st = open_container(c, ']')) < 0)
            return st;
        ok = st == 0; /* (none: not polygons) */
        for (st = !st; st == 1; st = member_end(c, ']')) {
            if (VEC_PUSH(o->poly_off, int64_t, o->coords.n) < 0)
                return fail(c, c->p, "out of memory");
            if ((st = number_array(c, NUM_FINITE, NULL, &o->coords, -1, &n, &good)) != ST_OK)
                return st;
            ok &= good && n >= 6 && n % 2 == 0;
            count++;
        }
        if (st < 0)
            return st;
        if (ok)
            *kind = SEG_POLYGONS, seg[4] = mk[1], seg[5] = count;
    } else if (*c->p == '{') { /* {"size": [h, w], "counts": "..." or [...]} (others skipped) */
        ok = 1;
        if ((st = open_container(c, '}')) < 0)
            return st;
        for (st = !st; st == 1; st = member_end(c, '}')) {
            cp s, e;
            int esc;
            double hw[2];
            if ((st = member_key(c, &s, &e, &esc)) != ST_OK)
                return st;
            ok &= !esc; /* (the reader says what such a key is) */
            if (key_is(s, e, "size")) {
                if ((st = number_array(c, NUM_FINITE, hw, NULL, 2, &n, &good)) != ST_OK)
                    return st;
                good &= n == 2 && hw[0] == floor(hw[0]) && hw[1] == floor(hw[1]) &&
                        fabs(hw[0]) < 9e18 && fabs(hw[1]) < 9e18;
                seg[2] = good ? (int64_t)hw[0] : -1;
                seg[3] = good ? (int64_t)hw[1] : -1;
                have = good ? have | 1 : have & ~1;
            } else if (key_is(s, e, "counts") && *c->p == '"') {
                cp cs, ce;
                if ((st = scan_string(c, &cs, &ce, &esc)) != ST_OK)
                    return st;
                seg[4] = cs - base;
                seg[5] = ce - base;
                *flags = (uint8_t)((*flags & ~E_ESCAPED) | (esc ? E_ESCAPED : 0));
                have = (have & 1) | 2;
            } else if (key_is(s, e, "counts")) {
                o->num.n = mk[2];
                if ((st = number_array(c, NUM_COUNT, NULL, &o->num, -1, &n, &good)) != ST_OK)
                    return st;
                seg[4] = mk[2];
                seg[5] = n;
                have = (have & 1) | (good ? 4 : 0);
            } else if ((st = skip_value(c)) != ST_OK) {
                return st;
            }
        }
        if (st < 0)
            return st;
        if (ok && (have & 1) && (have & 6))
            *kind = (have & 2) ? SEG_STRING : SEG_LIST;
    } else {
        st = skip_value(c);
    }
    if (*kind != SEG_LIST)
        o->num.n = mk[2];
    if (*kind != SEG_POLYGONS)
        o->coords.n = mk[0], o->poly_off.n = mk[1];
    seg[1] = c->p - base;
    return st;
}

enum { K_IMG = 1, K_CAT = 2, K_SCORE = 4, K_BOX = 8, K_SEG = 16 };

/* One element of the array at c->p into the columns */
static int one_result(Cur *c, Scan *o, cp base) {
    int st = 1, ok, have = 0, good = 0; /* keys seen; of them, values of the accepted kind */
    int64_t img = 0, cat = 0, n, seg[6] = {-1, -1, -1, -1, -1, -1};
    int64_t mk[3] = {o->coords.n, o->poly_off.n, o->num.n}, span[2] = {c->p - base, 0};
    double score = 0, unused, box[4];
    uint8_t flags = 0, kind = SEG_NONE;
    if (*c->p != '{')
        st = skip_value(c) == ST_OK ? 0 : c->why ? ST_BAD : ST_END;
    else if ((st = open_container(c, '}')) >= 0)
        st = !st;
    for (; st == 1; st = member_end(c, '}')) {
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
        ok = 1;
        if (key == K_IMG || key == K_CAT)
            st = number(c, NUM_ID, &unused, key == K_IMG ? &img : &cat, &ok);
        else if (key == K_SCORE)
            st = number(c, NUM_FINITE, &score, NULL, &ok);
        else if (key == K_BOX && *c->p == 'n') /* null: no box */
            st = literal(c, "null"), have &= ~K_BOX, ok = 0;
        else if (key == K_BOX)
            st = number_array(c, NUM_FINITE, box, NULL, 4, &n, &ok), ok &= n == 4;
        else if (key == K_SEG)
            st = segmentation(c, o, mk, base, seg, &kind, &flags);
        else
            st = skip_value(c);
        if (st != ST_OK)
            return st;
        good = ok ? good | key : good & ~key;
    }
    if (st < 0)
        return st;
    const int need = K_IMG | K_CAT | K_SCORE;
    if ((good & need) != need || ((have & K_BOX) && !(good & K_BOX)))
        flags |= E_BAD; /* (not an object, or {}, too) */
    flags |= (good & K_IMG ? E_IMG : 0) | (good & K_CAT ? E_CAT : 0) |
             (good & K_SCORE ? E_SCORE : 0) | (good & K_BOX ? E_BOX : 0) |
             (have & K_BOX ? E_HAS_BOX : 0) | (have & K_SEG ? E_SEGKEY : 0);
    o->any_box |= (have & K_BOX) != 0;
    o->any_seg |= (have & K_SEG) != 0;
    if (!(good & K_BOX))
        box[0] = box[1] = box[2] = box[3] = NAN;
    span[1] = c->p - base;
    if (VEC_PUSH(o->img, int64_t, img) || VEC_PUSH(o->cat, int64_t, cat) ||
        VEC_PUSH(o->score, double, score) || VEC_PUSH(o->flags, uint8_t, flags) ||
        VEC_PUSH(o->kind, uint8_t, kind) || vec_reserve(&o->box, 4, sizeof(double)) ||
        vec_reserve(&o->span, 2, sizeof(int64_t)) || vec_reserve(&o->seg, 6, sizeof(int64_t)))
        return fail(c, c->p, "out of memory");
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
    Cur c = {(cp)text, (cp)text + len, 0, NULL};
    int st = ST_OK;
    for (skip_ws(&c); c.p < c.end && st == ST_OK; skip_ws(&c)) {
        cp here = c.p;
        if (*mode == MODE_OPEN && *c.p == '[')
            *mode = MODE_FIRST, c.p++;
        else if (*mode == MODE_OPEN)
            st = fail(&c, c.p, "the file must hold an array (of results)");
        else if ((*mode == MODE_FIRST || *mode == MODE_AFTER) && *c.p == ']')
            *mode = MODE_CLOSED, c.p++;
        else if (*mode == MODE_AFTER && *c.p == ',')
            *mode = MODE_ELEMENT, c.p++;
        else if (*mode == MODE_ELEMENT && *c.p == ']')
            st = fail(&c, c.p, "an element is missing after ','");
        else if (*mode == MODE_FIRST || *mode == MODE_ELEMENT) {
            c.depth = 0;
            st = one_result(&c, out, (cp)text);
            if (st == ST_END && !final) { /* from the element's start, with more text */
                c.p = here;
                st = ST_OK;
                break;
            }
            *mode = MODE_AFTER;
        } else
            st = fail(&c, c.p, *mode == MODE_AFTER ? "',' or ']' must follow an element"
                                                   : "text after the end of the array");
    }
    if (st == ST_END)
        st = fail(&c, c.p, "the file ends inside a value");
    *pos = c.p - (cp)text;
    *why = c.why;
    return st == ST_BAD ? SCAN_BAD : *mode == MODE_CLOSED ? SCAN_DONE : SCAN_MORE;
}

void scan_free(Scan *s) {
    Vec *v[] = {&s->img,  &s->cat, &s->score,  &s->box,      &s->flags, &s->kind,
                &s->span, &s->seg, &s->coords, &s->poly_off, &s->num};
    for (size_t k = 0; k < sizeof(v) / sizeof(v[0]); k++)
        vec_free(v[k]);
}

int vec_reserve(Vec *v, int64_t n, size_t elem) {
    int64_t cap = v->cap ? v->cap : 256;
    while (cap < v->n + n)
        cap *= 2;
    void *p = cap == v->cap ? v->p : realloc(v->p, (size_t)cap * elem);
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
