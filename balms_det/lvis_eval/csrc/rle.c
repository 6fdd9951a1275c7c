/* COCO run-length masks (pycocotools' format: column-major runs of 0s and 1s, 0s first) */
#include "core.h"

#include <string.h>

/* The byte at *p of a counts string and its length in the decoded string (a JSON escape undone
 * where ``escaped``: one byte below 0x80, else the first byte of its UTF-8 form); the string is
 * valid JSON (checked by the scanner). */
static unsigned int next_byte(const unsigned char **p, const unsigned char *end, int escaped,
                              int *width) {
    const unsigned char *q = *p;
    unsigned int ch = *q++;
    *width = 1;
    if (escaped && ch == '\\') {
        ch = *q++;
        if (ch == 'u') {
            unsigned int cp = 0;
            for (int k = 0; k < 4; k++, q++)
                cp = cp * 16 + (unsigned)(*q <= '9' ? *q - '0' : (*q | 0x20) - 'a' + 10);
            int pair = cp >= 0xD800 && cp < 0xDC00 && end - q >= 6 && q[0] == '\\' &&
                       q[1] == 'u' && (q[2] | 0x20) == 'd' && (q[3] | 0x20) >= 'c';
            if (pair) { /* a surrogate pair: one character of 4 bytes */
                q += 6;
                cp = 0x10000 + ((cp - 0xD800) << 10);
            }
            *width = cp < 0x80 ? 1 : cp < 0x800 ? 2 : cp < 0x10000 ? 3 : 4;
            ch = cp < 0x80 ? cp : cp < 0x800 ? 0xC0 | cp >> 6 : cp < 0x10000 ? 0xE0 | cp >> 12
                                                                               : 0xF0 | cp >> 18;
        } else {
            const char *from = "\"\\/bfnrt", *to = "\"\\/\b\f\n\r\t";
            ch = (unsigned char)to[strchr(from, (int)ch) - from];
        }
    }
    *p = q;
    return ch;
}

/* (out: room for a count per byte of the string) */
int64_t rle_decode(const char *s, int64_t len, int escaped, uint64_t hw, uint32_t *out,
                   Problem *p) {
    const unsigned char *q = (const unsigned char *)s, *end = q + len;
    int64_t m = 0, i = 0, x = 0, prev2 = 0, prev1 = 0;
    uint64_t sum = 0;
    int k = 0, width;
    memset(p, 0, sizeof(*p));
    for (; q < end; i += width) {
        unsigned int ch = next_byte(&q, end, escaped, &width);
        int v = (int)ch - 48;
        if (v < 0 || v > 63) {
            p->code = P_RLE_CHAR;
            p->a = i;
            p->b = ch;
            return -1;
        }
        if (k == RLE_MAX_RUN_CHARS) {
            p->code = P_RLE_LONG_RUN;
            p->a = m;
            p->b = i;
            return -1;
        }
        x |= (int64_t)(v & 0x1f) << (5 * k++);
        if (v & 0x20)
            continue;
        if (v & 0x10)
            x |= -((int64_t)1 << (5 * k)); /* sign extension */
        if (m > 2)
            x += prev2;
        if (x < 0 || (uint64_t)x > hw) {
            p->code = P_RLE_RANGE;
            p->a = m;
            p->b = x;
            return -1;
        }
        sum += (uint64_t)x;
        out[m] = (uint32_t)x;
        prev2 = prev1;
        prev1 = x;
        m++;
        x = 0;
        k = 0;
    }
    if (k) {
        p->code = P_RLE_TRUNCATED;
        return -1;
    }
    if (sum != hw) {
        p->code = P_RLE_SUM;
        p->c = sum;
        return -1;
    }
    return m;
}

uint64_t rle_area(const uint32_t *c, int64_t m) {
    uint64_t a = 0;
    for (int64_t j = 1; j < m; j += 2)
        a += c[j];
    return a;
}

/* pycocotools' rleToBbox (2.0.x: zero-length runs of 1s skipped), in its unsigned 32-bit
 * arithmetic (a mask whose runs of 1s are all empty gets its odd box, as there) */
void rle_box(const uint32_t *c, int64_t m, uint32_t h, uint32_t w, double *bb) {
    uint32_t xs = w, ys = h, xe = 0, ye = 0, cc = 0;
    m = m / 2 * 2;
    if (m == 0) {
        bb[0] = bb[1] = bb[2] = bb[3] = 0;
        return;
    }
    for (int64_t j = 0; j < m; j++) {
        uint32_t start = cc;
        cc += c[j];
        if (j % 2 == 0 || c[j] == 0)
            continue;
        uint32_t y0 = start % h, x0 = (start - y0) / h, y1 = (cc - 1) % h, x1 = (cc - 1 - y1) / h;
        xs = x0 < xs ? x0 : xs;
        xe = x1 > xe ? x1 : xe;
        if (x0 < x1) { /* the run crosses a column */
            ys = 0;
            ye = h - 1;
        } else {
            ys = y0 < ys ? y0 : ys;
            ye = y1 > ye ? y1 : ye;
        }
    }
    bb[0] = xs;
    bb[2] = (uint32_t)(xe - xs + 1);
    bb[1] = ys;
    bb[3] = (uint32_t)(ye - ys + 1);
}

/* pycocotools' rleMerge (union) of two masks of one image size, appended to ``out`` */
int rle_union(const uint32_t *A, int64_t na, const uint32_t *B, int64_t nb, Vec *out) {
    uint32_t ca = A[0], cb = B[0], cc = 0, ct = 1;
    int64_t a = 1, b = 1;
    int v = 0, va = 0, vb = 0;
    while (ct > 0) {
        uint32_t c = ca < cb ? ca : cb;
        cc += c;
        ct = 0;
        ca -= c;
        if (!ca && a < na) {
            ca = A[a++];
            va = !va;
        }
        ct += ca;
        cb -= c;
        if (!cb && b < nb) {
            cb = B[b++];
            vb = !vb;
        }
        ct += cb;
        int vp = v;
        v = va || vb;
        if (v != vp || ct == 0) {
            if (VEC_PUSH(*out, uint32_t, cc) < 0)
                return -1;
            cc = 0;
        }
    }
    return 0;
}

Extent rle_extent(const uint32_t *c, int64_t m) {
    Extent x = {0, 0, 0};
    uint64_t pos = 0;
    for (int64_t j = 0; j < m; j++) {
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

/* |A & B| of two masks of the same image size */
uint64_t rle_intersection(const uint32_t *a, int64_t na, Extent xa, const uint32_t *b,
                          int64_t nb, Extent xb) {
    if (!xa.area || !xb.area || xa.last <= xb.first || xb.last <= xa.first)
        return 0;
    uint64_t stop = xa.last < xb.last ? xa.last : xb.last;
    int64_t ia = 0, ib = 0;
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
