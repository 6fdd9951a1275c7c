/* Polygons: the input rules, and the mask pycocotools makes of them (frPyObjects, then merge) */
#include "core.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

int polygons_check(const double *xy, const int64_t *off, int64_t npoly, int64_t h, int64_t w,
                   Problem *p) {
    const double m = POLYGON_MARGIN;
    double length = 0;
    memset(p, 0, sizeof(*p));
    for (int64_t k = 0; k < npoly; k++) {
        const double *q = xy + off[k];
        int64_t n = (off[k + 1] - off[k]) / 2;
        for (int64_t i = 0; i < 2 * n; i++) {
            double size = (i % 2) ? (double)h : (double)w, v = q[i];
            if (!(v >= -m * size && v <= (1 + m) * size)) {
                p->code = (i % 2) ? P_POLY_Y : P_POLY_X;
                p->a = k;
                p->b = i;
                return -1;
            }
        }
        for (int64_t i = 0; i < n; i++) { /* closed, in the max norm */
            int64_t j = (i + 1) % n;
            length += fmax(fabs(q[2 * j] - q[2 * i]), fabs(q[2 * j + 1] - q[2 * i + 1]));
        }
    }
    if (length > POLYGON_MAX_OUTLINE * (double)(h + 1) * (double)(w + 1)) {
        p->code = P_POLY_OUTLINE;
        return -1;
    }
    return 0;
}

static int cmp_u32(const void *a, const void *b) {
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x > y ? 1 : x < y ? -1 : 0;
}

/* Sort run boundaries (x * h + y, x < w, y <= h; one of them h * w) in place: by column with a
 * counting sort, then within each column (few values) by insertion. ``tmp`` holds n values. */
static int sort_boundaries(uint32_t *a, uint32_t *tmp, int64_t n, int64_t h, int64_t w) {
    if (n < 64) {
        qsort(a, (size_t)n, sizeof(uint32_t), cmp_u32);
        return 0;
    }
    int64_t *start = calloc((size_t)(w + 2), sizeof(int64_t));
    if (!start)
        return -1;
    for (int64_t j = 0; j < n; j++) {
        uint32_t col = a[j] / (uint32_t)h; /* h * w (the end) and y = h fall in the next one */
        start[(col < (uint32_t)w ? col : (uint32_t)w) + 1]++;
    }
    for (int64_t c = 0; c <= w; c++)
        start[c + 1] += start[c];
    for (int64_t j = 0; j < n; j++) {
        uint32_t col = a[j] / (uint32_t)h;
        tmp[start[col < (uint32_t)w ? col : (uint32_t)w]++] = a[j];
    }
    int64_t lo = 0; /* start[c] is now the end of column c; insertion sort inside each */
    for (int64_t c = 0; c <= w; c++) {
        int64_t hi = start[c];
        for (int64_t j = lo + 1; j < hi; j++) {
            uint32_t t = tmp[j];
            int64_t q = j;
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

/* The mask of one polygon (k points xy), the pixels pycocotools' rleFrPoly sets: the outline
 * upsampled 5x and traced point by point, its crossings of pixel columns, each column's run
 * starting at the first pixel centre below the crossing. Appended to ``out``. */
static int polygon_rle(const double *xy, int64_t k, int64_t h, int64_t w, Vec *out, Vec *tmp) {
    const double scale = 5;
    int64_t m = 0, na = 0;
    tmp->n = 0;
    if (vec_reserve(tmp, 2 * (k + 1), sizeof(int64_t)) < 0)
        return -1;
    int64_t *x = VEC_AT(*tmp, int64_t), *y = x + k + 1;
    for (int64_t j = 0; j < k; j++) {
        x[j] = (int64_t)(scale * xy[2 * j] + .5);
        y[j] = (int64_t)(scale * xy[2 * j + 1] + .5);
    }
    x[k] = k ? x[0] : 0;
    y[k] = k ? y[0] : 0;
    for (int64_t j = 0; j < k; j++)
        m += llabs(x[j] - x[j + 1]) > llabs(y[j] - y[j + 1]) ? llabs(x[j] - x[j + 1]) + 1
                                                              : llabs(y[j] - y[j + 1]) + 1;
    int64_t *u = malloc(sizeof(int64_t) * (size_t)(2 * m + 2)), *v = u ? u + m + 1 : NULL;
    uint32_t *a = malloc(sizeof(uint32_t) * (size_t)(2 * m + 2));
    int rc = -1;
    if (!u || !a)
        goto done;
    m = 0;
    for (int64_t j = 0; j < k; j++) { /* every point of each edge, along its longer axis */
        int64_t xs = x[j], xe = x[j + 1], ys = y[j], ye = y[j + 1], t;
        int64_t dx = llabs(xe - xs), dy = llabs(ys - ye);
        int flip = (dx >= dy && xs > xe) || (dx < dy && ys > ye);
        if (flip) {
            t = xs, xs = xe, xe = t;
            t = ys, ys = ye, ye = t;
        }
        double slope = dx >= dy ? (double)(ye - ys) / dx : (double)(xe - xs) / dy;
        if (dx >= dy)
            for (int64_t d = 0; d <= dx; d++) {
                t = flip ? dx - d : d;
                u[m] = t + xs;
                v[m++] = (int64_t)(ys + slope * t + .5);
            }
        else
            for (int64_t d = 0; d <= dy; d++) {
                t = flip ? dy - d : d;
                v[m] = t + ys;
                u[m++] = (int64_t)(xs + slope * t + .5);
            }
    }
    for (int64_t j = 1; j < m; j++) { /* column crossings -> run boundaries (x * h + y) */
        if (u[j] == u[j - 1])
            continue;
        double xd = (double)(u[j] < u[j - 1] ? u[j] : u[j] - 1);
        xd = (xd + .5) / scale - .5;
        if (floor(xd) != xd || xd < 0 || xd > (double)(w - 1))
            continue;
        double yd = (double)(v[j] < v[j - 1] ? v[j] : v[j - 1]);
        yd = (yd + .5) / scale - .5;
        yd = ceil(yd < 0 ? 0 : yd > (double)h ? (double)h : yd);
        a[na++] = (uint32_t)((int64_t)xd * h + (int64_t)yd);
    }
    a[na++] = (uint32_t)(h * w); /* the image's end */
    if (sort_boundaries(a, a + m + 1, na, h, w) < 0)
        goto done;
    uint32_t prev = 0;
    for (int64_t j = 0; j < na; j++) {
        uint32_t t = a[j];
        a[j] -= prev;
        prev = t;
    }
    int64_t j = 0; /* runs; a zero-length run between two others joins them */
    if (VEC_PUSH(*out, uint32_t, a[j++]) < 0)
        goto done;
    while (j < na) {
        if (a[j] > 0) {
            if (VEC_PUSH(*out, uint32_t, a[j++]) < 0)
                goto done;
        } else if (++j < na) {
            VEC_AT(*out, uint32_t)[out->n - 1] += a[j++];
        }
    }
    rc = 0;
done:
    free(u);
    free(a);
    return rc;
}

int polygons_rle(const double *xy, const int64_t *off, int64_t npoly, int64_t h, int64_t w,
                 Vec *out, Vec *tmp) {
    Vec one = {0}, acc = {0}, pts = {0};
    int rc = -1;
    if (npoly == 0) { /* an empty mask */
        rc = VEC_PUSH(*out, uint32_t, (uint32_t)(h * w));
        goto done;
    }
    for (int64_t k = 0; k < npoly; k++) {
        Vec *to = npoly == 1 ? out : k == 0 ? &acc : &one;
        one.n = 0;
        if (polygon_rle(xy + off[k], (off[k + 1] - off[k]) / 2, h, w, to, &pts) < 0)
            goto done;
        if (k == 0 || npoly == 1)
            continue;
        Vec *dst = k == npoly - 1 ? out : tmp; /* pycocotools' rleMerge: one union at a time */
        int64_t at = dst->n;
        if (rle_union(VEC_AT(acc, uint32_t), acc.n, VEC_AT(one, uint32_t), one.n, dst) < 0)
            goto done;
        if (dst == tmp) { /* acc = the union so far */
            acc.n = 0;
            if (vec_reserve(&acc, tmp->n - at, sizeof(uint32_t)) < 0)
                goto done;
            memcpy(acc.p, VEC_AT(*tmp, uint32_t) + at, sizeof(uint32_t) * (size_t)(tmp->n - at));
            acc.n = tmp->n - at;
            tmp->n = at;
        }
    }
    rc = 0;
done:
    vec_free(&one);
    vec_free(&acc);
    vec_free(&pts);
    return rc;
}
