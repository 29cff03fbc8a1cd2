/* The `kv` policy's inner loops, compiled: cutting a prompt into chained block keys, the prefix
 * index's tables of which workers hold a key (KeyMasks) and the walk along them (prefix_index.py
 * and key_masks.py have the same in Python), and pricing every candidate worker (kv_policy.py's
 * KvAware._price has it in Python). The Python versions run where this module cannot be built;
 * tests/router/test_native_blocks.py holds both to the same answers, the costs to the last bit.
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
#ifndef Py_T_OBJECT_EX  /* before 3.12 the member types are in structmember.h */
#include <structmember.h>
#define Py_T_OBJECT_EX T_OBJECT_EX
#endif

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

/* hash(token): a token id is a small int, whose hash is its value, read here from the int
 * itself, any other object's through PyObject_Hash (the call for every token made cutting a
 * 1,024-token prompt into keys take 8.5 us; this, 5.6 us). */
static inline Py_hash_t token_hash(PyObject *token) {
    if (PyLong_CheckExact(token)) {
#if PY_VERSION_HEX >= 0x030C0000
        if (PyUnstable_Long_IsCompact((PyLongObject *)token)) {
            Py_ssize_t value = PyUnstable_Long_CompactValue((PyLongObject *)token);
            return value == -1 ? -2 : (Py_hash_t)value;
        }
#else
        Py_ssize_t size = Py_SIZE(token);  /* 3.11's ints: a sign-and-size, then 30-bit digits */
        if (size == 0) return 0;
        if (size == 1) return (Py_hash_t)((PyLongObject *)token)->ob_digit[0];
        if (size == -1) {
            Py_hash_t value = -(Py_hash_t)((PyLongObject *)token)->ob_digit[0];
            return value == -1 ? -2 : value;
        }
#endif
    }
    return PyObject_Hash(token);
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
            Py_hash_t lane = token_hash(items[b * block_size + j]);
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

/* ---- KeyMasks: key -> mask of the workers holding it ------------------------------------------
 *
 * The index's two tables (confirmed and predicted blocks). A dict of a million int keys costs a
 * decision three or four cache misses a lookup (its index, its entry, the key's int object and
 * the mask's); here a key and its mask sit side by side in one flat array, open addressing with
 * linear probing, so a lookup out of cache is one miss. Masks are 64 bits: prefix_index.py moves
 * its tables to the Python KeyMasks (key_masks.py) before a 65th worker takes a bit. A slot whose
 * mask is 0 is empty (an entry whose mask empties leaves), so any 64-bit key is a key. */

typedef struct {
    int64_t key;
    uint64_t mask;
} Slot;

typedef struct {
    PyObject_HEAD
    Slot *slots;
    size_t capacity;  /* a power of two, at most half full */
    size_t used;
    int shift;        /* 64 - log2(capacity): a key's home slot is the top bits of its mixed value */
} KeyMasks;

#define MIN_CAPACITY 64

static PyTypeObject KeyMasksType;

/* Fibonacci hashing: the keys are hashes already, but the mixing costs one multiply and keeps
 * keys that differ only in low bits (small ints, in tests) from crowding one run of slots. */
static inline size_t home_of(const KeyMasks *table, int64_t key) {
    return (size_t)(((uint64_t)key * 11400714819323198485ULL) >> table->shift);
}

/* The key's slot, or the empty one where it would go. */
static inline Slot *slot_of(const KeyMasks *table, int64_t key) {
    size_t last = table->capacity - 1, i = home_of(table, key);
    while (table->slots[i].mask && table->slots[i].key != key) i = (i + 1) & last;
    return &table->slots[i];
}

static int resize(KeyMasks *table, size_t capacity) {
    Slot *slots = PyMem_Calloc(capacity, sizeof(Slot));
    if (slots == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    Slot *old = table->slots;
    size_t old_capacity = table->capacity;
    int log2 = 0;
    while (((size_t)1 << log2) < capacity) log2++;
    table->slots = slots;
    table->capacity = capacity;
    table->shift = 64 - log2;
    for (size_t i = 0; i < old_capacity; i++)
        if (old[i].mask) *slot_of(table, old[i].key) = old[i];
    PyMem_Free(old);
    return 0;
}

/* Empty a slot, moving back the entries after it in its run that may take its place (so no
 * lookup needs a tombstone to walk past). */
static void remove_slot(KeyMasks *table, Slot *emptied) {
    size_t last = table->capacity - 1, hole = (size_t)(emptied - table->slots), j = hole;
    for (;;) {
        j = (j + 1) & last;
        if (!table->slots[j].mask) break;
        size_t home = home_of(table, table->slots[j].key);
        if (((j - home) & last) >= ((j - hole) & last)) {  /* the hole lies between its home and j */
            table->slots[hole] = table->slots[j];
            hole = j;
        }
    }
    table->slots[hole].mask = 0;
    table->used--;
}

static inline uint64_t mask_at(const KeyMasks *table, int64_t key) {
    const Slot *slot = slot_of(table, key);
    return slot->mask;
}

/* A table of a million keys is out of cache, and each lookup is a trip to memory: the slots of
 * the keys a few places ahead are asked for while the current one is read, so that the trips
 * overlap (the walk of a 64-block prompt took 11 us with a dict, 7.4 without this). */
#define PREFETCH_AHEAD 8
#if defined(__GNUC__) || defined(__clang__)
#define PREFETCH(address) __builtin_prefetch(address)
#else
#define PREFETCH(address) ((void)(address))
#endif

static inline void prefetch_home(const KeyMasks *table, int64_t key) {
    PREFETCH(&table->slots[home_of(table, key)]);
}

static int key_of(PyObject *object, int64_t *key) {
    *key = PyLong_AsLongLong(object);
    return (*key == -1 && PyErr_Occurred()) ? -1 : 0;
}

/* A sequence of int keys as int64s (*count of them): in `buffer` when they fit, else in a new
 * array (free_keys frees either); NULL with an error set. */
#define KEYS_ON_STACK 128
static int64_t *keys_of(PyObject *keys, Py_ssize_t *count, int64_t *buffer) {
    PyObject *sequence = PySequence_Fast(keys, "keys must be a sequence");
    if (sequence == NULL) return NULL;
    *count = PySequence_Fast_GET_SIZE(sequence);
    PyObject **items = PySequence_Fast_ITEMS(sequence);
    int64_t *ints = *count <= KEYS_ON_STACK ? buffer : PyMem_Malloc(sizeof(int64_t) * *count);
    if (ints == NULL) PyErr_NoMemory();
    for (Py_ssize_t k = 0; ints != NULL && k < *count; k++) {
        if (key_of(items[k], &ints[k]) < 0) {
            if (ints != buffer) PyMem_Free(ints);
            ints = NULL;
        }
    }
    Py_DECREF(sequence);
    return ints;
}

static void free_keys(int64_t *keys, const int64_t *buffer) {
    if (keys != buffer) PyMem_Free(keys);
}

static inline void prefetch_first(const KeyMasks *table, const int64_t *keys, Py_ssize_t count) {
    for (Py_ssize_t k = 0; k < count && k < PREFETCH_AHEAD; k++) prefetch_home(table, keys[k]);
}

static int bit_of(PyObject *object, uint64_t *bit) {
    if (!PyLong_Check(object)) {
        PyErr_SetString(PyExc_TypeError, "KeyMasks: a bit is an int");
        return -1;
    }
    *bit = PyLong_AsUnsignedLongLong(object);  /* OverflowError beyond 64 bits, or below 0 */
    return (*bit == (uint64_t)-1 && PyErr_Occurred()) ? -1 : 0;
}

static PyObject *KeyMasks_new(PyTypeObject *type, PyObject *args, PyObject *kwargs) {
    static char *no_keywords[] = {NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, ":KeyMasks", no_keywords)) return NULL;
    KeyMasks *table = (KeyMasks *)type->tp_alloc(type, 0);
    if (table == NULL) return NULL;
    table->slots = NULL;
    table->capacity = table->used = 0;
    if (resize(table, MIN_CAPACITY) < 0) {
        Py_DECREF(table);
        return NULL;
    }
    return (PyObject *)table;
}

static void KeyMasks_dealloc(KeyMasks *table) {
    PyMem_Free(table->slots);
    Py_TYPE(table)->tp_free((PyObject *)table);
}

static Py_ssize_t KeyMasks_length(KeyMasks *table) {
    return (Py_ssize_t)table->used;
}

static PyObject *KeyMasks_get(KeyMasks *table, PyObject *key_object) {
    int64_t key;
    if (key_of(key_object, &key) < 0) return NULL;
    return PyLong_FromUnsignedLongLong(mask_at(table, key));
}

/* The (keys, bit) arguments of add and discard: the keys as keys_of gives them. */
static int64_t *keys_and_bit(PyObject *args, const char *format, int64_t *buffer, Py_ssize_t *count, uint64_t *bit) {
    PyObject *keys, *bit_object;
    if (!PyArg_ParseTuple(args, format, &keys, &bit_object) || bit_of(bit_object, bit) < 0) return NULL;
    return keys_of(keys, count, buffer);
}

static PyObject *KeyMasks_add(KeyMasks *table, PyObject *args) {
    int64_t buffer[KEYS_ON_STACK];
    Py_ssize_t count;
    uint64_t bit;
    int64_t *ints = keys_and_bit(args, "OO:add", buffer, &count, &bit);
    if (ints == NULL) return NULL;
    if (bit && 2 * (table->used + count) > table->capacity) {  /* grown once, before, for them all */
        size_t capacity = table->capacity;
        while (2 * (table->used + count) > capacity) capacity *= 2;
        if (resize(table, capacity) < 0) {
            free_keys(ints, buffer);
            return NULL;
        }
    }
    if (bit) prefetch_first(table, ints, count);
    for (Py_ssize_t k = 0; k < count && bit; k++) {
        if (k + PREFETCH_AHEAD < count) prefetch_home(table, ints[k + PREFETCH_AHEAD]);
        Slot *slot = slot_of(table, ints[k]);
        if (!slot->mask) {
            slot->key = ints[k];
            table->used++;
        }
        slot->mask |= bit;
    }
    free_keys(ints, buffer);
    Py_RETURN_NONE;
}

static PyObject *KeyMasks_discard(KeyMasks *table, PyObject *args) {
    int64_t buffer[KEYS_ON_STACK];
    Py_ssize_t count;
    uint64_t bit;
    int64_t *ints = keys_and_bit(args, "OO:discard", buffer, &count, &bit);
    if (ints == NULL) return NULL;
    if (bit) prefetch_first(table, ints, count);
    for (Py_ssize_t k = 0; k < count && bit; k++) {
        if (k + PREFETCH_AHEAD < count) prefetch_home(table, ints[k + PREFETCH_AHEAD]);
        Slot *slot = slot_of(table, ints[k]);
        if (slot->mask & bit) {
            slot->mask &= ~bit;
            if (!slot->mask) remove_slot(table, slot);
        }
    }
    free_keys(ints, buffer);
    /* shrunk when an eighth full (a worker cleared): a fleet's churn leaves no huge empty table */
    size_t capacity = table->capacity;
    while (capacity > MIN_CAPACITY && 8 * table->used < capacity) capacity /= 2;
    if (capacity != table->capacity && resize(table, capacity) < 0) PyErr_Clear();  /* still correct as it is */
    Py_RETURN_NONE;
}

/* The keys held by any of `bits`' workers: each key alone, or (key, mask) with_masks. */
static PyObject *entries(const KeyMasks *table, uint64_t bits, int with_masks) {
    PyObject *entries = PyList_New(0);
    if (entries == NULL) return NULL;
    for (size_t i = 0; i < table->capacity; i++) {
        const Slot *slot = &table->slots[i];
        if (!(slot->mask & bits)) continue;
        PyObject *entry = with_masks ? Py_BuildValue("(LK)", (long long)slot->key, (unsigned long long)slot->mask)
                                     : PyLong_FromLongLong(slot->key);
        if (entry == NULL || PyList_Append(entries, entry) < 0) {
            Py_XDECREF(entry);
            Py_DECREF(entries);
            return NULL;
        }
        Py_DECREF(entry);
    }
    return entries;
}

static PyObject *KeyMasks_holding(KeyMasks *table, PyObject *bit_object) {
    uint64_t bit;
    return bit_of(bit_object, &bit) < 0 ? NULL : entries(table, bit, 0);
}

static PyObject *KeyMasks_items(KeyMasks *table, PyObject *Py_UNUSED(ignored)) {
    return entries(table, UINT64_MAX, 1);
}

static PyMethodDef KeyMasks_methods[] = {
    {"get", (PyCFunction)KeyMasks_get, METH_O, "get(key) -> the mask of the workers holding key (0: none)"},
    {"add", (PyCFunction)KeyMasks_add, METH_VARARGS, "add(keys, bit): each key is held by bit's worker too"},
    {"discard", (PyCFunction)KeyMasks_discard, METH_VARARGS,
     "discard(keys, bit): each key is no longer held by bit's worker (a key nobody holds leaves)"},
    {"holding", (PyCFunction)KeyMasks_holding, METH_O, "holding(bit) -> the keys held by any of bit's workers"},
    {"items", (PyCFunction)KeyMasks_items, METH_NOARGS, "items() -> [(key, mask)], in no order"},
    {NULL, NULL, 0, NULL},
};

static PySequenceMethods KeyMasks_as_sequence = {
    .sq_length = (lenfunc)KeyMasks_length,
};

static PyTypeObject KeyMasksType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "_blocks.KeyMasks",
    .tp_doc = "key -> mask of the workers holding it (64 bits), in one flat table: the prefix index's tables.",
    .tp_basicsize = sizeof(KeyMasks),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = KeyMasks_new,
    .tp_dealloc = (destructor)KeyMasks_dealloc,
    .tp_methods = KeyMasks_methods,
    .tp_as_sequence = &KeyMasks_as_sequence,
};

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
"when either table (KeyMasks) has the worker's bit for its key.");

static PyObject *walk(PyObject *self, PyObject *args) {
    PyObject *keys;
    KeyMasks *holders, *predicted;
    unsigned long long wanted;
    if (!PyArg_ParseTuple(args, "OO!O!K:walk", &keys, &KeyMasksType, &holders, &KeyMasksType, &predicted, &wanted))
        return NULL;
    int64_t buffer[KEYS_ON_STACK];
    Py_ssize_t count;
    int64_t *ints = keys_of(keys, &count, buffer);
    if (ints == NULL) return NULL;
    PyObject *groups = PyList_New(0);
    if (groups == NULL) goto fail;
    prefetch_first(holders, ints, count);
    prefetch_first(predicted, ints, count);
    uint64_t still = wanted;  /* the workers holding every block so far */
    for (Py_ssize_t depth = 0; depth < count && still; depth++) {
        if (depth + PREFETCH_AHEAD < count) {
            prefetch_home(holders, ints[depth + PREFETCH_AHEAD]);
            prefetch_home(predicted, ints[depth + PREFETCH_AHEAD]);
        }
        uint64_t held = mask_at(holders, ints[depth]);
        /* the predictions matter only for workers whose events do not confirm the block (along a
         * prefix that its holders confirm, the second lookup is saved) */
        uint64_t expected = (still & ~held) ? mask_at(predicted, ints[depth]) : 0;
        uint64_t dropped = still & ~(held | expected);
        if (dropped) {
            if (depth && append_group(groups, depth, dropped) < 0) goto fail;
            still &= ~dropped;
        }
    }
    if (still && count && append_group(groups, count, still) < 0) goto fail;
    free_keys(ints, buffer);
    return groups;
fail:
    Py_XDECREF(groups);
    free_keys(ints, buffer);
    return NULL;
}

/* Where a worker's three loads are: the slots of its class (router/workers.py's Worker is a
 * slotted dataclass), read straight from the instance: looked up by name, they made the pricing
 * of 64 workers half as long again (14.1 against 9.5 us). A worker of another class (or a slot of
 * another kind) is read by name. */
enum { PENDING, IN_FLIGHT, DECODING, LOADS };
static PyObject *load_names[LOADS];

typedef struct {
    PyTypeObject *type;  /* NULL: read every worker's loads by name */
    Py_ssize_t offsets[LOADS];
} LoadSlots;

static void load_slots_of(PyTypeObject *type, LoadSlots *slots) {
    slots->type = NULL;
    for (int k = 0; k < LOADS; k++) {
        PyObject *descriptor = PyObject_GetAttr((PyObject *)type, load_names[k]);
        if (descriptor == NULL) {
            PyErr_Clear();
            return;
        }
        int is_slot = Py_IS_TYPE(descriptor, &PyMemberDescr_Type) &&
                      ((PyMemberDescrObject *)descriptor)->d_member->type == Py_T_OBJECT_EX;
        if (is_slot) slots->offsets[k] = ((PyMemberDescrObject *)descriptor)->d_member->offset;
        Py_DECREF(descriptor);
        if (!is_slot) return;
    }
    slots->type = type;
}

/* One of a worker's loads, as a number: a new reference, NULL with an error set. */
static PyObject *load_of(PyObject *worker, const LoadSlots *slots, int k) {
    if (Py_TYPE(worker) == slots->type) {
        PyObject *value = *(PyObject **)((char *)worker + slots->offsets[k]);
        if (value != NULL) return Py_NewRef(value);
    }
    return PyObject_GetAttr(worker, load_names[k]);  /* (an unset slot raises AttributeError here) */
}

static inline double as_double(PyObject *number) {
    return PyFloat_CheckExact(number) ? PyFloat_AS_DOUBLE(number) : PyFloat_AsDouble(number);
}

static int int_load(PyObject *worker, const LoadSlots *slots, int k, long long *out) {
    PyObject *value = load_of(worker, slots, k);
    if (value == NULL) return -1;
    *out = PyLong_AsLongLong(value);
    Py_DECREF(value);
    return (*out == -1 && PyErr_Occurred()) ? -1 : 0;
}

static int float_load(PyObject *worker, const LoadSlots *slots, int k, double *out) {
    PyObject *value = load_of(worker, slots, k);
    if (value == NULL) return -1;
    *out = as_double(value);
    Py_DECREF(value);
    return (*out == -1.0 && PyErr_Occurred()) ? -1 : 0;
}

PyDoc_STRVAR(price_doc,
"price(roster, bits, matches, prompt, outputs, start) -> (cheapest, costs, lacking)\n\n"
"KvAware's pricing of every candidate (kv_policy.py has the same in Python): `roster` is the\n"
"policy's list of (worker, id, turn, per_token, step, per_decoding), `bits` each one's bit in\n"
"the index (at most 64 bits), `matches` a list of (block_size, groups) from PrefixIndex.match.\n"
"lacking[p] = the prompt tokens candidate p lacks (one at least); costs[p] its cost in seconds;\n"
"cheapest = the position of the lowest cost, exact ties to the fewest in flight, then in turn\n"
"from `start`; None when min() of the costs is not below infinity (a NaN first, or none finite).");

static PyObject *price(PyObject *self, PyObject *args) {
    PyObject *roster, *bits, *matches;
    Py_ssize_t prompt, start;
    double outputs;
    if (!PyArg_ParseTuple(args, "O!O!O!ndn:price", &PyList_Type, &roster, &PyList_Type, &bits, &PyList_Type, &matches,
                          &prompt, &outputs, &start))
        return NULL;
    Py_ssize_t count = PyList_GET_SIZE(roster);
    if (PyList_GET_SIZE(bits) != count || count == 0) {
        PyErr_SetString(PyExc_ValueError, "price: roster and bits must be as long as each other, and not empty");
        return NULL;
    }
    /* the groups of every block size, flattened: (tokens held, mask) */
    Py_ssize_t held_count = 0;
    for (Py_ssize_t m = 0; m < PyList_GET_SIZE(matches); m++) {
        PyObject *match = PyList_GET_ITEM(matches, m);
        if (!PyTuple_Check(match) || PyTuple_GET_SIZE(match) != 2 || !PyList_Check(PyTuple_GET_ITEM(match, 1))) {
            PyErr_SetString(PyExc_TypeError, "price: matches is a list of (block_size, groups)");
            return NULL;
        }
        held_count += PyList_GET_SIZE(PyTuple_GET_ITEM(match, 1));
    }
    PyObject *costs = PyList_New(count), *lacking = PyList_New(count);
    long long *in_flights = PyMem_Malloc(sizeof(long long) * count);
    Py_ssize_t *held_tokens = PyMem_Malloc(sizeof(Py_ssize_t) * (held_count + 1));
    uint64_t *held_masks = PyMem_Malloc(sizeof(uint64_t) * (held_count + 1));
    if (costs == NULL || lacking == NULL || in_flights == NULL || held_tokens == NULL || held_masks == NULL) goto fail;
    Py_ssize_t h = 0;
    for (Py_ssize_t m = 0; m < PyList_GET_SIZE(matches); m++) {
        PyObject *match = PyList_GET_ITEM(matches, m), *groups = PyTuple_GET_ITEM(match, 1);
        Py_ssize_t size = PyLong_AsSsize_t(PyTuple_GET_ITEM(match, 0));
        if (size == -1 && PyErr_Occurred()) goto fail;
        for (Py_ssize_t g = 0; g < PyList_GET_SIZE(groups); g++, h++) {
            Py_ssize_t blocks;
            unsigned long long mask;
            if (!PyArg_ParseTuple(PyList_GET_ITEM(groups, g), "nK", &blocks, &mask)) goto fail;
            held_tokens[h] = blocks * size;
            held_masks[h] = mask;
        }
    }
    double lowest = 0.0;
    LoadSlots slots;
    for (Py_ssize_t p = 0; p < count; p++) {
        uint64_t bit = PyLong_AsUnsignedLongLongMask(PyList_GET_ITEM(bits, p));
        if (bit == (uint64_t)-1 && PyErr_Occurred()) goto fail;
        /* the tokens of the blocks it holds: its group's (a worker is in one group at most) */
        Py_ssize_t lacks = prompt;
        for (Py_ssize_t g = 0; g < held_count; g++) {
            if (held_masks[g] & bit) {
                Py_ssize_t longest = prompt - 1;  /* the engine computes one token at least */
                lacks = prompt - (held_tokens[g] < longest ? held_tokens[g] : longest);
                break;
            }
        }
        PyObject *entry = PyList_GET_ITEM(roster, p);
        if (!PyTuple_Check(entry) || PyTuple_GET_SIZE(entry) != 6) {
            PyErr_SetString(PyExc_TypeError, "price: each roster entry is (worker, id, turn, per_token, step, per_decoding)");
            goto fail;
        }
        PyObject *worker = PyTuple_GET_ITEM(entry, 0);
        double turn = as_double(PyTuple_GET_ITEM(entry, 2)), per_token = as_double(PyTuple_GET_ITEM(entry, 3));
        double step = as_double(PyTuple_GET_ITEM(entry, 4)), per_decoding = as_double(PyTuple_GET_ITEM(entry, 5));
        if (PyErr_Occurred()) goto fail;
        if (p == 0) load_slots_of(Py_TYPE(worker), &slots);
        double pending;
        long long in_flight, decoding;
        if (float_load(worker, &slots, PENDING, &pending) < 0 || int_load(worker, &slots, IN_FLIGHT, &in_flight) < 0 ||
            int_load(worker, &slots, DECODING, &decoding) < 0)
            goto fail;
        /* the Python expression's operations in its order, so that the floats are the same (its
         * sums of ints are exact, and so are these of doubles below 2**53 tokens) */
        double prefill = pending + (double)((2 + in_flight - decoding) * (long long)lacks);
        double cost = turn + per_token * prefill + outputs * (step + per_decoding * (double)decoding);
        in_flights[p] = in_flight;
        PyObject *cost_object = PyFloat_FromDouble(cost), *lacks_object = PyLong_FromSsize_t(lacks);
        if (cost_object == NULL || lacks_object == NULL) {
            Py_XDECREF(cost_object);
            Py_XDECREF(lacks_object);
            goto fail;
        }
        PyList_SET_ITEM(costs, p, cost_object);
        PyList_SET_ITEM(lacking, p, lacks_object);
        if (p == 0 || cost < lowest) lowest = cost;  /* as min(): a NaN first stays, a later one is passed */
    }
    PyObject *cheapest;
    if (!(lowest < Py_HUGE_VAL)) {
        cheapest = Py_NewRef(Py_None);
    } else {
        Py_ssize_t best = -1;
        long long best_in_flight = 0, best_turn = 0;
        for (Py_ssize_t p = 0; p < count; p++) {
            if (PyFloat_AS_DOUBLE(PyList_GET_ITEM(costs, p)) != lowest) continue;
            long long turn = ((p - start) % count + count) % count;
            if (best < 0 || in_flights[p] < best_in_flight || (in_flights[p] == best_in_flight && turn < best_turn)) {
                best = p;
                best_in_flight = in_flights[p];
                best_turn = turn;
            }
        }
        cheapest = PyLong_FromSsize_t(best);
        if (cheapest == NULL) goto fail;
    }
    PyMem_Free(in_flights);
    PyMem_Free(held_tokens);
    PyMem_Free(held_masks);
    return Py_BuildValue("(NNN)", cheapest, costs, lacking);
fail:
    PyMem_Free(in_flights);
    PyMem_Free(held_tokens);
    PyMem_Free(held_masks);
    Py_XDECREF(costs);
    Py_XDECREF(lacking);
    return NULL;
}

static PyMethodDef methods[] = {
    {"chained_keys", chained_keys, METH_VARARGS, chained_keys_doc},
    {"walk", walk, METH_VARARGS, walk_doc},
    {"price", price, METH_VARARGS, price_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_blocks", "The kv policy's block keys, index tables and walk, and pricing, compiled.", -1,
    methods,
};

PyMODINIT_FUNC PyInit__blocks(void) {
    load_names[PENDING] = PyUnicode_InternFromString("pending_prefill_tokens");
    load_names[IN_FLIGHT] = PyUnicode_InternFromString("in_flight");
    load_names[DECODING] = PyUnicode_InternFromString("decoding");
    if (load_names[PENDING] == NULL || load_names[IN_FLIGHT] == NULL || load_names[DECODING] == NULL) return NULL;
    if (PyType_Ready(&KeyMasksType) < 0) return NULL;
    PyObject *created = PyModule_Create(&module);
    if (created == NULL) return NULL;
    if (PyModule_AddObjectRef(created, "KeyMasks", (PyObject *)&KeyMasksType) < 0) {
        Py_DECREF(created);
        return NULL;
    }
    return created;
}
