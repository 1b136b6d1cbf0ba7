# cython: language_level=3
"""Coerce an LM's output values to their field types and check ``where`` constraints (SPEC §3.4), compiled.

The compiled twin of ``validate_py`` (the readable reference): same API, same results, same errors (path,
value, rule, message). Every step's output is validated, often several times per step with retries, so this
is on the hot path: ``compile_validator`` turns fields once into a tree of ``cdef`` coercer and checker
objects (vtable calls, no closures), values of the expected exact type take a few-instruction fast path, and
the common constraint shapes (a literal bound against the value or against ``len(value)``, chained
``0 <= value <= 1``) compare C numbers, and a dict that holds exactly the fields in field order (an LM's
JSON, usually) is copied whole rather than looked up and rebuilt key by key. Rule texts and the lenient
spellings are computed at compile time from ``validate_py``'s own helpers and tables, so both twins speak
with one voice; paths are built only when a value fails.

One deliberate difference, invisible to real data: type tests look at an object's real type, as CPython's
``isinstance`` does for every ordinary object; a proxy that lies through a ``__class__`` property is judged
by what it is, not by what it claims.
"""
cimport cython
from cpython.float cimport PyFloat_AS_DOUBLE
from cpython.long cimport PyLong_AsLongLongAndOverflow
from cpython.number cimport PyNumber_Float, PyNumber_Long
from cpython.object cimport (Py_EQ, Py_GE, Py_GT, Py_LE, Py_LT, Py_NE, PyObject, PyObject_RichCompare,
                             PyObject_Str)
from cpython.unicode cimport Py_UNICODE_ISSPACE
from libc.math cimport floor, isfinite
from libc.string cimport memcmp

import json
import math
import re

from dspex.engines.base import ValidationError
from dspex.ir import expr as ir
from dspex.ir.types import AnyType, DictOf, EnumOf, ListOf, NoneType, OptionalOf, Prim, Record
from dspex.native.validate_py import (_ENUM_NOISE, _FALSE, _FLIP, _INT_TEXT, _NULLS, _QUOTES, _TRUE,
                                      _reads_value, _subject)

cdef extern from "Python.h":
    bint PyUnicode_Check(object o)
    bint PyUnicode_CheckExact(object o)
    bint PyUnicode_IS_ASCII(object o)
    Py_ssize_t PyUnicode_GET_LENGTH(object o)
    void* PyUnicode_DATA(object o)
    bint PyLong_Check(object o)
    bint PyLong_CheckExact(object o)
    bint PyFloat_Check(object o)
    bint PyFloat_CheckExact(object o)
    bint PyBool_Check(object o)
    bint PyList_Check(object o)
    bint PyList_CheckExact(object o)
    Py_ssize_t PyList_GET_SIZE(object o)
    PyObject* PyList_GET_ITEM(object o, Py_ssize_t i)
    list PyList_GetSlice(object o, Py_ssize_t low, Py_ssize_t high)
    bint PyDict_Check(object o)
    bint PyDict_CheckExact(object o)
    PyObject* PyDict_GetItemWithError(object d, object key) except? NULL
    Py_ssize_t PyDict_GET_SIZE(object d)
    bint PyDict_Next(object d, Py_ssize_t* pos, PyObject** key, PyObject** value)
    dict PyDict_Copy(object d)
    Py_ssize_t PyObject_Length(object o) except -1

__all__ = ["Validator", "compile_validator"]

cdef object _MISSING = object()
cdef object _json_loads = json.loads
cdef object _int_fullmatch = _INT_TEXT.fullmatch
cdef dict _OPCODES = {"==": Py_EQ, "!=": Py_NE, "<": Py_LT, "<=": Py_LE, ">": Py_GT, ">=": Py_GE}
cdef long long _EXACT = 9007199254740992  # 2 ** 53: every int up to here is a double, exactly


class _Invalid(Exception):
    """A value broke a rule somewhere below a field; parents add their path steps as it propagates."""

    def __init__(self, rule, value):
        self.rule, self.value = rule, value
        self.steps = []  # innermost first


# --- the validator --------------------------------------------------------------------------------------------

cdef class _Field:
    """One field of a plan: its name, coercer, checker (or None) and what a missing value becomes."""

    cdef object name
    cdef _Coerce coerce
    cdef _Check check
    cdef object default
    cdef bint required

    def __cinit__(self, name, _Coerce coerce, _Check check, default, bint required):
        self.name, self.coerce, self.check, self.default, self.required = name, coerce, check, default, required


cdef class Validator:
    """Validates one set of fields; ``validate`` returns the coerced values in field order."""

    cdef readonly tuple fields
    cdef tuple _plan
    cdef Py_ssize_t _n
    cdef bint _str_names  # every field name is an exact str: the in-order fast path may compare keys by value

    def __cinit__(self, tuple fields, tuple plan):
        for f in plan:
            if not isinstance(f, _Field):
                raise TypeError("a Validator is built by compile_validator")
        self.fields, self._plan, self._n = fields, plan, len(plan)
        self._str_names = all(type((<_Field>f).name) is str for f in plan)

    def validate(self, values):
        """Coerce and check every field; raises ``ValidationError`` for the first field (in order) that fails."""
        return self._run(values, True)

    cdef dict _run(self, object values, bint top):
        """The coerced values; a failure raises ``ValidationError`` when ``top``, else ``_Invalid`` (for a record)."""
        cdef dict out
        cdef _Field f = None
        cdef PyObject* found
        cdef PyObject* key
        cdef PyObject* item
        cdef Py_ssize_t i, pos = 0
        cdef bint exact = PyDict_CheckExact(values)
        try:
            if exact and self._str_names and PyDict_GET_SIZE(values) == self._n:
                # An LM's JSON usually holds exactly the fields, in order: copy it whole (no lookups, no inserts)
                # and replace the values that coercion changes; the first key out of order falls back to the
                # general path below (which meets the same values, so the same first error, if any).
                out = PyDict_Copy(values)
                i = 0
                while PyDict_Next(values, &pos, &key, &item):
                    f = <_Field>self._plan[i]
                    if key != <PyObject*>f.name and not (PyUnicode_CheckExact(<object>key) and
                                                         _same_text(<object>key, f.name)):
                        break
                    i += 1
                    value = self._one(f, <object>item)
                    if value is not <object>item:
                        out[<object>key] = value
                else:
                    return out
            out = {}
            for i in range(self._n):
                f = <_Field>self._plan[i]
                if exact:
                    found = PyDict_GetItemWithError(values, f.name)
                    value = _MISSING if found is NULL else <object>found
                else:
                    value = values.get(f.name, _MISSING)
                if value is _MISSING:
                    if f.required:
                        raise _Invalid("missing", values)
                    out[f.name] = f.default
                    continue
                out[f.name] = self._one(f, value)
        except _Invalid as e:
            if top:
                e.steps.append(f.name)
                raise ValidationError("".join(reversed(e.steps)), e.value, e.rule) from None
            e.steps.append("." + f.name)
            raise
        return out

    cdef inline object _one(self, _Field f, object value):
        """``value`` coerced and checked for ``f``; raises ``_Invalid``."""
        value = f.coerce.coerce(value)
        if f.check is not None and value is not None:
            rule = f.check.rule(value)
            if rule is not None:
                raise _Invalid(rule, value)
        return value


def compile_validator(fields):
    """A validator for ``fields`` (``Field`` or ``RecordField``: anything with name, type, constraint).

    A missing field takes its default when it has one, ``None`` when its type is optional, and is an
    error otherwise. Constraints see the coerced value and are skipped when an optional value is ``None``.
    """
    plan = []
    for f in fields:
        required = False
        if getattr(f, "has_default", False):
            default = f.default
        elif isinstance(f.type, OptionalOf):
            default = None
        else:
            default, required = None, True
        check = _compile_check(f.constraint) if f.constraint is not None else None
        name = f.name
        plan.append(_Field(name, _coercer(f.type), check, default, required))
    return Validator(tuple(fields), tuple(plan))


# --- coercion -------------------------------------------------------------------------------------------------

cdef class _Coerce:
    """Turns a value into its field type's value, or raises ``_Invalid``."""

    cdef object coerce(self, object v):
        raise NotImplementedError


cdef dict _PRIMS = {"str": _Str, "int": _Int, "float": _Float, "bool": _Bool}


def _coercer(t):
    if isinstance(t, Prim):
        return _PRIMS[t.name]()
    if isinstance(t, EnumOf):
        return _Enum(t.values)
    if isinstance(t, OptionalOf):
        return _Optional(_coercer(t.inner))
    if isinstance(t, ListOf):
        return _List(_coercer(t.item))
    if isinstance(t, DictOf):
        return _Dict(_coercer(t.key), _coercer(t.value))
    if isinstance(t, Record):
        return _Rec(t)
    if isinstance(t, NoneType):
        return _None()
    assert isinstance(t, AnyType), t
    return _Any()


cdef class _Str(_Coerce):
    cdef object coerce(self, object v):
        if PyUnicode_CheckExact(v):
            return v
        if (PyLong_Check(v) or PyFloat_Check(v)) and not PyBool_Check(v):
            return PyObject_Str(v)  # an LM that answers 42 for a str field meant "42"
        raise _Invalid("expected a string", v)


cdef class _Int(_Coerce):
    cdef object coerce(self, object v):
        cdef double d
        if PyLong_CheckExact(v):
            return v
        if PyUnicode_Check(v):
            return _int_text(v)
        if PyFloat_CheckExact(v):
            d = PyFloat_AS_DOUBLE(v)
            if isfinite(d) and floor(d) == d:
                return PyNumber_Long(v)
        elif PyFloat_Check(v) and v.is_integer():
            return PyNumber_Long(v)
        raise _Invalid("expected an integer", v)


cdef object _int_text(object v):
    s = v.strip()
    m = _int_fullmatch(s)
    if m:
        return PyNumber_Long(m.group(1))  # exact for big ints, where float() would round
    try:
        f = PyNumber_Float(s)
    except ValueError:
        raise _Invalid("expected an integer", v) from None
    if math.isfinite(f) and f.is_integer():
        return PyNumber_Long(f)
    raise _Invalid("expected an integer", v)


cdef class _Float(_Coerce):
    cdef object coerce(self, object v):
        if PyFloat_CheckExact(v):
            if isfinite(PyFloat_AS_DOUBLE(v)):
                return v
        elif PyLong_Check(v) and not PyBool_Check(v):
            return PyNumber_Float(v)
        elif PyUnicode_Check(v):
            try:
                f = PyNumber_Float(v.strip())
            except ValueError:
                raise _Invalid("expected a number", v) from None
            if math.isfinite(f):
                return f
        raise _Invalid("expected a number", v)


cdef class _Bool(_Coerce):
    cdef object coerce(self, object v):
        if PyBool_Check(v):
            return v
        if PyUnicode_Check(v):
            s = v.strip().strip(_QUOTES).lower()
            if s in _TRUE:
                return True
            if s in _FALSE:
                return False
        raise _Invalid("expected a boolean (true or false)", v)


cdef class _Enum(_Coerce):
    cdef tuple values
    cdef bint scan  # every value is an exact str: an exact str input is compared with each, not hashed
    cdef frozenset exact
    cdef dict loose
    cdef str rule

    def __cinit__(self, values):
        self.exact = frozenset(values)
        self.loose = {v.strip(_ENUM_NOISE).casefold(): v for v in reversed(values)}  # first spelling wins
        self.rule = "expected one of " + ", ".join(f"`{v}`" for v in values)
        self.values = tuple(values)
        self.scan = len(self.values) <= 16 and all(type(v) is str for v in self.values)

    cdef object coerce(self, object v):
        cdef Py_ssize_t i
        if PyUnicode_Check(v):
            if self.scan and PyUnicode_CheckExact(v):
                for i in range(len(self.values)):
                    if _same_text(v, self.values[i]):
                        return v
            elif v in self.exact:
                return v
            canonical = self.loose.get(v.strip(_ENUM_NOISE).casefold())
            if canonical is not None:
                return canonical
        raise _Invalid(self.rule, v)


cdef inline bint _same_text(object a, object b) except -1:
    """``a == b`` for two exact str: a byte compare when both are ASCII (names, keys, labels nearly always are)."""
    cdef Py_ssize_t n
    if a is b:
        return True
    if PyUnicode_IS_ASCII(a) and PyUnicode_IS_ASCII(b):
        n = PyUnicode_GET_LENGTH(a)
        return n == PyUnicode_GET_LENGTH(b) and memcmp(PyUnicode_DATA(a), PyUnicode_DATA(b), n) == 0
    return <str>a == <str>b


cdef bint _is_null(object v) except -1:
    """``v.strip().lower() in ("none", "null")`` for a str ``v``, without allocating for plain ASCII."""
    cdef const unsigned char* p
    cdef Py_ssize_t a, b
    cdef unsigned char c0, c1, c2, c3
    if PyUnicode_CheckExact(v) and PyUnicode_IS_ASCII(v):
        b = PyUnicode_GET_LENGTH(v)
        if b < 4:
            return False
        p = <const unsigned char*>PyUnicode_DATA(v)
        a = 0
        while a < b and Py_UNICODE_ISSPACE(p[a]):
            a += 1
        while b > a and Py_UNICODE_ISSPACE(p[b - 1]):
            b -= 1
        if b - a != 4:
            return False
        c0, c1, c2, c3 = p[a] | 0x20, p[a + 1] | 0x20, p[a + 2] | 0x20, p[a + 3] | 0x20  # letters only match
        return c0 == ord('n') and ((c1 == ord('o') and c2 == ord('n') and c3 == ord('e')) or
                                   (c1 == ord('u') and c2 == ord('l') and c3 == ord('l')))
    return v.strip().lower() in _NULLS


cdef class _Optional(_Coerce):
    cdef _Coerce inner

    def __cinit__(self, _Coerce inner):
        self.inner = inner

    cdef object coerce(self, object v):
        if v is None or (PyUnicode_Check(v) and _is_null(v)):
            return None
        return self.inner.coerce(v)


cdef object _decoded(object v, str opener):
    """``v`` itself, or the JSON it spells when it is a string of that kind (LMs often quote structures)."""
    if PyUnicode_Check(v):
        s = v.strip()
        if s.startswith(opener):
            try:
                return _json_loads(s)
            except ValueError:
                return v
    return v


cdef class _List(_Coerce):
    cdef _Coerce item

    def __cinit__(self, _Coerce item):
        self.item = item

    cdef object coerce(self, object v):
        cdef list out
        cdef Py_ssize_t i = 0
        if not PyList_CheckExact(v):
            v = _decoded(v, "[")
            if not PyList_Check(v):
                raise _Invalid("expected a list", v)
        try:
            if PyList_CheckExact(v):  # copy at once, then replace the items that coercion changes
                out = PyList_GetSlice(v, 0, PyList_GET_SIZE(v))
                for i in range(PyList_GET_SIZE(out)):
                    x = <object>PyList_GET_ITEM(out, i)
                    y = self.item.coerce(x)
                    if y is not x:
                        out[i] = y
            else:  # a subclass: iterate it as Python would
                out = []
                for x in v:
                    out.append(self.item.coerce(x))
                    i += 1
        except _Invalid as e:
            e.steps.append(f"[{i}]")
            raise
        return out


cdef class _Dict(_Coerce):
    cdef _Coerce key
    cdef _Coerce value

    def __cinit__(self, _Coerce key, _Coerce value):
        self.key, self.value = key, value

    cdef object coerce(self, object v):
        cdef dict out = {}
        cdef dict d
        k = None
        if not PyDict_CheckExact(v):
            v = _decoded(v, "{")
            if not PyDict_Check(v):
                raise _Invalid("expected an object", v)
        try:
            if PyDict_CheckExact(v):
                d = <dict>v
                for k, x in d.items():
                    x = self.value.coerce(x)  # the value first, as `out[key(k)] = value(x)` evaluates
                    out[self.key.coerce(k)] = x
            else:
                for k, x in v.items():
                    x = self.value.coerce(x)
                    out[self.key.coerce(k)] = x
        except _Invalid as e:
            e.steps.append(f"[{json.dumps(k, ensure_ascii=False)}]")
            raise
        return out


cdef class _Rec(_Coerce):
    cdef Validator validator
    cdef str rule

    def __cinit__(self, t):
        self.validator = compile_validator(t.fields)
        self.rule = f"expected an object ({t.name})"

    cdef object coerce(self, object v):
        if not PyDict_CheckExact(v):
            v = _decoded(v, "{")
            if not PyDict_Check(v):
                raise _Invalid(self.rule, v)
        return self.validator._run(v, False)


cdef class _None(_Coerce):
    cdef object coerce(self, object v):
        if v is None or (PyUnicode_Check(v) and _is_null(v)):
            return None
        raise _Invalid("expected none", v)


cdef class _Any(_Coerce):
    cdef object coerce(self, object v):
        return v


# --- constraints ----------------------------------------------------------------------------------------------

cdef class _Check:
    """Gives the rule a (coerced, non-None) value breaks, or None."""

    cdef object rule(self, object v):
        raise NotImplementedError


cdef class _AllOf(_Check):
    cdef tuple parts

    def __cinit__(self, tuple parts):
        self.parts = parts

    cdef object rule(self, object v):
        cdef _Check part
        for part in self.parts:
            r = part.rule(v)
            if r is not None:
                return r
        return None


cdef class _Chain(_Check):
    """A comparison chain: the rule of the first link that fails (it names the failing bound)."""

    cdef tuple links

    def __cinit__(self, tuple links):
        self.links = links

    cdef object rule(self, object v):
        cdef _Link link
        cdef Py_ssize_t i
        for i in range(len(self.links)):
            link = <_Link>self.links[i]
            if not link.test(v):
                return link.text
        return None


cdef class _EvalCheck(_Check):
    """Any other predicate: its truth, with the whole predicate as the rule."""

    cdef _Eval test
    cdef str text

    def __cinit__(self, _Eval test, str text):
        self.test, self.text = test, text

    cdef object rule(self, object v):
        if self.test.eval(v):
            return None
        return self.text


def _compile_check(e):
    """The checker of ``e``: the rule it breaks for a value (naming the failing bound of a chain), or None."""
    if isinstance(e, ir.Compare):
        return _compare(e)
    if isinstance(e, ir.BoolOp) and e.op == "and":
        return _AllOf(tuple(_compile_check(a) for a in e.args))
    test = _compile_eval(e)
    return _EvalCheck(test, "expected " + ir.render_expr(e))


def _compare(e):
    links = []
    for op, left, right in zip(e.ops, e.operands, e.operands[1:]):
        if _reads_value(left) or not _reads_value(right):
            text = f"expected {_subject(left)} {op} {ir.render_expr(right)}"
        else:  # `0 <= value` reads better as `value >= 0`
            text = f"expected {_subject(right)} {_FLIP[op]} {ir.render_expr(left)}"
        links.append(_link(_OPCODES[op], left, right, text))
    return _Chain(tuple(links))


@cython.boundscheck(True)  # compile time: IR from anywhere, index it safely
@cython.wraparound(True)
def _is_len_of_value(e):
    return isinstance(e, ir.Call) and e.fn == "len" and isinstance(e.args[0], ir.Value)


def _link(int op, left, right, str text):
    """One comparison of a chain, specialised for a literal bound against the value or its length."""
    if isinstance(left, ir.Lit) and isinstance(right, ir.Value):
        return _BoundValue(op, left.value, text, True)
    if isinstance(left, ir.Value) and isinstance(right, ir.Lit):
        return _BoundValue(op, right.value, text, False)
    if isinstance(left, ir.Lit) and _is_len_of_value(right):
        return _BoundLen(op, left.value, text, True)
    if _is_len_of_value(left) and isinstance(right, ir.Lit):
        return _BoundLen(op, right.value, text, False)
    lhs = _compile_eval(left)
    rhs = _compile_eval(right)
    return _Generic(op, lhs, rhs, text)


cdef inline bint _cmp(double a, int op, double b) noexcept:
    if op == Py_LT:
        return a < b
    if op == Py_LE:
        return a <= b
    if op == Py_EQ:
        return a == b
    if op == Py_NE:
        return a != b
    if op == Py_GT:
        return a > b
    return a >= b


cdef inline bint _as_exact_double(object v, double* out) except -1:
    """``v`` as a double when that is exact (a float, or an int within 2**53); else False."""
    cdef long long n
    cdef int overflow = 0
    if PyFloat_CheckExact(v):
        out[0] = PyFloat_AS_DOUBLE(v)
        return True
    if PyLong_CheckExact(v):
        n = PyLong_AsLongLongAndOverflow(v, &overflow)
        if overflow == 0 and -_EXACT <= n <= _EXACT:
            out[0] = <double>n
            return True
    return False


cdef class _Link:
    """One comparison of a chain and the rule text it stands for."""

    cdef int op
    cdef str text

    cdef bint test(self, object v) except -1:
        raise NotImplementedError


cdef class _BoundValue(_Link):
    """``bound <op> value`` (``flipped``) or ``value <op> bound``; C doubles when both are exactly doubles."""

    cdef object bound
    cdef bint flipped
    cdef bint numeric
    cdef double d

    def __cinit__(self, int op, bound, str text, bint flipped):
        self.op, self.bound, self.text, self.flipped = op, bound, text, flipped
        self.numeric = _as_exact_double(bound, &self.d)

    cdef bint test(self, object v) except -1:
        cdef double x
        if self.numeric and _as_exact_double(v, &x):
            return _cmp(self.d, self.op, x) if self.flipped else _cmp(x, self.op, self.d)
        if self.flipped:
            return bool(PyObject_RichCompare(self.bound, v, self.op))
        return bool(PyObject_RichCompare(v, self.bound, self.op))


cdef class _BoundLen(_Link):
    """``bound <op> len(value)`` (``flipped``) or ``len(value) <op> bound``."""

    cdef object bound
    cdef bint flipped
    cdef bint numeric
    cdef double d

    def __cinit__(self, int op, bound, str text, bint flipped):
        self.op, self.bound, self.text, self.flipped = op, bound, text, flipped
        self.numeric = _as_exact_double(bound, &self.d)

    cdef bint test(self, object v) except -1:
        cdef Py_ssize_t n = PyObject_Length(v)
        if self.numeric:
            return _cmp(self.d, self.op, <double>n) if self.flipped else _cmp(<double>n, self.op, self.d)
        if self.flipped:
            return bool(PyObject_RichCompare(self.bound, n, self.op))
        return bool(PyObject_RichCompare(n, self.bound, self.op))


cdef class _Generic(_Link):
    cdef _Eval lhs
    cdef _Eval rhs

    def __cinit__(self, int op, _Eval lhs, _Eval rhs, str text):
        self.op, self.lhs, self.rhs, self.text = op, lhs, rhs, text

    cdef bint test(self, object v) except -1:
        a = self.lhs.eval(v)
        return bool(PyObject_RichCompare(a, self.rhs.eval(v), self.op))


# --- expressions of the value (generic predicates) ------------------------------------------------------------

cdef class _Eval:
    """An expression as a function of the value."""

    cdef object eval(self, object v):
        raise NotImplementedError


cdef class _EvValue(_Eval):
    cdef object eval(self, object v):
        return v


cdef class _EvLit(_Eval):
    cdef object lit

    def __cinit__(self, lit):
        self.lit = lit

    cdef object eval(self, object v):
        return self.lit


cdef class _EvLen(_Eval):
    cdef _Eval arg

    def __cinit__(self, _Eval arg):
        self.arg = arg

    cdef object eval(self, object v):
        return PyObject_Length(self.arg.eval(v))


cdef class _EvMatches(_Eval):
    cdef _Eval subject
    cdef object fullmatch

    def __cinit__(self, _Eval subject, fullmatch):
        self.subject, self.fullmatch = subject, fullmatch

    cdef object eval(self, object v):
        s = self.subject.eval(v)
        if not PyUnicode_Check(s):
            return False
        return self.fullmatch(s) is not None


cdef class _EvCompare(_Eval):
    cdef _Chain chain

    def __cinit__(self, _Chain chain):
        self.chain = chain

    cdef object eval(self, object v):
        return self.chain.rule(v) is None


cdef class _EvAnd(_Eval):
    cdef tuple args

    def __cinit__(self, tuple args):
        self.args = args

    cdef object eval(self, object v):
        cdef _Eval a
        for a in self.args:
            if not a.eval(v):
                return False
        return True


cdef class _EvOr(_Eval):
    cdef tuple args

    def __cinit__(self, tuple args):
        self.args = args

    cdef object eval(self, object v):
        cdef _Eval a
        for a in self.args:
            if a.eval(v):
                return True
        return False


cdef class _EvNot(_Eval):
    cdef _Eval arg

    def __cinit__(self, _Eval arg):
        self.arg = arg

    cdef object eval(self, object v):
        return not self.arg.eval(v)


@cython.boundscheck(True)  # compile time: IR from anywhere, index it safely
@cython.wraparound(True)
def _compile_eval(e):
    """``e`` as an ``_Eval``; raises TypeError for what a ``where`` predicate cannot say."""
    if isinstance(e, ir.Value):
        return _EvValue()
    if isinstance(e, ir.Lit):
        return _EvLit(e.value)
    if isinstance(e, ir.Call) and e.fn == "len":
        return _EvLen(_compile_eval(e.args[0]))
    if isinstance(e, ir.Call) and e.fn == "matches":
        subject = _compile_eval(e.args[0])
        pattern = e.args[1]
        assert isinstance(pattern, ir.Lit), "the checker only allows a literal pattern"
        return _EvMatches(subject, re.compile(pattern.value).fullmatch)
    if isinstance(e, ir.Compare):
        return _EvCompare(_compare(e))
    if isinstance(e, ir.BoolOp):
        args = tuple(_compile_eval(a) for a in e.args)
        return _EvAnd(args) if e.op == "and" else _EvOr(args)
    if isinstance(e, ir.Not):
        return _EvNot(_compile_eval(e.arg))
    raise TypeError(f"not a constraint expression: {ir.render_expr(e)}")
