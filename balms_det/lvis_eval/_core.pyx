# cython: language_level=3, boundscheck=False, wraparound=False, initializedcheck=False
"""The typed binding of the engine's compiled core (csrc/, one file per job behind core.h).

Every function takes and fills contiguous numpy arrays (typed memoryviews) and runs its work
without the GIL, so that the reader's threads scan and compute masks side by side.
"""

import numpy as np

from libc.stdint cimport int64_t, uint8_t, uint32_t, uint64_t
from libc.string cimport memcpy


cdef extern from "csrc/core.h" nogil:
    int RLE_MAX_RUN_CHARS_ "RLE_MAX_RUN_CHARS"
    int POLYGON_MARGIN_ "POLYGON_MARGIN"
    int POLYGON_MAX_OUTLINE_ "POLYGON_MAX_OUTLINE"
    long long MAX_IMAGE_PIXELS_ "MAX_IMAGE_PIXELS"
    int MAX_DEPTH_ "MAX_DEPTH"

    ctypedef struct Vec:
        void *p
        int64_t n, cap
    int vec_reserve(Vec *v, int64_t n, size_t elem)
    void vec_free(Vec *v)

    ctypedef struct Problem:
        int code
        int64_t a, b
        uint64_t c
    enum:
        P_OK, P_RLE_CHAR, P_RLE_LONG_RUN, P_RLE_RANGE, P_RLE_TRUNCATED, P_RLE_SUM, P_LIST_SUM
        P_SIZE, P_POLY_X, P_POLY_Y, P_POLY_OUTLINE, P_IMAGE, P_NO_MEMORY
    enum:
        SEG_NONE, SEG_STRING, SEG_LIST, SEG_POLYGONS, SEG_OTHER
    enum:
        E_IMG, E_CAT, E_SCORE, E_BOX, E_HAS_BOX, E_BAD, E_ESCAPED, E_SEGKEY
    enum:
        MODE_OPEN, MODE_FIRST, MODE_ELEMENT, MODE_AFTER, MODE_CLOSED
    enum:
        SCAN_DONE, SCAN_MORE, SCAN_BAD

    ctypedef struct Scan:
        Vec img, cat, score, box, flags, kind, span, seg, coords, poly_off, num
        int64_t any_box, any_seg
    int scan_results(const char *text, int64_t len, int *mode, int final, Scan *out,
                     int64_t *pos, const char **why)
    void scan_free(Scan *s)

    int64_t rle_decode(const char *s, int64_t len, int escaped, uint64_t hw, uint32_t *out,
                       Problem *p)
    uint64_t rle_area(const uint32_t *c, int64_t m)
    void rle_box(const uint32_t *c, int64_t m, uint32_t h, uint32_t w, double *bb)
    int polygons_check(const double *xy, const int64_t *off, int64_t npoly, int64_t h,
                       int64_t w, Problem *p)
    int polygons_rle(const double *xy, const int64_t *off, int64_t npoly, int64_t h, int64_t w,
                     Vec *out, Vec *tmp)
    int mask_ious(const uint32_t *dc, const int64_t *doff, int64_t m, const uint32_t *gc,
                  const int64_t *goff, int64_t G, const int64_t *g_first, const int64_t *g_num,
                  const int64_t *out_off, double *out)
    int boundary_min(const uint32_t *dc, const int64_t *doff, const int64_t *h, const int64_t *w,
                     const int64_t *d, const uint32_t *gc, const int64_t *goff, int64_t G,
                     const int64_t *pd, const int64_t *pg, const int64_t *pv, int64_t P,
                     double *vals)
    int match_cells(const int64_t *cell, int64_t C, const double *thr, int64_t T,
                    const double *dbox, const double *gbox, const int64_t *ioff,
                    const double *ival, const uint8_t *gig, const uint8_t *gnz,
                    const uint8_t *dmask, int64_t A, int64_t n, uint8_t *tp, uint8_t *fp)
    int accumulate(const uint8_t *tp, const uint8_t *fp, const int64_t *order,
                   const int64_t *bounds, int64_t K, const int64_t *num_gt, int64_t A, int64_t T,
                   const double *rec_thrs, int64_t R, double *precision, double *recall)


# the input rules' limits (defined once, in csrc/core.h)
RLE_MAX_RUN_CHARS = RLE_MAX_RUN_CHARS_
POLYGON_MARGIN = POLYGON_MARGIN_
POLYGON_MAX_OUTLINE = POLYGON_MAX_OUTLINE_
MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS_
MAX_DEPTH = MAX_DEPTH_
PROBLEMS = dict(RLE_CHAR=P_RLE_CHAR, RLE_LONG_RUN=P_RLE_LONG_RUN, RLE_RANGE=P_RLE_RANGE,
                RLE_TRUNCATED=P_RLE_TRUNCATED, RLE_SUM=P_RLE_SUM, LIST_SUM=P_LIST_SUM,
                SIZE=P_SIZE, POLY_X=P_POLY_X, POLY_Y=P_POLY_Y, POLY_OUTLINE=P_POLY_OUTLINE,
                IMAGE=P_IMAGE)
KINDS = dict(NONE=SEG_NONE, STRING=SEG_STRING, LIST=SEG_LIST, POLYGONS=SEG_POLYGONS,
             OTHER=SEG_OTHER)
FLAGS = dict(IMG=E_IMG, CAT=E_CAT, SCORE=E_SCORE, BOX=E_BOX, HAS_BOX=E_HAS_BOX, BAD=E_BAD,
             ESCAPED=E_ESCAPED, SEGKEY=E_SEGKEY)
MODES = dict(OPEN=MODE_OPEN, FIRST=MODE_FIRST, ELEMENT=MODE_ELEMENT, AFTER=MODE_AFTER,
             CLOSED=MODE_CLOSED)
SCAN_DONE_, SCAN_MORE_, SCAN_BAD_ = SCAN_DONE, SCAN_MORE, SCAN_BAD


cdef object _array(Vec *v, object dtype, int64_t width=1):
    """A numpy copy of a vector (``width`` values per row)."""
    a = np.empty(v.n, dtype)
    if width > 1:
        a = a.reshape(-1, width)
    cdef char[::1] raw = a.reshape(-1).view(np.uint8)
    if v.n:
        memcpy(&raw[0], v.p, raw.shape[0])
    return a


cdef class Scanner:
    """The JSON scanner over a results array, fed a piece of text at a time (csrc/scan.c)."""
    cdef Scan s
    cdef public int mode

    def __cinit__(self, int mode=MODE_OPEN):
        self.mode = mode

    def __dealloc__(self):
        scan_free(&self.s)

    def scan(self, const unsigned char[::1] text, bint final):
        """(status, position, reason) of scanning ``text`` (see scan_results)."""
        cdef int64_t pos = 0
        cdef const char *why = NULL
        cdef int st, mode = self.mode
        cdef const char *p = ""
        if text.shape[0]:
            p = <const char *>&text[0]
        with nogil:
            st = scan_results(p, text.shape[0], &mode, final, &self.s, &pos, &why)
        self.mode = mode
        return st, pos, (why.decode() if why != NULL else None)

    def take(self):
        """The columns scanned since the last call (dict of numpy arrays); any box / any
        segmentation key seen."""
        cdef Scan *s = &self.s
        out = dict(img=_array(&s.img, np.int64), cat=_array(&s.cat, np.int64),
                   score=_array(&s.score, np.float64), box=_array(&s.box, np.float64, 4),
                   flags=_array(&s.flags, np.uint8), kind=_array(&s.kind, np.uint8),
                   span=_array(&s.span, np.int64, 2), seg=_array(&s.seg, np.int64, 6),
                   coords=_array(&s.coords, np.float64), poly_off=_array(&s.poly_off, np.int64),
                   num=_array(&s.num, np.int64), any_box=bool(s.any_box),
                   any_seg=bool(s.any_seg))
        s.img.n = s.cat.n = s.score.n = s.box.n = s.flags.n = s.kind.n = s.span.n = 0
        s.seg.n = s.coords.n = s.poly_off.n = s.num.n = 0
        return out


def masks(const uint8_t[::1] kind, const int64_t[:, ::1] seg, const uint8_t[::1] escaped,
          const unsigned char[::1] text, const double[::1] coords, const int64_t[::1] poly_off,
          const int64_t[::1] num, const int64_t[::1] h, const int64_t[::1] w, bint make=True):
    """The masks (RLE counts) of segmentations of h[i] x w[i] images under the input rules, item
    i of kind SEG_STRING (size seg[i, 2:4], counts text[seg[i, 4]:seg[i, 5]], JSON-escaped where
    ``escaped[i]``), SEG_LIST (size, counts num[seg[i, 4]:][:seg[i, 5]]) or SEG_POLYGONS
    (polygons seg[i, 4] .. + seg[i, 5] - 1, polygon k at coords[poly_off[k]:poly_off[k + 1]]).
    Returns (counts uint32, off (n + 1,), problem codes (n,), details (n, 3)): item i's mask is
    counts[off[i]:off[i + 1]] where its code is 0 (``make``: else only the rules are checked)."""
    cdef int64_t n = kind.shape[0], i, m, k, s, e
    off = np.zeros(n + 1, np.int64)
    code = np.zeros(n, np.int32)
    detail = np.zeros((n, 3), np.int64)
    cdef int64_t[::1] off_v = off
    cdef int[::1] code_v = code
    cdef int64_t[:, ::1] det_v = detail
    cdef Vec out
    cdef Vec tmp
    cdef Problem p
    cdef uint64_t hw
    cdef uint32_t *c
    cdef const char *txt = ""
    if text.shape[0]:
        txt = <const char *>&text[0]
    out.p = NULL
    out.n = out.cap = 0
    tmp.p = NULL
    tmp.n = tmp.cap = 0
    with nogil:
        for i in range(n):
            p.code = P_OK
            p.a = p.b = 0
            p.c = 0
            hw = <uint64_t>h[i] * <uint64_t>w[i]
            if h[i] < 1 or w[i] < 1 or hw > <uint64_t>MAX_IMAGE_PIXELS_:
                p.code = P_IMAGE
            elif kind[i] == SEG_POLYGONS:
                k = seg[i, 4]
                if polygons_check(&coords[0], &poly_off[k], seg[i, 5], h[i], w[i], &p) == 0 and make:
                    if polygons_rle(&coords[0], &poly_off[k], seg[i, 5], h[i], w[i], &out,
                                    &tmp) < 0:
                        p.code = P_NO_MEMORY
            elif seg[i, 2] != h[i] or seg[i, 3] != w[i]:
                p.code = P_SIZE
            elif kind[i] == SEG_STRING:
                s, e = seg[i, 4], seg[i, 5]
                if vec_reserve(&out, e - s + 1, 4) < 0:
                    p.code = P_NO_MEMORY
                else:
                    m = rle_decode(txt + s, e - s, escaped[i], hw, <uint32_t *>out.p + out.n, &p)
                    if m >= 0 and make:
                        out.n += m
            elif kind[i] == SEG_LIST:
                s, m = seg[i, 4], seg[i, 5]
                for k in range(m):
                    p.c += <uint64_t>num[s + k]
                    if p.c > hw:
                        break
                if p.c != hw:
                    p.code = P_LIST_SUM
                elif not make:
                    pass
                elif vec_reserve(&out, m, 4) < 0:
                    p.code = P_NO_MEMORY
                else:
                    c = <uint32_t *>out.p + out.n
                    for k in range(m):
                        c[k] = <uint32_t>num[s + k]
                    out.n += m
            code_v[i] = p.code
            det_v[i, 0] = p.a
            det_v[i, 1] = p.b
            det_v[i, 2] = <int64_t>p.c
            off_v[i + 1] = out.n
    counts = _array(&out, np.uint32)
    vec_free(&out)
    vec_free(&tmp)
    if (code == P_NO_MEMORY).any():
        raise MemoryError("out of memory making masks")
    return counts, off, code, detail


def mask_stats(const uint32_t[::1] counts, const int64_t[::1] off, const int64_t[::1] h,
               const int64_t[::1] w):
    """(areas (n,), boxes (n, 4) as pycocotools' toBbox) of masks counts[off[i]:off[i + 1]]."""
    cdef int64_t n = h.shape[0], i
    area = np.empty(n, np.float64)
    box = np.empty((n, 4), np.float64)
    cdef double[::1] a = area
    cdef double[:, ::1] b = box
    with nogil:
        for i in range(n):
            a[i] = <double>rle_area(&counts[0] + off[i], off[i + 1] - off[i])
            rle_box(&counts[0] + off[i], off[i + 1] - off[i], <uint32_t>h[i], <uint32_t>w[i],
                    &b[i, 0])
    return area, box


def ious(const uint32_t[::1] dc, const int64_t[::1] doff, const uint32_t[::1] gc,
         const int64_t[::1] goff, const int64_t[::1] g_first, const int64_t[::1] g_num,
         const int64_t[::1] out_off, double[::1] out):
    """Mask IoUs of detection j with the ground truth g_first[j] .. + g_num[j] - 1 into
    out[out_off[j]:] (csrc/iou.c)."""
    cdef int rc
    cdef const uint32_t *gp = &gc[0] if gc.shape[0] else NULL
    with nogil:
        rc = mask_ious(&dc[0], &doff[0], g_num.shape[0], gp, &goff[0], goff.shape[0] - 1,
                       &g_first[0], &g_num[0], &out_off[0], &out[0] if out.shape[0] else NULL)
    if rc < 0:
        raise MemoryError("out of memory computing mask IoUs")


def boundary_ious(const uint32_t[::1] dc, const int64_t[::1] doff, const int64_t[::1] h,
                  const int64_t[::1] w, const int64_t[::1] d, const uint32_t[::1] gc,
                  const int64_t[::1] goff, const int64_t[::1] pd, const int64_t[::1] pg,
                  const int64_t[::1] pv, double[::1] vals):
    """vals[pv[p]] = min(vals[pv[p]], boundary IoU of detection pd[p] and ground truth pg[p])
    (csrc/boundary.c)."""
    cdef int rc
    with nogil:
        rc = boundary_min(&dc[0], &doff[0], &h[0], &w[0], &d[0], &gc[0], &goff[0],
                          goff.shape[0] - 1, &pd[0], &pg[0], &pv[0], pd.shape[0], &vals[0])
    if rc < 0:
        raise MemoryError("out of memory computing boundary IoUs")


def match(const int64_t[:, ::1] cells, const double[::1] thr, const double[:, ::1] dbox,
          const double[:, ::1] gbox, const int64_t[::1] ioff, const double[::1] ival,
          const uint8_t[:, ::1] gig, const uint8_t[::1] gnz, const uint8_t[:, ::1] dmask,
          uint8_t[:, :, ::1] tp, uint8_t[:, :, ::1] fp):
    """lvis-api's matching of the cells, true and false positives (n, A, T) (csrc/match.c).
    Boxes (dbox non-empty) or mask IoUs (ioff / ival)."""
    cdef int rc
    cdef int64_t n = dmask.shape[0], A = dmask.shape[1]
    cdef bint boxes = dbox.shape[0] > 0
    if n == 0:
        return
    with nogil:
        rc = match_cells(&cells[0, 0] if cells.shape[0] else NULL, cells.shape[0], &thr[0],
                         thr.shape[0], &dbox[0, 0] if boxes else NULL,
                         &gbox[0, 0] if gbox.shape[0] else NULL,
                         NULL if boxes else &ioff[0], &ival[0] if ival.shape[0] else NULL,
                         &gig[0, 0] if gig.shape[0] else NULL,
                         &gnz[0] if gnz.shape[0] else NULL, &dmask[0, 0], A, n,
                         &tp[0, 0, 0], &fp[0, 0, 0])
    if rc < 0:
        raise MemoryError("out of memory matching detections")


def accumulate_groups(const uint8_t[:, :, ::1] tp, const uint8_t[:, :, ::1] fp,
                      const int64_t[::1] order, const int64_t[::1] bounds,
                      const int64_t[:, ::1] num_gt, const double[::1] rec_thrs,
                      double[:, :, :, ::1] precision, double[:, :, ::1] recall):
    """lvis-api's precision (T, R, K, A) and recall (T, K, A) of K groups of detections
    (csrc/accumulate.c); groups without ground truth are left as they are."""
    cdef int rc
    cdef int64_t K = bounds.shape[0] - 1
    cdef uint8_t empty = 0
    cdef int64_t none = 0
    if K <= 0:
        return
    with nogil:
        rc = accumulate(&tp[0, 0, 0] if tp.shape[0] else &empty,
                        &fp[0, 0, 0] if fp.shape[0] else &empty,
                        &order[0] if order.shape[0] else &none, &bounds[0], K, &num_gt[0, 0],
                        num_gt.shape[1], precision.shape[0], &rec_thrs[0], rec_thrs.shape[0],
                        &precision[0, 0, 0, 0], &recall[0, 0, 0])
    if rc < 0:
        raise MemoryError("out of memory accumulating precision")
