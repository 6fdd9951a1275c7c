/* lvis-api's LVISEval.accumulate for groups of detections.
 *
 * Group k is order[bounds[k] .. bounds[k + 1]) in accumulation order; tp / fp (n, A, T): true /
 * false positives (neither: ignored). For every group and column w = a T + t with ground truth:
 * the running true / false positive counts, recall tp / num_gt, precision tp / (fp + tp + eps),
 * its envelope from the end, read at the first position whose recall reaches each threshold (0
 * past the end); recall: the last one (0 without detections). precision (T, R, K, A) and recall
 * (T, K, A) are left as they are where a group has no ground truth (lvis-api: -1).
 *
 * Only the precisions at true positives are kept: recall first reaches a threshold at a true
 * positive (or at the first detection, for threshold 0), and precision rises only at true
 * positives, so the envelope there is the maximum over the true positives from there on. */
#include "core.h"

#include <float.h>
#include <stdlib.h>

int accumulate(const uint8_t *tp, const uint8_t *fp, const int64_t *order, const int64_t *bounds,
               int64_t K, const int64_t *num_gt, int64_t A, int64_t T, const double *rt,
               int64_t R, double *prec, double *recall) {
    int64_t W = A * T, most = 0;
    for (int64_t k = 0; k < K; k++) {
        int64_t tot = 0, nd = bounds[k + 1] - bounds[k];
        for (int64_t w = 0; w < W; w++) {
            int64_t g = num_gt[k * A + w / T];
            tot += g < nd ? (g > 0 ? g : 0) : nd;
        }
        most = tot > most ? tot : most;
    }
    double *pr = malloc(sizeof(double) * (size_t)(most + 1));
    int64_t *cnt = calloc((size_t)(4 * W + 1), sizeof(int64_t));
    if (!pr || !cnt) {
        free(pr);
        free(cnt);
        return -1;
    }
    const double eps = DBL_EPSILON; /* np.spacing(1) */
    for (int64_t k = 0; k < K; k++) {
        const int64_t *ord = order + bounds[k];
        int64_t nd = bounds[k + 1] - bounds[k];
        int64_t *tps = cnt, *fps = cnt + W, *start = cnt + 2 * W, *ng = cnt + 3 * W, pos = 0;
        for (int64_t w = 0; w < W; w++) { /* column w's true positives: pr[start[w] ..] */
            ng[w] = num_gt[k * A + w / T];
            tps[w] = fps[w] = 0;
            start[w] = pos;
            pos += ng[w] < nd ? (ng[w] > 0 ? ng[w] : 0) : nd;
        }
        for (int64_t i = 0; i < nd; i++) {
            const uint8_t *trow = tp + ord[i] * W, *frow = fp + ord[i] * W;
            for (int64_t w = 0; w < W; w++) {
                fps[w] += frow[w];
                if (trow[w]) {
                    int64_t t = ++tps[w];
                    if (t <= ng[w]) /* more cannot raise recall: never read */
                        pr[start[w] + t - 1] = (double)t / ((double)fps[w] + (double)t + eps);
                }
            }
        }
        for (int64_t w = 0; w < W; w++) {
            if (ng[w] <= 0)
                continue;
            int64_t a = w / T, t = w % T, stride = K * A; /* precision[t, r, k, a] */
            double *out = prec + t * R * stride + k * A + a, *p = pr + start[w];
            double dng = (double)ng[w];
            int64_t m = tps[w] < ng[w] ? tps[w] : ng[w], j = 0;
            recall[t * K * A + k * A + a] = nd ? (double)tps[w] / dng : 0.0;
            for (int64_t i = m - 1; i > 0; i--)
                if (p[i] > p[i - 1])
                    p[i - 1] = p[i];
            for (int64_t r = 0; r < R; r++) { /* the least j with j / ng >= rt[r] */
                while ((double)j / dng < rt[r] && j <= m)
                    j++;
                out[r * stride] = nd == 0 || j > m ? 0.0 : j == 0 ? (m ? p[0] : 0.0) : p[j - 1];
            }
        }
    }
    free(pr);
    free(cnt);
    return 0;
}
