/* IoUs of (detection, ground truth) pairs: boxes as pycocotools' bbIou, masks as its rleIou
 * (iscrowd 0; lvis-api does not read iscrowd): integer intersection over integer union. */
#include "core.h"

#include <math.h>
#include <stdlib.h>

double box_iou(const double *d, const double *g) { /* the same operations in the same order */
    double w = fmin(d[2] + d[0], g[2] + g[0]) - fmax(d[0], g[0]);
    if (w <= 0)
        return 0.0;
    double h = fmin(d[3] + d[1], g[3] + g[1]) - fmax(d[1], g[1]);
    if (h <= 0)
        return 0.0;
    double i = w * h;
    return i / (d[2] * d[3] + g[2] * g[3] - i);
}

int mask_ious(const uint32_t *dc, const int64_t *doff, int64_t m, const uint32_t *gc,
              const int64_t *goff, int64_t G, const int64_t *g_first, const int64_t *g_num,
              const int64_t *out_off, double *out) {
    Extent *gx = malloc(sizeof(Extent) * (size_t)(G + 1));
    char *done = calloc((size_t)(G + 1), 1);
    if (!gx || !done) {
        free(gx);
        free(done);
        return -1;
    }
    for (int64_t j = 0; j < m; j++) {
        const uint32_t *c = dc + doff[j];
        int64_t nc = doff[j + 1] - doff[j];
        Extent xd = rle_extent(c, nc);
        for (int64_t k = 0; k < g_num[j]; k++) {
            int64_t g = g_first[j] + k;
            const uint32_t *gcn = gc + goff[g];
            int64_t ng = goff[g + 1] - goff[g];
            if (!done[g]) {
                gx[g] = rle_extent(gcn, ng);
                done[g] = 1;
            }
            uint64_t inter = rle_intersection(c, nc, xd, gcn, ng, gx[g]);
            out[out_off[j] + k] =
                inter ? (double)(uint32_t)inter / (double)(uint32_t)(xd.area + gx[g].area - inter)
                      : 0.0;
        }
    }
    free(gx);
    free(done);
    return 0;
}
