/* The write guard of a segment: atomics on its header page.
 *
 * Extension module distributed_grid.memory.shm._seqguard. Each function takes a writable buffer
 * over the first 4096 bytes (or more) of a segment and works on two fields of the layout that
 * distributed_grid/memory/shm/layout.py writes down:
 *
 *     64      8     sequence (u64): +1 when a write starts, +1 when it ends
 *     128     2048  64 write slots of 32 bytes: owner u64 (0 = free), start u64, end u64, spare
 *
 * Mechanism only: the protocol, and why these orderings make it correct, are stated in
 * distributed_grid/memory/shm/seqguard.py. The pure-Python twin is seqguard_py.py. Every call is a
 * few dozen instructions on a mapped page, so none releases the GIL.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "the segment layout is little-endian; this host is not (the pure-Python twin is used)"
#endif

#define GUARD_SIZE 4096
#define SEQUENCE_OFFSET 64
#define SLOTS_OFFSET 128
#define SLOT_COUNT 64
#define SLOT_SIZE 32

typedef struct {
    uint64_t owner; /* 0 = free */
    uint64_t start;
    uint64_t end;   /* 0 while the claim is being published: overlaps everything */
    uint64_t spare;
} slot_t;

typedef struct {
    Py_buffer view;
    uint64_t *sequence;
    slot_t *slots;
} header_t;

/* Take the buffer and find the fields; on failure an exception is set and nothing is held. */
static int
header_open(PyObject *obj, header_t *h)
{
    if (PyObject_GetBuffer(obj, &h->view, PyBUF_WRITABLE) < 0)
        return -1;
    if (h->view.len < GUARD_SIZE) {
        PyErr_Format(PyExc_ValueError, "the guard needs a buffer of %d bytes or more, got %zd",
                     GUARD_SIZE, h->view.len);
        PyBuffer_Release(&h->view);
        return -1;
    }
    if ((uintptr_t)h->view.buf % 8 != 0) {
        PyErr_SetString(PyExc_ValueError, "the guard's buffer is not 8-byte aligned");
        PyBuffer_Release(&h->view);
        return -1;
    }
    h->sequence = (uint64_t *)((char *)h->view.buf + SEQUENCE_OFFSET);
    h->slots = (slot_t *)((char *)h->view.buf + SLOTS_OFFSET);
    return 0;
}

static void
header_close(header_t *h)
{
    PyBuffer_Release(&h->view);
}

/* A u64 argument; ValueError (not OverflowError) for a negative or too large int. */
static int
u64_arg(PyObject *obj, const char *what, uint64_t *out)
{
    if (!PyLong_Check(obj)) {
        PyErr_Format(PyExc_TypeError, "%s must be an int, not %.100s", what,
                     Py_TYPE(obj)->tp_name);
        return -1;
    }
    unsigned long long v = PyLong_AsUnsignedLongLong(obj);
    if (v == (unsigned long long)-1 && PyErr_Occurred()) {
        PyErr_Clear();
        PyErr_Format(PyExc_ValueError, "%s must be in [0, 2**64), got %R", what, obj);
        return -1;
    }
    *out = (uint64_t)v;
    return 0;
}

static int
check_nargs(Py_ssize_t nargs, Py_ssize_t want, const char *name)
{
    if (nargs != want) {
        PyErr_Format(PyExc_TypeError, "%s() takes %zd arguments (%zd given)", name, want, nargs);
        return -1;
    }
    return 0;
}

/* A slot owner: any u64 but 0, which marks a free slot. */
static int
owner_arg(PyObject *obj, uint64_t *out)
{
    if (u64_arg(obj, "owner", out) < 0)
        return -1;
    if (*out == 0) {
        PyErr_SetString(PyExc_ValueError, "owner must not be 0 (0 marks a free slot)");
        return -1;
    }
    return 0;
}

/* A byte range [start, end) that holds at least one byte. */
static int
range_args(PyObject *first, PyObject *second, uint64_t *start, uint64_t *end)
{
    if (u64_arg(first, "start", start) < 0 || u64_arg(second, "end", end) < 0)
        return -1;
    if (*start >= *end) {
        PyErr_Format(PyExc_ValueError, "start must be below end, got [%llu, %llu)",
                     (unsigned long long)*start, (unsigned long long)*end);
        return -1;
    }
    return 0;
}

static PyObject *
sg_sequence(PyObject *mod, PyObject *const *args, Py_ssize_t nargs)
{
    header_t h;
    if (check_nargs(nargs, 1, "sequence") < 0 || header_open(args[0], &h) < 0)
        return NULL;
    uint64_t seq = __atomic_load_n(h.sequence, __ATOMIC_ACQUIRE);
    header_close(&h);
    return PyLong_FromUnsignedLongLong(seq);
}

static PyObject *
sg_claim(PyObject *mod, PyObject *const *args, Py_ssize_t nargs)
{
    uint64_t owner, start, end;
    header_t h;
    if (check_nargs(nargs, 4, "claim") < 0 || owner_arg(args[1], &owner) < 0 ||
        range_args(args[2], args[3], &start, &end) < 0)
        return NULL;
    if (header_open(args[0], &h) < 0)
        return NULL;
    long found = -1;
    for (long i = 0; i < SLOT_COUNT; i++) {
        slot_t *s = &h.slots[i];
        uint64_t expected = 0;
        if (__atomic_load_n(&s->owner, __ATOMIC_RELAXED) != 0)
            continue; /* taken: skip the locked instruction */
        if (!__atomic_compare_exchange_n(&s->owner, &expected, owner, 0, __ATOMIC_ACQ_REL,
                                         __ATOMIC_RELAXED))
            continue;
        __atomic_store_n(&s->start, start, __ATOMIC_RELEASE);
        __atomic_store_n(&s->end, end, __ATOMIC_RELEASE);
        __atomic_fetch_add(h.sequence, 1, __ATOMIC_SEQ_CST);
        /* The caller's data stores come next: none may become visible before the bump. */
        __atomic_thread_fence(__ATOMIC_RELEASE);
        found = i;
        break;
    }
    header_close(&h);
    return PyLong_FromLong(found);
}

static PyObject *
sg_release(PyObject *mod, PyObject *const *args, Py_ssize_t nargs)
{
    uint64_t slot, owner;
    header_t h;
    if (check_nargs(nargs, 3, "release") < 0 || u64_arg(args[1], "slot", &slot) < 0 ||
        owner_arg(args[2], &owner) < 0)
        return NULL;
    if (slot >= SLOT_COUNT) {
        PyErr_Format(PyExc_ValueError, "slot must be in [0, %d), got %llu", SLOT_COUNT,
                     (unsigned long long)slot);
        return NULL;
    }
    if (header_open(args[0], &h) < 0)
        return NULL;
    slot_t *s = &h.slots[slot];
    /* The bump is a release: the data stores before it are seen by whoever sees it. */
    __atomic_fetch_add(h.sequence, 1, __ATOMIC_SEQ_CST);
    int held = 0;
    if (__atomic_load_n(&s->owner, __ATOMIC_ACQUIRE) == owner) {
        uint64_t expected = owner;
        /* end first: until the owner word is cleared the slot reads as "overlaps all", so a
         * claim can never publish its range and then lose its end to this store. */
        __atomic_store_n(&s->end, 0, __ATOMIC_RELEASE);
        held = __atomic_compare_exchange_n(&s->owner, &expected, 0, 0, __ATOMIC_RELEASE,
                                           __ATOMIC_RELAXED);
    }
    header_close(&h);
    return PyBool_FromLong(held);
}

static PyObject *
sg_begin_read(PyObject *mod, PyObject *const *args, Py_ssize_t nargs)
{
    uint64_t start, end;
    header_t h;
    if (check_nargs(nargs, 3, "begin_read") < 0 ||
        range_args(args[1], args[2], &start, &end) < 0)
        return NULL;
    if (header_open(args[0], &h) < 0)
        return NULL;
    uint64_t seq = __atomic_load_n(h.sequence, __ATOMIC_ACQUIRE);
    uint64_t busy = 0;
    for (long i = 0; i < SLOT_COUNT; i++) {
        slot_t *s = &h.slots[i];
        uint64_t owner = __atomic_load_n(&s->owner, __ATOMIC_ACQUIRE);
        if (owner == 0)
            continue;
        uint64_t e = __atomic_load_n(&s->end, __ATOMIC_ACQUIRE);
        uint64_t b = __atomic_load_n(&s->start, __ATOMIC_ACQUIRE);
        if (e == 0 || (b < end && start < e)) {
            busy = owner;
            break;
        }
    }
    header_close(&h);
    PyObject *out = PyTuple_New(2);
    PyObject *first = PyLong_FromUnsignedLongLong(seq);
    PyObject *second = PyLong_FromUnsignedLongLong(busy);
    if (out == NULL || first == NULL || second == NULL) {
        Py_XDECREF(out);
        Py_XDECREF(first);
        Py_XDECREF(second);
        return NULL;
    }
    PyTuple_SET_ITEM(out, 0, first);
    PyTuple_SET_ITEM(out, 1, second);
    return out;
}

static PyObject *
sg_end_read(PyObject *mod, PyObject *const *args, Py_ssize_t nargs)
{
    uint64_t seq;
    header_t h;
    if (check_nargs(nargs, 2, "end_read") < 0 || u64_arg(args[1], "seq", &seq) < 0)
        return NULL;
    if (header_open(args[0], &h) < 0)
        return NULL;
    /* The copy's loads are done before the sequence is looked at again. */
    __atomic_thread_fence(__ATOMIC_ACQUIRE);
    uint64_t now = __atomic_load_n(h.sequence, __ATOMIC_RELAXED);
    header_close(&h);
    return PyBool_FromLong(now == seq);
}

static PyObject *
sg_occupied(PyObject *mod, PyObject *const *args, Py_ssize_t nargs)
{
    header_t h;
    if (check_nargs(nargs, 1, "occupied") < 0 || header_open(args[0], &h) < 0)
        return NULL;
    PyObject *out = PyList_New(0);
    for (long i = 0; out != NULL && i < SLOT_COUNT; i++) {
        slot_t *s = &h.slots[i];
        uint64_t owner = __atomic_load_n(&s->owner, __ATOMIC_ACQUIRE);
        if (owner == 0)
            continue;
        uint64_t e = __atomic_load_n(&s->end, __ATOMIC_ACQUIRE);
        uint64_t b = __atomic_load_n(&s->start, __ATOMIC_ACQUIRE);
        PyObject *item = Py_BuildValue("(lKKK)", i, (unsigned long long)owner,
                                       (unsigned long long)b, (unsigned long long)e);
        if (item == NULL || PyList_Append(out, item) < 0)
            Py_CLEAR(out);
        Py_XDECREF(item);
    }
    header_close(&h);
    return out;
}

static PyMethodDef sg_methods[] = {
    {"sequence", (PyCFunction)(void (*)(void))sg_sequence, METH_FASTCALL,
     "sequence(buf) -> int: acquire load of the sequence word."},
    {"claim", (PyCFunction)(void (*)(void))sg_claim, METH_FASTCALL,
     "claim(buf, owner, start, end) -> int: take a free slot for [start, end); -1 if none."},
    {"release", (PyCFunction)(void (*)(void))sg_release, METH_FASTCALL,
     "release(buf, slot, owner) -> bool: bump the sequence, free the slot if owner holds it."},
    {"begin_read", (PyCFunction)(void (*)(void))sg_begin_read, METH_FASTCALL,
     "begin_read(buf, start, end) -> (sequence, owner of an overlapping slot or 0)."},
    {"end_read", (PyCFunction)(void (*)(void))sg_end_read, METH_FASTCALL,
     "end_read(buf, seq) -> bool: whether the sequence still equals seq."},
    {"occupied", (PyCFunction)(void (*)(void))sg_occupied, METH_FASTCALL,
     "occupied(buf) -> [(slot, owner, start, end)] of the taken slots."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef sg_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "_seqguard",
    .m_doc = "Atomics on a segment's header page: the write guard's mechanism (see seqguard.py).",
    .m_size = -1,
    .m_methods = sg_methods,
};

PyMODINIT_FUNC
PyInit__seqguard(void)
{
    PyObject *m = PyModule_Create(&sg_module);
    if (m == NULL)
        return NULL;
    if (PyModule_AddIntConstant(m, "GUARD_SIZE", GUARD_SIZE) < 0 ||
        PyModule_AddIntConstant(m, "SEQUENCE_OFFSET", SEQUENCE_OFFSET) < 0 ||
        PyModule_AddIntConstant(m, "SLOTS_OFFSET", SLOTS_OFFSET) < 0 ||
        PyModule_AddIntConstant(m, "SLOT_COUNT", SLOT_COUNT) < 0 ||
        PyModule_AddIntConstant(m, "SLOT_SIZE", SLOT_SIZE) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
