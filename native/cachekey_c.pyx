# cython: language_level=3
"""Cache keys: a canonical msgpack encoding of a step call, hashed to a fixed-size key (the compiled twin).

Same API, bytes and messages as ``cachekey_py`` (read it for the encoding's rules); here the canonical msgpack is
written straight into one growable C buffer (on the C stack while it fits) and hashed there with the vendored
XXH3-128 (``xxhash.h``), so that a step's key builds no intermediate Python object. Maps whose keys are all
``str`` (the usual case) are ordered by an insertion sort on the keys' code points; maps with other keys take a
slower path written like the Python twin (canonical key objects, ordered by their packed bytes).

Errors come in the Python twin's order: the twin first canonicalises the whole value (a ``TypeError`` for an
unsupported type, a ``RecursionError``, errors of user code such as a subclass's ``__str__``) and only then lets
msgpack pack it (a ``UnicodeEncodeError`` for a lone surrogate, msgpack's ``ValueError`` for nesting deeper than
its limit or an item over 4 GiB). Here the second kind is noted when met and raised only once the whole value
was encoded, so that a later error of the first kind wins, as it does in the twin.
"""
from cpython.object cimport PyObject, PyTypeObject, Py_TYPE
from cpython.ref cimport Py_INCREF, Py_DECREF
from cpython.mem cimport PyMem_Malloc, PyMem_Realloc, PyMem_Free
from cpython.bytes cimport PyBytes_FromStringAndSize
from cpython.dict cimport PyDict_Next
from cpython.float cimport PyFloat_AS_DOUBLE
from libc.string cimport memcpy, memcmp, memmove
from libc.stdint cimport uint64_t

from collections import namedtuple
from collections.abc import Mapping
from enum import Enum

__all__ = ["KEY_VERSION", "KEY_SIZE", "canonical", "key_material", "cache_key"]

cdef enum:
    _KEY_VERSION = 2
    _BIGINT = 1  # msgpack ext type for ints beyond 64 bits, as decimal text
    _NEST_LIMIT = 1024  # msgpack-python's DEFAULT_RECURSE_LIMIT: deeper objects are its ValueError
    _STACK_BUFFER = 2048  # bytes of a key built on the C stack before the buffer moves to the heap
    _SMALL_MAP = 12  # str-keyed maps up to this size sort on the C stack
cdef Py_ssize_t _ITEM_LIMIT = 0xFFFFFFFF  # msgpack's largest str, bytes, array or map

KEY_VERSION = _KEY_VERSION  # bump when the key bytes change, so that old entries are never read with a new meaning
KEY_SIZE = 16  # bytes of a key: XXH3-128, canonical (big-endian) form
_INT_MIN, _INT_MAX = -(2**63), 2**64 - 1
_BASES = (bool, int, float, str, bytes)
_Ext = namedtuple("_Ext", "code data")  # msgpack.ExtType's twin (same fields, so same equality and hash)


cdef extern from *:
    """
    #define XXH_INLINE_ALL
    #include "xxhash.h"
    """
    ctypedef struct XXH128_hash_t:
        pass
    ctypedef struct XXH128_canonical_t:
        unsigned char digest[16]
    XXH128_hash_t XXH3_128bits(const void* data, size_t length) nogil
    void XXH128_canonicalFromHash(XXH128_canonical_t* dst, XXH128_hash_t hash) nogil


cdef extern from "Python.h":
    PyTypeObject PyUnicode_Type
    PyTypeObject PyLong_Type
    PyTypeObject PyFloat_Type
    PyTypeObject PyDict_Type
    PyTypeObject PyList_Type
    PyTypeObject PyBool_Type
    PyTypeObject PyBytes_Type
    PyTypeObject PyTuple_Type
    bint PyUnicode_IS_COMPACT_ASCII(object o)
    void* PyUnicode_DATA(object o)
    Py_ssize_t PyUnicode_GET_LENGTH(object o)
    bint PyUnicode_Check(object o)
    const char* _as_utf8 "PyUnicode_AsUTF8AndSize"(object o, Py_ssize_t* size)  # NULL with an exception set
    unsigned int _kind "PyUnicode_KIND"(PyObject* o)
    void* _data "PyUnicode_DATA"(PyObject* o)
    Py_ssize_t _length "PyUnicode_GET_LENGTH"(PyObject* o)
    int _compare "PyUnicode_Compare"(PyObject* a, PyObject* b)
    long long _as_longlong "PyLong_AsLongLongAndOverflow"(object o, int* overflow)
    unsigned long long _as_ulonglong "PyLong_AsUnsignedLongLong"(object o)
    PyObject* PyErr_Occurred()
    void PyErr_Clear()
    void PyErr_Fetch(PyObject** kind, PyObject** value, PyObject** tb)
    void PyErr_Restore(PyObject* kind, PyObject* value, PyObject* tb)
    void PyErr_SetString(object kind, const char* message)
    int Py_EnterRecursiveCall(const char* where)
    void Py_LeaveRecursiveCall()
    Py_ssize_t PyDict_GET_SIZE(object d)
    Py_ssize_t PyList_GET_SIZE(object o)
    PyObject* PyList_GET_ITEM(object o, Py_ssize_t i)
    Py_ssize_t PyTuple_GET_SIZE(object o)
    PyObject* PyTuple_GET_ITEM(object o, Py_ssize_t i)
    Py_ssize_t PyBytes_GET_SIZE(object o)
    char* PyBytes_AS_STRING(object o)


ctypedef struct Enc:
    unsigned char* buf
    Py_ssize_t len
    Py_ssize_t cap
    bint heap
    PyObject* err_kind  # the first msgpack-time error, raised once the whole value is encoded
    PyObject* err_value
    PyObject* err_tb


# -- the buffer -------------------------------------------------------------------------------------------------

cdef inline void _init(Enc* e, unsigned char* storage, Py_ssize_t size) noexcept:
    e.buf = storage
    e.len = 0
    e.cap = size
    e.heap = False
    e.err_kind = e.err_value = e.err_tb = NULL


cdef void _release(Enc* e) noexcept:
    if e.heap:
        PyMem_Free(e.buf)
        e.heap = False
    e.buf = NULL
    _forget(e)


cdef inline void _forget(Enc* e) noexcept:
    cdef PyObject* kind = e.err_kind
    cdef PyObject* value = e.err_value
    cdef PyObject* tb = e.err_tb
    e.err_kind = e.err_value = e.err_tb = NULL
    if kind != NULL:
        Py_DECREF(<object>kind)
    if value != NULL:
        Py_DECREF(<object>value)
    if tb != NULL:
        Py_DECREF(<object>tb)


cdef int _grow(Enc* e, Py_ssize_t n) except -1:
    cdef Py_ssize_t cap = e.cap * 2
    cdef unsigned char* grown
    if cap < e.len + n:
        cap = e.len + n
    if e.heap:
        grown = <unsigned char*>PyMem_Realloc(e.buf, cap)
    else:
        grown = <unsigned char*>PyMem_Malloc(cap)
        if grown != NULL:
            memcpy(grown, e.buf, e.len)
    if grown == NULL:
        raise MemoryError()
    e.buf = grown
    e.cap = cap
    e.heap = True
    return 0


cdef inline int _need(Enc* e, Py_ssize_t n) except -1:
    if e.len + n > e.cap:
        return _grow(e, n)
    return 0


cdef inline void _put1(Enc* e, unsigned int b) noexcept:
    e.buf[e.len] = <unsigned char>b
    e.len += 1


cdef inline void _put2(Enc* e, unsigned int v) noexcept:
    cdef unsigned char* p = e.buf + e.len
    p[0] = <unsigned char>(v >> 8)
    p[1] = <unsigned char>v
    e.len += 2


cdef inline void _put4(Enc* e, unsigned int v) noexcept:
    cdef unsigned char* p = e.buf + e.len
    p[0] = <unsigned char>(v >> 24)
    p[1] = <unsigned char>(v >> 16)
    p[2] = <unsigned char>(v >> 8)
    p[3] = <unsigned char>v
    e.len += 4


cdef inline void _put8(Enc* e, uint64_t v) noexcept:
    cdef unsigned char* p = e.buf + e.len
    cdef int i
    for i in range(8):
        p[i] = <unsigned char>(v >> (56 - 8 * i))
    e.len += 8


cdef inline void _put(Enc* e, const void* data, Py_ssize_t n) noexcept:
    memcpy(e.buf + e.len, data, n)
    e.len += n


cdef void _defer(Enc* e) noexcept:
    """Hold the exception just raised (a msgpack-time error) until the whole value was encoded."""
    if e.err_kind == NULL:
        PyErr_Fetch(&e.err_kind, &e.err_value, &e.err_tb)
    else:
        PyErr_Clear()


cdef void _defer_value_error(Enc* e, const char* message) noexcept:
    if e.err_kind == NULL:
        PyErr_SetString(ValueError, message)
        PyErr_Fetch(&e.err_kind, &e.err_value, &e.err_tb)


cdef int _raise_deferred(Enc* e) except -1:
    if e.err_kind != NULL:
        PyErr_Restore(e.err_kind, e.err_value, e.err_tb)
        e.err_kind = e.err_value = e.err_tb = NULL
        return -1
    return 0


cdef inline int _enter() except -1:
    # The Python twin spends two frames per level (``_canon`` and its comprehension): count two, so that both
    # twins give up at about the same depth.
    if Py_EnterRecursiveCall(" while encoding a cache key"):
        return -1
    if Py_EnterRecursiveCall(" while encoding a cache key"):
        Py_LeaveRecursiveCall()
        return -1
    return 0


cdef inline void _leave() noexcept:
    Py_LeaveRecursiveCall()
    Py_LeaveRecursiveCall()


# -- scalars ----------------------------------------------------------------------------------------------------

cdef int _head(Enc* e, Py_ssize_t n, unsigned int fix, unsigned int fix_max, unsigned int b8,
               unsigned int b16, unsigned int b32) except -1:
    """A length header: the fix form under ``fix_max``, else the 8-bit (when ``b8``), 16-bit or 32-bit form."""
    _need(e, 5)
    if n < fix_max:
        _put1(e, fix | <unsigned int>n)
    elif b8 and n < 0x100:
        _put1(e, b8)
        _put1(e, <unsigned int>n)
    elif n < 0x10000:
        _put1(e, b16)
        _put2(e, <unsigned int>n)
    else:
        _put1(e, b32)
        _put4(e, <unsigned int>n)
    return 0


cdef inline int _raw_str(Enc* e, const char* data, Py_ssize_t n) except -1:
    if n > _ITEM_LIMIT:
        _defer_value_error(e, b"unicode string is too large")
        return 0
    if n < 32:
        _need(e, 1 + n)
        _put1(e, 0xa0 | <unsigned int>n)
    elif n < 0x100:
        _need(e, 2 + n)
        _put1(e, 0xd9)
        _put1(e, <unsigned int>n)
    else:
        _head(e, n, 0xa0, 32, 0xd9, 0xda, 0xdb)
        _need(e, n)
    _put(e, data, n)
    return 0


cdef int _str(Enc* e, object s) except -1:
    """Any ``str`` (a subclass by its own characters, as msgpack packs it), as UTF-8."""
    cdef Py_ssize_t n
    cdef const char* data
    if PyUnicode_IS_COMPACT_ASCII(s):
        return _raw_str(e, <const char*>PyUnicode_DATA(s), PyUnicode_GET_LENGTH(s))
    data = _as_utf8(s, &n)
    if data == NULL:  # a lone surrogate: msgpack's UnicodeEncodeError, when the twin packs
        _defer(e)
        return 0
    return _raw_str(e, data, n)


cdef int _bin(Enc* e, object b) except -1:  # an exact bytes
    cdef Py_ssize_t n = PyBytes_GET_SIZE(b)
    if n > _ITEM_LIMIT:
        _defer_value_error(e, b"bytes object is too large")
        return 0
    _head(e, n, 0, 0, 0xc4, 0xc5, 0xc6)
    _need(e, n)
    _put(e, PyBytes_AS_STRING(b), n)
    return 0


cdef int _ext(Enc* e, int code, object data) except -1:  # ``data``: bytes
    cdef Py_ssize_t n = PyBytes_GET_SIZE(data)
    _need(e, 6 + n)
    if n == 1 or n == 2 or n == 4 or n == 8 or n == 16:
        _put1(e, 0xd4 if n == 1 else 0xd5 if n == 2 else 0xd6 if n == 4 else 0xd7 if n == 8 else 0xd8)
    elif n < 0x100:
        _put1(e, 0xc7)
        _put1(e, <unsigned int>n)
    elif n < 0x10000:
        _put1(e, 0xc8)
        _put2(e, <unsigned int>n)
    else:
        _put1(e, 0xc9)
        _put4(e, <unsigned int>n)
    _put1(e, <unsigned int>(code & 0xff))
    _put(e, PyBytes_AS_STRING(data), n)
    return 0


cdef inline int _uint(Enc* e, unsigned long long v) except -1:
    _need(e, 9)
    if v < 0x80:
        _put1(e, <unsigned int>v)
    elif v < 0x100:
        _put1(e, 0xcc)
        _put1(e, <unsigned int>v)
    elif v < 0x10000:
        _put1(e, 0xcd)
        _put2(e, <unsigned int>v)
    elif v < 0x100000000:
        _put1(e, 0xce)
        _put4(e, <unsigned int>v)
    else:
        _put1(e, 0xcf)
        _put8(e, v)
    return 0


cdef inline int _sint(Enc* e, long long v) except -1:  # v < 0
    _need(e, 9)
    if v >= -32:
        _put1(e, <unsigned int>(v & 0xff))
    elif v >= -0x80:
        _put1(e, 0xd0)
        _put1(e, <unsigned int>(v & 0xff))
    elif v >= -0x8000:
        _put1(e, 0xd1)
        _put2(e, <unsigned int>(v & 0xffff))
    elif v >= -0x80000000:
        _put1(e, 0xd2)
        _put4(e, <unsigned int>(v & 0xffffffff))
    else:
        _put1(e, 0xd3)
        _put8(e, <uint64_t>v)
    return 0


cdef int _int(Enc* e, object o) except -1:  # an exact int
    cdef int overflow = 0
    cdef long long v = _as_longlong(o, &overflow)
    cdef unsigned long long u
    if overflow == 0:
        if v >= 0:
            return _uint(e, <unsigned long long>v)
        return _sint(e, v)
    if overflow > 0:
        u = _as_ulonglong(o)
        if not (u == <unsigned long long>-1 and PyErr_Occurred() != NULL):
            return _uint(e, u)
        PyErr_Clear()
    return _ext(e, _BIGINT, str(o).encode())  # beyond 64 bits: the decimal text, as ext type 1


cdef inline int _float(Enc* e, object o) except -1:  # an exact float, as float 64 (msgpack's default)
    cdef double d = PyFloat_AS_DOUBLE(o)
    cdef uint64_t bits
    memcpy(&bits, &d, 8)
    _need(e, 9)
    _put1(e, 0xcb)
    _put8(e, bits)
    return 0


# -- values -----------------------------------------------------------------------------------------------------

cdef int _enc(Enc* e, object o, int depth) except -1:
    """Append the canonical msgpack of ``o`` (at nesting ``depth`` of the packed structure)."""
    cdef PyTypeObject* kind = Py_TYPE(o)
    if depth > _NEST_LIMIT:
        _defer_value_error(e, b"recursion limit exceeded.")
    if kind == &PyUnicode_Type:
        return _str(e, o)
    if kind == &PyLong_Type:
        return _int(e, o)
    if kind == &PyFloat_Type:
        return _float(e, o)
    if kind == &PyDict_Type:
        return _dict(e, o, depth)
    if kind == &PyList_Type:
        return _list(e, o, depth)
    if o is None:
        _need(e, 1)
        _put1(e, 0xc0)
        return 0
    if kind == &PyBool_Type:
        _need(e, 1)
        _put1(e, 0xc3 if o is True else 0xc2)
        return 0
    if kind == &PyBytes_Type:
        return _bin(e, o)
    if kind == &PyTuple_Type:
        return _tuple(e, o, depth)
    return _other(e, o, depth)


cdef inline bint _str_before(PyObject* a, PyObject* b) noexcept:
    """``a < b`` for exact strs: code-point order, as ``sorted`` has it."""
    cdef Py_ssize_t na, nb
    cdef int c
    if _kind(a) == 1 and _kind(b) == 1:  # Latin-1 (ASCII included): one byte a character
        na = _length(a)
        nb = _length(b)
        c = memcmp(_data(a), _data(b), na if na < nb else nb)
        return c < 0 or (c == 0 and na < nb)
    return _compare(a, b) < 0  # cannot fail on two strs


cdef int _dict(Enc* e, object d, int depth) except -1:  # an exact dict
    cdef Py_ssize_t n = PyDict_GET_SIZE(d), pos = 0, i, j, count = 0
    cdef PyObject* key
    cdef PyObject* value
    cdef PyObject* small[2 * _SMALL_MAP]
    cdef PyObject** pairs = small
    cdef bint all_str = True
    if n == 0:
        _need(e, 1)
        _put1(e, 0x80)
        return 0
    if n > _SMALL_MAP:
        while PyDict_Next(d, &pos, &key, &value):
            if type(<object>key) is not str:
                return _mixed_map(e, list((<dict>d).items()), depth)
        return _str_map(e, d, sorted(d), depth)
    # One pass: the key-value pairs, held (user code met below may change the dict), put in key order by
    # insertion sort, unless a key is not an exact str.
    while count < n and PyDict_Next(d, &pos, &key, &value):
        if type(<object>key) is not str:
            all_str = False
            break
        Py_INCREF(<object>key)
        Py_INCREF(<object>value)
        i = count
        while i > 0 and _str_before(key, pairs[2 * (i - 1)]):
            pairs[2 * i] = pairs[2 * (i - 1)]
            pairs[2 * i + 1] = pairs[2 * (i - 1) + 1]
            i -= 1
        pairs[2 * i] = key
        pairs[2 * i + 1] = value
        count += 1
    try:
        if not all_str:
            return _mixed_map(e, list((<dict>d).items()), depth)
        _head(e, count, 0x80, 16, 0, 0xde, 0xdf)
        _enter()
        try:
            for j in range(count):
                _str(e, <object>pairs[2 * j])
                _enc(e, <object>pairs[2 * j + 1], depth + 1)
        finally:
            _leave()
    finally:
        for j in range(2 * count):
            Py_DECREF(<object>pairs[j])
    return 0


cdef int _str_map(Enc* e, object mapping, list keys, int depth) except -1:
    """A map whose keys (``keys``, sorted) are all exact strs: ``{k: mapping[k] for k in keys}``."""
    cdef Py_ssize_t n = len(keys), i
    _head(e, n, 0x80, 16, 0, 0xde, 0xdf)
    _enter()
    try:
        for i in range(n):
            key = keys[i]
            _str(e, key)
            _enc(e, mapping[key], depth + 1)
    finally:
        _leave()
    return 0


cdef int _list(Enc* e, object items, int depth) except -1:  # an exact list
    cdef Py_ssize_t n = PyList_GET_SIZE(items), i = 0, start = e.len
    _head(e, n, 0x90, 16, 0, 0xdc, 0xdd)
    _enter()
    try:
        while i < PyList_GET_SIZE(items):  # as a comprehension iterates: the list as it is at each step
            item = <object>PyList_GET_ITEM(items, i)
            _enc(e, item, depth + 1)
            i += 1
    finally:
        _leave()
    if i != n:  # user code met on the way changed the list's length: the header says what was encoded
        _reheader(e, start, n, i)
    return 0


cdef int _reheader(Enc* e, Py_ssize_t start, Py_ssize_t old, Py_ssize_t new) except -1:
    cdef Py_ssize_t end = e.len, old_size, new_size
    cdef unsigned char header[5]
    e.len = start
    _head(e, old, 0x90, 16, 0, 0xdc, 0xdd)
    old_size = e.len - start
    e.len = start
    _head(e, new, 0x90, 16, 0, 0xdc, 0xdd)
    new_size = e.len - start
    memcpy(header, e.buf + start, new_size)
    e.len = end
    _need(e, new_size)
    memmove(e.buf + start + new_size, e.buf + start + old_size, end - start - old_size)
    memcpy(e.buf + start, header, new_size)
    e.len = end - old_size + new_size
    return 0


cdef int _tuple(Enc* e, object items, int depth) except -1:  # an exact tuple: an array
    cdef Py_ssize_t n = PyTuple_GET_SIZE(items), i
    _head(e, n, 0x90, 16, 0, 0xdc, 0xdd)
    _enter()
    try:
        for i in range(n):
            _enc(e, <object>PyTuple_GET_ITEM(items, i), depth + 1)
    finally:
        _leave()
    return 0


cdef int _other(Enc* e, object o, int depth) except -1:
    """Everything but the exact base types, in the Python twin's order of checks."""
    if type(o) is _Ext:  # only in a canonical map key (an int beyond 64 bits)
        return _ext(e, o.code, o.data)
    if isinstance(o, Mapping):
        if not o:
            _need(e, 1)
            _put1(e, 0x80)
            return 0
        keys = list(o)
        if all(type(k) is str for k in keys):
            return _str_map(e, o, list(dict.fromkeys(sorted(keys))), depth)
        return _mixed_map(e, list(o.items()), depth)
    if isinstance(o, (list, tuple)):
        return _list(e, [v for v in o], depth)
    _enter()
    try:
        if isinstance(o, Enum):  # a member as its value, like the literal it stands for
            return _enc(e, o.value, depth)
        for base in _BASES:  # other subclasses (numpy floats, ...) as their base
            if isinstance(o, base):
                return _enc(e, base(o), depth)
    finally:
        _leave()
    raise TypeError(f"cache key: cannot encode a value of type {type(o).__name__}")


cdef int _mixed_map(Enc* e, list items, int depth) except -1:
    """A map with a key that is not an exact str, as the Python twin builds it: canonical keys (tuples as lists,
    and so on) in the order of their packed bytes, then ``{key: value}`` (keys equal once canonical are one)."""
    cdef Enc sub
    cdef unsigned char storage[64]
    cdef list canon_keys = [_canon_key(k) for k, _ in items]
    cdef list key_bytes = [_key_bytes(k) for k in canon_keys]
    order = sorted(range(len(items)), key=key_bytes.__getitem__)
    entries = {}  # canonical key -> [its packed bytes, the value's bytes, the value's deferred error]
    _enter()
    try:
        for i in order:
            _init(&sub, storage, 64)
            try:
                _enc(&sub, items[i][1], depth + 1)
                value = PyBytes_FromStringAndSize(<char*>sub.buf, sub.len)
                error = _take_error(&sub)
            finally:
                _release(&sub)
            entry = entries.get(canon_keys[i], None)  # raises for an unhashable key, as the twin's dict does
            if entry is None:
                entries[canon_keys[i]] = [key_bytes[i], value, error]
            else:
                entry[1], entry[2] = value, error
    finally:
        _leave()
    _head(e, len(entries), 0x80, 16, 0, 0xde, 0xdf)
    for packed_key, value, error in entries.values():
        _need(e, len(packed_key) + len(value))
        _put(e, PyBytes_AS_STRING(packed_key), len(packed_key))
        _put(e, PyBytes_AS_STRING(value), len(value))
        if error is not None and e.err_kind == NULL:
            _adopt(e, error)
    return 0


cdef object _take_error(Enc* sub):
    """The deferred error of ``sub`` as ``(type, value, traceback)`` (or None), taken out of it."""
    if sub.err_kind == NULL:
        return None
    error = (<object>sub.err_kind, None if sub.err_value == NULL else <object>sub.err_value,
             None if sub.err_tb == NULL else <object>sub.err_tb)
    _forget(sub)
    return error


cdef void _adopt(Enc* e, tuple error) noexcept:
    cdef object kind = error[0], value = error[1], tb = error[2]
    Py_INCREF(kind)
    e.err_kind = <PyObject*>kind
    if value is not None:
        Py_INCREF(value)
        e.err_value = <PyObject*>value
    if tb is not None:
        Py_INCREF(tb)
        e.err_tb = <PyObject*>tb


cdef object _canon_key(object key):
    if not isinstance(key, tuple):
        return _canon(key)
    _enter()
    try:
        return tuple([_canon_key(k) for k in key])
    finally:
        _leave()


cdef object _key_bytes(object key):
    """A canonical key's packed bytes (its sort key); its msgpack-time errors are raised at once, as in the twin."""
    cdef Enc sub
    cdef unsigned char storage[256]
    _init(&sub, storage, 256)
    try:
        _enc(&sub, key, 0)
        _raise_deferred(&sub)
        return PyBytes_FromStringAndSize(<char*>sub.buf, sub.len)
    finally:
        _release(&sub)


cdef object _canon(object value):
    """The Python twin's ``_canon`` (plain data, maps in canonical order): map keys need canonical objects."""
    kind = type(value)
    if kind is str or kind is float or kind is bool or value is None or kind is bytes:
        return value
    if kind is int:
        return value if _INT_MIN <= value <= _INT_MAX else _Ext(_BIGINT, str(value).encode())
    _enter()
    try:
        if kind is dict or isinstance(value, Mapping):
            if not value:
                return {}
            if all(type(k) is str for k in value):
                return {k: _canon(value[k]) for k in sorted(value)}
            pairs = [(_canon_key(k), v) for k, v in value.items()]
            packed = [_key_bytes(k) for k, _ in pairs]
            return {pairs[i][0]: _canon(pairs[i][1]) for i in sorted(range(len(pairs)), key=packed.__getitem__)}
        if kind is list or isinstance(value, (list, tuple)):
            return [_canon(v) for v in value]
        if isinstance(value, Enum):
            return _canon(value.value)
        for base in _BASES:
            if isinstance(value, base):
                return _canon(base(value))
    finally:
        _leave()
    raise TypeError(f"cache key: cannot encode a value of type {kind.__name__}")


# -- the API ----------------------------------------------------------------------------------------------------

def canonical(value):
    """The canonical msgpack bytes of one value; raises TypeError for a value msgpack cannot hold."""
    cdef Enc e
    cdef unsigned char storage[_STACK_BUFFER]
    _init(&e, storage, _STACK_BUFFER)
    try:
        _enc(&e, value, 0)
        _raise_deferred(&e)
        return PyBytes_FromStringAndSize(<char*>e.buf, e.len)
    finally:
        _release(&e)


cdef int _material(Enc* e, object node_fingerprint, object inputs, object lm_identity, object options,
                   object var_values) except -1:
    _need(e, 2)
    _put1(e, 0x96)
    _put1(e, _KEY_VERSION)
    _str(e, node_fingerprint)
    _enc(e, inputs, 1)
    _str(e, lm_identity)
    _enc(e, options, 1)
    _enc(e, var_values, 1)
    return _raise_deferred(e)


def key_material(node_fingerprint, inputs, lm_identity, options, var_values):
    """The exact bytes ``cache_key`` hashes: ``[KEY_VERSION, fingerprint, inputs, lm, options, vars]``."""
    cdef Enc e
    cdef unsigned char storage[_STACK_BUFFER]
    if not (PyUnicode_Check(node_fingerprint) and PyUnicode_Check(lm_identity)):
        return _python_twin().key_material(node_fingerprint, inputs, lm_identity, options, var_values)
    _init(&e, storage, _STACK_BUFFER)
    try:
        _material(&e, node_fingerprint, inputs, lm_identity, options, var_values)
        return PyBytes_FromStringAndSize(<char*>e.buf, e.len)
    finally:
        _release(&e)


def cache_key(node_fingerprint, inputs, lm_identity, options, var_values):
    """A ``KEY_SIZE``-byte key for one step call. Pass the lm's identity (model and endpoint), never its key."""
    cdef Enc e
    cdef unsigned char storage[_STACK_BUFFER]
    cdef XXH128_canonical_t digest
    if not (PyUnicode_Check(node_fingerprint) and PyUnicode_Check(lm_identity)):
        return _python_twin().cache_key(node_fingerprint, inputs, lm_identity, options, var_values)
    _init(&e, storage, _STACK_BUFFER)
    try:
        _material(&e, node_fingerprint, inputs, lm_identity, options, var_values)
        XXH128_canonicalFromHash(&digest, XXH3_128bits(e.buf, e.len))
        return PyBytes_FromStringAndSize(<char*>digest.digest, 16)
    finally:
        _release(&e)


def _python_twin():
    """The Python twin, for a fingerprint or lm identity that is not a str (msgpack packs those as it likes)."""
    from dspex.native import cachekey_py
    return cachekey_py
