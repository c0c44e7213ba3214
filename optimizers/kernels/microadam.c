/* MicroAdam's step on CPU float32 tensors, every tensor of a step in one call.
 *
 * The same step as optbench.optimizers.microadam's torch code (see its docstring), arranged so
 * that each element's data is read from memory as few times as the algorithm allows:
 *
 *   phase 1, per top-k block (in parallel over every tensor's blocks):
 *     a = g + dequant(e) for the block, into a per-thread buffer;
 *     the k largest |a| by a min-heap of size k (one scan; ties keep the earlier element);
 *     their block-local indices and bf16 values into the ring slot;
 *     p *= 1 - lr*wd; then the window's two weighted sums on the block's support, in per-thread
 *     buffers kept zero off it, and p -= lr * m_hat / (sqrt(v_hat) + eps) there, once per index.
 *   phase 2, per quantization block (in parallel):
 *     the residual g + dequant(e) with the chosen entries zeroed, recomputed (reading g again
 *     costs less than writing and reading a dense buffer), with its range in the same pass, its
 *     bf16 min and max, and its 4-bit codes, written over the old ones (phase 1 read them, and
 *     no other block reads them).
 *
 * Every float operation that decides the window and the error is the torch code's, in its
 * order and with its roundings (no fused multiply-adds: built with -ffp-contract=off), so the
 * error codes and the window come out equal to the eager step's, except where |a| ties at the
 * k-th place (torch.topk's choice among ties is unspecified). The update differs by a few ulps:
 * it multiplies by the reciprocals of the bias corrections where torch divides, and its sqrt is
 * correctly rounded where torch's CPU sqrt is not. The build and its use:
 * optbench.optimizers._native. */
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif
#ifdef __AVX512F__
#include <immintrin.h>
#endif

typedef struct {
    int64_t n;           /* elements */
    float *p;            /* the parameter, flat */
    const float *g;      /* its gradient, flat */
    uint8_t *codes;      /* ceil(n/2) bytes: element 2j in the low nibble of byte j */
    uint16_t *emin;      /* bf16 minimum of each quantization block */
    uint16_t *emax;      /* bf16 maximum */
    void *idx;           /* (m, K) block-local indices, int16 or int32 */
    uint16_t *vals;      /* (m, K) bf16 values */
    int64_t K;           /* window width: full*k + k_rest */
    int64_t full, B, k, rest, k_rest; /* top-k layout */
    int64_t qbs;         /* quantization block size (even) */
    int64_t idx32;       /* 1: int32 indices, 0: int16 */
    int64_t group;       /* which per-step numbers (mgroup) this tensor uses */
} mtensor;

typedef struct {
    const float *w1;     /* (m,) (1-b1) b1^age per ring slot, 0 for slots not written yet */
    const float *w2;     /* (m,) the same for b2 */
    int64_t m;           /* window length */
    int64_t slot;        /* the ring slot this step writes */
    float bc1, bc2, eps, decay, lr, pad;
} mgroup;

static inline float bf16_to_float(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static inline uint16_t float_to_bf16(float f) { /* round to nearest even, as c10::BFloat16 */
    if (isnan(f)) return 0x7FC0;
    uint32_t u;
    memcpy(&u, &f, 4);
    u += ((u >> 16) & 1) + 0x7FFF;
    return (uint16_t)(u >> 16);
}

/* The inverse of the order-preserving key bits ^ ((bits >> 31, arithmetic) >>> 1). */
static inline float key_to_float(int32_t key) {
    uint32_t u = (uint32_t)key ^ ((uint32_t)(key >> 31) >> 1);
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static inline int64_t get_index(const mtensor *t, int64_t pos) {
    return t->idx32 ? ((const int32_t *)t->idx)[pos] : ((const int16_t *)t->idx)[pos];
}

static inline void set_index(const mtensor *t, int64_t pos, int64_t value) {
    if (t->idx32) ((int32_t *)t->idx)[pos] = (int32_t)value;
    else ((int16_t *)t->idx)[pos] = (int16_t)value;
}

/* out[j] = g[lo+j] + dequant(e)[lo+j] for j < len (lo even): code * ((hi - lo) / 15) + lo per
 * quantization block, a byte (two elements) at a time so that the loop vectorizes. */
static void error_plus_grad(const mtensor *t, int64_t lo, int64_t len, float *restrict out) {
    int64_t i = lo, end = lo + len;
    const float *restrict g = t->g;
    const uint8_t *restrict codes = t->codes;
    while (i < end) {
        int64_t q = i / t->qbs, seg_end = (q + 1) * t->qbs;
        if (seg_end > end) seg_end = end;
        float qlo = bf16_to_float(t->emin[q]), qhi = bf16_to_float(t->emax[q]);
        float scale = (qhi - qlo) / 15.0f;
        int64_t pairs = (seg_end - i) / 2;
        const uint8_t *c = codes + i / 2;
        const float *gi = g + i;
        float *o = out + (i - lo);
        for (int64_t j = 0; j < pairs; j++) {
            uint8_t byte = c[j];
            o[2 * j] = gi[2 * j] + ((float)(byte & 15) * scale + qlo);
            o[2 * j + 1] = gi[2 * j + 1] + ((float)(byte >> 4) * scale + qlo);
        }
        i += 2 * pairs;
        if (i < seg_end) { /* an odd segment end: the tensor's last element */
            out[i - lo] = g[i] + ((float)(codes[i >> 1] & 15) * scale + qlo);
            i++;
        }
    }
}

/* Composite keys: |x|'s key in the high half, the complement of the element's index in the
 * low half, so that a larger composite means a larger |x|, or the same |x| at an earlier index. */
static inline uint64_t composite(uint32_t key, int64_t j) {
    return ((uint64_t)key << 32) | (uint32_t)~(uint32_t)j;
}

/* Reorder c[0..n) so that its `want` largest values come first (any order): quickselect with a
 * median-of-three pivot. */
static void select_largest(uint64_t *c, int64_t n, int64_t want) {
    int64_t lo = 0, hi = n - 1;
    while (hi > lo) {
        int64_t mid = lo + (hi - lo) / 2;
        uint64_t a = c[lo], b = c[mid], d = c[hi];
        uint64_t pivot = a < b ? (b < d ? b : (a < d ? d : a)) : (a < d ? a : (b < d ? d : b));
        int64_t i = lo, j = hi;
        while (i <= j) { /* descending: values > pivot to the left */
            while (c[i] > pivot) i++;
            while (c[j] < pivot) j--;
            if (i <= j) {
                uint64_t tmp = c[i];
                c[i] = c[j];
                c[j] = tmp;
                i++;
                j--;
            }
        }
        if (want - 1 <= j) hi = j;
        else if (want - 1 >= i) lo = i;
        else return;
    }
}

#define STRIDE 16       /* the sample that sets the threshold: every STRIDE-th element */
#define SMALL 1024      /* blocks up to this size skip the sampling */
#define COARSE_SHIFT 20 /* first histogram: the exponent and the top 3 mantissa bits of |x| */
#define FINE_SHIFT 12   /* second histogram, inside the first's bucket: the next 8 bits */

/* The largest key threshold (a multiple of 2^FINE_SHIFT) that at least ``target`` of the sampled
 * keys reach, from a two-level histogram of the sample; 0 when the sample has fewer. */
static uint32_t sample_threshold(const uint32_t *bits, int64_t len, int64_t target) {
    uint32_t coarse[(0x7FFFFFFFu >> COARSE_SHIFT) + 1], fine[1u << (COARSE_SHIFT - FINE_SHIFT)];
    memset(coarse, 0, sizeof coarse);
    uint32_t top = 0;
    for (int64_t j = 0; j < len; j += STRIDE) {
        uint32_t bucket = (bits[j] & 0x7FFFFFFFu) >> COARSE_SHIFT;
        coarse[bucket]++;
        top = bucket > top ? bucket : top;
    }
    int64_t seen = 0, b = top; /* from the largest sampled bucket down */
    for (; b >= 0; b--) {
        if (seen + coarse[b] >= target) break;
        seen += coarse[b];
    }
    if (b < 0) return 0;
    memset(fine, 0, sizeof fine);
    for (int64_t j = 0; j < len; j += STRIDE) {
        uint32_t key = bits[j] & 0x7FFFFFFFu;
        if ((int64_t)(key >> COARSE_SHIFT) == b) fine[(key >> FINE_SHIFT) & ((1u << (COARSE_SHIFT - FINE_SHIFT)) - 1)]++;
    }
    int64_t f = (1 << (COARSE_SHIFT - FINE_SHIFT)) - 1;
    for (; f > 0; f--) {
        seen += fine[f];
        if (seen >= target) break;
    }
    return ((uint32_t)b << COARSE_SHIFT) | ((uint32_t)f << FINE_SHIFT);
}

/* Block-local indices of the kk largest |a[j]|, j < len, into out (in no particular order; among
 * equal |a| the earlier element wins). A sample of every STRIDE-th element sets a threshold that
 * about 2*kk elements pass; one pass collects them, and a quickselect on composite keys picks the
 * kk. If fewer than kk pass (a sample unlike its block), the sample's target doubles until
 * enough do (at worst every element passes). ``cand`` has room for len composites. */
static void top_k_abs(const float *restrict a, int64_t len, int64_t kk, uint64_t *restrict cand,
                      int32_t *restrict out) {
    const uint32_t *bits = (const uint32_t *)a;
    int sampled = len > SMALL && kk * 4 < len;
    int64_t target = (2 * kk + STRIDE - 1) / STRIDE, n;
    for (;;) {
        uint32_t threshold = sampled ? sample_threshold(bits, len, target) : 0;
        int64_t j = 0;
        n = 0;
#ifdef __AVX512F__
        /* 16 keys at a time: compare, compress the passing indices into place, advance */
        const __m512i low31 = _mm512_set1_epi32(0x7FFFFFFF), bar = _mm512_set1_epi32((int32_t)threshold);
        const __m512i sixteen = _mm512_set1_epi32(16);
        __m512i index = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
        int32_t *picked = (int32_t *)cand; /* indices first; made composites below */
        for (; j + 16 <= len; j += 16) {
            __m512i keys = _mm512_and_si512(_mm512_loadu_si512((const void *)(bits + j)), low31);
            __mmask16 pass = _mm512_cmpge_epu32_mask(keys, bar);
            _mm512_storeu_si512((void *)(picked + n), _mm512_maskz_compress_epi32(pass, index));
            n += __builtin_popcount((unsigned)pass);
            index = _mm512_add_epi32(index, sixteen);
        }
        for (int64_t q = n - 1; q >= 0; q--) /* in place, from the end: cand[q] is 8 bytes, picked[q] 4 */
            cand[q] = composite(bits[picked[q]] & 0x7FFFFFFFu, picked[q]);
#endif
        for (; j + 32 <= len; j += 32) { /* a vectorized compare into a bit mask, then its set bits */
            uint32_t mask = 0;
            for (int u = 0; u < 32; u++) mask |= (uint32_t)((bits[j + u] & 0x7FFFFFFFu) >= threshold) << u;
            while (mask) {
                int u = __builtin_ctz(mask);
                mask &= mask - 1;
                cand[n++] = composite(bits[j + u] & 0x7FFFFFFFu, j + u);
            }
        }
        for (; j < len; j++) {
            uint32_t key = bits[j] & 0x7FFFFFFFu;
            if (key >= threshold) cand[n++] = composite(key, j);
        }
        if (n >= kk || threshold == 0) break;
        target *= 2;
    }
    if (n > kk) select_largest(cand, n, kk);
    for (int64_t j = 0; j < kk; j++) out[j] = (int32_t)~(uint32_t)cand[j];
}

/* Where a thread's phase-1 scratch puts its buffers, for blocks of at most ``bmax`` elements
 * and ``kmax`` chosen: a (bmax), first and second (bmax each; zero between blocks), the chosen
 * indices (kmax, padded to even) and the candidates (bmax composites of 8 bytes). */
typedef struct {
    int64_t first, second, chosen, cand, floats;
} layout1;

static layout1 phase1_layout(int64_t bmax, int64_t kmax) {
    layout1 l;
    l.first = bmax;
    l.second = 2 * bmax;
    l.chosen = 3 * bmax;
    l.cand = l.chosen + kmax + (kmax & 1);
    l.cand += l.cand & 1; /* 8-byte aligned: rows are */
    l.floats = l.cand + 2 * bmax;
    return l;
}

/* Phase 1 for block b of tensor t; ``first`` and ``second`` are zero on entry and on return. */
static void block_step(const mtensor *t, const mgroup *gr, int64_t b, float *scratch, const layout1 *l) {
    int64_t start = b * t->B, len = b < t->full ? t->B : t->rest, kk = b < t->full ? t->k : t->k_rest;
    int64_t col0 = b * t->k, m = gr->m, K = t->K;
    float *a = scratch, *first = scratch + l->first, *second = scratch + l->second;
    int32_t *hi = (int32_t *)(scratch + l->chosen);
    uint64_t *cand = (uint64_t *)(scratch + l->cand);

    error_plus_grad(t, start, len, a);
    top_k_abs(a, len, kk, cand, hi);
    int64_t row = gr->slot * K + col0;
    for (int64_t j = 0; j < kk; j++) {
        set_index(t, row + j, hi[j]);
        t->vals[row + j] = float_to_bf16(a[hi[j]]);
    }

    float *p = t->p + start;
    if (gr->decay != 1.0f) {
        for (int64_t j = 0; j < len; j++) p[j] = p[j] * gr->decay;
    } else { /* read the block's parameters in order first: the update below touches most of their
              * cache lines in random order, which from memory costs a latency per line */
        float sink = 0.0f;
        for (int64_t j = 0; j < len; j += 16) sink += p[j];
        volatile float keep = sink;
        (void)keep;
    }

    /* The window's sums on the support, slot by slot in slot order (index_add_'s order), into
     * buffers that are zero outside the support. */
    for (int64_t s = 0; s < m; s++) {
        float w1 = gr->w1[s], w2 = gr->w2[s];
        for (int64_t j = 0; j < kk; j++) {
            int64_t pos = s * K + col0 + j, i = get_index(t, pos);
            float v = bf16_to_float(t->vals[pos]);
            first[i] = first[i] + v * w1;
            second[i] = second[i] + (v * v) * w2;
        }
    }
    /* The update, once per index: the first entry of an index uses its sums and zeroes them, so a
     * repeat of it (the same index chosen in another slot) finds zeros and changes nothing
     * (0 / (sqrt(0) + eps) = 0), and the buffers are zero again for the next block. */
    const float inv1 = 1.0f / gr->bc1, inv2 = 1.0f / gr->bc2, eps = gr->eps, lr = gr->lr;
    for (int64_t s = 0; s < m; s++)
        for (int64_t j = 0; j < kk; j++) {
            int64_t i = get_index(t, s * K + col0 + j);
            float f = first[i] * inv1;
            float denom = sqrtf(second[i] * inv2) + eps;
            p[i] = p[i] - (f / denom) * lr;
            first[i] = 0.0f;
            second[i] = 0.0f;
        }
}

static inline int32_t order_key(float x) { /* order-preserving: -0 sorts just below +0 */
    uint32_t u;
    memcpy(&u, &x, 4);
    return (int32_t)u ^ (int32_t)((uint32_t)((int32_t)u >> 31) >> 1);
}

static inline uint8_t code_of(float x, float qlo, float scale) {
    const float magic = 12582912.0f; /* 1.5 * 2^23: x + magic - magic rounds x half to even */
    float c = ((x - qlo) / scale + magic) - magic;
    c = c < 0.0f ? 0.0f : c;
    return (uint8_t)(int32_t)(c > 15.0f ? 15.0f : c);
}

/* Set (1) or clear (0) ``mask`` at the chosen entries of quantization block [lo, hi). */
static void mark_chosen(const mtensor *t, const mgroup *gr, int64_t lo, int64_t hi, uint8_t *mask, uint8_t value) {
    int64_t nblocks = t->full + (t->rest > 0);
    int64_t first_block = lo / t->B, last_block = (hi - 1) / t->B;
    if (last_block >= nblocks) last_block = nblocks - 1;
    for (int64_t b = first_block; b <= last_block; b++) {
        int64_t kk = b < t->full ? t->k : t->k_rest, row = gr->slot * t->K + b * t->k;
        for (int64_t j = 0; j < kk; j++) {
            int64_t i = b * t->B + get_index(t, row + j);
            if (i >= lo && i < hi) mask[i - lo] = value;
        }
    }
}

/* Phase 2 for quantization block q of tensor t: ``scratch`` holds min(qbs, n) floats, ``mask``
 * as many bytes, all zero on entry and on return. */
static void quant_block_step(const mtensor *t, const mgroup *gr, int64_t q, float *restrict scratch,
                             uint8_t *restrict mask) {
    int64_t lo = q * t->qbs, hi = lo + t->qbs;
    if (hi > t->n) hi = t->n;
    int64_t len = hi - lo;
    mark_chosen(t, gr, lo, hi, mask, 1);
    /* The residual (g + e, the chosen entries zeroed), and its range, in one pass. */
    error_plus_grad(t, lo, len, scratch);
    int32_t kmin = INT32_MAX, kmax = INT32_MIN;
    for (int64_t j = 0; j < len; j++) {
        float x = mask[j] ? 0.0f : scratch[j];
        scratch[j] = x;
        int32_t key = order_key(x);
        kmin = key < kmin ? key : kmin;
        kmax = key > kmax ? key : kmax;
    }
    mark_chosen(t, gr, lo, hi, mask, 0);
    uint16_t mn16 = float_to_bf16(key_to_float(kmin)), mx16 = float_to_bf16(key_to_float(kmax));
    t->emin[q] = mn16;
    t->emax[q] = mx16;
    float qlo = bf16_to_float(mn16), qhi = bf16_to_float(mx16);
    float scale = (qhi - qlo) / 15.0f;
    if (!(scale >= FLT_MIN)) scale = FLT_MIN; /* clamp_min(tiny) */
    uint8_t *restrict codes = t->codes + lo / 2;
    int64_t pairs = len / 2;
    for (int64_t j = 0; j < pairs; j++)
        codes[j] = (uint8_t)(code_of(scratch[2 * j], qlo, scale) | (code_of(scratch[2 * j + 1], qlo, scale) << 4));
    if (len % 2) codes[pairs] = code_of(scratch[len - 1], qlo, scale);
}

/* One MicroAdam step of ``count`` tensors. ``scratch``: ``threads`` rows of ``row`` floats
 * (even; at least phase1_layout's floats and every tensor's min(qbs, n)); the caller allocates
 * it, so that memory tracking sees it. Returns 0, 1 when the work list cannot be allocated, 2
 * when the scratch is too small. */
int optbench_microadam_step(int64_t count, const mtensor *tensors, const mgroup *groups, float *scratch,
                            int64_t row, int64_t threads) {
    int64_t blocks = 0, qblocks = 0, bmax = 1, kmax = 1, qmax = 1;
    for (int64_t t = 0; t < count; t++) {
        blocks += tensors[t].full + (tensors[t].rest > 0);
        qblocks += (tensors[t].n + tensors[t].qbs - 1) / tensors[t].qbs;
        bmax = tensors[t].B > bmax ? tensors[t].B : bmax;
        kmax = tensors[t].k > kmax ? tensors[t].k : kmax;
        int64_t q = tensors[t].qbs < tensors[t].n ? tensors[t].qbs : tensors[t].n;
        qmax = q > qmax ? q : qmax;
    }
    layout1 l = phase1_layout(bmax, kmax);
    /* phase 2: a quantization block's residual (qmax floats), then its mask (qmax bytes) */
    if (row < l.floats || row < qmax + (qmax + 3) / 4 || row % 2) return 2; /* the caller's scratch is too small */
    int64_t *work = malloc(sizeof(int64_t) * 2 * (blocks + qblocks));
    if (!work) return 1;
    int64_t *qwork = work + 2 * blocks, w = 0, qw = 0;
    for (int64_t t = 0; t < count; t++) {
        int64_t nb = tensors[t].full + (tensors[t].rest > 0);
        int64_t nq = (tensors[t].n + tensors[t].qbs - 1) / tensors[t].qbs;
        for (int64_t b = 0; b < nb; b++, w++) {
            work[2 * w] = t;
            work[2 * w + 1] = b;
        }
        for (int64_t q = 0; q < nq; q++, qw++) {
            qwork[2 * qw] = t;
            qwork[2 * qw + 1] = q;
        }
    }
#ifdef _OPENMP
#pragma omp parallel num_threads(threads)
#endif
    {
#ifdef _OPENMP
        float *mine = scratch + row * omp_get_thread_num();
#else
        float *mine = scratch;
#endif
        memset(mine + l.first, 0, sizeof(float) * 2 * bmax); /* first and second start at zero */
        uint8_t *mask = (uint8_t *)(mine + qmax);
#ifdef _OPENMP
#pragma omp for schedule(dynamic, 1)
#endif
        for (int64_t i = 0; i < blocks; i++) {
            const mtensor *t = &tensors[work[2 * i]];
            block_step(t, &groups[t->group], work[2 * i + 1], mine, &l);
        }
        memset(mask, 0, (size_t)qmax); /* over phase 1's buffers: zero it once the phase is done */
#ifdef _OPENMP
#pragma omp for schedule(dynamic, 1)
#endif
        for (int64_t i = 0; i < qblocks; i++) {
            const mtensor *t = &tensors[qwork[2 * i]];
            quant_block_step(t, &groups[t->group], qwork[2 * i + 1], mine, mask);
        }
    }
    free(work);
    return 0;
}
