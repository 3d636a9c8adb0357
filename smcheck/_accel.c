/*
 * smcheck._accel: optional compiled kernels of eval's heaviest plain-arithmetic passes (loaded
 * and self-checked by smcheck/accel.py; the numpy code beside each call is the reference):
 *
 * - grad_errors: the gradient-error sums (smcheck.gradient_errors._numpy_sums), below;
 * - round_grid: float32 rounded to a 16/8-bit type's grid, in float32
 *   (smcheck.precisions._round_block), further down;
 * - round_bf16: float32 rounded to bfloat16, in float32 (_round_f32_bf16_numpy).
 *
 * grad_errors(grads, n, c, ref, ref_lo, ref_sq, sq, top) computes, per row i and method m,
 *
 *     d_j     = (double) g_m[i, j] - ref[i, j]   (- ref_lo[i, j])
 *     sq[m,i] = sum_j d_j * d_j                  numpy's pairwise summation order
 *     top[m,i] = max_j d_j * d_j                 NaN propagates, as np.maximum.reduce
 *
 * and, when ref_sq is not None, ref_sq[i] = sum_j ref[i, j]**2 in the same order: exactly the
 * values smcheck.gradient_errors computes with numpy (bit for bit; tested), in one pass over
 * memory instead of five per method. Every operation is one IEEE binary64 operation in the
 * order numpy does it: the module is compiled with -ffp-contract=off (no fused multiply-add)
 * and without -ffast-math, so the compiler may vectorise but not reorder.
 *
 * numpy's pairwise sum (numpy/_core/src/umath/loops_utils.h.src, pairwise_sum): fewer than 8
 * terms are added one by one to -0.0; up to 128 terms go to 8 running sums r[k] += a[i + k],
 * combined as ((r0 + r1) + (r2 + r3)) + ((r4 + r5) + (r6 + r7)), then the n % 8 leftover terms
 * are added one by one; longer runs are split at n / 2 rounded down to a multiple of 8 and the
 * two halves' sums added.
 *
 * A method's row that is bit for bit the previous method's row gets that method's values (the
 * same operations on the same bits give the same result), as the numpy path does by blocks.
 *
 * Only the CPython buffer protocol is used (no numpy headers at build time). Arrays must be
 * C-contiguous (and aligned: the Python callers check dtypes, shapes, contiguity and alignment
 * and fall back to numpy otherwise); wrong buffers raise ValueError, never crash.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#define PW_BLOCKSIZE 128

/*
 * A leaf of the pairwise sum (at most PW_BLOCKSIZE terms) in vectors of 4 doubles (GCC/clang
 * vector extensions; the compiler maps them to the machine's vectors, or to scalars). The 8
 * running sums r[k] of numpy are the lanes of two vectors, so each lane does exactly numpy's
 * additions. The max is kept per lane too, by compare-and-select, NaN aside (a NaN term makes
 * the sum NaN, and the caller sets the max to NaN then). On x86-64 each leaf is also compiled for AVX2 and picked at load time (target_clones);
 * the operations and their order are the same either way.
 */
typedef double v4d __attribute__((vector_size(32)));
typedef long long v4l __attribute__((vector_size(32)));
/* the same vectors at any address of a double (float), for loads from the arrays */
typedef double v4d_u __attribute__((vector_size(32), aligned(8), may_alias));
typedef float v4f_u __attribute__((vector_size(16), aligned(4), may_alias));

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define CLONES __attribute__((target_clones("avx2", "default")))
#else
#define CLONES
#endif

#define LD(p) (*(const v4d_u *)(p))
#define LD_F32(p) __builtin_convertvector(*(const v4f_u *)(p), v4d)
/* lane-wise max by compare-and-select: s where s > m, else m */
#define VMAX(s, m) ((v4d)(((v4l)(s) & ((s) > (m))) | ((v4l)(m) & ~((s) > (m)))))

/* Two vectors of 4 terms at index j, by kind of term (LDG loads 4 gradient values as doubles);
 * TERM1: one term's difference. */
#define TERMS_G(LDG, t0, t1, j)                                                         \
    do {                                                                                \
        v4d d0 = LDG(g + (j)) - LD(r + (j)), d1 = LDG(g + (j) + 4) - LD(r + (j) + 4);   \
        if (lo) {                                                                       \
            d0 -= LD(lo + (j));                                                         \
            d1 -= LD(lo + (j) + 4);                                                     \
        }                                                                               \
        t0 = d0 * d0;                                                                   \
        t1 = d1 * d1;                                                                   \
    } while (0)
#define TERMS_F32(t0, t1, j) TERMS_G(LD_F32, t0, t1, j)
#define TERMS_F64(t0, t1, j) TERMS_G(LD, t0, t1, j)
#define TERMS_REF(t0, t1, j)                                                            \
    do {                                                                                \
        v4d d0 = LD(r + (j)), d1 = LD(r + (j) + 4);                                     \
        t0 = d0 * d0;                                                                   \
        t1 = d1 * d1;                                                                   \
    } while (0)
#define TERM1_F32(j) (lo ? ((double)g[j] - r[j]) - lo[j] : (double)g[j] - r[j])
#define TERM1_F64(j) (lo ? (g[j] - r[j]) - lo[j] : g[j] - r[j])
#define TERM1_REF(j) (r[j])

#define DEFINE_LEAF(NAME, T, TERMS, TERM1)                                                \
    CLONES static double NAME(const T *restrict g, const double *restrict r,            \
                              const double *restrict lo, Py_ssize_t n, double *mx)      \
    {                                                                                   \
        double m = *mx, res;                                                            \
        (void)g;                                                                        \
        (void)lo;                                                                       \
        Py_ssize_t j = 0;                                                               \
        if (n < 8) {                                                                    \
            res = -0.0;                                                                 \
        }                                                                               \
        else {                                                                          \
            v4d a0, a1, b0, b1;                                                         \
            TERMS(a0, a1, 0);                                                           \
            b0 = a0;                                                                    \
            b1 = a1;                                                                    \
            for (j = 8; j < n - (n % 8); j += 8) {                                      \
                v4d t0, t1;                                                             \
                TERMS(t0, t1, j);                                                       \
                a0 += t0;                                                               \
                a1 += t1;                                                               \
                b0 = VMAX(t0, b0);                                                      \
                b1 = VMAX(t1, b1);                                                      \
            }                                                                           \
            res = ((a0[0] + a0[1]) + (a0[2] + a0[3])) + ((a1[0] + a1[1]) + (a1[2] + a1[3])); \
            for (int k = 0; k < 4; k++) {                                               \
                m = b0[k] > m ? b0[k] : m;                                              \
                m = b1[k] > m ? b1[k] : m;                                              \
            }                                                                           \
        }                                                                               \
        for (; j < n; j++) {                                                            \
            double d = TERM1(j);                                                        \
            double s = d * d;                                                           \
            res += s;                                                                   \
            m = s > m ? s : m;                                                          \
        }                                                                               \
        *mx = m;                                                                        \
        return res;                                                                     \
    }

DEFINE_LEAF(leaf_f32, float, TERMS_F32, TERM1_F32)
DEFINE_LEAF(leaf_f64, double, TERMS_F64, TERM1_F64)
/* the reference's own squares (g unused) */
DEFINE_LEAF(leaf_ref, double, TERMS_REF, TERM1_REF)

/* At most this many gradients in one call (and the reference's own squares). */
#define KMAX 32

/* The row's sums to compute: one per gradient that is not a copy of the one before, and the
 * reference's squares (g = NULL). */
typedef struct {
    const void *g[KMAX + 1];
    int is32[KMAX + 1];
    int k;
} Terms;

/*
 * numpy's pairwise sum of every row's terms at once: the recursion splits [0, n) as numpy
 * does, and each leaf is summed for every gradient while its slice of r and lo is in the
 * core's first-level cache (they are read once, not once per gradient). sums[m] and mx[m]:
 * gradient m's sum and running max.
 */
static void pairwise(const Terms *t, Py_ssize_t off, const double *r, const double *lo,
                     Py_ssize_t n, double *sums, double *mx)
{
    if (n <= PW_BLOCKSIZE) {
        const double *ro = r + off, *lob = lo ? lo + off : NULL;
        for (int m = 0; m < t->k; m++) {
            const void *g = t->g[m];
            if (!g) {
                sums[m] = leaf_ref(NULL, ro, NULL, n, &mx[m]);
            }
            else if (t->is32[m]) {
                sums[m] = leaf_f32((const float *)g + off, ro, lob, n, &mx[m]);
            }
            else {
                sums[m] = leaf_f64((const double *)g + off, ro, lob, n, &mx[m]);
            }
        }
        return;
    }
    Py_ssize_t n2 = n / 2;
    n2 -= n2 % 8;
    double left[KMAX + 1];
    pairwise(t, off, r, lo, n2, left, mx);
    pairwise(t, off + n2, r, lo, n - n2, sums, mx);
    for (int m = 0; m < t->k; m++) {
        sums[m] = left[m] + sums[m];
    }
}

/* Buffers of the call, released together. */
typedef struct {
    Py_buffer views[3 * KMAX + 4];
    int count;
} Views;

static void release_all(Views *v)
{
    for (int i = 0; i < v->count; i++) {
        PyBuffer_Release(&v->views[i]);
    }
    v->count = 0;
}

/* A C-contiguous buffer of `itemsize`-byte floats ('f' or 'd') with `len` items. */
static Py_buffer *get_view(Views *v, PyObject *obj, char kind, Py_ssize_t len, int writable,
                           const char *what)
{
    if (v->count >= 3 * KMAX + 4) {
        PyErr_SetString(PyExc_ValueError, "too many arrays");
        return NULL;
    }
    Py_buffer *b = &v->views[v->count];
    int flags = PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | (writable ? PyBUF_WRITABLE : 0);
    if (PyObject_GetBuffer(obj, b, flags) < 0) {
        return NULL;
    }
    v->count++;
    const char *fmt = b->format ? b->format : "B";
    if (fmt[0] == '<' || fmt[0] == '=' || fmt[0] == '@') {
        fmt++;
    }
    Py_ssize_t itemsize = kind == 'f' ? 4 : 8;
    if (fmt[0] != kind || fmt[1] != '\0' || b->itemsize != itemsize || b->len != len * itemsize) {
        PyErr_Format(PyExc_ValueError, "%s: expected %zd C-contiguous '%c' values", what, len,
                     kind);
        return NULL;
    }
    return b;
}

static PyObject *grad_errors(PyObject *self, PyObject *args)
{
    (void)self;
    PyObject *grads, *ref_obj, *lo_obj, *ref_sq_obj, *sq_obj, *top_obj;
    Py_ssize_t n, c;
    if (!PyArg_ParseTuple(args, "OnnOOOOO", &grads, &n, &c, &ref_obj, &lo_obj, &ref_sq_obj,
                          &sq_obj, &top_obj)) {
        return NULL;
    }
    if (!PyList_Check(grads) || n < 0 || c < 1) {
        PyErr_SetString(PyExc_ValueError, "grad_errors: a list of gradients, n >= 0, c >= 1");
        return NULL;
    }
    if (n > 0 && c > PY_SSIZE_T_MAX / 8 / n) { /* n * c * 8 bytes must not wrap around */
        PyErr_SetString(PyExc_ValueError, "grad_errors: n * c too large");
        return NULL;
    }
    Py_ssize_t k = PyList_GET_SIZE(grads);
    if (k < 1 || k > KMAX) {
        PyErr_SetString(PyExc_ValueError, "grad_errors: 1 to 32 gradients");
        return NULL;
    }
    Views v;
    v.count = 0;
    const void *g[KMAX];
    int is32[KMAX];
    Py_buffer *b;
    for (Py_ssize_t m = 0; m < k; m++) {
        PyObject *obj = PyList_GET_ITEM(grads, m);
        Py_buffer probe;
        if (PyObject_GetBuffer(obj, &probe, PyBUF_FORMAT | PyBUF_ND) < 0) {
            release_all(&v);
            return NULL;
        }
        const char *fmt = probe.format ? probe.format : "B";
        if (fmt[0] == '<' || fmt[0] == '=' || fmt[0] == '@') {
            fmt++;
        }
        char kind = fmt[0];
        PyBuffer_Release(&probe);
        if (kind != 'f' && kind != 'd') {
            release_all(&v);
            PyErr_SetString(PyExc_ValueError, "grad_errors: float32 or float64 gradients");
            return NULL;
        }
        if (!(b = get_view(&v, obj, kind, n * c, 0, "gradient"))) {
            release_all(&v);
            return NULL;
        }
        g[m] = b->buf;
        is32[m] = kind == 'f';
    }
    if (!(b = get_view(&v, ref_obj, 'd', n * c, 0, "reference"))) {
        release_all(&v);
        return NULL;
    }
    const double *ref = b->buf;
    const double *lo = NULL;
    if (lo_obj != Py_None) {
        if (!(b = get_view(&v, lo_obj, 'd', n * c, 0, "reference low part"))) {
            release_all(&v);
            return NULL;
        }
        lo = b->buf;
    }
    double *ref_sq = NULL;
    if (ref_sq_obj != Py_None) {
        if (!(b = get_view(&v, ref_sq_obj, 'd', n, 1, "ref_sq"))) {
            release_all(&v);
            return NULL;
        }
        ref_sq = b->buf;
    }
    double *sq[KMAX], *top[KMAX];
    for (Py_ssize_t m = 0; m < k; m++) {
        PyObject *so = PySequence_GetItem(sq_obj, m);
        PyObject *to = so ? PySequence_GetItem(top_obj, m) : NULL;
        Py_buffer *bs = so && to ? get_view(&v, so, 'd', n, 1, "sq") : NULL;
        Py_buffer *bt = bs ? get_view(&v, to, 'd', n, 1, "top") : NULL;
        Py_XDECREF(so);
        Py_XDECREF(to);
        if (!bt) {
            release_all(&v);
            return NULL;
        }
        sq[m] = bs->buf;
        top[m] = bt->buf;
    }

    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t i = 0; i < n; i++) {
        const double *r = ref + i * c;
        const double *l = lo ? lo + i * c : NULL;
        Terms t;
        int slot[KMAX]; /* where gradient m's sum is in t; -1: a copy of gradient m - 1 */
        t.k = 0;
        for (Py_ssize_t m = 0; m < k; m++) {
            size_t size = is32[m] ? sizeof(float) : sizeof(double);
            const char *row = (const char *)g[m] + (size_t)(i * c) * size;
            if (m > 0 && is32[m] == is32[m - 1]
                && memcmp(row, (const char *)g[m - 1] + (size_t)(i * c) * size,
                          (size_t)c * size) == 0) {
                slot[m] = -1;
                continue;
            }
            slot[m] = t.k;
            t.g[t.k] = row;
            t.is32[t.k++] = is32[m];
        }
        if (ref_sq) {
            t.g[t.k] = NULL;
            t.is32[t.k++] = 0;
        }
        double sums[KMAX + 1], mx[KMAX + 1];
        for (int s = 0; s < t.k; s++) {
            mx[s] = 0.0; /* the terms are >= 0 */
        }
        pairwise(&t, 0, r, l, c, sums, mx);
        for (Py_ssize_t m = 0; m < k; m++) {
            if (slot[m] < 0) {
                sq[m][i] = sq[m - 1][i];
                top[m][i] = top[m - 1][i];
                continue;
            }
            double s = sums[slot[m]];
            sq[m][i] = s;
            /* a NaN term makes the sum NaN (the terms are >= 0 or NaN); the max is NaN then */
            top[m][i] = s != s ? s : mx[slot[m]];
        }
        if (ref_sq) {
            ref_sq[i] = sums[t.k - 1];
        }
    }
    Py_END_ALLOW_THREADS

    release_all(&v);
    Py_RETURN_NONE;
}

/*
 * Rounding float32 values to a narrower type's grid, in float32: smcheck.precisions'
 * _round_block (16/8-bit types other than bfloat16) and _round_f32_bf16, element by element in
 * one pass, with the same operations on the same bits (tested bit for bit, and at load time).
 */

static inline uint32_t f2u(float x)
{
    uint32_t u;
    memcpy(&u, &x, sizeof u);
    return u;
}

static inline float u2f(uint32_t u)
{
    float x;
    memcpy(&x, &u, sizeof x);
    return x;
}

/* The parameters of a rounding to a grid: fraction bits f, the exponents of the smallest normal
 * and of the largest power of two below the max, the mode (0: any sign, may overflow; 1: x >= 0
 * (or NaN/+inf), may overflow; 2: a unit value, x >= 0 far below the max: no sign or overflow
 * handling), the type's max and whether it has inf. */
typedef struct {
    int f, emin, emax, mode, has_inf;
    float maxval;
} Grid;

static void round_grid_loop(const float *x, float *out, Py_ssize_t n, const Grid *p)
{
    const uint32_t lo = (uint32_t)(127 + p->emin) << 23, hi = (uint32_t)(128 + p->emax) << 23;
    const uint32_t big_at = (uint32_t)(127 + p->emax) << 23, shift = (uint32_t)(23 - p->f) << 23;
    const float over = p->has_inf ? u2f(0x7F800000u) : u2f(0x7FC00000u);
    const int mode = p->mode;
    const float maxval = p->maxval;
    for (Py_ssize_t i = 0; i < n; i++) {
        float xi = x[i];
        uint32_t u = f2u(xi);
        uint32_t ex = u & 0x7F800000u;
        int big = ex >= big_at;
        ex = ex < lo ? lo : (ex > hi ? hi : ex);
        ex += shift;
        uint32_t sign = mode == 0 ? u & 0x80000000u : 0;
        float m = u2f(ex | sign);
        float r = (xi + m) - m; /* two roundings: compiled without -ffast-math, never folded */
        if (mode == 2) {
            out[i] = r;
            continue;
        }
        r = u2f(f2u(r) | sign); /* a value rounded to 0 keeps its sign */
        if (big && fabsf(r) > maxval) {
            r = copysignf(over, r);
        }
        out[i] = r;
    }
}

/* float32 -> bfloat16 -> float32, round to nearest even; NaN becomes ml_dtypes' quiet NaN with
 * the input's sign. */
static void round_bf16_loop(const float *x, float *out, Py_ssize_t n, const Grid *unused)
{
    (void)unused;
    for (Py_ssize_t i = 0; i < n; i++) {
        float xi = x[i];
        uint32_t u = f2u(xi);
        uint32_t o = xi != xi ? 0x7FC00000u | (u & 0x80000000u)
                              : (u + ((u >> 16) & 1u) + 0x7FFFu) & 0xFFFF0000u;
        out[i] = u2f(o);
    }
}

/* loop(x, out) over two float32 buffers of one length (out writable; it may be x itself). */
static PyObject *on_pair(PyObject *xo, PyObject *oo,
                         void (*loop)(const float *, float *, Py_ssize_t, const Grid *),
                         const Grid *p)
{
    Views v;
    v.count = 0;
    Py_buffer probe;
    if (PyObject_GetBuffer(xo, &probe, PyBUF_ND) < 0) {
        return NULL;
    }
    Py_ssize_t n = probe.len / 4;
    PyBuffer_Release(&probe);
    Py_buffer *bx = get_view(&v, xo, 'f', n, 0, "x");
    Py_buffer *bo = bx ? get_view(&v, oo, 'f', n, 1, "out") : NULL;
    if (!bo) {
        release_all(&v);
        return NULL;
    }
    const float *x = bx->buf;
    float *out = bo->buf;
    Py_BEGIN_ALLOW_THREADS
    loop(x, out, n, p);
    Py_END_ALLOW_THREADS
    release_all(&v);
    Py_RETURN_NONE;
}

static PyObject *round_grid(PyObject *self, PyObject *args)
{
    PyObject *xo, *oo;
    Grid p;
    (void)self;
    if (!PyArg_ParseTuple(args, "OOiiiifp", &xo, &oo, &p.f, &p.emin, &p.emax, &p.mode,
                          &p.maxval, &p.has_inf)) {
        return NULL;
    }
    if (p.f < 1 || p.f > 22 || p.emin < -126 || p.emax > 126 || p.emin > p.emax || p.mode < 0
        || p.mode > 2) {
        PyErr_SetString(PyExc_ValueError, "round_grid: parameters out of range");
        return NULL;
    }
    return on_pair(xo, oo, round_grid_loop, &p);
}

static PyObject *round_bf16(PyObject *self, PyObject *args)
{
    PyObject *xo, *oo;
    (void)self;
    if (!PyArg_ParseTuple(args, "OO", &xo, &oo)) {
        return NULL;
    }
    return on_pair(xo, oo, round_bf16_loop, NULL);
}

static PyMethodDef methods[] = {
    {"grad_errors", grad_errors, METH_VARARGS,
     "grad_errors(grads, n, c, ref, ref_lo, ref_sq, sq, top): see smcheck/_accel.c."},
    {"round_grid", round_grid, METH_VARARGS,
     "round_grid(x, out, f, emin, emax, mode, max, has_inf): see smcheck/_accel.c."},
    {"round_bf16", round_bf16, METH_VARARGS, "round_bf16(x, out): see smcheck/_accel.c."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "smcheck._accel",
    "Optional compiled kernels of smcheck (see _accel.c).", -1, methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__accel(void) { return PyModule_Create(&module); }
