/*
 * Direct 3x3 / stride 1 / padding 1 convolutions for narrow layers (8-64 channels), as MindSpore
 * "aot" custom operators on CPU (m2det/direct_conv.py builds the network side; scripts/make.sh
 * compiles this file into m2det/kernels/_direct_conv3x3.so).
 *
 *   DirectConv3x3            x (N, C, H, W), w (K, C, 3, 3)   -> y  (N, K, H, W)
 *   DirectConv3x3InputGrad   dy (N, K, H, W), w (K, C, 3, 3)  -> dx (N, C, H, W)
 *   DirectConv3x3FilterGrad  dy (N, K, H, W), x (N, C, H, W)  -> dw (K, C, 3, 3)
 *
 * MindSpore 2.8 runs CPU convolutions as im2col + SGEMM (oneDNN 2.2 gemm:jit), whose copies
 * dominate when the channel counts are small (docs/SPEED.md). Here nothing is unfolded: every
 * channel is copied once into a zero-padded plane of (H + 2) x (W + 2) and the planes of all N
 * images are laid end to end, so that one flat index i walks every image:
 *
 *     y[k][i] = sum_c sum_{dy,dx} w[k][c][dy][dx] * xp[c][i + dy * Wp + dx]      (Wp = W + 2)
 *
 * for the output (n, r, q) at i = n * Hp * Wp + r * Wp + q; the indices with r >= H or q >= W are
 * computed and dropped (2 columns of W + 2, 2 rows of H + 2), which keeps the inner loops long
 * even on 3 x 3 maps. The input gradient is the same correlation of the padded dy with the
 * flipped, transposed filters; the filter gradient is
 *
 *     dw[k][c][dy][dx] = sum_i g[k][i] * xp[c][i + dy * Wp + dx]
 *
 * with g = dy at the same flat indices and zero at the dropped ones.
 *
 * The hot loops are register-blocked (4 output channels x 64 positions in the convolution, 3
 * output channels x 9 taps in the filter gradient) on GCC vector types, compiled for AVX-512,
 * AVX2 and the baseline (target_clones: the loader picks the best for the CPU; the filter
 * gradient has its own AVX-512 and narrower versions, see filter_block). OpenMP spreads
 * the blocks over the threads (as many as DirectConv3x3SetThreads says, by default one per core). Every function returns 0, or a non-zero code for an
 * unsupported call (wrong rank, dtype or shapes).
 */
#include <omp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define AOT_ARGS int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes, \
                 void *stream, void *extra

#define VL 16                        /* floats per vector */
#define NV 4                         /* vectors per block of positions */
#define BLOCK (VL * NV)              /* positions per block */
#define KB 4                         /* output channels per block of the convolution */
#define GB 3                         /* output channels per block of the filter gradient */
#define GCHUNK 2048                  /* positions per cache block of the filter gradient */

typedef float vf __attribute__((vector_size(VL * sizeof(float))));
typedef float vfu __attribute__((vector_size(VL * sizeof(float)), aligned(4)));   /* unaligned loads */

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define X86_CLONES 1
#define HOT __attribute__((target_clones("avx512f", "avx2", "default"), noinline))
#else
#define HOT __attribute__((noinline))
#endif

static int is_float32(const char *dtype) { return strcmp(dtype, "float32") == 0; }

/* OpenMP threads per call; 0 (the default): one per core the process may use. Not OpenMP's own
 * default: `import mindspore` sets OMP_NUM_THREADS=1 in the process environment (for oneDNN
 * inside its own thread pool), so in every process started from one that imported MindSpore
 * (multiprocessing workers, subprocesses of tests and launchers) OpenMP's default is one thread.
 * Inside a MindSpore graph these operators run on MindSpore's runtime threads next to other
 * operators: on a quiet machine two threads per call were faster, while another process kept the
 * cores busy one was (docs/BENCHMARKS.md, "Narrow-layer training speed"). */
static int kernel_threads = 0;
#define THREADS (kernel_threads > 0 ? kernel_threads : omp_get_num_procs())

int DirectConv3x3SetThreads(int n) {
    kernel_threads = n > 0 ? n : 0;
    return THREADS;
}

/* The padded layout of (N, C, H, W) planes: (C, N * Hp * Wp + slack) floats. The slack lets
 * the last block of positions read past the end (3 x 3 window, BLOCK positions) without a test. */
typedef struct {
    int64_t n, h, w, hp, wp, plane, length, stride;
} layout;

static layout make_layout(int64_t n, int64_t h, int64_t w) {
    layout l;
    l.n = n; l.h = h; l.w = w; l.hp = h + 2; l.wp = w + 2;
    l.plane = l.hp * l.wp;
    l.length = n * l.plane;                                    /* flat positions computed */
    int64_t blocks = (l.length + BLOCK - 1) / BLOCK;
    l.stride = blocks * BLOCK + 2 * l.wp + 2 + VL;             /* floats per channel row */
    return l;
}

/* src (N, C, H, W) -> (rows, stride) floats, rows >= C: image n, row r, column q at
 * n * plane + (r + shift) * wp + (q + shift); everything else zero (rows past C included).
 * shift = 1: the padded input; shift = 0: a gradient at the output indices. Each plane is
 * zeroed right before it is filled (no separate pass over the buffer, as calloc would make). */
static float *pack(const float *src, int64_t c, int64_t rows, const layout *l, int shift) {
    float *dst = (float *)malloc((size_t)(rows * l->stride) * sizeof(float));
    if (dst == NULL) return NULL;
    const int64_t tail = l->stride - l->n * l->plane;
#pragma omp parallel for collapse(2) schedule(dynamic, 1) num_threads(THREADS)
    for (int64_t ch = 0; ch < rows; ch++) {
        for (int64_t b = 0; b <= l->n; b++) {
            float *out = dst + ch * l->stride + b * l->plane;
            if (b == l->n || ch >= c) {           /* the slack after the last image, or a padding row */
                int64_t count = b == l->n ? tail : l->plane;
                memset(out, 0, (size_t)count * sizeof(float));
                continue;
            }
            const float *plane = src + (b * c + ch) * l->h * l->w;
            memset(out, 0, (size_t)l->plane * sizeof(float));
            out += shift * (l->wp + 1);
            for (int64_t r = 0; r < l->h; r++)
                memcpy(out + r * l->wp, plane + r * l->w, (size_t)l->w * sizeof(float));
        }
    }
    return dst;
}

/* One block: KB output channels x BLOCK positions starting at `start`, summed over cin input
 * channels. wk: (cin, 9, KB) filters of the block; acc_out: (KB, BLOCK). */
HOT static void conv_block(const float *xp, int64_t stride, int64_t cin, int64_t wp, const float *wk,
                           int64_t start, float *acc_out) {
    vf acc[KB][NV];
    for (int kb = 0; kb < KB; kb++)
        for (int v = 0; v < NV; v++) acc[kb][v] = (vf){0};
    for (int64_t c = 0; c < cin; c++) {
        const float *row = xp + c * stride + start;
        const float *wc = wk + c * 9 * KB;
#pragma GCC unroll 9
        for (int t = 0; t < 9; t++) {
            const float *src = row + (t / 3) * wp + (t % 3);
            vf x[NV];
            for (int v = 0; v < NV; v++) x[v] = *(const vfu *)(src + v * VL);
            for (int kb = 0; kb < KB; kb++) {
                const float wv = wc[t * KB + kb];
                for (int v = 0; v < NV; v++) acc[kb][v] += wv * x[v];
            }
        }
    }
    for (int kb = 0; kb < KB; kb++)
        for (int v = 0; v < NV; v++) *(vfu *)(acc_out + kb * BLOCK + v * VL) = acc[kb][v];
}

/* out (N, cout, H, W) = correlation of the packed planes xp (cin) with wk (cout blocks of
 * (cin, 9, KB) filters). */
static void correlate(const float *xp, const layout *l, int64_t cin, const float *wk, int64_t cout, float *out) {
    const int64_t kblocks = (cout + KB - 1) / KB, blocks = (l->length + BLOCK - 1) / BLOCK;
#pragma omp parallel num_threads(THREADS)
    {
        float acc[KB * BLOCK];
#pragma omp for collapse(2) schedule(dynamic, 4)
        for (int64_t blk = 0; blk < blocks; blk++) {
            for (int64_t kbk = 0; kbk < kblocks; kbk++) {
                const int64_t start = blk * BLOCK;
                conv_block(xp, l->stride, cin, l->wp, wk + kbk * cin * 9 * KB, start, acc);
                /* copy the block out a row piece at a time, dropping the padding columns and rows */
                const int64_t hw = l->h * l->w, limit = l->length - start < BLOCK ? l->length - start : BLOCK;
                const int kcount = cout - kbk * KB < KB ? (int)(cout - kbk * KB) : KB;
                int64_t b = start / l->plane, rest = start - b * l->plane;
                int64_t r = rest / l->wp, q = rest - r * l->wp;
                for (int64_t p = 0; p < limit;) {
                    const int64_t run = l->wp - q < limit - p ? l->wp - q : limit - p;
                    if (r < l->h && q < l->w) {
                        const int64_t valid = l->w - q < run ? l->w - q : run;
                        float *dst = out + (b * cout + kbk * KB) * hw + r * l->w + q;
                        for (int kb = 0; kb < kcount; kb++)
                            for (int64_t t = 0; t < valid; t++) dst[kb * hw + t] = acc[kb * BLOCK + p + t];
                    }
                    p += run;
                    q += run;
                    if (q == l->wp) {
                        q = 0;
                        if (++r == l->hp) { r = 0; b++; }
                    }
                }
            }
        }
    }
}

/* filters (K, C, 3, 3) -> blocks of KB output channels, each (C, 9, KB), zero past K.
 * transpose: the input gradient's filters, w'[c][k][t] = w[k][c][8 - t] (C blocks of (K, 9, KB)). */
static float *pack_filters(const float *w, int64_t k, int64_t c, int transpose) {
    const int64_t cout = transpose ? c : k, cin = transpose ? k : c;
    const int64_t kblocks = (cout + KB - 1) / KB;
    float *wk = (float *)calloc((size_t)(kblocks * cin * 9 * KB), sizeof(float));
    if (wk == NULL) return NULL;
    for (int64_t o = 0; o < cout; o++)
        for (int64_t i = 0; i < cin; i++)
            for (int t = 0; t < 9; t++) {
                float value = transpose ? w[(i * c + o) * 9 + 8 - t] : w[(o * c + i) * 9 + t];
                wk[((o / KB) * cin + i) * 9 * KB + t * KB + o % KB] = value;
            }
    return wk;
}

int DirectConv3x3(AOT_ARGS) {
    (void)stream; (void)extra;
    if (nparam != 3 || ndims[0] != 4 || ndims[1] != 4 || ndims[2] != 4 || !is_float32(dtypes[0])) return 1;
    const int64_t n = shapes[0][0], c = shapes[0][1], h = shapes[0][2], w = shapes[0][3], k = shapes[1][0];
    if (shapes[1][1] != c || shapes[1][2] != 3 || shapes[1][3] != 3) return 2;
    layout l = make_layout(n, h, w);
    float *xp = pack((const float *)params[0], c, c, &l, 1);
    float *wk = pack_filters((const float *)params[1], k, c, 0);
    int status = 3;
    if (xp != NULL && wk != NULL) {
        correlate(xp, &l, c, wk, k, (float *)params[2]);
        status = 0;
    }
    free(xp);
    free(wk);
    return status;
}

int DirectConv3x3InputGrad(AOT_ARGS) {
    (void)stream; (void)extra;
    if (nparam != 3 || ndims[0] != 4 || ndims[1] != 4 || ndims[2] != 4 || !is_float32(dtypes[0])) return 1;
    const int64_t n = shapes[0][0], k = shapes[0][1], h = shapes[0][2], w = shapes[0][3], c = shapes[1][1];
    if (shapes[1][0] != k || shapes[1][2] != 3 || shapes[1][3] != 3) return 2;
    layout l = make_layout(n, h, w);
    float *gp = pack((const float *)params[0], k, k, &l, 1);
    float *wk = pack_filters((const float *)params[1], k, c, 1);
    int status = 3;
    if (gp != NULL && wk != NULL) {
        correlate(gp, &l, k, wk, c, (float *)params[2]);
        status = 0;
    }
    free(gp);
    free(wk);
    return status;
}

/* Partial sums over positions [start, end) for GB output channels (g rows) and one input
 * channel (xp row): out[kb * 9 + t] += sum_i g[kb][i] * x[i + off_t]. end - start is a
 * multiple of VL (the packed rows are zero past the computed length). filter_block picks the
 * version for the CPU. */
#define FILTER_BLOCK_ARGS const float *g, int64_t gstride, const float *x, int64_t wp, \
                          int64_t start, int64_t end, float *out

/* The portable version, for CPUs without AVX-512: there a 16-float vector takes two registers
 * (AVX2) or four (SSE, NEON), and GB x 9 of them as accumulators spilled to memory (5x slower
 * on AVX2), so the channels go one at a time with 8-float vectors: 9 accumulators. */
typedef float vh __attribute__((vector_size(8 * sizeof(float))));
typedef float vhu __attribute__((vector_size(8 * sizeof(float)), aligned(4)));

#ifdef X86_CLONES
__attribute__((target_clones("avx2", "default"), noinline))
#else
__attribute__((noinline))
#endif
static void filter_block_narrow(FILTER_BLOCK_ARGS) {
    for (int kb = 0; kb < GB; kb++) {
        const float *gk = g + kb * gstride;
        vh acc[9];
        for (int t = 0; t < 9; t++) acc[t] = (vh){0};
        for (int64_t i = start; i < end; i += 8) {
            const vh gv = *(const vhu *)(gk + i);
#pragma GCC unroll 9
            for (int t = 0; t < 9; t++) acc[t] += gv * *(const vhu *)(x + i + (t / 3) * wp + (t % 3));
        }
        for (int t = 0; t < 9; t++) {
            float s = 0.0f;
            for (int v = 0; v < 8; v++) s += acc[t][v];
            out[kb * 9 + t] += s;
        }
    }
}

/* 1: always the portable version (tests of the path that CPUs without AVX-512 take) */
static int force_narrow = 0;

int DirectConv3x3ForceNarrowFilterGrad(int on) {
    force_narrow = on != 0;
    return force_narrow;
}

#ifdef X86_CLONES
/* AVX-512: GB channels x 9 taps of 16-float accumulators (27 of the 32 registers). Each tap's x
 * vector is loaded once and used by the GB channels: left to itself, GCC folds that load into
 * every one of the GB multiply-adds as a memory operand, and those unaligned, cache-line-
 * splitting loads then bound the loop. The empty asm pins the vector in a register (the filter
 * gradient took 0.74x the time with it and the 3-channel blocks). */
__attribute__((target("avx512f,fma"), noinline))
static void filter_block_avx512(FILTER_BLOCK_ARGS) {
    vf acc[GB][9];
    for (int kb = 0; kb < GB; kb++)
        for (int t = 0; t < 9; t++) acc[kb][t] = (vf){0};
    for (int64_t i = start; i < end; i += VL) {
        vf gv[GB];
        for (int kb = 0; kb < GB; kb++) gv[kb] = *(const vfu *)(g + kb * gstride + i);
#pragma GCC unroll 9
        for (int t = 0; t < 9; t++) {
            vf xv = *(const vfu *)(x + i + (t / 3) * wp + (t % 3));
            __asm__("" : "+v"(xv));
            for (int kb = 0; kb < GB; kb++) acc[kb][t] += gv[kb] * xv;
        }
    }
    for (int kb = 0; kb < GB; kb++)
        for (int t = 0; t < 9; t++) {
            float s = 0.0f;
            for (int v = 0; v < VL; v++) s += acc[kb][t][v];
            out[kb * 9 + t] += s;
        }
}

static void filter_block(FILTER_BLOCK_ARGS) {
    if (!force_narrow && __builtin_cpu_supports("avx512f"))
        filter_block_avx512(g, gstride, x, wp, start, end, out);
    else
        filter_block_narrow(g, gstride, x, wp, start, end, out);
}
#else
static void filter_block(FILTER_BLOCK_ARGS) { filter_block_narrow(g, gstride, x, wp, start, end, out); }
#endif

int DirectConv3x3FilterGrad(AOT_ARGS) {
    (void)stream; (void)extra;
    if (nparam != 3 || ndims[0] != 4 || ndims[1] != 4 || ndims[2] != 4 || !is_float32(dtypes[0])) return 1;
    const int64_t n = shapes[0][0], k = shapes[0][1], h = shapes[0][2], w = shapes[0][3], c = shapes[1][1];
    if (shapes[1][0] != n || shapes[1][2] != h || shapes[1][3] != w || shapes[2][0] != k || shapes[2][1] != c)
        return 2;
    layout l = make_layout(n, h, w);
    const int64_t kpad = (k + GB - 1) / GB * GB;
    /* g: dy at the output indices, GB-padded with zero rows so that a block never tests k */
    float *g = pack((const float *)params[0], k, kpad, &l, 0);
    float *xp = pack((const float *)params[1], c, c, &l, 1);
    float *dw = (float *)params[2];
    const int64_t length = (l.length + VL - 1) / VL * VL;
    const int64_t chunks = (length + GCHUNK - 1) / GCHUNK, kblocks = kpad / GB, size = kpad * c * 9;
    /* one partial sum per chunk of positions, added in chunk order afterwards: the result does
     * not depend on the number of threads or on which thread took which block */
    float *sums = (float *)malloc((size_t)(chunks * size) * sizeof(float));
    int status = 3;
    if (g != NULL && xp != NULL && sums != NULL) {
#pragma omp parallel for collapse(2) schedule(dynamic, 1) num_threads(THREADS)
        for (int64_t chunk = 0; chunk < chunks; chunk++) {
            for (int64_t kbk = 0; kbk < kblocks; kbk++) {
                const int64_t start = chunk * GCHUNK, end = start + GCHUNK < length ? start + GCHUNK : length;
                float *mine = sums + chunk * size + kbk * GB * c * 9;
                for (int64_t ch = 0; ch < c; ch++) {
                    float block[GB * 9] = {0};
                    filter_block(g + kbk * GB * l.stride, l.stride, xp + ch * l.stride, l.wp, start, end, block);
                    for (int kb = 0; kb < GB; kb++)
                        for (int t = 0; t < 9; t++) mine[(kb * c + ch) * 9 + t] = block[kb * 9 + t];
                }
            }
        }
#pragma omp parallel for schedule(static) num_threads(THREADS)
        for (int64_t j = 0; j < k * c * 9; j++) {
            float total = 0.0f;
            for (int64_t chunk = 0; chunk < chunks; chunk++) total += sums[chunk * size + j];
            dw[j] = total;
        }
        status = 0;
    }
    free(sums);
    free(g);
    free(xp);
    return status;
}
