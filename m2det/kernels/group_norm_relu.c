/*
 * GroupNorm followed by ReLU, and its gradient, as MindSpore "aot" custom operators on CPU
 * (m2det/group_norm_relu.py builds the network side; scripts/make.sh compiles this file into
 * m2det/kernels/_group_norm_relu.so).
 *
 *   GroupNormReLU      x (N, C, H, W), gamma (C), beta (C), eps (1)
 *                      -> y (N, C, H, W), mean (N, G), rstd (N, G)
 *   GroupNormReLUGrad  x, gamma, mean, rstd, y, dy
 *                      -> dx (N, C, H, W), dgamma (C), dbeta (C)
 *
 * with G groups of C / G consecutive channels (G is read from the shape of `mean`) and
 *
 *   z = (x - mean[n, g]) * rstd[n, g] * gamma[c] + beta[c],   y = max(z, 0),
 *   rstd = 1 / sqrt(var + eps), var the biased variance over the group's C / G * H * W values,
 *
 * i.e. nn.GroupNorm then nn.ReLU. The gradient, with dz = dy where y > 0 and 0 elsewhere,
 * xhat = (x - mean) * rstd and e = dz * gamma[c]:
 *
 *   dbeta[c]  = sum over n, h, w of dz
 *   dgamma[c] = sum over n, h, w of dz * xhat
 *   dx        = rstd * (e - mean over the group of e - xhat * mean over the group of e * xhat)
 *
 * MindSpore 2.8's CPU GroupNorm and its gradient took 1.5-6x PyTorch's on the lite model's TUM
 * maps (48 channels, 6-24 px, batch 8; docs/BENCHMARKS.md, "Narrow-layer training speed"), and
 * the ReLU after it is one more pass each way. Sums are taken in double per plane of floats;
 * the per-channel parameter gradients are summed per image and then over the images in a fixed
 * order, so results do not depend on the thread count. OpenMP spreads the (image, group) pairs
 * over one thread per core (not OpenMP's default, which `import mindspore` sets to one thread in
 * every process started from it: m2det/kernels/direct_conv3x3.c).
 * Every function returns 0, or a non-zero code for an unsupported call (rank, dtype, shapes).
 */
#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define AOT_ARGS int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes, \
                 void *stream, void *extra

#define LANES 16                      /* independent partial sums: lets the compiler vectorize */

static int is_float32(const char *dtype) { return strcmp(dtype, "float32") == 0; }

/* sum of v[0..n) in float lanes, returned in double */
static double sum_of(const float *v, int64_t n) {
    float lane[LANES] = {0};
    int64_t i = 0;
    for (; i + LANES <= n; i += LANES)
        for (int k = 0; k < LANES; k++) lane[k] += v[i + k];
    double s = 0.0;
    for (; i < n; i++) s += v[i];
    for (int k = 0; k < LANES; k++) s += lane[k];
    return s;
}

/* sum of (v[i] - m)^2 over i < n */
static double squared_deviations(const float *v, int64_t n, float m) {
    float lane[LANES] = {0};
    int64_t i = 0;
    for (; i + LANES <= n; i += LANES)
        for (int k = 0; k < LANES; k++) {
            float d = v[i + k] - m;
            lane[k] += d * d;
        }
    double s = 0.0;
    for (; i < n; i++) s += (double)(v[i] - m) * (v[i] - m);
    for (int k = 0; k < LANES; k++) s += lane[k];
    return s;
}

typedef struct {
    int64_t n, c, groups, per_group, plane;   /* plane = H * W; per_group = C / G */
} sizes;

/* x (N, C, H, W) and the (N, G) statistics -> sizes, or 0 if they do not fit together */
static int read_sizes(int ndim, const int64_t *x_shape, const int64_t *stat_shape, sizes *s) {
    if (ndim != 4) return 0;
    s->n = x_shape[0];
    s->c = x_shape[1];
    s->plane = x_shape[2] * x_shape[3];
    s->groups = stat_shape[1];
    if (stat_shape[0] != s->n || s->groups <= 0 || s->c % s->groups != 0) return 0;
    s->per_group = s->c / s->groups;
    return 1;
}

int GroupNormReLU(AOT_ARGS) {
    (void)stream; (void)extra;
    if (nparam != 7 || ndims[4] != 4 || ndims[1] != 1 || ndims[2] != 1 || ndims[5] != 2 || ndims[6] != 2) return 1;
    for (int i = 0; i < nparam; i++)
        if (!is_float32(dtypes[i])) return 2;
    sizes s;
    if (!read_sizes(ndims[0], shapes[0], shapes[5], &s) || shapes[1][0] != s.c || shapes[2][0] != s.c) return 3;
    const float *x = (const float *)params[0], *gamma = (const float *)params[1], *beta = (const float *)params[2];
    const float eps = ((const float *)params[3])[0];
    float *y = (float *)params[4], *mean = (float *)params[5], *rstd = (float *)params[6];
    const int64_t span = s.per_group * s.plane;    /* values per group */
#pragma omp parallel for schedule(dynamic, 1) num_threads(omp_get_num_procs())
    for (int64_t ng = 0; ng < s.n * s.groups; ng++) {
        const int64_t g = ng % s.groups;
        const float *xg = x + ng * span;
        double total = 0.0;
        for (int64_t j = 0; j < s.per_group; j++) total += sum_of(xg + j * s.plane, s.plane);
        const float m = (float)(total / (double)span);
        double dev = 0.0;
        for (int64_t j = 0; j < s.per_group; j++) dev += squared_deviations(xg + j * s.plane, s.plane, m);
        const float r = (float)(1.0 / sqrt(dev / (double)span + (double)eps));
        mean[ng] = m;
        rstd[ng] = r;
        float *yg = y + ng * span;
        for (int64_t j = 0; j < s.per_group; j++) {
            const int64_t c = g * s.per_group + j;
            const float scale = r * gamma[c], shift = beta[c] - m * scale;
            const float *xp = xg + j * s.plane;
            float *yp = yg + j * s.plane;
            for (int64_t i = 0; i < s.plane; i++) {
                float z = xp[i] * scale + shift;
                yp[i] = z > 0.0f ? z : 0.0f;
            }
        }
    }
    return 0;
}

int GroupNormReLUGrad(AOT_ARGS) {
    (void)stream; (void)extra;
    if (nparam != 9 || ndims[1] != 1 || ndims[2] != 2 || ndims[3] != 2 || ndims[4] != 4 || ndims[5] != 4 ||
        ndims[6] != 4 || ndims[7] != 1 || ndims[8] != 1) return 1;
    for (int i = 0; i < nparam; i++)
        if (!is_float32(dtypes[i])) return 2;
    sizes s;
    if (!read_sizes(ndims[0], shapes[0], shapes[2], &s) || shapes[1][0] != s.c || shapes[3][1] != s.groups) return 3;
    const float *x = (const float *)params[0], *gamma = (const float *)params[1];
    const float *mean = (const float *)params[2], *rstd = (const float *)params[3];
    const float *y = (const float *)params[4], *dy = (const float *)params[5];
    float *dx = (float *)params[6], *dgamma = (float *)params[7], *dbeta = (float *)params[8];
    const int64_t span = s.per_group * s.plane;
    /* per image and channel: sum of dz and of dz * xhat, reduced over the images afterwards */
    double *partial = (double *)malloc((size_t)(2 * s.n * s.c) * sizeof(double));
    /* per thread: dz and dz * xhat of one channel plane */
    const int threads = omp_get_num_procs();
    float *scratch = (float *)malloc((size_t)(2 * s.plane * threads) * sizeof(float));
    if (partial == NULL || scratch == NULL) {
        free(partial);
        free(scratch);
        return 4;
    }
#pragma omp parallel num_threads(threads)
    {
        float *dz = scratch + 2 * s.plane * omp_get_thread_num(), *dzx = dz + s.plane;
#pragma omp for schedule(dynamic, 1)
        for (int64_t ng = 0; ng < s.n * s.groups; ng++) {
            const int64_t n = ng / s.groups, g = ng % s.groups;
            const float m = mean[ng], r = rstd[ng];
            double e_sum = 0.0, ex_sum = 0.0;            /* sums of e and e * xhat over the group */
            for (int64_t j = 0; j < s.per_group; j++) {
                const int64_t c = g * s.per_group + j, at = ng * span + j * s.plane;
                const float *xp = x + at, *yp = y + at, *gp = dy + at;
                for (int64_t i = 0; i < s.plane; i++) {
                    const float d = yp[i] > 0.0f ? gp[i] : 0.0f;
                    dz[i] = d;
                    dzx[i] = d * ((xp[i] - m) * r);
                }
                const double b = sum_of(dz, s.plane), a = sum_of(dzx, s.plane);
                partial[2 * (n * s.c + c)] = b;
                partial[2 * (n * s.c + c) + 1] = a;
                e_sum += b * gamma[c];
                ex_sum += a * gamma[c];
            }
            const float e_mean = (float)(e_sum / (double)span), ex_mean = (float)(ex_sum / (double)span);
            for (int64_t j = 0; j < s.per_group; j++) {
                const int64_t c = g * s.per_group + j, at = ng * span + j * s.plane;
                const float *xp = x + at, *yp = y + at, *gp = dy + at;
                float *out = dx + at;
                const float gc = gamma[c];
                for (int64_t i = 0; i < s.plane; i++) {
                    const float xhat = (xp[i] - m) * r;
                    const float e = (yp[i] > 0.0f ? gp[i] : 0.0f) * gc;
                    out[i] = r * (e - e_mean - xhat * ex_mean);
                }
            }
        }
    }
    for (int64_t c = 0; c < s.c; c++) {
        double b = 0.0, a = 0.0;
        for (int64_t n = 0; n < s.n; n++) {
            b += partial[2 * (n * s.c + c)];
            a += partial[2 * (n * s.c + c) + 1];
        }
        dbeta[c] = (float)b;
        dgamma[c] = (float)a;
    }
    free(partial);
    free(scratch);
    return 0;
}
