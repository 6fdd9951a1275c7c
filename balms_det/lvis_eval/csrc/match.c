/* lvis-api's greedy matching (LVISEval.evaluate_img) of (image, category) cells.
 *
 * cell[4 c ..]: first detection, detections, first ground truth, ground truth of cell c
 * (detections in score order). For every area range a and threshold t: each detection takes
 * the ground truth not yet taken with the highest IoU >= thr[t] (the last one among equal IoUs),
 * the regular ground truth (not ignored in a) before the ignored, in file order within each.
 * IoUs: boxes (dbox, gbox) or, where dbox is NULL, detection j's IoUs with its cell's ground
 * truth at ival[ioff[j] ..]. Then lvis-api's true and false positives (n, A, T): a detection
 * matched to ignored ground truth is neither; one matched to ground truth of id 0 counts as
 * unmatched; an unmatched one is a false positive unless dmask (its area outside the range, or
 * its category not exhaustively annotated in its image). Every detection is written. */
#include "core.h"

#include <stdlib.h>
#include <string.h>

int match_cells(const int64_t *cell, int64_t C, const double *thr, int64_t T, const double *dbox,
                const double *gbox, const int64_t *ioff, const double *ival, const uint8_t *gig,
                const uint8_t *gnz, const uint8_t *dmask, int64_t A, int64_t n, uint8_t *tp,
                uint8_t *fp) {
    double *iou = NULL;
    int64_t *order = NULL, cap = 0;
    char *taken = NULL;
    for (int64_t d = 0; d < n; d++) /* unmatched */
        for (int64_t a = 0; a < A; a++) {
            memset(tp + (d * A + a) * T, 0, (size_t)T);
            memset(fp + (d * A + a) * T, dmask[d * A + a] ? 0 : 1, (size_t)T);
        }
    for (int64_t c = 0; c < C; c++) {
        int64_t d0 = cell[4 * c], M = cell[4 * c + 1], g0 = cell[4 * c + 2], G = cell[4 * c + 3];
        if (M * G > cap || G > cap) {
            cap = 2 * (M * G > G ? M * G : G) + 16;
            free(iou);
            free(order);
            free(taken);
            iou = malloc(sizeof(double) * (size_t)cap);
            order = malloc(sizeof(int64_t) * (size_t)cap);
            taken = malloc((size_t)cap);
            if (!iou || !order || !taken)
                break;
        }
        for (int64_t i = 0; i < M; i++)
            for (int64_t k = 0; k < G; k++)
                iou[i * G + k] = dbox ? box_iou(dbox + 4 * (d0 + i), gbox + 4 * (g0 + k))
                                      : ival[ioff[d0 + i] + k];
        for (int64_t a = 0; a < A; a++) {
            int64_t nreg, p = 0; /* regular ground truth first, then the ignored */
            for (int64_t k = 0; k < G; k++)
                if (!gig[(g0 + k) * A + a])
                    order[p++] = k;
            nreg = p;
            for (int64_t k = 0; k < G; k++)
                if (gig[(g0 + k) * A + a])
                    order[p++] = k;
            for (int64_t t = 0; t < T; t++) {
                memset(taken, 0, (size_t)G);
                for (int64_t i = 0; i < M; i++) {
                    double best = thr[t];
                    int64_t m = -1;
                    const double *row = iou + i * G;
                    for (int64_t q = 0; q < G; q++) {
                        int64_t k = order[q];
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
    int ok = !cap || (iou && order && taken);
    free(iou);
    free(order);
    free(taken);
    return ok ? 0 : -1;
}
