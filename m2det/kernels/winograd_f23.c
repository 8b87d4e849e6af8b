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
 * Every function is parallel over independent (image, channel) planes and returns 0, or a
 * non-zero code for an unsupported call (wrong rank or dtype). The threads are plain pthreads
 * started and joined per call, not OpenMP: libgomp's idle threads spin after every parallel
 * region (OMP_WAIT_POLICY unset, which train.py cannot change once MindSpore has loaded
 * libgomp), and next to MindSpore's own thread pool on a busy 2-core machine that spinning made
 * a training step with these kernels 2.6-3.2x slower (docs/BENCHMARKS.md, issue 18 item 3).
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <sched.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define AOT_ARGS int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes, \
                 void *stream, void *extra

static int is_float32(const char *dtype) { return strcmp(dtype, "float32") == 0; }

/* ------------------------------------------------------------------ threads */

#define MAX_THREADS 64
#define MIN_VALUES_PER_THREAD 16384   /* below this a thread's start-up costs more than it saves */

/* As many threads as OpenMP would use: OMP_NUM_THREADS if set, else the CPUs this process may run on. */
static int thread_count(void) {
    const char *env = getenv("OMP_NUM_THREADS");
    int count = env ? atoi(env) : 0;
    if (count <= 0) {
        cpu_set_t set;
        count = sched_getaffinity(0, sizeof(set), &set) == 0 ? CPU_COUNT(&set) : 1;
    }
    return count < 1 ? 1 : (count > MAX_THREADS ? MAX_THREADS : count);
}

typedef int (*plane_range_fn)(const void *ctx, int64_t begin, int64_t end);

typedef struct {
    plane_range_fn fn;
    const void *ctx;
    int64_t begin, end;
    int status;
} plane_job;

static void *run_plane_job(void *arg) {
    plane_job *job = (plane_job *)arg;
    job->status = job->fn(job->ctx, job->begin, job->end);
    return NULL;
}

/* fn(ctx, begin, end) over planes [0, planes) split into equal contiguous ranges, one per
 * thread (the calling thread takes the first); `values` is the work size for the thread count.
 * Returns the first non-zero status (3 if a range could not be done, e.g. out of memory). */
static int parallel_planes(plane_range_fn fn, const void *ctx, int64_t planes, int64_t values) {
    int64_t threads = thread_count();
    if (threads > planes) threads = planes;
    if (threads > values / MIN_VALUES_PER_THREAD) threads = values / MIN_VALUES_PER_THREAD;
    if (threads <= 1) return fn(ctx, 0, planes);
    plane_job jobs[MAX_THREADS];
    pthread_t ids[MAX_THREADS];
    int started[MAX_THREADS] = {0};
    for (int64_t t = 0; t < threads; t++) {
        jobs[t].fn = fn;
        jobs[t].ctx = ctx;
        jobs[t].begin = planes * t / threads;
        jobs[t].end = planes * (t + 1) / threads;
        jobs[t].status = 0;
    }
    for (int64_t t = 1; t < threads; t++)
        started[t] = pthread_create(&ids[t], NULL, run_plane_job, &jobs[t]) == 0;
    run_plane_job(&jobs[0]);
    int status = jobs[0].status;
    for (int64_t t = 1; t < threads; t++) {
        if (started[t]) pthread_join(ids[t], NULL);
        else run_plane_job(&jobs[t]);        /* no thread: do its range here */
        if (status == 0) status = jobs[t].status;
    }
    return status;
}

/* the shapes one call works on; every kernel reads the fields it needs */
typedef struct {
    const float *in, *bias;
    float *out;
    int64_t n, c, h, w, th, tw, p, np_;
} plane_args;

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

static int input_planes(const void *ctx, int64_t begin, int64_t end) {
    const plane_args *a = (const plane_args *)ctx;
    const int64_t c = a->c, h = a->h, w = a->w, th = a->th, tw = a->tw, p = a->p, np_ = a->np_;
    const int64_t wp = 2 * tw + 2;                   /* padded row: one zero left, >= one right */
    float *rows = (float *)calloc((size_t)(4 * wp), sizeof(float));
    if (rows == NULL) return 3;
    for (int64_t plane_index = begin; plane_index < end; plane_index++) {
        const int64_t b = plane_index / c, ch = plane_index % c;
        const float *plane = a->in + (b * c + ch) * h * w;
        float *out = a->out + ch * np_ + b * p;
        for (int64_t ty = 0; ty < th; ty++) {
            for (int r4 = 0; r4 < 4; r4++) {          /* input rows 2ty-1 .. 2ty+2, zero outside */
                int64_t r = 2 * ty - 1 + r4;
                float *row = rows + r4 * wp;
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
    free(rows);
    return 0;
}

int WinogradInput(AOT_ARGS) {
    (void)stream; (void)extra;
    if (nparam != 2 || ndims[0] != 4 || ndims[1] != 3 || !is_float32(dtypes[0])) return 1;
    plane_args a = {0};
    a.in = (const float *)params[0];
    a.out = (float *)params[1];
    a.n = shapes[0][0]; a.c = shapes[0][1]; a.h = shapes[0][2]; a.w = shapes[0][3];
    a.th = (a.h + 1) / 2; a.tw = (a.w + 1) / 2; a.p = a.th * a.tw; a.np_ = a.n * a.p;
    return parallel_planes(input_planes, &a, a.n * a.c, a.n * a.c * a.h * a.w);
}

static int output_planes(const void *ctx, int64_t begin, int64_t end) {
    const plane_args *a = (const plane_args *)ctx;
    const int64_t k = a->c, h = a->h, w = a->w, th = a->th, tw = a->tw, p = a->p, np_ = a->np_;
    float *rows = (float *)malloc((size_t)(2 * 2 * tw) * sizeof(float));
    if (rows == NULL) return 3;
    for (int64_t plane_index = begin; plane_index < end; plane_index++) {
        const int64_t b = plane_index / k, ch = plane_index % k;
        const float *src = a->in + ch * np_ + b * p;
        float *plane = a->out + (b * k + ch) * h * w;
        const float beta = a->bias[ch];
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
    free(rows);
    return 0;
}

int WinogradOutput(AOT_ARGS) {
    (void)stream; (void)extra;
    if (nparam != 4 || ndims[0] != 3 || ndims[1] != 1 || ndims[2] != 4 || !is_float32(dtypes[0])) return 1;
    plane_args a = {0};
    a.in = (const float *)params[0];
    a.bias = (const float *)params[1];
    a.out = (float *)params[3];
    a.c = shapes[0][1]; a.n = shapes[2][0]; a.h = shapes[2][2]; a.w = shapes[2][3];
    a.th = (a.h + 1) / 2; a.tw = (a.w + 1) / 2; a.p = a.th * a.tw; a.np_ = a.n * a.p;
    if (shapes[0][0] != 16 || shapes[0][2] != a.np_ || shapes[1][0] != a.c) return 2;
    return parallel_planes(output_planes, &a, a.n * a.c, a.n * a.c * a.h * a.w);
}

static int input_grad_planes(const void *ctx, int64_t begin, int64_t end) {
    const plane_args *a = (const plane_args *)ctx;
    const int64_t c = a->c, h = a->h, w = a->w, th = a->th, tw = a->tw, p = a->p, np_ = a->np_;
    const int64_t wp = 2 * tw + 2, hp = 2 * th + 2;
    float *acc = (float *)malloc((size_t)(hp * wp) * sizeof(float));   /* padded plane */
    if (acc == NULL) return 3;
    for (int64_t plane_index = begin; plane_index < end; plane_index++) {
        const int64_t b = plane_index / c, ch = plane_index % c;
        const float *src = a->in + ch * np_ + b * p;
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
        float *plane = a->out + (b * c + ch) * h * w;
        for (int64_t r = 0; r < h; r++)
            memcpy(plane + r * w, acc + (r + 1) * wp + 1, (size_t)w * sizeof(float));
    }
    free(acc);
    return 0;
}

int WinogradInputGrad(AOT_ARGS) {
    (void)stream; (void)extra;
    if (nparam != 3 || ndims[0] != 3 || ndims[1] != 4 || !is_float32(dtypes[0])) return 1;
    plane_args a = {0};
    a.in = (const float *)params[0];
    a.out = (float *)params[2];
    a.n = shapes[1][0]; a.c = shapes[1][1]; a.h = shapes[1][2]; a.w = shapes[1][3];
    a.th = (a.h + 1) / 2; a.tw = (a.w + 1) / 2; a.p = a.th * a.tw; a.np_ = a.n * a.p;
    if (shapes[0][0] != 16 || shapes[0][1] != a.c || shapes[0][2] != a.np_) return 2;
    return parallel_planes(input_grad_planes, &a, a.n * a.c, a.n * a.c * a.h * a.w);
}

static int output_grad_planes(const void *ctx, int64_t begin, int64_t end) {
    const plane_args *a = (const plane_args *)ctx;
    const int64_t k = a->c, h = a->h, w = a->w, th = a->th, tw = a->tw, p = a->p, np_ = a->np_;
    const int64_t wp = 2 * tw;
    float *rows = (float *)calloc((size_t)(2 * wp), sizeof(float));
    if (rows == NULL) return 3;
    for (int64_t plane_index = begin; plane_index < end; plane_index++) {
        const int64_t b = plane_index / k, ch = plane_index % k;
        const float *plane = a->in + (b * k + ch) * h * w;
        float *out = a->out + ch * np_ + b * p;
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
    free(rows);
    return 0;
}

int WinogradOutputGrad(AOT_ARGS) {
    (void)stream; (void)extra;
    if (nparam != 2 || ndims[0] != 4 || ndims[1] != 3 || !is_float32(dtypes[0])) return 1;
    plane_args a = {0};
    a.in = (const float *)params[0];
    a.out = (float *)params[1];
    a.n = shapes[0][0]; a.c = shapes[0][1]; a.h = shapes[0][2]; a.w = shapes[0][3];
    a.th = (a.h + 1) / 2; a.tw = (a.w + 1) / 2; a.p = a.th * a.tw; a.np_ = a.n * a.p;
    return parallel_planes(output_grad_planes, &a, a.n * a.c, a.n * a.c * a.h * a.w);
}
