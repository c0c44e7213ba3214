/* SMMF's step on CPU float32 tensors, every tensor of a step in one call.
 *
 * The same step as optbench.optimizers.smmf (see its docstring). A factorized tensor is its
 * (rows, cols) square-matricized view, rows >= cols, with rank-1 factors (r_M, c_M), (r_V, c_V)
 * and signs packed 32 rows to an int32 word (bit i of word (w, c) is element (32w + i, c)).
 *
 * The tensors go in batches of consecutive tensors whose per-item column sums fit in the caller's
 * scratch (``cap`` floats, at least what the largest tensor needs: about 1/4 byte per element
 * of it), and per batch:
 *   phase 1, per item of whole 32-row groups (in parallel): for each element, with the old factors,
 *     M = (r_M c_M * sign) * b1 + g * (1 - b1);  V = (r_V c_V) * b2 + (g * g) * (1 - b2);
 *     the new sign bit (M > 0); p = p * decay - (M / (sqrt(V) + eps)) * lr;
 *     and the sums of |M| and V along each row (written over r_M and r_V: a row's factor is read
 *     by its own item only) and, per item, along each column (into the scratch).
 *   phase 2, per tensor: the column sums over items, in item order, and c = colsum / sum(colsum)
 *     (the closed-form rank-1 NNMF of a matrix with rows >= cols keeps the row sums as they are).
 * Each element's data is read and written once: the gradient, the parameter and a bit of sign.
 * Plain tensors (kept with full moments) take Adam's update without bias correction. Float
 * operations follow the torch step's order without fused multiply-adds (-ffp-contract=off); the
 * sums are added in another order than torch's, so the factors agree to float rounding. */
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

typedef struct {
    int64_t rows, cols;  /* the matricized view (plain tensors: rows = numel, cols = 1) */
    float *p;
    const float *g;
    float *row_m, *col_m, *row_v, *col_v; /* factored */
    int32_t *sign;                        /* factored: ceil(rows/32) x cols words */
    float *exp_avg, *exp_avg_sq;          /* plain */
    int64_t plain;
    int64_t l2_term;     /* weight_decay_mode "adam": g + l2 * p is what the moments see */
    int64_t group_rows;  /* rows per item (a multiple of 32); plain: elements per item */
    int64_t first_item;  /* this tensor's first item, over every tensor */
    int64_t group;       /* which fgroup */
} ftensor;

typedef struct {
    float b1, one_minus_b1, b2, one_minus_b2, eps, decay, lr, l2;
} fgroup;

static inline int64_t items_of(const ftensor *t) {
    return (t->rows + t->group_rows - 1) / t->group_rows;
}

static void plain_item(const ftensor *t, const fgroup *gr, int64_t lo, int64_t hi) {
    float *restrict p = t->p, *restrict m = t->exp_avg, *restrict v = t->exp_avg_sq;
    const float *restrict g = t->g;
    const float b1 = gr->b1, a1 = gr->one_minus_b1, b2 = gr->b2, a2 = gr->one_minus_b2;
    const float eps = gr->eps, decay = gr->decay, lr = gr->lr, l2 = gr->l2;
    const int l2_term = (int)t->l2_term;
    for (int64_t i = lo; i < hi; i++) {
        float gi = l2_term ? g[i] + p[i] * l2 : g[i];
        float mi = m[i] * b1 + gi * a1;
        float vi = v[i] * b2 + (gi * gi) * a2;
        m[i] = mi;
        v[i] = vi;
        p[i] = p[i] * decay - (mi / (sqrtf(vi) + eps)) * lr;
    }
}

/* Element j of the row: M and V from the old factors, its sign bit, its parameter and its column
 * sums, with |M| and V added to the row sums ROW_M and ROW_V. A macro rather than a function, so
 * that the loops keep their restrict pointers and vectorize. */
#define FACTORED_ELEMENT(j, ROW_M, ROW_V)                                    \
    do {                                                                     \
        float gj = l2_term ? g[j] + p[j] * l2 : g[j];                        \
        float s = ((old[j] >> bit) & 1u) ? 1.0f : -1.0f;                     \
        float mj = ((rm * cm[j]) * s) * b1 + gj * a1;                        \
        float vj = (rv * cv[j]) * b2 + (gj * gj) * a2;                       \
        words[j] |= (uint32_t)(mj > 0.0f) << bit;                            \
        float am = fabsf(mj);                                                \
        ROW_M = ROW_M + am;                                                  \
        ROW_V = ROW_V + vj;                                                  \
        sum_m[j] = sum_m[j] + am;                                            \
        sum_v[j] = sum_v[j] + vj;                                            \
        p[j] = p[j] * decay - (mj / (sqrtf(vj) + eps)) * lr;                 \
    } while (0)

/* Rows [r0, r1) of factored tensor t (r0 a multiple of 32); ``colsums`` gets 2*cols floats:
 * this item's column sums of |M|, then of V. */
static void factored_item(const ftensor *t, const fgroup *gr, int64_t r0, int64_t r1, float *restrict colsums,
                          uint32_t *restrict words) {
    const int64_t cols = t->cols;
    const float b1 = gr->b1, a1 = gr->one_minus_b1, b2 = gr->b2, a2 = gr->one_minus_b2;
    const float eps = gr->eps, decay = gr->decay, lr = gr->lr, l2 = gr->l2;
    const int l2_term = (int)t->l2_term;
    const float *restrict cm = t->col_m, *restrict cv = t->col_v;
    float *restrict sum_m = colsums, *restrict sum_v = colsums + cols;
    for (int64_t c = 0; c < cols; c++) sum_m[c] = sum_v[c] = 0.0f;
    for (int64_t w0 = r0; w0 < r1; w0 += 32) {
        uint32_t *restrict old = (uint32_t *)t->sign + (w0 / 32) * cols;
        for (int64_t c = 0; c < cols; c++) words[c] = 0;
        int64_t last = w0 + 32 < r1 ? w0 + 32 : r1;
        for (int64_t r = w0; r < last; r++) {
            const int bit = (int)(r - w0);
            const float rm = t->row_m[r], rv = t->row_v[r];
            float *restrict p = t->p + r * cols;
            const float *restrict g = t->g + r * cols;
            float part_m[16] = {0}, part_v[16] = {0};
            int64_t c = 0;
            for (; c + 16 <= cols; c += 16) /* 16 partial row sums: the loop vectorizes */
                for (int u = 0; u < 16; u++) FACTORED_ELEMENT(c + u, part_m[u], part_v[u]);
            float tail_m = 0.0f, tail_v = 0.0f;
            for (; c < cols; c++) FACTORED_ELEMENT(c, tail_m, tail_v);
            for (int w = 8; w >= 1; w /= 2)
                for (int u = 0; u < w; u++) {
                    part_m[u] = part_m[u] + part_m[u + w];
                    part_v[u] = part_v[u] + part_v[u + w];
                }
            t->row_m[r] = part_m[0] + tail_m; /* the new row factors: this row's sums */
            t->row_v[r] = part_v[0] + tail_v;
        }
        memcpy(old, words, sizeof(uint32_t) * cols);
    }
}
#undef FACTORED_ELEMENT

/* Floats of column sums tensor t's items need: 2*cols per item (none for a plain tensor). */
static inline int64_t colsum_floats(const ftensor *t) {
    return t->plain ? 0 : items_of(t) * 2 * t->cols;
}

/* One SMMF step of ``count`` tensors. ``colsums``: ``cap`` floats, at least the most any one
 * tensor needs (``colsum_floats``); the tensors go in batches of consecutive tensors whose column
 * sums fit in it, one batch after another, so that the scratch stays bounded however large the
 * model (a batch of many small tensors still spreads over the threads). ``words``: ``threads``
 * rows of ``word_row`` uint32 (at least the largest cols). Returns 0, 1 when a tensor's column
 * sums exceed ``cap`` or the batch list cannot be allocated. */
int optbench_smmf_step(int64_t count, const ftensor *tensors, const fgroup *groups, int64_t total_items,
                       float *colsums, int64_t cap, uint32_t *words, int64_t word_row, int64_t threads) {
    /* batch b: tensors [start[b], start[b+1]); offset[t]: where tensor t's column sums begin */
    int64_t *start = malloc(sizeof(int64_t) * (2 * count + 1)), *offset = start + count + 1, batches = 0;
    if (!start) return 1;
    for (int64_t t = 0, used = 0; t < count; t++) {
        int64_t need = colsum_floats(&tensors[t]);
        if (need > cap) {
            free(start);
            return 1;
        }
        if (t == 0 || used + need > cap) {
            start[batches++] = t;
            used = 0;
        }
        offset[t] = used;
        used += need;
    }
    start[batches] = count;
#ifdef _OPENMP
#pragma omp parallel num_threads(threads)
#endif
    {
#ifdef _OPENMP
        uint32_t *mine = words + word_row * omp_get_thread_num();
#else
        uint32_t *mine = words;
#endif
        int64_t t = 0;
        for (int64_t b = 0; b < batches; b++) {
            const int64_t first = tensors[start[b]].first_item;
            const int64_t end = start[b + 1] < count ? tensors[start[b + 1]].first_item : total_items;
#ifdef _OPENMP
#pragma omp for schedule(dynamic, 1)
#endif
            for (int64_t i = first; i < end; i++) {
                while (t + 1 < count && tensors[t + 1].first_item <= i) t++; /* i only grows, per thread */
                const ftensor *x = &tensors[t];
                int64_t k = i - x->first_item, lo = k * x->group_rows;
                int64_t hi = lo + x->group_rows < x->rows ? lo + x->group_rows : x->rows;
                if (x->plain) plain_item(x, &groups[x->group], lo, hi);
                else factored_item(x, &groups[x->group], lo, hi, colsums + offset[t] + k * 2 * x->cols, mine);
            }
#ifdef _OPENMP
#pragma omp for schedule(dynamic, 1)
#endif
            for (int64_t j = start[b]; j < start[b + 1]; j++) {
                const ftensor *x = &tensors[j];
                if (x->plain) continue;
                /* the column sums over this tensor's items, in item order; c = colsum / sum(colsum) */
                const int64_t cols = x->cols, items = items_of(x);
                float *targets[2] = {x->col_m, x->col_v};
                for (int which = 0; which < 2; which++) {
                    float *c = targets[which];
                    for (int64_t q = 0; q < cols; q++) c[q] = 0.0f;
                    for (int64_t it = 0; it < items; it++) {
                        const float *part = colsums + offset[j] + it * 2 * cols + which * cols;
                        for (int64_t q = 0; q < cols; q++) c[q] = c[q] + part[q];
                    }
                    float total = 0.0f;
                    for (int64_t q = 0; q < cols; q++) total = total + c[q];
                    if (!(total >= FLT_MIN)) total = FLT_MIN; /* clamp_min(tiny): zero stays zero */
                    for (int64_t q = 0; q < cols; q++) c[q] = c[q] / total;
                }
            }
        }
    }
    free(start);
    return 0;
}
