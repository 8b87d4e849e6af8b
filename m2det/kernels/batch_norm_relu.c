/*
 * BatchNorm (batch statistics) followed by ReLU, and its gradient, as MindSpore "aot" custom
 * operators on CPU (m2det/batch_norm_relu.py builds the network side; scripts/make.sh compiles
 * this file into m2det/kernels/_batch_norm_relu.so).
 *
 *   BatchNormReLU      x (N, C, H, W), gamma (C), beta (C), eps (1), moving_mean (C),
 *                      moving_var (C), w (1)
 *                      -> y (N, C, H, W), mean (C), rstd (C), moved_mean (C), moved_var (C)
 *   BatchNormReLUGrad  x, gamma, beta, mean, rstd, dy
 *                      -> dx (N, C, H, W), dgamma (C), dbeta (C)
 *
 * with M = N * H * W values per channel, var their biased variance, rstd = 1 / sqrt(var + eps),
 *
 *   a = gamma[c] * rstd[c],  z = (x - mean[c]) * a + beta[c],  y = max(z, 0),
 *
 * i.e. nn.BatchNorm2d in training then nn.ReLU, and the moving statistics it would keep, with w
 * the weight of the batch (nn.BatchNorm2d's 1 - momentum) and the batch variance unbiased:
 *
 *   moved_mean = (1 - w) * moving_mean + w * mean
 *   moved_var  = (1 - w) * moving_var + w * var * M / (M - 1)
 *
 * (the network side assigns them: two operators per layer instead of ten). The gradient
 * recomputes z from x, so y is not kept for it: with
 * d = dy where z > 0 and 0 elsewhere and xhat = (x - mean) * rstd,
 *
 *   dbeta[c]  = sum of d,   dgamma[c] = sum of d * xhat,
 *   dx        = gamma * rstd * (d - dbeta / M - xhat * dgamma / M).
 *
 * Both operators are a few passes over memory: the forward reads x twice and writes y once
 * (MindSpore's BatchNorm then ReLU: 3 + 2 passes), the gradient reads x and dy twice and writes
 * dx once (ReluGrad then BatchNormGrad: 3 + 5). The lite model's first layers are 8-16 channels
 * at 96-192 px, where these passes are the whole cost.
 *
 * Built without fused multiply-adds (-std=c99, as the Winograd kernels), so z is rounded the same
 * way in both operators and the gradient's mask is exactly the forward's. Sums are taken in float
 * lanes per image plane, shifted by the channel's first value (so the one-pass variance does not
 * cancel), and added in double in image order; one thread owns a channel, so results do not
 * depend on the thread count. OpenMP spreads the channels over one thread per core (not OpenMP's default,
 * which `import mindspore` sets to one thread: m2det/kernels/direct_conv3x3.c).
 * Every function returns 0, or a non-zero code for an unsupported call (rank, dtype, shapes).
 */
#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <string.h>

#define AOT_ARGS int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes, \
                 void *stream, void *extra

#define LANES 16                      /* independent partial sums: lets the compiler vectorize */
/* the passes, also built for AVX2 on x86-64 and picked at load time: the masked loops of the
 * gradient are 3x faster with AVX2's blend than with SSE2 (the same operations in the same
 * order, no fused multiply-adds: the same results) */
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define PASS __attribute__((target_clones("avx2", "default")))
#else
#define PASS
#endif

static int is_float32(const char *dtype) { return strcmp(dtype, "float32") == 0; }

typedef struct {
    int64_t n, c, plane;              /* images, channels, H * W */
} sizes;

/* every parameter float32, params[0] (N, C, H, W) and params[i] of shape (C) for each i in `channels`
 * (a list ending with -1) */
static int read_sizes(int nparam, int *ndims, int64_t **shapes, const char **dtypes, const int *channels,
                      sizes *s) {
    for (int i = 0; i < nparam; i++)
        if (!is_float32(dtypes[i])) return 2;
    if (ndims[0] != 4) return 1;
    s->n = shapes[0][0];
    s->c = shapes[0][1];
    s->plane = shapes[0][2] * shapes[0][3];
    if (s->n <= 0 || s->c <= 0 || s->plane <= 0) return 3;
    for (const int *i = channels; *i >= 0; i++)
        if (ndims[*i] != 1 || shapes[*i][0] != s->c) return 4;
    return 0;
}

/* sum of (v - k) and of (v - k)^2 over v[0..n), in double */
PASS static void shifted_sums(const float *v, int64_t n, float k, double *s1, double *s2) {
    float l1[LANES] = {0}, l2[LANES] = {0};
    int64_t i = 0;
    for (; i + LANES <= n; i += LANES)
        for (int j = 0; j < LANES; j++) {
            const float d = v[i + j] - k;
            l1[j] += d;
            l2[j] += d * d;
        }
    double a1 = 0.0, a2 = 0.0;
    for (; i < n; i++) {
        const double d = (double)v[i] - k;
        a1 += d;
        a2 += d * d;
    }
    for (int j = 0; j < LANES; j++) {
        a1 += l1[j];
        a2 += l2[j];
    }
    *s1 += a1;
    *s2 += a2;
}

/* y = max(z, 0), z = (x - mean) * a + b: the expression of the gradient's mask (x - mean first:
 * folding mean into b would round beta away when |mean| * a >> |beta|) */
PASS static void relu_affine(const float *x, float *y, int64_t n, float mean, float a, float b) {
    for (int64_t i = 0; i < n; i++) {
        const float z = (x[i] - mean) * a + b;
        y[i] = z > 0.0f ? z : 0.0f;
    }
}

#define CHUNK 256                     /* values masked at a time (a multiple of LANES) */

/* sum of d and of d * (x - mean) over a plane, d = dy where (x - mean) * a + b > 0. The masking is a loop
 * of its own over a chunk (GCC vectorizes a select only there), the sums run over the chunk. */
PASS static void masked_sums(const float *x, const float *dy, int64_t n, float a, float b, float mean,
                        double *sd, double *sdx) {
    float l1[LANES] = {0}, l2[LANES] = {0};
    float d[CHUNK];
    int64_t i = 0;
    for (; i + CHUNK <= n; i += CHUNK) {
        for (int j = 0; j < CHUNK; j++) d[j] = (x[i + j] - mean) * a + b > 0.0f ? dy[i + j] : 0.0f;
        for (int j = 0; j < CHUNK; j += LANES)
            for (int k = 0; k < LANES; k++) {
                l1[k] += d[j + k];
                l2[k] += d[j + k] * (x[i + j + k] - mean);
            }
    }
    double a1 = 0.0, a2 = 0.0;
    for (; i < n; i++) {
        const float g = (x[i] - mean) * a + b > 0.0f ? dy[i] : 0.0f;
        a1 += g;
        a2 += (double)g * (x[i] - mean);
    }
    for (int k = 0; k < LANES; k++) {
        a1 += l1[k];
        a2 += l2[k];
    }
    *sd += a1;
    *sdx += a2;
}

/* dx = d * k + (x - mean) * c1 + c0 over a plane */
PASS static void input_gradient(const float *x, const float *dy, float *dx, int64_t n, float a, float b,
                           float mean, float k, float c1, float c0) {
    for (int64_t i = 0; i < n; i++) {
        const float xv = x[i], g = dy[i];
        const float d = (xv - mean) * a + b > 0.0f ? g : 0.0f;
        dx[i] = d * k + ((xv - mean) * c1 + c0);
    }
}

int BatchNormReLU(AOT_ARGS) {
    (void)stream;
    (void)extra;
    sizes s;
    if (nparam != 12) return 1;
    static const int channels[] = {1, 2, 4, 5, -1};     /* gamma, beta, moving mean and variance */
    int code = read_sizes(nparam, ndims, shapes, dtypes, channels, &s);
    if (code) return code;
    if (ndims[3] != 1 || shapes[3][0] != 1 || ndims[6] != 1 || shapes[6][0] != 1) return 5;
    const float *x = params[0], *gamma = params[1], *beta = params[2];
    const float eps = *(const float *)params[3];
    const float *moving_mean = params[4], *moving_var = params[5];
    const float w = *(const float *)params[6];
    float *y = params[7], *mean = params[8], *rstd = params[9], *moved_mean = params[10], *moved_var = params[11];
    const double count = (double)(s.n * s.plane), unbias = count > 1.0 ? count / (count - 1.0) : 1.0;
#pragma omp parallel for schedule(static) num_threads(omp_get_num_procs())
    for (int64_t c = 0; c < s.c; c++) {
        const float k = x[c * s.plane];
        double s1 = 0.0, s2 = 0.0;
        for (int64_t i = 0; i < s.n; i++) shifted_sums(x + (i * s.c + c) * s.plane, s.plane, k, &s1, &s2);
        const double shift = s1 / count;
        double v = s2 / count - shift * shift;
        if (v < 0.0) v = 0.0;
        mean[c] = (float)(k + shift);
        rstd[c] = (float)(1.0 / sqrt(v + eps));
        moved_mean[c] = (float)((1.0 - w) * moving_mean[c] + (double)w * mean[c]);
        moved_var[c] = (float)((1.0 - w) * moving_var[c] + (double)w * v * unbias);
        const float a = gamma[c] * rstd[c];
        for (int64_t i = 0; i < s.n; i++) {
            const int64_t at = (i * s.c + c) * s.plane;
            relu_affine(x + at, y + at, s.plane, mean[c], a, beta[c]);
        }
    }
    return 0;
}

int BatchNormReLUGrad(AOT_ARGS) {
    (void)stream;
    (void)extra;
    sizes s;
    if (nparam != 9) return 1;
    static const int channels[] = {1, 2, 3, 4, -1};     /* gamma, beta, mean, rstd */
    int code = read_sizes(nparam, ndims, shapes, dtypes, channels, &s);
    if (code) return code;
    if (ndims[5] != 4 || memcmp(shapes[5], shapes[0], 4 * sizeof(int64_t)) != 0) return 5;
    const float *x = params[0], *gamma = params[1], *beta = params[2], *mean = params[3], *rstd = params[4];
    const float *dy = params[5];
    float *dx = params[6], *dgamma = params[7], *dbeta = params[8];
    const double count = (double)(s.n * s.plane);
#pragma omp parallel for schedule(static) num_threads(omp_get_num_procs())
    for (int64_t c = 0; c < s.c; c++) {
        const float a = gamma[c] * rstd[c], b = beta[c];
        double sd = 0.0, sdx = 0.0;
        for (int64_t i = 0; i < s.n; i++) {
            const int64_t at = (i * s.c + c) * s.plane;
            masked_sums(x + at, dy + at, s.plane, a, b, mean[c], &sd, &sdx);
        }
        dbeta[c] = (float)sd;
        dgamma[c] = (float)(sdx * rstd[c]);
        /* dx = k * (d - sd / M - (x - mean) * rstd^2 * sdx / M) = d * k + (x - mean) * c1 + c0 */
        const double kd = (double)gamma[c] * rstd[c];
        const float k = (float)kd, c1 = (float)(-kd * rstd[c] * rstd[c] * sdx / count), c0 = (float)(-kd * sd / count);
        for (int64_t i = 0; i < s.n; i++) {
            const int64_t at = (i * s.c + c) * s.plane;
            input_gradient(x + at, dy + at, dx + at, s.plane, a, b, mean[c], k, c1, c0);
        }
    }
    return 0;
}
