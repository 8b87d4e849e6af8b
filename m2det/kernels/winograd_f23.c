/*
 * Winograd F(2x2, 3x3) transforms for 3x3 / stride 1 / padding 1 convolutions, as MindSpore
 * "aot" custom operators on CPU (m2det/winograd.py builds the network side; scripts/make.sh
 * compiles this file into m2det/kernels/_winograd_f23.so).
 *
 * A convolution y = conv(x, g) is computed tile by tile: every 2x2 block of outputs reads a
 * 4x4 patch d of the zero-padded input, and
 *
 *     Y = A^T [ (G g G^T) (.) (B^T d B) ] A        ((.) = elementwise over the 16 positions)
 *
 *     B^T = [1  0 -1  0]     G = [ 1    0    0 ]     A^T = [1  1  1  0]
 *           [0  1  1  0]         [1/2  1/2  1/2]           [0  1 -1 -1]
 *           [0 -1  1  0]         [1/2 -1/2  1/2]
 *           [0  1  0 -1]         [ 0    0    1 ]
 *
 * (Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks", 2016). Summing over input
 * channels turns the 16 elementwise products into 16 matrix products, which MindSpore's
 * BatchMatMul does: 16 x (K x C) @ (C x N*P) instead of the direct convolution's 9 x (K x C) per
 * output pixel, i.e. 2.25x fewer multiply-adds. This file holds the cheap, memory-bound parts:
 *
 *   WinogradInput        x (N, C, H, W)            -> v (16, C, N*P)    v = B^T d B per tile
 *   WinogradOutput       m (16, K, N*P), bias (K), x (only its shape)  -> y (N, K, H, W)
 *   WinogradInputGrad    dv (16, C, N*P), x (shape)                   -> dx (N, C, H, W)
 *   WinogradOutputGrad   dy (N, K, H, W)           -> dm (16, K, N*P)
 *
 * with P = ceil(H/2) * ceil(W/2) tiles per image, tile p = ty * ceil(W/2) + tx, position
 * index xi = 4 * row + column of the 4x4 tile. The two *Grad functions are the adjoints (the
 * transposed linear maps) of the first two, used as their backward passes.
 *
 * Every function is parallel over independent (image, channel) planes with OpenMP, one thread
 * per core (not OpenMP's default, which `import mindspore` sets to one thread in every process
 * started from it: m2det/kernels/direct_conv3x3.c), and returns 0, or a non-zero code for an
 * unsupported call (wrong rank or dtype).
 */
#include <omp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define AOT_ARGS int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes, \
                 void *stream, void *extra

static int is_float32(const char *dtype) { return strcmp(dtype, "float32") == 0; }

/* v = B^T d B for the 4x4 patch whose rows are r0..r3 starting at column c (stride-1 rows). */
static inline void input_tile(const float *r0, const float *r1, const float *r2, const float *r3,
                              int64_t c, float out[16]) {
    float t[4][4];
    for (int j = 0; j < 4; j++) {
        float d0 = r0[c + j], d1 = r1[c + j], d2 = r2[c + j], d3 = r3[c + j];
        t[0][j] = d0 - d2;
        t[1][j] = d1 + d2;
        t[2][j] = d2 - d1;
        t[3][j] = d1 - d3;
    }
    for (int i = 0; i < 4; i++) {
        out[4 * i + 0] = t[i][0] - t[i][2];
        out[4 * i + 1] = t[i][1] + t[i][2];
        out[4 * i + 2] = t[i][2] - t[i][1];
        out[4 * i + 3] = t[i][1] - t[i][3];
    }
}

int WinogradInput(AOT_ARGS) {
    (void)stream; (void)extra;
    if (nparam != 2 || ndims[0] != 4 || ndims[1] != 3 || !is_float32(dtypes[0])) return 1;
    const float *x = (const float *)params[0];
    float *v = (float *)params[1];
    const int64_t n = shapes[0][0], c = shapes[0][1], h = shapes[0][2], w = shapes[0][3];
    const int64_t th = (h + 1) / 2, tw = (w + 1) / 2, p = th * tw, np_ = n * p;
    const int64_t wp = 2 * tw + 2;                   /* padded row: one zero left, >= one right */
#pragma omp parallel num_threads(omp_get_num_procs())
    {
        float *rows = (float *)calloc((size_t)(4 * wp), sizeof(float));
#pragma omp for collapse(2) schedule(static)
        for (int64_t b = 0; b < n; b++) {
            for (int64_t ch = 0; ch < c; ch++) {
                const float *plane = x + (b * c + ch) * h * w;
                float *out = v + ch * np_ + b * p;
                for (int64_t ty = 0; ty < th; ty++) {
                    for (int a = 0; a < 4; a++) {          /* input rows 2ty-1 .. 2ty+2, zero outside */
                        int64_t r = 2 * ty - 1 + a;
                        float *row = rows + a * wp;
                        memset(row, 0, (size_t)wp * sizeof(float));
                        if (r >= 0 && r < h) memcpy(row + 1, plane + r * w, (size_t)w * sizeof(float));
                    }
                    float *dst = out + ty * tw;
                    for (int64_t tx = 0; tx < tw; tx++) {
                        float tile[16];
                        input_tile(rows, rows + wp, rows + 2 * wp, rows + 3 * wp, 2 * tx, tile);
                        for (int xi = 0; xi < 16; xi++) dst[xi * c * np_ + tx] = tile[xi];
                    }
                }
            }
        }
        free(rows);
    }
    return 0;
}

int WinogradOutput(AOT_ARGS) {
    (void)stream; (void)extra;
    if (nparam != 4 || ndims[0] != 3 || ndims[1] != 1 || ndims[2] != 4 || !is_float32(dtypes[0])) return 1;
    const float *m = (const float *)params[0];
    const float *bias = (const float *)params[1];
    float *y = (float *)params[3];
    const int64_t k = shapes[0][1], n = shapes[2][0], h = shapes[2][2], w = shapes[2][3];
    const int64_t th = (h + 1) / 2, tw = (w + 1) / 2, p = th * tw, np_ = n * p;
    if (shapes[0][0] != 16 || shapes[0][2] != np_ || shapes[1][0] != k) return 2;
#pragma omp parallel num_threads(omp_get_num_procs())
    {
        float *rows = (float *)malloc((size_t)(2 * 2 * tw) * sizeof(float));
#pragma omp for collapse(2) schedule(static)
        for (int64_t b = 0; b < n; b++) {
            for (int64_t ch = 0; ch < k; ch++) {
                const float *src = m + ch * np_ + b * p;
                float *plane = y + (b * k + ch) * h * w;
                const float beta = bias[ch];
                for (int64_t ty = 0; ty < th; ty++) {
                    for (int64_t tx = 0; tx < tw; tx++) {
                        const float *s = src + ty * tw + tx;
                        float q[4][4], u[2][4];
                        for (int xi = 0; xi < 16; xi++) q[xi / 4][xi % 4] = s[xi * k * np_];
                        for (int j = 0; j < 4; j++) {
                            u[0][j] = q[0][j] + q[1][j] + q[2][j];
                            u[1][j] = q[1][j] - q[2][j] - q[3][j];
                        }
                        for (int i = 0; i < 2; i++) {
                            rows[i * 2 * tw + 2 * tx] = u[i][0] + u[i][1] + u[i][2] + beta;
                            rows[i * 2 * tw + 2 * tx + 1] = u[i][1] - u[i][2] - u[i][3] + beta;
                        }
                    }
                    for (int i = 0; i < 2 && 2 * ty + i < h; i++)
                        memcpy(plane + (2 * ty + i) * w, rows + i * 2 * tw, (size_t)w * sizeof(float));
                }
            }
        }
        free(rows);
    }
    return 0;
}

int WinogradInputGrad(AOT_ARGS) {
    (void)stream; (void)extra;
    if (nparam != 3 || ndims[0] != 3 || ndims[1] != 4 || !is_float32(dtypes[0])) return 1;
    const float *dv = (const float *)params[0];
    float *dx = (float *)params[2];
    const int64_t n = shapes[1][0], c = shapes[1][1], h = shapes[1][2], w = shapes[1][3];
    const int64_t th = (h + 1) / 2, tw = (w + 1) / 2, p = th * tw, np_ = n * p;
    const int64_t wp = 2 * tw + 2, hp = 2 * th + 2;
    if (shapes[0][0] != 16 || shapes[0][1] != c || shapes[0][2] != np_) return 2;
#pragma omp parallel num_threads(omp_get_num_procs())
    {
        float *acc = (float *)malloc((size_t)(hp * wp) * sizeof(float));   /* padded plane */
#pragma omp for collapse(2) schedule(static)
        for (int64_t b = 0; b < n; b++) {
            for (int64_t ch = 0; ch < c; ch++) {
                const float *src = dv + ch * np_ + b * p;
                memset(acc, 0, (size_t)(hp * wp) * sizeof(float));
                for (int64_t ty = 0; ty < th; ty++) {
                    for (int64_t tx = 0; tx < tw; tx++) {
                        const float *s = src + ty * tw + tx;
                        float g[4][4], f[4][4];
                        for (int xi = 0; xi < 16; xi++) g[xi / 4][xi % 4] = s[xi * c * np_];
                        for (int i = 0; i < 4; i++) {            /* adjoint of the column map */
                            f[i][0] = g[i][0];
                            f[i][1] = g[i][1] - g[i][2] + g[i][3];
                            f[i][2] = -g[i][0] + g[i][1] + g[i][2];
                            f[i][3] = -g[i][3];
                        }
                        /* adjoint of the row map, added into the patch (rows 2ty-1.., padded by 1) */
                        float *base = acc + (2 * ty) * wp + 2 * tx;
                        for (int j = 0; j < 4; j++) {
                            base[0 * wp + j] += f[0][j];
                            base[1 * wp + j] += f[1][j] - f[2][j] + f[3][j];
                            base[2 * wp + j] += -f[0][j] + f[1][j] + f[2][j];
                            base[3 * wp + j] += -f[3][j];
                        }
                    }
                }
                float *plane = dx + (b * c + ch) * h * w;
                for (int64_t r = 0; r < h; r++)
                    memcpy(plane + r * w, acc + (r + 1) * wp + 1, (size_t)w * sizeof(float));
            }
        }
        free(acc);
    }
    return 0;
}

int WinogradOutputGrad(AOT_ARGS) {
    (void)stream; (void)extra;
    if (nparam != 2 || ndims[0] != 4 || ndims[1] != 3 || !is_float32(dtypes[0])) return 1;
    const float *dy = (const float *)params[0];
    float *dm = (float *)params[1];
    const int64_t n = shapes[0][0], k = shapes[0][1], h = shapes[0][2], w = shapes[0][3];
    const int64_t th = (h + 1) / 2, tw = (w + 1) / 2, p = th * tw, np_ = n * p;
    const int64_t wp = 2 * tw;
#pragma omp parallel num_threads(omp_get_num_procs())
    {
        float *rows = (float *)calloc((size_t)(2 * wp), sizeof(float));
#pragma omp for collapse(2) schedule(static)
        for (int64_t b = 0; b < n; b++) {
            for (int64_t ch = 0; ch < k; ch++) {
                const float *plane = dy + (b * k + ch) * h * w;
                float *out = dm + ch * np_ + b * p;
                for (int64_t ty = 0; ty < th; ty++) {
                    for (int i = 0; i < 2; i++) {          /* output rows 2ty, 2ty+1, zero outside */
                        int64_t r = 2 * ty + i;
                        memset(rows + i * wp, 0, (size_t)wp * sizeof(float));
                        if (r < h) memcpy(rows + i * wp, plane + r * w, (size_t)w * sizeof(float));
                    }
                    for (int64_t tx = 0; tx < tw; tx++) {
                        float q[2][4];                       /* q = dY A^T (columns) */
                        for (int i = 0; i < 2; i++) {
                            float y0 = rows[i * wp + 2 * tx], y1 = rows[i * wp + 2 * tx + 1];
                            q[i][0] = y0;
                            q[i][1] = y0 + y1;
                            q[i][2] = y0 - y1;
                            q[i][3] = -y1;
                        }
                        float *dst = out + ty * tw + tx;
                        for (int j = 0; j < 4; j++) {       /* dM = A q (rows) */
                            dst[(0 * 4 + j) * k * np_] = q[0][j];
                            dst[(1 * 4 + j) * k * np_] = q[0][j] + q[1][j];
                            dst[(2 * 4 + j) * k * np_] = q[0][j] - q[1][j];
                            dst[(3 * 4 + j) * k * np_] = -q[1][j];
                        }
                    }
                }
            }
        }
        free(rows);
    }
    return 0;
}
