/*
 * Winograd F(4x4, 3x3) forward transforms for 3x3 / stride 1 / padding 1 convolutions with fixed
 * weights (inference), as MindSpore "aot" custom operators on CPU. Compiled with winograd_f23.c
 * into the same library, m2det/kernels/_winograd_f23.so (scripts/make.sh, setup.py);
 * m2det/winograd.py builds the network side.
 *
 * Every 4x4 block of outputs reads a 6x6 patch d of the zero-padded input, and
 *
 *     Y = A^T [ (G g G^T) (.) (B^T d B) ] A        ((.) = elementwise over the 36 positions)
 *
 *     B^T = [4  0 -5  0  1  0]    G = [ 1/4    0     0  ]    A^T = [1  1  1  1  1  0]
 *           [0 -4 -4  1  1  0]        [-1/6 -1/6  -1/6  ]          [0  1 -1  2 -2  0]
 *           [0  4 -4 -1  1  0]        [-1/6  1/6  -1/6  ]          [0  1  1  4  4  0]
 *           [0 -2 -1  2  1  0]        [1/24  1/12  1/6  ]          [0  1 -1  8 -8  1]
 *           [0  2 -1 -2  1  0]        [1/24 -1/12  1/6  ]
 *           [0  4  0 -5  0  1]        [  0    0     1   ]
 *
 * (interpolation points 0, 1, -1, 2, -2 and infinity; Lavin & Gray 2016). The 36 elementwise
 * products summed over input channels are 36 matrix products (MindSpore's BatchMatMul): 36
 * multiply-adds per 16 outputs and channel pair, against F(2x2, 3x3)'s 64 and the direct
 * convolution's 144. The weights are transformed once in float64 (m2det/winograd.py).
 *
 *   WinogradF43Input    x (N, C, H, W)                              -> v (36, C, N*P)
 *   WinogradF43Output   m (36, K, N*P), bias (K), x (only its shape) -> y (N, K, H, W)
 *
 * with P = ceil(H/4) * ceil(W/4) tiles per image, tile p = ty * ceil(W/4) + tx, position
 * xi = 6 * row + column of the 6x6 tile. Outputs past H or W (when they are not multiples of 4)
 * are computed from zero padding and dropped. No adjoints: training uses F(2x2, 3x3), whose
 * gradients are tested.
 *
 * Both passes work on whole tile rows, so the inner loops run over tx with unit stride on the
 * 36 planes of v / m (vectorizable); parallel over (image, channel) planes with OpenMP.
 * Return 0, or non-zero for an unsupported call (wrong rank, dtype or shape).
 */
#include <omp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define AOT_ARGS int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes, \
                 void *stream, void *extra

static int is_f32(const char *dtype) { return strcmp(dtype, "float32") == 0; }

/* out = B^T applied to the 6 values in[0], in[s], ..., in[5s] */
#define BT_ROWS(o0, o1, o2, o3, o4, o5, d0, d1, d2, d3, d4, d5) do { \
        o0 = 4.0f * (d0) - 5.0f * (d2) + (d4);                      \
        o1 = (d3) + (d4) - 4.0f * ((d1) + (d2));                    \
        o2 = 4.0f * ((d1) - (d2)) + (d4) - (d3);                    \
        o3 = 2.0f * ((d3) - (d1)) + (d4) - (d2);                    \
        o4 = 2.0f * ((d1) - (d3)) + (d4) - (d2);                    \
        o5 = 4.0f * (d1) - 5.0f * (d3) + (d5);                      \
    } while (0)

/* the vertical pass of one tile row: t[i] = sum_a B^T[i][a] * row_a over the padded width */
static void input_columns(float *const rows[6], float *t, int64_t wp) {
    const float *d0 = rows[0], *d1 = rows[1], *d2 = rows[2], *d3 = rows[3], *d4 = rows[4], *d5 = rows[5];
    float *t0 = t, *t1 = t + wp, *t2 = t + 2 * wp, *t3 = t + 3 * wp, *t4 = t + 4 * wp, *t5 = t + 5 * wp;
    for (int64_t j = 0; j < wp; j++)
        BT_ROWS(t0[j], t1[j], t2[j], t3[j], t4[j], t5[j], d0[j], d1[j], d2[j], d3[j], d4[j], d5[j]);
}

/* the horizontal pass: dst[6i + j][tx] = sum_b B^T[j][b] * t[i][4 tx + b]; dst planes `stride` apart */
static void input_rows(const float *t, int64_t wp, int64_t tw, float *dst, int64_t stride) {
    for (int i = 0; i < 6; i++) {
        const float *r = t + i * wp;
        float *o0 = dst + (6 * i) * stride, *o1 = o0 + stride, *o2 = o1 + stride;
        float *o3 = o2 + stride, *o4 = o3 + stride, *o5 = o4 + stride;
        for (int64_t tx = 0; tx < tw; tx++) {
            const float *d = r + 4 * tx;
            BT_ROWS(o0[tx], o1[tx], o2[tx], o3[tx], o4[tx], o5[tx], d[0], d[1], d[2], d[3], d[4], d[5]);
        }
    }
}

int WinogradF43Input(AOT_ARGS) {
    (void)stream; (void)extra;
    if (nparam != 2 || ndims[0] != 4 || ndims[1] != 3 || !is_f32(dtypes[0])) return 1;
    const float *x = (const float *)params[0];
    float *v = (float *)params[1];
    const int64_t n = shapes[0][0], c = shapes[0][1], h = shapes[0][2], w = shapes[0][3];
    const int64_t th = (h + 3) / 4, tw = (w + 3) / 4, p = th * tw, np_ = n * p;
    const int64_t wp = 4 * tw + 2;                   /* padded row: one zero left, >= one right */
    if (shapes[1][0] != 36 || shapes[1][1] != c || shapes[1][2] != np_) return 2;
#pragma omp parallel num_threads(omp_get_num_procs())
    {
        /* the padded input rows 4ty-1 .. 4ty+4 (zero outside the image), then their B^T columns */
        float *buf = (float *)calloc((size_t)(12 * wp), sizeof(float));
        float *rows[6];
        for (int a = 0; a < 6; a++) rows[a] = buf + a * wp;
        float *t = buf + 6 * wp;
#pragma omp for collapse(2) schedule(static)
        for (int64_t b = 0; b < n; b++) {
            for (int64_t ch = 0; ch < c; ch++) {
                const float *plane = x + (b * c + ch) * h * w;
                float *out = v + ch * np_ + b * p;
                for (int64_t ty = 0; ty < th; ty++) {
                    for (int a = 0; a < 6; a++) {
                        int64_t r = 4 * ty - 1 + a;
                        memset(rows[a], 0, (size_t)wp * sizeof(float));
                        if (r >= 0 && r < h) memcpy(rows[a] + 1, plane + r * w, (size_t)w * sizeof(float));
                    }
                    input_columns(rows, t, wp);
                    input_rows(t, wp, tw, out + ty * tw, c * np_);
                }
            }
        }
        free(buf);
    }
    return 0;
}

int WinogradF43Output(AOT_ARGS) {
    (void)stream; (void)extra;
    if (nparam != 4 || ndims[0] != 3 || ndims[1] != 1 || ndims[2] != 4 || !is_f32(dtypes[0])) return 1;
    const float *m = (const float *)params[0];
    const float *bias = (const float *)params[1];
    float *y = (float *)params[3];
    const int64_t k = shapes[0][1], n = shapes[2][0], h = shapes[2][2], w = shapes[2][3];
    const int64_t th = (h + 3) / 4, tw = (w + 3) / 4, p = th * tw, np_ = n * p;
    const int64_t stride = k * np_;
    if (shapes[0][0] != 36 || shapes[0][2] != np_ || shapes[1][0] != k) return 2;
#pragma omp parallel num_threads(omp_get_num_procs())
    {
        /* q[r][b][tx] = sum_i A^T[r][i] m[6i + b][tx] (24 rows of tw), then 4 output rows of 4 tw */
        float *q = (float *)malloc((size_t)(24 * tw) * sizeof(float));
        float *rows = (float *)malloc((size_t)(16 * tw) * sizeof(float));
#pragma omp for collapse(2) schedule(static)
        for (int64_t b = 0; b < n; b++) {
            for (int64_t ch = 0; ch < k; ch++) {
                const float *src = m + ch * np_ + b * p;
                float *plane = y + (b * k + ch) * h * w;
                const float beta = bias[ch];
                for (int64_t ty = 0; ty < th; ty++) {
                    const float *s = src + ty * tw;
                    for (int col = 0; col < 6; col++) {
                        const float *m0 = s + col * stride, *m1 = m0 + 6 * stride, *m2 = m1 + 6 * stride;
                        const float *m3 = m2 + 6 * stride, *m4 = m3 + 6 * stride, *m5 = m4 + 6 * stride;
                        float *q0 = q + col * tw, *q1 = q0 + 6 * tw, *q2 = q1 + 6 * tw, *q3 = q2 + 6 * tw;
                        for (int64_t tx = 0; tx < tw; tx++) {
                            float a12 = m1[tx] + m2[tx], s12 = m1[tx] - m2[tx];
                            float a34 = m3[tx] + m4[tx], s34 = m3[tx] - m4[tx];
                            q0[tx] = m0[tx] + a12 + a34;
                            q1[tx] = s12 + 2.0f * s34;
                            q2[tx] = a12 + 4.0f * a34;
                            q3[tx] = s12 + 8.0f * s34 + m5[tx];
                        }
                    }
                    for (int r = 0; r < 4; r++) {
                        const float *c0 = q + 6 * r * tw, *c1 = c0 + tw, *c2 = c1 + tw;
                        const float *c3 = c2 + tw, *c4 = c3 + tw, *c5 = c4 + tw;
                        float *o = rows + r * 4 * tw;
                        for (int64_t tx = 0; tx < tw; tx++) {
                            float a12 = c1[tx] + c2[tx], s12 = c1[tx] - c2[tx];
                            float a34 = c3[tx] + c4[tx], s34 = c3[tx] - c4[tx];
                            o[4 * tx + 0] = c0[tx] + a12 + a34 + beta;
                            o[4 * tx + 1] = s12 + 2.0f * s34 + beta;
                            o[4 * tx + 2] = a12 + 4.0f * a34 + beta;
                            o[4 * tx + 3] = s12 + 8.0f * s34 + c5[tx] + beta;
                        }
                    }
                    for (int r = 0; r < 4 && 4 * ty + r < h; r++)
                        memcpy(plane + (4 * ty + r) * w, rows + r * 4 * tw, (size_t)w * sizeof(float));
                }
            }
        }
        free(q);
        free(rows);
    }
    return 0;
}
