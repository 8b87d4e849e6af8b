# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Soft-NMS (Bodla et al. 2017) and greedy hard NMS kernels, compiled to ``nms._soft_nms``.

Only the loops live here; argument checking, conversion and the documented public
functions are in ``nms/api.py``. Every ``*_kernel`` entry point expects a validated,
C-contiguous float32 (N, 5) array of rows ``[x1, y1, x2, y2, score]`` with N > 0.

IoU of two boxes, with ``off = 1`` for the reference's "+1 pixel" convention (a box
from pixel x1 to pixel x2 covers x2 - x1 + 1 pixels) and ``off = 0`` for continuous
coordinates::

    area = (x2 - x1 + off) * (y2 - y1 + off)
    iw   = min(x2, x2') - max(x1, x1') + off                    (ih likewise)
    IoU  = iw * ih / ((area + area') - iw * ih)   if iw > 0 and ih > 0, else 0

All arithmetic is float32 in the reference's operation order, which is what lets the
optimized and the classic kernel agree bit for bit. Constants are written ``<float>1``:
a bare ``1.0`` is a C double and would widen the expression (and change its rounding).

Soft-NMS weights (REFERENCE 1.10), applied to the score of every remaining box after each
selection; a box whose score then falls below the threshold is dropped::

    linear:    w = 1 - IoU  if IoU > Nt  else 1
    gaussian:  w = exp(-IoU^2 / sigma)
    hard:      w = 0        if IoU > Nt  else 1
"""
import numpy as np

from libc.math cimport exp

# Method numbers of the reference's cpu_soft_nms.
cdef enum:
    HARD = 0
    LINEAR = 1
    GAUSSIAN = 2

METHOD_CODES = {"hard": HARD, "linear": LINEAR, "gaussian": GAUSSIAN}


cdef inline float _fmax(float a, float b) noexcept nogil:
    return a if a > b else b


cdef inline float _fmin(float a, float b) noexcept nogil:
    return a if a < b else b


# --------------------------------------------------------------------------- optimized soft-NMS

cdef inline float _iou(float tx1, float ty1, float tx2, float ty2, float tarea, float x1,
                       float y1, float x2, float y2, float area, float off) noexcept nogil:
    """IoU without branches (so that loops calling it vectorize): iw and ih are clamped
    at 0 instead of tested. For overlapping boxes this is the reference's IoU to the bit;
    for disjoint ones it is 0 / (area sum), i.e. 0, -0 or NaN (degenerate boxes of zero
    area sum), all of which the callers treat as "no overlap" (NaN > x is false)."""
    cdef float iw = _fmax(_fmin(tx2, x2) - _fmax(tx1, x1) + off, <float>0)
    cdef float ih = _fmax(_fmin(ty2, y2) - _fmax(ty1, y1) + off, <float>0)
    cdef float inter = iw * ih
    return inter / ((tarea + area) - inter)


cdef inline bint _better(float s, int i, float best_s, int best_i) noexcept nogil:
    """Selection order: higher score first; on an exact tie the lower input index."""
    return s > best_s or (s == best_s and i < best_i)


cdef Py_ssize_t _argmax(const float* s, const int* idx, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t p, m = 0
    for p in range(1, n):
        if _better(s[p], idx[p], s[m], idx[m]):
            m = p
    return m


cdef inline void _move(float* x1, float* y1, float* x2, float* y2, float* area, float* s,
                       int* idx, Py_ssize_t dst, Py_ssize_t src) noexcept nogil:
    x1[dst] = x1[src]
    y1[dst] = y1[src]
    x2[dst] = x2[src]
    y2[dst] = y2[src]
    area[dst] = area[src]
    s[dst] = s[src]
    idx[dst] = idx[src]


cdef Py_ssize_t _soft_nms_loop(const float[:, ::1] dets, float[:, ::1] work, int[::1] index,
                               float[:, ::1] out, int method, float nt, float sigma,
                               float thr, float off) noexcept nogil:
    """Soft-NMS over ``dets`` (every score >= thr, Nt >= 0); writes the selected rows to
    ``out`` and returns how many.

    What makes it faster than the reference loop without changing a bit of the output:

    * a structure-of-arrays working copy (rows x1, y1, x2, y2, area, score of ``work``;
      row 6 holds the IoUs for gaussian) with every area computed once, not per pair;
    * the update after a selection is split in two sweeps: a branch-free one computing
      IoU and re-weighting every remaining box (the compiler vectorizes it for linear
      and hard), and a scalar one that drops the boxes below ``thr`` (moving the last box
      into the hole) and finds the next maximum at the same time. The reference sweeps the remaining boxes
      twice per step (once for the maximum, once for the update), with branches;
    * the selection order depends on (score, input index) only, never on array
      positions, so the selected box is removed by moving the last box into its slot.

    A non-overlapping box gets IoU 0, whose weight is exactly 1 for every method when
    Nt >= 0, so multiplying its score is a no-op - the same as the reference, which skips
    such boxes.
    """
    cdef Py_ssize_t n = dets.shape[0], k = 0, p, m
    cdef float* x1 = &work[0, 0]
    cdef float* y1 = &work[1, 0]
    cdef float* x2 = &work[2, 0]
    cdef float* y2 = &work[3, 0]
    cdef float* area = &work[4, 0]
    cdef float* s = &work[5, 0]
    cdef float* iou = &work[6, 0]
    cdef int* idx = &index[0]
    cdef float tx1, ty1, tx2, ty2, tarea, ov, sp, best

    for p in range(n):
        x1[p] = dets[p, 0]
        y1[p] = dets[p, 1]
        x2[p] = dets[p, 2]
        y2[p] = dets[p, 3]
        s[p] = dets[p, 4]
        area[p] = (x2[p] - x1[p] + off) * (y2[p] - y1[p] + off)
        idx[p] = <int>p
    m = _argmax(s, idx, n)

    while n > 0:
        tx1 = x1[m]
        ty1 = y1[m]
        tx2 = x2[m]
        ty2 = y2[m]
        tarea = area[m]
        out[k, 0] = tx1
        out[k, 1] = ty1
        out[k, 2] = tx2
        out[k, 3] = ty2
        out[k, 4] = s[m]
        k += 1
        n -= 1
        if m != n:
            _move(x1, y1, x2, y2, area, s, idx, m, n)

        # One sweep re-weights every remaining box; branch-free for linear and hard, so
        # the compiler vectorizes it. Gaussian stores the IoUs (vectorized) and calls exp
        # only for the overlapping boxes.
        if method == LINEAR:
            for p in range(n):
                ov = _iou(tx1, ty1, tx2, ty2, tarea, x1[p], y1[p], x2[p], y2[p], area[p], off)
                s[p] = s[p] * ((<float>1 - ov) if ov > nt else <float>1)
        elif method == HARD:
            for p in range(n):
                ov = _iou(tx1, ty1, tx2, ty2, tarea, x1[p], y1[p], x2[p], y2[p], area[p], off)
                s[p] = s[p] * (<float>0 if ov > nt else <float>1)
        else:
            for p in range(n):
                iou[p] = _iou(tx1, ty1, tx2, ty2, tarea, x1[p], y1[p], x2[p], y2[p], area[p], off)
            for p in range(n):
                ov = iou[p]
                if ov > <float>0:  # exp(-0 / sigma) is exactly 1: skip the call
                    s[p] = s[p] * <float>exp(-(ov * ov) / sigma)

        # Drop the boxes below thr (the last box takes the slot and is examined next;
        # positions do not matter, see _better) and find the next maximum on the way.
        m = -1
        best = <float>0
        p = 0
        while p < n:
            sp = s[p]
            if sp < thr:
                n -= 1
                _move(x1, y1, x2, y2, area, s, idx, p, n)
                continue
            if m < 0 or _better(sp, idx[p], best, idx[m]):
                m = p
                best = sp
            p += 1
    return k


def soft_nms_kernel(const float[:, ::1] dets, int method, float nt, float sigma, float thr,
                    float off):
    """Optimized soft-NMS; see ``nms.api.soft_nms``. Returns the (K, 5) kept rows."""
    cdef Py_ssize_t n = dets.shape[0], k
    if n == 0:
        return np.zeros((0, 5), dtype=np.float32)
    work = np.empty((7, n), dtype=np.float32)
    index = np.empty(n, dtype=np.intc)
    out = np.empty((n, 5), dtype=np.float32)
    cdef float[:, ::1] w_view = work, o_view = out
    cdef int[::1] i_view = index
    with nogil:
        k = _soft_nms_loop(dets, w_view, i_view, o_view, method, nt, sigma, thr, off)
    return out[:k].copy()


# --------------------------------------------------------------------------- classic soft-NMS

cdef Py_ssize_t _classic_loop(float[:, ::1] boxes, float sigma, float Nt, float threshold,
                              int method, float off) noexcept nogil:
    """The reference's cpu_soft_nms loop, statement for statement: for each position i,
    scan the rest for the maximum, swap it to i, then re-weight the rest, replacing a
    dropped box by the last one. Deviations: C ``exp`` instead of ``np.exp`` (both double
    precision), the ``off`` parameter (the reference hard-codes +1), and the compiler
    directives of this file (no bounds checks), so that the benchmark compares
    algorithms rather than indexing overhead. Sorts ``boxes`` in place; the kept rows
    are ``boxes[:N]`` on return."""
    cdef Py_ssize_t N = boxes.shape[0]
    cdef Py_ssize_t i, pos, maxpos
    cdef float maxscore, tx1, ty1, tx2, ty2, ts, x1, y1, x2, y2, s
    cdef float area, iw, ih, ua, ov, weight

    for i in range(N):  # the bound is evaluated once, as in the reference
        maxscore = boxes[i, 4]
        maxpos = i

        tx1 = boxes[i, 0]
        ty1 = boxes[i, 1]
        tx2 = boxes[i, 2]
        ty2 = boxes[i, 3]
        ts = boxes[i, 4]

        pos = i + 1
        # get max box
        while pos < N:
            if maxscore < boxes[pos, 4]:
                maxscore = boxes[pos, 4]
                maxpos = pos
            pos = pos + 1

        # add max box as a detection
        boxes[i, 0] = boxes[maxpos, 0]
        boxes[i, 1] = boxes[maxpos, 1]
        boxes[i, 2] = boxes[maxpos, 2]
        boxes[i, 3] = boxes[maxpos, 3]
        boxes[i, 4] = boxes[maxpos, 4]

        # swap ith box with position of max box
        boxes[maxpos, 0] = tx1
        boxes[maxpos, 1] = ty1
        boxes[maxpos, 2] = tx2
        boxes[maxpos, 3] = ty2
        boxes[maxpos, 4] = ts

        tx1 = boxes[i, 0]
        ty1 = boxes[i, 1]
        tx2 = boxes[i, 2]
        ty2 = boxes[i, 3]
        ts = boxes[i, 4]

        pos = i + 1
        # NMS iterations, note that N changes if detection boxes fall below threshold
        while pos < N:
            x1 = boxes[pos, 0]
            y1 = boxes[pos, 1]
            x2 = boxes[pos, 2]
            y2 = boxes[pos, 3]
            s = boxes[pos, 4]

            area = (x2 - x1 + off) * (y2 - y1 + off)
            iw = (_fmin(tx2, x2) - _fmax(tx1, x1) + off)
            if iw > 0:
                ih = (_fmin(ty2, y2) - _fmax(ty1, y1) + off)
                if ih > 0:
                    ua = (tx2 - tx1 + off) * (ty2 - ty1 + off) + area - iw * ih
                    ov = iw * ih / ua  # iou between max box and detection box

                    if method == LINEAR:
                        if ov > Nt:
                            weight = <float>1 - ov
                        else:
                            weight = <float>1
                    elif method == GAUSSIAN:
                        weight = <float>exp(-(ov * ov) / sigma)
                    else:  # original NMS
                        if ov > Nt:
                            weight = <float>0
                        else:
                            weight = <float>1

                    boxes[pos, 4] = weight * boxes[pos, 4]

                    # if box score falls below threshold, discard the box by swapping
                    # with last box, update N
                    if boxes[pos, 4] < threshold:
                        boxes[pos, 0] = boxes[N - 1, 0]
                        boxes[pos, 1] = boxes[N - 1, 1]
                        boxes[pos, 2] = boxes[N - 1, 2]
                        boxes[pos, 3] = boxes[N - 1, 3]
                        boxes[pos, 4] = boxes[N - 1, 4]
                        N = N - 1
                        pos = pos - 1

            pos = pos + 1
    return N


def soft_nms_classic_kernel(float[:, ::1] boxes, int method, float nt, float sigma, float thr,
                            float off):
    """Reference-style soft-NMS; modifies ``boxes`` in place, returns the kept count."""
    cdef Py_ssize_t n
    with nogil:
        n = _classic_loop(boxes, sigma, nt, thr, method, off)
    return n


# --------------------------------------------------------------------------- hard NMS

cdef Py_ssize_t _nms_loop(const float[:, ::1] dets, const Py_ssize_t[::1] order,
                          float[:, ::1] work, Py_ssize_t[::1] alive, Py_ssize_t[::1] keep,
                          float thr, float off) noexcept nogil:
    """Greedy NMS over the boxes taken in ``order``. The candidates still alive stay
    compacted, in order, in ``work`` (rows x1, y1, x2, y2, area) and ``alive`` (their
    row in ``dets``), so the first one is always the next to keep and each step only
    visits the survivors."""
    cdef Py_ssize_t n = order.shape[0], k = 0, p, w, j
    cdef float* x1 = &work[0, 0]
    cdef float* y1 = &work[1, 0]
    cdef float* x2 = &work[2, 0]
    cdef float* y2 = &work[3, 0]
    cdef float* area = &work[4, 0]
    cdef float tx1, ty1, tx2, ty2, tarea, iw, ih, inter

    for p in range(n):
        j = order[p]
        x1[p] = dets[j, 0]
        y1[p] = dets[j, 1]
        x2[p] = dets[j, 2]
        y2[p] = dets[j, 3]
        area[p] = (x2[p] - x1[p] + off) * (y2[p] - y1[p] + off)
        alive[p] = j

    while n > 0:
        keep[k] = alive[0]
        k += 1
        tx1 = x1[0]
        ty1 = y1[0]
        tx2 = x2[0]
        ty2 = y2[0]
        tarea = area[0]
        w = 0
        for p in range(1, n):
            iw = _fmin(tx2, x2[p]) - _fmax(tx1, x1[p]) + off
            ih = _fmin(ty2, y2[p]) - _fmax(ty1, y1[p]) + off
            if iw > <float>0 and ih > <float>0:
                inter = iw * ih
                if inter / ((tarea + area[p]) - inter) > thr:
                    continue
            x1[w] = x1[p]
            y1[w] = y1[p]
            x2[w] = x2[p]
            y2[w] = y2[p]
            area[w] = area[p]
            alive[w] = alive[p]
            w += 1
        n = w
    return k


def nms_kernel(const float[:, ::1] dets, const Py_ssize_t[::1] order, float thr, float off):
    """Greedy hard NMS visiting rows in ``order``; returns the kept row indices."""
    cdef Py_ssize_t n = order.shape[0], k
    if n == 0:
        return np.zeros(0, dtype=np.intp)
    work = np.empty((5, n), dtype=np.float32)
    alive = np.empty(n, dtype=np.intp)
    keep = np.empty(n, dtype=np.intp)
    cdef float[:, ::1] w_view = work
    cdef Py_ssize_t[::1] a_view = alive, k_view = keep
    with nogil:
        k = _nms_loop(dets, order, w_view, a_view, k_view, thr, off)
    return keep[:k]
