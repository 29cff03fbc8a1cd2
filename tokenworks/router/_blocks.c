/* The `kv` policy's two inner loops, compiled: cutting a prompt into chained block keys, and
 * walking the prefix index with them (prefix_index.py has the same two in Python, and uses
 * them where this module cannot be built; tests/router/test_native_blocks.py holds the two to
 * the same answers).
 *
 * The keys are the very ints Python makes for hash((parent, tuple(block))): the tuple hash is
 * CPython's (Objects/tupleobject.c, unchanged since 3.8: xxHash's mixing of the items' hashes)
 * and an int's hash is Python's numeric hash (its value modulo 2**61 - 1, keeping the sign).
 * So keys made here and keys made by the Python fallback, or by prefix_index.stored() in
 * another build, are the same.
 *
 * Built on first use by tokenworks/native.py; a plain CPython extension, no third-party
 * headers. */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>

#if SIZEOF_VOID_P != 8
#error "64-bit builds only (prefix_index.py's Python loops serve the others)"
#endif

#define XXPRIME_1 11400714785074694791ULL
#define XXPRIME_2 14029467366897019727ULL
#define XXPRIME_5 2870177450012600261ULL
#define XXROTATE(x) (((x) << 31) | ((x) >> 33))
#define HASH_MODULUS ((1ULL << 61) - 1)

static inline uint64_t mix(uint64_t acc, uint64_t lane) {
    acc += lane * XXPRIME_2;
    acc = XXROTATE(acc);
    return acc * XXPRIME_1;
}

static inline int64_t finish(uint64_t acc, uint64_t length) {
    acc += length ^ (XXPRIME_5 ^ 3527539ULL);
    if (acc == (uint64_t)-1) return 1546275796;
    return (int64_t)acc;
}

/* hash(v) for a Python int v that fits in 64 bits. */
static inline int64_t int_hash(int64_t v) {
    uint64_t magnitude = v < 0 ? 0ULL - (uint64_t)v : (uint64_t)v;
    int64_t h = (int64_t)(magnitude % HASH_MODULUS);
    if (v < 0) h = -h;
    return h == -1 ? -2 : h;
}

PyDoc_STRVAR(chained_keys_doc,
"chained_keys(token_ids, block_size, parent) -> list[int]\n\n"
"The chained keys of the whole blocks of token_ids (a list or tuple), the first chained to\n"
"parent: hash((parent, tuple(block))), each the next one's parent.");

static PyObject *chained_keys(PyObject *self, PyObject *args) {
    PyObject *tokens;
    Py_ssize_t block_size;
    long long parent;
    if (!PyArg_ParseTuple(args, "OnL:chained_keys", &tokens, &block_size, &parent)) return NULL;
    if (block_size <= 0) {
        PyErr_SetString(PyExc_ValueError, "block_size must be positive");
        return NULL;
    }
    PyObject *sequence = PySequence_Fast(tokens, "token_ids must be a sequence");
    if (sequence == NULL) return NULL;
    Py_ssize_t blocks = PySequence_Fast_GET_SIZE(sequence) / block_size;
    PyObject **items = PySequence_Fast_ITEMS(sequence);
    PyObject *keys = PyList_New(blocks);
    if (keys == NULL) goto fail;
    int64_t key = parent;
    for (Py_ssize_t b = 0; b < blocks; b++) {
        uint64_t block_acc = XXPRIME_5;  /* tuple(block) */
        for (Py_ssize_t j = 0; j < block_size; j++) {
            Py_hash_t lane = PyObject_Hash(items[b * block_size + j]);
            if (lane == -1 && PyErr_Occurred()) goto fail;
            block_acc = mix(block_acc, (uint64_t)lane);
        }
        uint64_t pair_acc = mix(XXPRIME_5, (uint64_t)int_hash(key));  /* (parent, tuple(block)) */
        pair_acc = mix(pair_acc, (uint64_t)finish(block_acc, (uint64_t)block_size));
        key = finish(pair_acc, 2);
        PyObject *value = PyLong_FromLongLong(key);
        if (value == NULL) goto fail;
        PyList_SET_ITEM(keys, b, value);
    }
    Py_DECREF(sequence);
    return keys;
fail:
    Py_XDECREF(keys);
    Py_DECREF(sequence);
    return NULL;
}

/* The mask a dict holds for key (0 when absent), cut to 64 bits: only bits of `wanted` matter. */
static int mask_of(PyObject *masks, PyObject *key, uint64_t *out) {
    PyObject *mask = PyDict_GetItemWithError(masks, key);
    if (mask == NULL) {
        *out = 0;
        return PyErr_Occurred() ? -1 : 0;
    }
    *out = PyLong_AsUnsignedLongLongMask(mask);
    return (*out == (uint64_t)-1 && PyErr_Occurred()) ? -1 : 0;
}

static int append_group(PyObject *groups, Py_ssize_t depth, uint64_t mask) {
    PyObject *group = Py_BuildValue("(nK)", depth, (unsigned long long)mask);
    if (group == NULL) return -1;
    int failed = PyList_Append(groups, group);
    Py_DECREF(group);
    return failed;
}

PyDoc_STRVAR(walk_doc,
"walk(keys, holders, predicted, wanted) -> list[tuple[int, int]]\n\n"
"PrefixIndex.match's walk, for a `wanted` mask of at most 64 bits: (blocks, mask of the wanted\n"
"workers holding exactly that many leading blocks), in increasing blocks. A block is held\n"
"when either dict (key -> mask of workers) has the worker's bit for its key.");

static PyObject *walk(PyObject *self, PyObject *args) {
    PyObject *keys, *holders, *predicted;
    unsigned long long wanted;
    if (!PyArg_ParseTuple(args, "OO!O!K:walk", &keys, &PyDict_Type, &holders, &PyDict_Type, &predicted, &wanted))
        return NULL;
    PyObject *sequence = PySequence_Fast(keys, "keys must be a sequence");
    if (sequence == NULL) return NULL;
    Py_ssize_t count = PySequence_Fast_GET_SIZE(sequence);
    PyObject **items = PySequence_Fast_ITEMS(sequence);
    PyObject *groups = PyList_New(0);
    if (groups == NULL) goto fail;
    uint64_t still = wanted;  /* the workers holding every block so far */
    for (Py_ssize_t depth = 0; depth < count && still; depth++) {
        uint64_t held, expected;
        if (mask_of(holders, items[depth], &held) < 0 || mask_of(predicted, items[depth], &expected) < 0) goto fail;
        uint64_t dropped = still & ~(held | expected);
        if (dropped) {
            if (depth && append_group(groups, depth, dropped) < 0) goto fail;
            still &= ~dropped;
        }
    }
    if (still && count && append_group(groups, count, still) < 0) goto fail;
    Py_DECREF(sequence);
    return groups;
fail:
    Py_XDECREF(groups);
    Py_DECREF(sequence);
    return NULL;
}

static PyMethodDef methods[] = {
    {"chained_keys", chained_keys, METH_VARARGS, chained_keys_doc},
    {"walk", walk, METH_VARARGS, walk_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_blocks", "The kv policy's block keys and index walk, compiled.", -1, methods,
};

PyMODINIT_FUNC PyInit__blocks(void) { return PyModule_Create(&module); }
