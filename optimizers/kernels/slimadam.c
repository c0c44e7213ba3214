/* SlimAdam's step on CPU float32 tensors, every tensor of a step in one call.
 *
 * The same step as optbench.optimizers.slimadam (see its docstring). A tensor is seen as
 * (outer, mid, inner) with its second moment averaged over mid (one value per (outer, inner));
 * a tensor kept full has mid = inner = 1 and one second-moment value per element. The work is cut
 * into items of whole (outer, column range) slabs, and each item, per outer index:
 *   sums g*g over mid for its columns (vectorized over columns, or over mid with 16 partial sums
 *   when inner = 1), updates v there and its denominator sqrt(v)/sqrt(1-b2^t) + eps,
 *   then in one pass over the slab: m = b1*m + (1-b1)*g; p = p*(1 - lr*wd) - (m / denom) * lr/(1-b1^t).
 * A slab's gradient is read twice, the second time from cache when the slab fits in it. Float
 * operations follow the torch step's order, without fused multiply-adds (-ffp-contract=off);
 * the sums over mid are added in another order than torch's, so v agrees to float rounding. */
#include <math.h>
#include <stdint.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

typedef struct {
    int64_t outer, mid, inner; /* p as (outer, mid, inner); v as (outer, inner) */
    float *p;
    const float *g;
    float *m;                  /* exp_avg, p's shape */
    float *v;                  /* exp_avg_sq: (outer, inner), or p's shape when full */
    int64_t full;              /* 1: v is full size (Adam); then mid = inner = 1 */
    int64_t group;             /* which sgroup */
} stensor;

typedef struct {
    float b1, one_minus_b1, b2, one_minus_b2, eps, step_size, bc2_sqrt, decay;
} sgroup;

#define COLS 2048 /* columns per item at most (the per-item buffers live on the stack) */

/* One item: outer indices [o0, o1), columns [c0, c1). */
static void slab_step(const stensor *t, const sgroup *gr, int64_t o0, int64_t o1, int64_t c0, int64_t c1) {
    const int64_t mid = t->mid, inner = t->inner, width = c1 - c0;
    const float b1 = gr->b1, a1 = gr->one_minus_b1, b2 = gr->b2, a2 = gr->one_minus_b2, eps = gr->eps;
    const float step = gr->step_size, bc = gr->bc2_sqrt, decay = gr->decay;
    if (t->full) { /* Adam on elements [o0, o1) */
        float *restrict p = t->p, *restrict m = t->m, *restrict v = t->v;
        const float *restrict g = t->g;
        for (int64_t i = o0; i < o1; i++) {
            float gi = g[i];
            float mi = m[i] * b1 + gi * a1;
            float vi = v[i] * b2 + (gi * gi) * a2;
            m[i] = mi;
            v[i] = vi;
            p[i] = p[i] * decay - (mi / (sqrtf(vi) / bc + eps)) * step;
        }
        return;
    }
    float acc[COLS], denom[COLS];
    for (int64_t o = o0; o < o1; o++) {
        const float *restrict g = t->g + o * mid * inner;
        float *restrict p = t->p + o * mid * inner, *restrict m = t->m + o * mid * inner;
        float *restrict v = t->v + o * inner;
        if (inner == 1) { /* a row: 16 partial sums, added pairwise at the end */
            float part[16] = {0};
            int64_t r = 0;
            for (; r + 16 <= mid; r += 16)
                for (int u = 0; u < 16; u++) part[u] = part[u] + g[r + u] * g[r + u];
            float sum = 0.0f;
            for (; r < mid; r++) sum = sum + g[r] * g[r];
            for (int w = 8; w >= 1; w /= 2)
                for (int u = 0; u < w; u++) part[u] = part[u] + part[u + w];
            acc[0] = part[0] + sum;
        } else {
            for (int64_t c = 0; c < width; c++) acc[c] = 0.0f;
            for (int64_t r = 0; r < mid; r++) {
                const float *restrict row = g + r * inner + c0;
                for (int64_t c = 0; c < width; c++) acc[c] = acc[c] + row[c] * row[c];
            }
        }
        for (int64_t c = 0; c < width; c++) {
            float vi = v[c0 + c] * b2 + (acc[c] / (float)mid) * a2;
            v[c0 + c] = vi;
            denom[c] = sqrtf(vi) / bc + eps;
        }
        if (inner == 1) {
            const float d = denom[0];
            for (int64_t r = 0; r < mid; r++) {
                float mi = m[r] * b1 + g[r] * a1;
                m[r] = mi;
                p[r] = p[r] * decay - (mi / d) * step;
            }
        } else {
            for (int64_t r = 0; r < mid; r++) {
                const int64_t at = r * inner + c0;
                for (int64_t c = 0; c < width; c++) {
                    float mi = m[at + c] * b1 + g[at + c] * a1;
                    m[at + c] = mi;
                    p[at + c] = p[at + c] * decay - (mi / denom[c]) * step;
                }
            }
        }
    }
}

#define ITEM 32768 /* elements per item, about */

/* The items of tensor t: (o0, o1, c0, c1) rows of ``out`` (when not NULL); returns their count. */
static int64_t items_of(const stensor *t, int64_t *out) {
    int64_t count = 0;
    if (t->full) {
        for (int64_t o = 0; o < t->outer; o += 4 * ITEM, count++)
            if (out) {
                int64_t *r = out + 4 * count;
                r[0] = o;
                r[1] = o + 4 * ITEM < t->outer ? o + 4 * ITEM : t->outer;
                r[2] = 0;
                r[3] = 1;
            }
        return count;
    }
    /* Whole rows (up to COLS columns) per item: a fan-out matrix's column sums then read each row
     * contiguously, and its second pass finds the slab in the last-level cache. Narrower column
     * strips, which would split one matrix between threads, read rows piecemeal and were slower. */
    int64_t width = t->inner < COLS ? t->inner : COLS;
    int64_t per_slab = t->mid * width, rows = per_slab >= ITEM ? 1 : ITEM / per_slab;
    for (int64_t c = 0; c < t->inner; c += width)
        for (int64_t o = 0; o < t->outer; o += rows, count++)
            if (out) {
                int64_t *r = out + 4 * count;
                r[0] = o;
                r[1] = o + rows < t->outer ? o + rows : t->outer;
                r[2] = c;
                r[3] = c + width < t->inner ? c + width : t->inner;
            }
    return count;
}

/* One SlimAdam step of ``count`` tensors on ``threads`` threads. ``work`` has room for 4 int64
 * per item (optbench_slimadam_items gives the count); returns 0. */
int64_t optbench_slimadam_items(int64_t count, const stensor *tensors) {
    int64_t n = 0;
    for (int64_t t = 0; t < count; t++) n += items_of(&tensors[t], NULL);
    return n;
}

int optbench_slimadam_step(int64_t count, const stensor *tensors, const sgroup *groups, int64_t *work,
                           int64_t threads) {
    int64_t n = 0;
    int64_t *owner = work; /* first pass: items, then their tensors after them */
    for (int64_t t = 0; t < count; t++) n += items_of(&tensors[t], work + 4 * n);
    owner = work + 4 * n;
    for (int64_t t = 0, i = 0; t < count; t++)
        for (int64_t k = items_of(&tensors[t], NULL); k > 0; k--) owner[i++] = t;
#ifdef _OPENMP
#pragma omp parallel for schedule(dynamic, 1) num_threads(threads)
#endif
    for (int64_t i = 0; i < n; i++) {
        const stensor *t = &tensors[owner[i]];
        const int64_t *r = work + 4 * i;
        slab_step(t, &groups[t->group], r[0], r[1], r[2], r[3]);
    }
    return 0;
}
