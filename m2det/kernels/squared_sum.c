/*
 * The sum of the squares of every entry of many float32 tensors, as one MindSpore "aot" custom
 * operator on CPU (src/training/grad_clip.py uses it for the global norm of the gradients;
 * scripts/make.sh compiles this file into m2det/kernels/_squared_sum.so).
 *
 *   SquaredSum   t_1, ..., t_n (any shapes, float32)  ->  s ()  =  sum_j sum_i t_j[i]^2
 *
 * MindSpore computes a global norm as a square, a reduction and an add per gradient: ~700
 * operators for the lite model's 232 gradients, each with its own launch. Here it is one.
 * The tensors are cut into chunks of CHUNK entries; each chunk's sum is taken in double
 * precision and the chunk sums are added in order afterwards, so the result does not depend
 * on the number of threads or on which thread took which chunk. Returns 0, or non-zero for an
 * unsupported call (no inputs, a dtype other than float32, no memory).
 */
#include <omp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define CHUNK 65536                 /* entries per partial sum */
#define LANES 8

int SquaredSum(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes, void *stream,
               void *extra) {
    (void)stream; (void)extra;
    const int inputs = nparam - 1;
    if (inputs < 1 || strcmp(dtypes[nparam - 1], "float32") != 0) return 1;
    int64_t *sizes = (int64_t *)malloc((size_t)inputs * sizeof(int64_t));
    int64_t *first = (int64_t *)malloc((size_t)(inputs + 1) * sizeof(int64_t));  /* first chunk of each input */
    if (sizes == NULL || first == NULL) {
        free(sizes);
        free(first);
        return 3;
    }
    int status = 0;
    first[0] = 0;
    for (int j = 0; j < inputs; j++) {
        if (strcmp(dtypes[j], "float32") != 0) status = 1;
        sizes[j] = 1;
        for (int d = 0; d < ndims[j]; d++) sizes[j] *= shapes[j][d];
        first[j + 1] = first[j] + (sizes[j] + CHUNK - 1) / CHUNK;
    }
    const int64_t chunks = first[inputs];
    double *sums = NULL;
    int *owner = NULL;                                                          /* the input of each chunk */
    if (status == 0) {
        sums = (double *)malloc((size_t)(chunks > 0 ? chunks : 1) * sizeof(double));
        owner = (int *)malloc((size_t)(chunks > 0 ? chunks : 1) * sizeof(int));
        if (sums == NULL || owner == NULL) status = 3;
    }
    if (status == 0) {
        for (int j = 0; j < inputs; j++)
            for (int64_t chunk = first[j]; chunk < first[j + 1]; chunk++) owner[chunk] = j;
#pragma omp parallel for schedule(dynamic, 1) num_threads(omp_get_num_procs())
        for (int64_t chunk = 0; chunk < chunks; chunk++) {
            const int j = owner[chunk];
            const int64_t start = (chunk - first[j]) * CHUNK;
            const int64_t end = start + CHUNK < sizes[j] ? start + CHUNK : sizes[j];
            const float *values = (const float *)params[j];
            double lanes[LANES] = {0};                      /* independent sums: the loop vectorizes */
            int64_t i = start;
            for (; i + LANES <= end; i += LANES)
                for (int l = 0; l < LANES; l++) lanes[l] += (double)values[i + l] * values[i + l];
            double s = 0.0;
            for (; i < end; i++) s += (double)values[i] * values[i];
            for (int l = 0; l < LANES; l++) s += lanes[l];
            sums[chunk] = s;
        }
        double total = 0.0;
        for (int64_t chunk = 0; chunk < chunks; chunk++) total += sums[chunk];
        *(float *)params[nparam - 1] = (float)total;
    }
    free(owner);
    free(sums);
    free(sizes);
    free(first);
    return status;
}
