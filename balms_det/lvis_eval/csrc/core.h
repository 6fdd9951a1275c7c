/* The compiled core of balms-det's LVIS evaluation engine, split by job:
 *
 *   scan.c        a results array (JSON) read into columns, one element at a time
 *   rle.c         COCO run-length masks: compressed strings decoded under the input rules, areas,
 *                 boxes, unions, intersections
 *   polygon.c     polygons checked under the input rules and rasterised as pycocotools does
 *   iou.c         box and mask IoUs of (detection, ground truth) pairs
 *   match.c       lvis-api's greedy matching of (image, category) cells
 *   accumulate.c  lvis-api's precision / recall accumulation
 *   boundary.c    boundary IoU (Cheng et al. 2021) from the runs of two masks
 *
 * Bound to Python by _core.pyx (Cython). Nothing here touches a Python object: every function
 * runs without the GIL. The limits below are the engine's input rules (balms_det/lvis_eval/
 * rules.py says why each exists); they are defined here, once, and read from Python.
 */
#ifndef BALMS_CORE_H
#define BALMS_CORE_H
#include <stddef.h>
#include <stdint.h>

#define RLE_MAX_RUN_CHARS 7     /* characters of one count of a compressed RLE string */
#define POLYGON_MARGIN 1        /* a polygon may reach this many image sizes beyond each side */
#define POLYGON_MAX_OUTLINE 4   /* its outline: at most this many (h + 1) (w + 1) pixels */
#define MAX_IMAGE_PIXELS 2147483647LL /* h * w: 32-bit run lengths, as pycocotools' */
#define MAX_DEPTH 1000          /* nesting of a JSON value (orjson: 1024, Python: ~1000) */

/* ---- growable arrays ------------------------------------------------------------------------- */
typedef struct {
    void *p;
    int64_t n, cap;
} Vec;

int vec_reserve(Vec *v, int64_t n, size_t elem); /* room for n more; -1: no memory */
void vec_free(Vec *v);
#define VEC_AT(v, type) ((type *)(v).p)
#define VEC_PUSH(v, type, x) \
    (vec_reserve(&(v), 1, sizeof(type)) < 0 ? -1 : (((type *)(v).p)[(v).n++] = (x), 0))

/* ---- problems found by the input rules (codes; Python words them) ---------------------------- */
enum {
    P_OK = 0,
    /* compressed RLE strings: a = character or count index, b = value, c = sum */
    P_RLE_CHAR,      /* a character outside '0'..'o' (a: position, b: the byte) */
    P_RLE_LONG_RUN,  /* a count over RLE_MAX_RUN_CHARS characters (a: count, b: position) */
    P_RLE_RANGE,     /* a count outside 0..h * w (a: count, b: value) */
    P_RLE_TRUNCATED, /* ends inside a count */
    P_RLE_SUM,       /* counts do not sum to h * w (c: their sum, saturated) */
    P_LIST_SUM,      /* uncompressed counts: their sum (c) is not h * w */
    P_SIZE,          /* an RLE's size is not its image's */
    P_POLY_X,        /* a polygon x outside the margin (a: polygon, b: coordinate index) */
    P_POLY_Y,        /* ... a y */
    P_POLY_OUTLINE,  /* the outline of the polygons is too long */
    P_IMAGE,         /* the image is larger than MAX_IMAGE_PIXELS or not positive */
    P_NO_MEMORY
};

typedef struct {
    int code;
    int64_t a, b;
    uint64_t c; /* a sum */
} Problem;

/* ---- RLE (rle.c) ----------------------------------------------------------------------------- */
/* Decode the compressed counts string s[0..len) (JSON escapes undone where ``escaped``) of an
 * image of hw pixels into ``out`` (room for len counts), under the rules; the number of counts,
 * or -1 with *p saying why. */
int64_t rle_decode(const char *s, int64_t len, int escaped, uint64_t hw, uint32_t *out,
                   Problem *p);
uint64_t rle_area(const uint32_t *c, int64_t m);
void rle_box(const uint32_t *c, int64_t m, uint32_t h, uint32_t w, double *bb); /* toBbox */
int rle_union(const uint32_t *a, int64_t na, const uint32_t *b, int64_t nb, Vec *out);

typedef struct {
    uint64_t area, first, last; /* pixels, and the span [first, last) holding them */
} Extent;
Extent rle_extent(const uint32_t *c, int64_t m);
uint64_t rle_intersection(const uint32_t *a, int64_t na, Extent xa, const uint32_t *b,
                          int64_t nb, Extent xb);

/* ---- polygons (polygon.c) -------------------------------------------------------------------- */
/* Check the polygons of one segmentation (coordinates xy, polygon k: xy[off[k]..off[k + 1])) of
 * an h x w image under the rules; 0, or -1 with *p saying why. */
int polygons_check(const double *xy, const int64_t *off, int64_t npoly, int64_t h, int64_t w,
                   Problem *p);
/* The mask of the polygons (their union, pycocotools' frPyObjects then merge) appended to out. */
int polygons_rle(const double *xy, const int64_t *off, int64_t npoly, int64_t h, int64_t w,
                 Vec *out, Vec *tmp);

/* ---- IoUs (iou.c), boundary IoUs (boundary.c) ------------------------------------------------ */
double box_iou(const double *d, const double *g); /* pycocotools' bbIou, iscrowd 0 */
/* Detection masks j (counts dc[doff[j]..doff[j + 1])) with the ground-truth masks g_first[j] ..
 * + g_num[j] - 1 (same image size): their IoUs to out[out_off[j] ..]. -1: no memory. */
int mask_ious(const uint32_t *dc, const int64_t *doff, int64_t m, const uint32_t *gc,
              const int64_t *goff, int64_t G, const int64_t *g_first, const int64_t *g_num,
              const int64_t *out_off, double *out);
/* For each pair p: vals[pv[p]] = min(vals[pv[p]], boundary IoU of detection mask pd[p] (an
 * h[j] x w[j] image, boundary width d[j]) and ground-truth mask pg[p]); the pairs of a detection
 * one after another. -1: no memory. */
int boundary_min(const uint32_t *dc, const int64_t *doff, const int64_t *h, const int64_t *w,
                 const int64_t *d, const uint32_t *gc, const int64_t *goff, int64_t G,
                 const int64_t *pd, const int64_t *pg, const int64_t *pv, int64_t P, double *vals);

/* ---- the JSON scanner (scan.c) --------------------------------------------------------------- */
enum { SEG_NONE = 0, SEG_STRING, SEG_LIST, SEG_POLYGONS, SEG_OTHER };
enum { /* flags of an element */
       E_IMG = 1, E_CAT = 2, E_SCORE = 4, E_BOX = 8, /* a value of the accepted kind */
       E_HAS_BOX = 16,                               /* a "bbox" other than null */
       E_BAD = 32, /* not an object, or a required value of another kind: the reader explains */
       E_ESCAPED = 64, /* a counts string with JSON escapes */
       E_SEGKEY = 128  /* a "segmentation" key (null included) */
};
enum { MODE_OPEN, MODE_FIRST, MODE_ELEMENT, MODE_AFTER, MODE_CLOSED }; /* where a scan is */
typedef struct {
    /* per element */
    Vec img, cat;     /* int64 */
    Vec score, box;   /* double, 4 doubles */
    Vec flags, kind;  /* uint8: E_* flags, SEG_* kind */
    Vec span;         /* int64 x 2: the element's bytes (relative to the text scanned) */
    Vec seg;          /* int64 x 6: the segmentation's bytes, its counts string's bytes (or
                         first / number of polygons / counts in ``num``), h, w */
    /* polygons and uncompressed counts of the elements, in order */
    Vec coords;       /* double */
    Vec poly_off;     /* int64: polygon k is coords[poly_off[k]..poly_off[k + 1]) */
    Vec num;          /* int64: uncompressed counts */
    int64_t any_box, any_seg;
} Scan;

enum { SCAN_DONE = 0, SCAN_MORE = 1, SCAN_BAD = -1 };
/* Scan the text[0..len) of a results array, from where *mode says: MODE_OPEN before its '[',
 * MODE_FIRST before its first element (or ']'), MODE_ELEMENT before an element, MODE_AFTER
 * after one; *mode is updated. SCAN_DONE: the array was closed and only white space followed;
 * SCAN_MORE: the text ended first (*pos: where to go on with more text; an element cut by the
 * end of the text starts again there, unless ``final``); SCAN_BAD: not valid JSON at byte *pos
 * (*why: the reason). Elements are appended to ``out``. */
int scan_results(const char *text, int64_t len, int *mode, int final, Scan *out, int64_t *pos,
                 const char **why);
void scan_free(Scan *s);

/* ---- matching and accumulation (match.c, accumulate.c) --------------------------------------- */
int match_cells(const int64_t *cell, int64_t C, const double *thr, int64_t T, const double *dbox,
                const double *gbox, const int64_t *ioff, const double *ival, const uint8_t *gig,
                const uint8_t *gnz, const uint8_t *dmask, int64_t A, int64_t n, uint8_t *tp,
                uint8_t *fp);
int accumulate(const uint8_t *tp, const uint8_t *fp, const int64_t *order, const int64_t *bounds,
               int64_t K, const int64_t *num_gt, int64_t A, int64_t T, const double *rec_thrs,
               int64_t R, double *precision, double *recall);
#endif
