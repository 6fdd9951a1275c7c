/* Boundary IoU (Cheng et al. 2021) from the runs of two masks. The boundary of a mask is the
 * mask minus its erosion by d pixels (d erosions by a 3 x 3 square = one by a (2d + 1) square),
 * the image border counting as background; boundary IoU = |Bd & Bg| / |Bd | Bg|, 0 without
 * intersection. A mask is held as its columns' intervals of 1s; the erosion is a vertical one of
 * each interval by d, then the intersection of 2d + 1 consecutive columns (the window built by
 * doubling, A_2m(x) = A_m(x) & A_m(x + m)). Everything is linear in the number of runs, not of
 * pixels. */
#include "core.h"

#include <stdlib.h>
#include <string.h>

typedef struct {
    uint32_t y0, y1;
} Iv;

typedef struct {
    Iv *iv; /* intervals: column k's are iv[col[k] .. col[k + 1]) */
    int64_t n, cap;
    int64_t *col;
    int64_t ccap;
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
        int64_t cap = (int64_t)nc + 1 > 2 * c->ccap ? (int64_t)nc + 1 : 2 * c->ccap;
        int64_t *col = realloc(c->col, sizeof(int64_t) * (size_t)cap);
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
        int64_t cap = c->cap ? 2 * c->cap : 256;
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
static int mask_cols(const uint32_t *cnt, int64_t m, uint32_t h, uint32_t w, Cols *M) {
    if (cols_reset(M, 0, w) < 0)
        return -1;
    M->nc = 0;
    int64_t cur = -1; /* the current column, of the image */
    uint64_t pos = 0;
    for (int64_t j = 0; j < m; j++) {
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

/* [a] & [b] (sorted disjoint intervals) appended to out, or (out NULL) its pixels counted */
static int64_t iv_and(Cols *out, const Iv *a, int64_t na, const Iv *b, int64_t nb) {
    int64_t i = 0, j = 0, count = 0;
    while (i < na && j < nb) {
        uint32_t lo = a[i].y0 > b[j].y0 ? a[i].y0 : b[j].y0;
        uint32_t hi = a[i].y1 < b[j].y1 ? a[i].y1 : b[j].y1;
        if (lo < hi && !out)
            count += hi - lo;
        else if (lo < hi && cols_push(out, lo, hi) < 0)
            return -1;
        if (a[i].y1 < b[j].y1)
            i++;
        else
            j++;
    }
    return count;
}

/* out(k) = A(k) & A(k + shift), k = 0 .. A.nc - shift - 1 */
static int cols_window(const Cols *A, int64_t shift, Cols *out) {
    int64_t nc = A->nc - shift;
    if (cols_reset(out, A->x0, nc < 0 ? 0 : nc) < 0)
        return -1;
    for (int64_t k = 0; k < out->nc; k++) {
        int64_t ia = A->col[k], ib = A->col[k + shift];
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
    int64_t qcap;
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
    const int64_t *col = V->col;
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
            for (int64_t i = M->col[k]; i < M->col[k + 1]; i++) {
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
    if (cols_reset(B, M->x0, M->nc) < 0) /* B = M minus E (E inside M; no E: all boundary) */
        return -1;
    for (int64_t k = 0; k < M->nc; k++) {
        int64_t e = 0, ee = 0;
        if (E && k >= d && k - d < ne) {
            e = E->col[k - d];
            ee = E->col[k - d + 1];
        }
        for (int64_t i = M->col[k]; i < M->col[k + 1]; i++) {
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
        int64_t i = a->col[x - a->x0], j = b->col[x - b->x0];
        inter += (uint64_t)iv_and(NULL, a->iv + i, a->col[x - a->x0 + 1] - i, b->iv + j,
                                  b->col[x - b->x0 + 1] - j);
    }
    return inter;
}

int boundary_min(const uint32_t *dc, const int64_t *doff, const int64_t *h, const int64_t *w,
                 const int64_t *d, const uint32_t *gc, const int64_t *goff, int64_t G,
                 const int64_t *pd, const int64_t *pg, const int64_t *pv, int64_t P, double *vals) {
    Cols *gb = calloc((size_t)(G + 1), sizeof(Cols)), B;
    char *gdone = calloc((size_t)(G + 1), 1);
    Work wk;
    int rc = -1;
    int64_t last = -1; /* the detection whose boundary B is */
    memset(&B, 0, sizeof(B));
    memset(&wk, 0, sizeof(wk));
    if (!gb || !gdone)
        goto done;
    for (int64_t p = 0; p < P; p++) {
        int64_t j = pd[p], g = pg[p];
        if (j != last) {
            if (mask_cols(dc + doff[j], doff[j + 1] - doff[j], (uint32_t)h[j], (uint32_t)w[j],
                          &wk.M) < 0 ||
                boundary_cols(&wk, d[j], &B) < 0)
                goto done;
            last = j;
        }
        if (!gdone[g]) { /* (wk is scratch: B stays the detection's boundary) */
            if (mask_cols(gc + goff[g], goff[g + 1] - goff[g], (uint32_t)h[j], (uint32_t)w[j],
                          &wk.M) < 0 ||
                boundary_cols(&wk, d[j], &gb[g]) < 0)
                goto done;
            gdone[g] = 1;
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
    rc = 0;
done:
    if (gb)
        for (int64_t g = 0; g < G; g++)
            cols_free(&gb[g]);
    free(gb);
    free(gdone);
    cols_free(&B);
    work_free(&wk);
    return rc;
}
