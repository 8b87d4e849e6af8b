/*
 * 2-D max pooling and its gradient as MindSpore "aot" custom operators on CPU (m2det/max_pool.py
 * builds the network side; scripts/make.sh compiles this file into m2det/kernels/_max_pool.so).
 *
 *   MaxPool      x (N, C, H, W), window (6) int32          -> y  (N, C, OH, OW)
 *   MaxPoolGrad  x (N, C, H, W), dy (N, C, OH, OW), window  -> dx (N, C, H, W)
 *
 * window = (kh, kw, sh, sw, ph, pw): kernel, stride and padding. OH and OW are read from the
 * output's shape, so floor and ceil mode are the same code: a window's positions outside the
 * input (padding, or past the edge in ceil mode) are never chosen, as if they held -infinity.
 * A window's maximum is its first largest value in row-major order (as PyTorch's and
 * MindSpore's; ties are common after a ReLU: all-zero windows). The gradient sends each dy to
 * that position, summed where windows overlap. A NaN is the maximum only where it comes first
 * in its window (MindSpore's own two CPU pooling operators disagree on NaN: its MaxPool skips
 * them, MaxPool3DWithArgmax propagates them; a NaN loss stops or skips the step either way).
 *
 * MindSpore 2.8's CPU MaxPoolGrad took 6.8 ms for the lite model's first pool (8 x 8 x 192 x 192,
 * batch 8) and its padded pools run as MaxPool3DWithArgmax; here every pool is one pass over
 * the input each way. OpenMP spreads the (image, channel) planes over one thread per core (not
 * OpenMP's default, see m2det/kernels/direct_conv3x3.c). Every function returns 0, or a
 * non-zero code for an unsupported call (rank, dtype, window, shapes).
 */
#include <omp.h>
#include <stdint.h>
#include <string.h>

#define AOT_ARGS int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes, \
                 void *stream, void *extra

typedef struct {
    int64_t planes, h, w, oh, ow;
    int kh, kw, sh, sw, ph, pw;
} pool_shape;

/* 0, or non-zero when x (N, C, H, W), the window and the output (N, C, OH, OW) do not fit */
static int read_shape(const int64_t *x, const int64_t *y, const int *window, pool_shape *p) {
    p->planes = x[0] * x[1];
    p->h = x[2]; p->w = x[3]; p->oh = y[2]; p->ow = y[3];
    p->kh = window[0]; p->kw = window[1]; p->sh = window[2]; p->sw = window[3]; p->ph = window[4]; p->pw = window[5];
    if (y[0] != x[0] || y[1] != x[1]) return 2;
    if (p->kh < 1 || p->kw < 1 || p->sh < 1 || p->sw < 1 || p->ph < 0 || p->pw < 0) return 4;
    /* every window holds at least one input position */
    if (p->oh < 1 || p->ow < 1 || (p->oh - 1) * p->sh - p->ph >= p->h || (p->ow - 1) * p->sw - p->pw >= p->w) return 5;
    return 0;
}

/* whether v replaces the maximum so far: strictly larger, so the first of equal values stays */
static inline int beats(float v, float top) { return v > top; }

/* 2 x 2 windows with stride 2 and no padding (VGG's pools) inside the input: rows [0, h / 2)
 * and columns [0, w / 2) of the output, whose windows do not overlap. Each of their input
 * positions gets its window's dy if it is the window's maximum, else 0. Written with masks on
 * the bits of dy, without branches: after a ReLU, ties make any branch here unpredictable. */
static inline float keep_if(uint32_t mask, float d) {
    uint32_t bits;
    memcpy(&bits, &d, sizeof bits);
    bits &= mask;
    memcpy(&d, &bits, sizeof d);
    return d;
}

static void grad_2x2(const float *plane, const float *g, int64_t h, int64_t w, int64_t ow, float *dx) {
    for (int64_t i = 0; i < h / 2; i++) {
        const float *a = plane + 2 * i * w, *b = a + w, *gi = g + i * ow;
        float *da = dx + 2 * i * w, *db = da + w;
        for (int64_t j = 0; j < w / 2; j++) {
            const float v0 = a[2 * j], v1 = a[2 * j + 1], v2 = b[2 * j], v3 = b[2 * j + 1], d = gi[j];
            const uint32_t t1 = -(uint32_t)(v1 > v0);        /* all ones where the later value wins */
            const float top1 = v1 > v0 ? v1 : v0;
            const uint32_t t2 = -(uint32_t)(v2 > top1);
            const float top2 = v2 > top1 ? v2 : top1;
            const uint32_t t3 = -(uint32_t)(v3 > top2);
            da[2 * j] = keep_if(~(t1 | t2 | t3), d);
            da[2 * j + 1] = keep_if(t1 & ~(t2 | t3), d);
            db[2 * j] = keep_if(t2 & ~t3, d);
            db[2 * j + 1] = keep_if(t3, d);
        }
    }
}

/* the same windows' maxima, values only */
static void max_2x2(const float *plane, int64_t h, int64_t w, float *out, int64_t ow) {
    for (int64_t i = 0; i < h / 2; i++) {
        const float *a = plane + 2 * i * w, *b = a + w;
        float *o = out + i * ow;
        for (int64_t j = 0; j < w / 2; j++) {
            float top = a[2 * j];
            top = beats(a[2 * j + 1], top) ? a[2 * j + 1] : top;
            top = beats(b[2 * j], top) ? b[2 * j] : top;
            o[j] = beats(b[2 * j + 1], top) ? b[2 * j + 1] : top;
        }
    }
}

/* the flat index in its plane of the maximum of window (i, j) */
static inline int64_t argmax(const float *plane, const pool_shape *p, int64_t i, int64_t j) {
    const int64_t r0 = i * p->sh - p->ph, c0 = j * p->sw - p->pw;
    const int64_t r1 = r0 + p->kh < p->h ? r0 + p->kh : p->h, c1 = c0 + p->kw < p->w ? c0 + p->kw : p->w;
    const int64_t rs = r0 > 0 ? r0 : 0, cs = c0 > 0 ? c0 : 0;
    int64_t best = rs * p->w + cs;
    float top = plane[best];
    for (int64_t r = rs; r < r1; r++)
        for (int64_t c = cs; c < c1; c++) {
            const float v = plane[r * p->w + c];
            if (beats(v, top)) { top = v; best = r * p->w + c; }
        }
    return best;
}

static int check(int nparam, int expected, int *ndims, const char **dtypes, int window_param) {
    if (nparam != expected) return 1;
    for (int i = 0; i < nparam; i++) {
        if (i == window_param) {
            if (ndims[i] != 1 || strcmp(dtypes[i], "int32") != 0) return 1;
        } else if (ndims[i] != 4 || strcmp(dtypes[i], "float32") != 0) {
            return 1;
        }
    }
    return 0;
}

static int is_2x2_stride_2(const pool_shape *p) {
    return p->kh == 2 && p->kw == 2 && p->sh == 2 && p->sw == 2 && p->ph == 0 && p->pw == 0;
}

int MaxPool(AOT_ARGS) {
    (void)stream; (void)extra;
    if (check(nparam, 3, ndims, dtypes, 1) || shapes[1][0] != 6) return 1;
    pool_shape p;
    int status = read_shape(shapes[0], shapes[2], (const int *)params[1], &p);
    if (status) return status;
    const float *x = (const float *)params[0];
    float *y = (float *)params[2];
    const int fast = is_2x2_stride_2(&p);
    const int64_t inner_h = fast ? p.h / 2 : 0, inner_w = fast ? p.w / 2 : 0;
#pragma omp parallel for schedule(static) num_threads(omp_get_num_procs())
    for (int64_t plane = 0; plane < p.planes; plane++) {
        const float *in = x + plane * p.h * p.w;
        float *out = y + plane * p.oh * p.ow;
        if (fast) max_2x2(in, p.h, p.w, out, p.ow);
        for (int64_t i = 0; i < p.oh; i++)
            for (int64_t j = i < inner_h ? inner_w : 0; j < p.ow; j++) out[i * p.ow + j] = in[argmax(in, &p, i, j)];
    }
    return 0;
}

int MaxPoolGrad(AOT_ARGS) {
    (void)stream; (void)extra;
    if (check(nparam, 4, ndims, dtypes, 2) || shapes[2][0] != 6) return 1;
    pool_shape p;
    int status = read_shape(shapes[0], shapes[1], (const int *)params[2], &p);
    if (status) return status;
    for (int d = 0; d < 4; d++)
        if (shapes[3][d] != shapes[0][d]) return 2;
    const float *x = (const float *)params[0], *dy = (const float *)params[1];
    float *dx = (float *)params[3];
    const int fast = is_2x2_stride_2(&p);
    const int64_t inner_h = fast ? p.h / 2 : 0, inner_w = fast ? p.w / 2 : 0;
#pragma omp parallel for schedule(static) num_threads(omp_get_num_procs())
    for (int64_t plane = 0; plane < p.planes; plane++) {
        const float *in = x + plane * p.h * p.w, *g = dy + plane * p.oh * p.ow;
        float *out = dx + plane * p.h * p.w;
        /* zero what the inside windows do not write, then add the other windows' dy */
        for (int64_t r = 0; r < 2 * inner_h; r++)
            memset(out + r * p.w + 2 * inner_w, 0, (size_t)(p.w - 2 * inner_w) * sizeof(float));
        memset(out + 2 * inner_h * p.w, 0, (size_t)((p.h - 2 * inner_h) * p.w) * sizeof(float));
        if (fast) grad_2x2(in, g, p.h, p.w, p.ow, out);
        for (int64_t i = 0; i < p.oh; i++)
            for (int64_t j = i < inner_h ? inner_w : 0; j < p.ow; j++) out[argmax(in, &p, i, j)] += g[i * p.ow + j];
    }
    return 0;
}
