"""A deterministic generator of large, realistic ``.dspex`` programs for the compile benchmarks.

``generate_program(n_signatures, n_pipelines, seed)`` returns the source of one program and the DSPy string
signature of each of its signatures, in declaration order, so DSPy can build the very same signatures.
About half the signatures are written in DSPy's string form (the string *is* the DSPy signature); the others
are block signatures with docstrings, descriptions, input defaults and ``where`` constraints, and their DSPy
string spells the same field names, order and types (``int?`` as ``Optional[int]``, enums as ``Literal[...]``).
Around them: enum and record types, lms, vars, tools and pipelines of 3-8 statements (steps, projections,
``map``, ``if``/``else``, ``call``, ``with`` options) that type-check and leave no value unused.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field

__all__ = ["generate_program", "Ty"]

# -- types ----------------------------------------------------------------------------------------------
Ty = tuple  # ("str",) ("int",) ("float",) ("bool",) ("list", T) ("dict", K, V) ("opt", T) ("enum", values)
"""A type of the generator's model: a nested tuple, compared structurally (as the compiler's types are)."""

STR, INT, FLOAT, BOOL = ("str",), ("int",), ("float",), ("bool",)

ENUMS: dict[str, tuple[str, ...]] = {
    "Sentiment": ("positive", "negative", "neutral"),
    "Priority": ("low", "medium", "high", "urgent"),
    "Verdict": ("supported", "refuted", "not_enough_info"),
    "Category": ("bug", "feature", "question", "docs"),
    "Grade": ("A", "B", "C", "D", "F"),
}
_ENUM_NAMES = {values: name for name, values in ENUMS.items()}
_INLINE_ENUMS = (("yes", "no"), ("spam", "ham"), ("short", "long"), ("en", "fr", "de", "es"), ("x", "y"),
                 ("approve", "reject", "escalate"))

RECORDS: dict[str, tuple[tuple[str, Ty, str, str | None, str | None], ...]] = {
    # name: ((field, type, dspex spelling, description, where), ...)
    "Doc": (("title", STR, "str", "the document title", 'value != ""'),
            ("body", STR, "str", None, None),
            ("tags", ("list", STR), "list[str]", "free-form tags", "len(value) <= 8"),
            ("year", ("opt", INT), "int?", None, "value >= 1900")),
    "Ticket": (("subject", STR, "str", "one line", "len(value) <= 120"),
               ("body", STR, "str", "the customer's message", None),
               ("priority", ("enum", ENUMS["Priority"]), "Priority", None, None)),
    "Citation": (("source", STR, "str", "where the fact comes from", None),
                 ("quote", STR, "str", None, None),
                 ("page", ("opt", INT), "int?", None, "value >= 1")),
}

_INPUT_NAMES = ("question", "context", "document", "passage", "query", "text", "review", "title", "claim",
                "evidence", "topic", "history", "notes", "language", "snippets", "examples", "hint", "criteria",
                "draft", "source_text", "user_message", "persona", "outline", "facts", "code", "error_log",
                "product", "audience", "constraints", "keywords", "transcript", "url", "email", "table",
                "metadata", "k", "threshold", "max_items", "strict", "image_caption")
_OUTPUT_NAMES = ("answer", "summary", "label", "score", "confidence", "verdict", "tags", "entities",
                 "translation", "category", "rating", "is_valid", "rewrite", "response", "explanation",
                 "priority", "queries", "title_out", "keywords_out", "sentiment", "count", "citations_text",
                 "outline_out", "fixed_code", "reply", "decision", "topics", "grade", "probability", "issues",
                 "steps", "estimate", "headline", "needs_review", "language_out", "quote", "critique", "plan")

_VERBS = ("Answer", "Summarize", "Classify", "Extract", "Rank", "Rewrite", "Translate", "Grade", "Verify",
          "Generate", "Critique", "Plan", "Route", "Score", "Detect", "Draft", "Explain", "Tag", "Label", "Fix")
_NOUNS = ("Question", "Review", "Claim", "Ticket", "Document", "Email", "Passage", "Query", "Code", "Report",
          "Article", "Message", "Answer", "Entities", "Topics", "Intent", "Facts", "Outline", "Title", "Summary")
_DOCS = ("Answer the question using only the given context.",
         "Classify the sentiment of a product review.",
         "Extract the named entities mentioned in the text.",
         "Summarize the document in a few sentences.",
         "Decide whether the evidence supports the claim.",
         "Rewrite the draft for the intended audience.",
         "Translate the text, keeping names unchanged.",
         "Grade the answer against the criteria.",
         "Propose search queries that would find the missing facts.",
         "Triage the support ticket and estimate its priority.")

# String-form types: (type, DSPy spelling, weight as an input, weight as an output). None: written untyped.
_STRING_TYPES: tuple[tuple[Ty, str | None, int, int], ...] = (
    (STR, None, 34, 22), (STR, "str", 10, 8), (INT, "int", 5, 8), (FLOAT, "float", 3, 8), (BOOL, "bool", 3, 6),
    (("list", STR), "list[str]", 14, 10), (("list", INT), "list[int]", 2, 3), (("list", FLOAT), "list[float]", 1, 2),
    (("dict", STR, INT), "dict[str, int]", 3, 4), (("dict", STR, ("list", STR)), "dict[str, list[str]]", 1, 2),
    (("opt", INT), "Optional[int]", 2, 4), (("opt", STR), "Optional[str]", 2, 3),
    (("enum", None), None, 2, 10),  # a Literal: values picked per field
)


@dataclass
class _Field:
    name: str
    type: Ty
    dspex: str  # the spelling in .dspex (block form) or None-able DSPy spelling (string form)
    dspy: str
    default: str | None = None

    @property
    def required(self) -> bool:
        return self.default is None


@dataclass
class _Sig:
    name: str
    inputs: list[_Field]
    outputs: list[_Field]


@dataclass
class _Target:
    """Something a pipeline can call with ``call``: a tool or an earlier pipeline."""

    name: str
    params: list[_Field]
    returns: Ty | None  # a tool's return type; None for a pipeline (whose result is a record)
    outputs: list[_Field] = field(default_factory=list)


def _literal_dspy(values: tuple[str, ...]) -> str:
    return "Literal[" + ", ".join(f"'{v}'" for v in values) + "]"


def _dspy_type(t: Ty) -> str:
    kind = t[0]
    if kind in ("str", "int", "float", "bool"):
        return kind
    if kind == "list":
        return f"list[{_dspy_type(t[1])}]"
    if kind == "dict":
        return f"dict[{_dspy_type(t[1])}, {_dspy_type(t[2])}]"
    if kind == "opt":
        return f"Optional[{_dspy_type(t[1])}]"
    if kind == "record":
        return t[1]
    assert kind == "enum"
    return _literal_dspy(t[1])


def _dspex_type(t: Ty, rng: random.Random) -> str:
    kind = t[0]
    if kind in ("str", "int", "float", "bool"):
        return kind
    if kind == "list":
        if t[1] == ("enum", ENUMS["Category"]) and rng.random() < 0.5:
            return "Labels"
        return f"list[{_dspex_type(t[1], rng)}]"
    if kind == "dict":
        return f"dict[{_dspex_type(t[1], rng)}, {_dspex_type(t[2], rng)}]"
    if kind == "opt":
        return f"{_dspex_type(t[1], rng)}?"
    if kind == "record":
        return t[1]
    assert kind == "enum"
    if t[1] in _ENUM_NAMES and rng.random() < 0.8:
        return _ENUM_NAMES[t[1]]
    quoted = ", ".join(f'"{v}"' for v in t[1])
    return f"Literal[{quoted}]" if rng.random() < 0.5 else f"enum({quoted})"


def _fits(src: Ty, dst: Ty) -> bool:
    """Whether the compiler accepts a ``src`` value for a ``dst`` input (a safe subset of its rules)."""
    if src == dst or dst == ("opt", src):
        return True
    if src[0] == "enum" and dst == STR:
        return True
    return src == INT and dst == FLOAT


# -- signatures -----------------------------------------------------------------------------------------
def _pick_type(rng: random.Random, output: bool) -> tuple[Ty, str | None]:
    weights = [w_out if output else w_in for *_, w_in, w_out in _STRING_TYPES]
    t, spelling, _, _ = rng.choices(_STRING_TYPES, weights)[0]
    if t == ("enum", None):
        pool = list(ENUMS.values()) + list(_INLINE_ENUMS)
        values = rng.choice(pool)
        if rng.random() < 0.3 and len(values) > 2:
            values = tuple(rng.sample(values, rng.randint(2, len(values))))
        return ("enum", values), _literal_dspy(values)
    return t, spelling


def _field_names(rng: random.Random, n_in: int, n_out: int) -> tuple[list[str], list[str]]:
    return rng.sample(_INPUT_NAMES, n_in), rng.sample(_OUTPUT_NAMES, n_out)


def _string_signature(name: str, rng: random.Random) -> tuple[_Sig, str]:
    n = rng.randint(2, 6)
    n_in = rng.randint(1, n - 1)
    ins, outs = _field_names(rng, n_in, n - n_in)
    parts: list[list[str]] = [[], []]
    sig = _Sig(name, [], [])
    for side, names in ((0, ins), (1, outs)):
        for fname in names:
            t, spelling = _pick_type(rng, output=side == 1)
            parts[side].append(fname if spelling is None else f"{fname}: {spelling}")
            (sig.outputs if side else sig.inputs).append(_Field(fname, t, spelling or "str", _dspy_type(t)))
    sep = rng.choice([", ", ", ", ",", ",  "])
    text = sep.join(parts[0]) + rng.choice([" -> ", " -> ", "->", "  ->  "]) + sep.join(parts[1])
    return sig, text


_DEFAULTS: dict[Ty, tuple[str, ...]] = {
    STR: ('"en"', '""', '"formal"'), INT: ("3", "10", "0"), FLOAT: ("0.5", "0.0", "1"), BOOL: ("false", "true"),
    ("list", STR): ("[]", '["a", "b"]'), ("list", INT): ("[]", "[1, 2, 3]"), ("list", FLOAT): ("[]",),
    ("opt", INT): ("none", "5"), ("opt", STR): ("none", '"n/a"'),
}


def _where(t: Ty, rng: random.Random) -> str | None:
    kind = t[0]
    if t == FLOAT:
        return rng.choice(["0 <= value <= 1", "value >= 0", "value >= 0.0 and value <= 100"])
    if t == INT:
        return rng.choice(["value >= 1", "1 <= value <= 10", "value >= 0", "not (value < 0)"])
    if t == STR:
        return rng.choice(['value != ""', "len(value) <= 280", 'matches(value, "[A-Za-z0-9 ,.!?-]+")',
                           'len(value) > 0 and len(value) <= 2000'])
    if kind in ("list", "dict"):
        return rng.choice(["len(value) <= 3", "len(value) >= 1", "len(value) >= 1 and len(value) <= 10"])
    if t == ("opt", INT):
        return "value >= 0"
    return None


def _block_field(role: str, fname: str, rng: random.Random) -> tuple[_Field, str]:
    t, _ = _pick_type(rng, output=role == "out")
    spelling = _dspex_type(t, rng)
    default = None
    if role == "in" and rng.random() < 0.25:
        if t in _DEFAULTS:
            default = rng.choice(_DEFAULTS[t])
    line = f"{role:<3} {fname}: {spelling}"
    if default is not None:
        line += f" = {default}"
    if rng.random() < 0.6:
        line += f' "{fname.replace("_", " ")}, {rng.choice(["as plain text", "from the source", "be concise", "one item per entry", "may be empty"])}"'
    where = _where(t, rng) if rng.random() < (0.45 if role == "out" else 0.15) and default is None else None
    if where is not None:
        line += f" where {where}"
    return _Field(fname, t, spelling, _dspy_type(t), default), line


def _block_signature(name: str, rng: random.Random) -> tuple[_Sig, str, str]:
    n = rng.randint(2, 6)
    n_in = rng.randint(1, n - 1)
    ins, outs = _field_names(rng, n_in, n - n_in)
    sig = _Sig(name, [], [])
    lines = [f"signature {name} {{"]
    doc = rng.choice(_DOCS)
    r = rng.random()
    if r < 0.15:
        lines.append(f'  """\n  {doc}\n  Keep the tone {{{{style}}}}.\n  """')
    elif r < 0.9:
        lines.append(f'  """{doc}"""')
    for role, names in (("in", ins), ("out", outs)):
        for fname in names:
            f, line = _block_field(role, fname, rng)
            (sig.inputs if role == "in" else sig.outputs).append(f)
            lines.append("  " + line)
    lines.append("}")
    dspy = ", ".join(f"{f.name}: {f.dspy}" for f in sig.inputs) + " -> " + \
        ", ".join(f"{f.name}: {f.dspy}" for f in sig.outputs)
    return sig, "\n".join(lines), dspy


# -- pipelines ------------------------------------------------------------------------------------------
_OPTIONS = ("temperature = temperature", "retries = 3", "lm = fast", "timeout = 30s", "max_tokens = 256",
            "cache = false", "temperature = 0.7", "engine = \"auto\"")
_MODULES = ("predict",) * 11 + ("chain_of_thought",) * 6 + ("cot",) * 2 + ("best_of",)


class _PipelineBuilder:
    """One pipeline body, built statement by statement; inputs are declared when a step first needs them."""

    def __init__(self, name: str, rng: random.Random, sigs: list[_Sig], by_input: dict[Ty, list[_Sig]],
                 callees: list[_Target]):
        self.name, self.rng, self.sigs, self.by_input, self.callees = name, rng, sigs, by_input, callees
        self.params: dict[str, Ty] = {}
        self.values: list[tuple[str, Ty, str]] = []  # (expression, type, root name)
        self.records: dict[str, list[tuple[str, Ty]]] = {}  # bound record name -> its fields
        self.bound: dict[str, Ty | None] = {}  # top-level bound name -> type (None: a record)
        self.read: set[str] = set()
        self.lines: list[str] = []
        self.counter = 0
        self.n_statements = 0
        self.target = 0

    # -- names and values -------------------------------------------------------------------------
    def fresh(self, base: str) -> str:
        self.counter += 1
        return f"{base.removesuffix('_out')}_{self.counter}"

    def param(self, fname: str, t: Ty) -> str:
        name = fname
        i = 1
        while name in self.params and self.params[name] != t:
            i += 1
            name = f"{fname}{i}"
        if name not in self.params:
            self.params[name] = t
            self.values.append((name, t, name))
            if t[0] in ("str", "list") and self.rng.random() < 0.1:  # a record input, read field by field
                rec = self.rng.choice(["Doc", "Ticket"])
                rname = f"{rec.lower()}{len(self.params)}"
                self.params[rname] = ("record", rec)
                for fname2, ft, *_ in RECORDS[rec]:
                    self.values.append((f"{rname}.{fname2}", ft, rname))
        return name

    def arg_for(self, f: _Field, item: tuple[str, Ty] | None = None) -> str:
        if item is not None and _fits(item[1], f.type):
            return item[0]
        if f.type == INT and self.rng.random() < 0.15:
            return "top_k"
        fitting = [v for v in self.values if _fits(v[1], f.type)]
        if fitting and self.rng.random() < 0.8:
            fitting.sort(key=lambda v: v[2] in self.read)  # prefer values nobody has read yet
            expr, _, root = fitting[0] if self.rng.random() < 0.7 else self.rng.choice(fitting)
            self.read.add(root)
            return expr
        return self.param(f.name, f.type)

    def call_args(self, params: list[_Field], item: tuple[str, Ty] | None = None) -> str:
        args = []
        used_item = False
        for f in params:
            if item is not None and not used_item and _fits(item[1], f.type):
                args.append(f"{f.name} = {item[0]}")
                used_item = True
                continue
            if not f.required and self.rng.random() < 0.5:
                continue
            args.append(f"{f.name} = {self.arg_for(f)}")
        return ", ".join(args)

    def options(self, module: str, in_map: bool = False) -> str:
        r = self.rng.random()
        if r < 0.45:
            return ""
        opts = self.rng.sample(_OPTIONS, self.rng.randint(1, 2))
        if "temperature = 0.7" in opts and "temperature = temperature" in opts:
            opts.remove("temperature = 0.7")
        if module == "best_of":
            opts.append("n = 3")
        if in_map and self.rng.random() < 0.4:
            opts.append('on_error = "skip"')
        return " with (" + ", ".join(opts) + ")"

    def bind(self, name: str, t: Ty | None, record_fields: list[tuple[str, Ty]] | None = None) -> None:
        self.bound[name] = t
        if record_fields is not None:
            self.records[name] = record_fields
            for fname, ft in record_fields:
                self.values.append((f"{name}.{fname}", ft, name))
        else:
            assert t is not None
            self.values.append((name, t, name))
            if t[0] == "list" and t[1][0] == "record":  # a list of records projects to lists of fields
                for fname, ft, *_ in RECORDS[t[1][1]]:
                    self.values.append((f"{name}.{fname}", ("list", ft), name))

    # -- statements -------------------------------------------------------------------------------
    def step_text(self, sig: _Sig, module: str, item: tuple[str, Ty] | None = None) -> str:
        return f"{module} {sig.name}({self.call_args(sig.inputs, item)})"

    def step(self) -> None:
        sig = self.rng.choice(self.sigs)
        module = self.rng.choice(_MODULES)
        outputs = [(f.name, f.type) for f in sig.outputs]
        if module in ("chain_of_thought", "cot"):
            outputs = [("reasoning", STR)] + outputs
        text = self.step_text(sig, module)
        if self.rng.random() < 0.5 or self.full():  # near the end: no record left to project
            fname, ft = self.rng.choice(outputs)
            name = self.fresh(fname)
            self.lines.append(f"  {name} = {text}.{fname}{self.options(module)}")
            self.bind(name, ft)
        else:
            name = self.fresh(sig.name.lower()[:8])
            self.lines.append(f"  {name} = {text}{self.options(module)}")
            self.bind(name, None, outputs)

    def map_step(self) -> None:
        lists = [v for v in self.values if v[1][0] == "list" and v[1][1] in self.by_input]
        if lists and self.rng.random() < 0.7:
            expr, t, root = self.rng.choice(lists)
            self.read.add(root)
        else:
            t = ("list", STR)
            expr = self.param(self.rng.choice(["items", "docs", "reviews", "passages", "questions"]), t)
        sig = self.rng.choice(self.by_input[t[1]])
        module = self.rng.choice(_MODULES)
        item = (f"it{self.counter + 1}", t[1])
        outputs = [(f.name, f.type) for f in sig.outputs]
        if module in ("chain_of_thought", "cot"):
            outputs = [("reasoning", STR)] + outputs
        step = self.step_text(sig, module, item)
        if self.rng.random() < 0.5 or self.full():
            fname, ft = self.rng.choice(outputs)
            name = self.fresh(fname + "s")
            self.lines.append(f"  {name} = map {item[0]} in {expr}: {step}.{fname}{self.options(module, True)}")
            self.bind(name, ("list", ft))
        else:
            name = self.fresh("results")
            self.lines.append(f"  {name} = map {item[0]} in {expr}: {step}{self.options(module, True)}")
            self.bind(name, None, [(fname, ("list", ft)) for fname, ft in outputs])
            if self.rng.random() < 0.5 and not self.full():  # a projection of the list of records
                fname, ft = self.rng.choice(outputs)
                proj = self.fresh(fname + "s")
                self.lines.append(f"  {proj} = {name}.{fname}")
                self.read.add(name)
                self.bind(proj, ("list", ft))
                self.n_statements += 1

    def condition(self) -> str:
        candidates = [v for v in self.values if v[1][0] in ("list", "dict") or v[1] in (BOOL, FLOAT, INT, STR)]
        if candidates:
            expr, t, root = self.rng.choice(candidates)
        else:
            t = ("list", STR)
            expr = root = self.param("items", t)
        self.read.add(root)
        if t[0] in ("list", "dict"):
            return f"len({expr}) > " + self.rng.choice(["0", "1", "top_k"])
        if t == BOOL:
            return expr if self.rng.random() < 0.5 else f"not {expr}"
        if t == FLOAT:
            return f"{expr} >= 0.5"
        if t == INT:
            return f"{expr} > 0 and {expr} <= top_k"
        return f'{expr} != "" and len({expr}) < 4000'

    def if_else(self) -> None:
        cond = self.condition()
        sig = self.rng.choice(self.sigs)
        fname, ft = self.rng.choice([(f.name, f.type) for f in sig.outputs])
        name = self.fresh(fname)
        then = f"predict {sig.name}({self.call_args(sig.inputs)}).{fname} with (temperature = temperature)"
        if ft == STR and self.rng.random() < 0.3:
            orelse = '"n/a"'
        else:
            orelse = f"chain_of_thought {sig.name}({self.call_args(sig.inputs)}).{fname}{self.options('cot')}"
        self.lines.append(f"  if {cond} {{\n    {name} = {then}\n  }} else {{\n    {name} = {orelse}\n  }}")
        self.bind(name, ft)

    def expression(self) -> None:
        lists = [v for v in self.values if v[1][0] in ("list", "dict")]
        scores = [v for v in self.values if v[1] in (FLOAT, INT)]
        if scores and (not lists or self.rng.random() < 0.5):
            expr, _, root = self.rng.choice(scores)
            name = self.fresh("ok")
            self.lines.append(f"  {name} = {expr} >= 1 or {expr} < 0")
            self.bind(name, BOOL)
        elif lists:
            expr, _, root = self.rng.choice(lists)
            name = self.fresh("n")
            self.lines.append(f"  {name} = len({expr})")
            self.bind(name, INT)
        else:
            return self.step()
        self.read.add(root)

    def call(self) -> None:
        callees = [c for c in self.callees if c.returns] if self.full() else self.callees
        target = self.rng.choice(callees)
        args = self.call_args(target.params)
        if target.returns is not None:
            name = self.fresh(target.name)
            self.lines.append(f"  {name} = call {target.name}({args})")
            self.bind(name, target.returns)
        else:
            fields = [(f.name, f.type) for f in target.outputs]
            name = self.fresh("sub")
            self.lines.append(f"  {name} = call {target.name}({args})")
            self.bind(name, None, fields)

    def full(self) -> bool:
        """Whether the statements written plus the projections still owed reach the target."""
        return self.n_statements + self.unread_records() >= self.target

    def unread_records(self) -> int:
        """Record bindings nothing reads yet: each will take one projection statement at the end."""
        return sum(1 for name, t in self.bound.items() if t is None and name not in self.read)

    def build(self) -> tuple[str, _Target]:
        self.target = target = self.rng.randint(3, 8)  # top-level statements, an if/else counting as one
        kinds = (self.step, self.map_step, self.if_else, self.expression, self.call)
        weights = (50, 15, 12, 8, 6 if self.callees else 0)
        while self.n_statements + self.unread_records() < target or not self.n_statements:
            self.n_statements += 1
            self.rng.choices(kinds, weights)[0]()
        outputs: list[tuple[str, Ty]] = []
        for name, t in list(self.bound.items()):
            if name in self.read:
                continue
            if t is None:  # an unread record: project one of its fields
                fname, ft = self.records[name][-1]
                proj = self.fresh(fname)
                self.lines.append(f"  {proj} = {name}.{fname}")
                self.read.add(name)
                outputs.append((proj, ft))
            else:
                outputs.append((name, t))
        params = ", ".join(f"{n}: {t[1] if t[0] == 'record' else _dspex_type(t, self.rng)}"
                           for n, t in self.params.items())
        outs = [f"{n}: {_dspex_type(t, self.rng)}" for n, t in outputs]
        header = outs[0] if len(outs) == 1 and self.rng.random() < 0.5 else "(" + ", ".join(outs) + ")"
        src = f"pipeline {self.name}({params}) -> {header} {{\n" + "\n".join(self.lines) + "\n}"
        fields = [_Field(n, t, "", "") for n, t in self.params.items() if t[0] != "record"]
        as_target = _Target(self.name, fields, None, [_Field(n, t, "", "") for n, t in outputs])
        if len(fields) != len(self.params):  # record inputs cannot be passed by a caller here
            as_target.params = []
        return src, as_target


# -- the program ----------------------------------------------------------------------------------------
_PRELUDE = '''# A generated DSPex program (benchmarks/programs.py): {n_signatures} signatures, {n_pipelines} pipelines.

lm default = local("smollm2")
lm fast    = openai(base_url = "http://127.0.0.1:8080/v1", model = "smollm2", api_key_env = "OPENAI_API_KEY")
lm big     = dspy("openai/gpt-4o-mini")
lm backup  = fallback(fast, default)

var temperature: float = 0.2 in [0.0 .. 1.0] "sampling temperature"
var style: str = "formal" in ["formal", "casual"]
var top_k: int = 3 in [1 .. 10]
'''


def _prelude(n_signatures: int, n_pipelines: int) -> str:
    lines = [_PRELUDE.format(n_signatures=n_signatures, n_pipelines=n_pipelines)]
    for name, values in ENUMS.items():
        lines.append(f"type {name} = enum(" + ", ".join(f'"{v}"' for v in values) + ")")
    lines.append("type Labels = list[Category]")
    for name, fields in RECORDS.items():
        lines.append(f"\ntype {name} {{")
        for fname, _, spelling, desc, where in fields:
            line = f"  {fname}: {spelling}"
            if desc:
                line += f' "{desc}"'
            if where:
                line += f" where {where}"
            lines.append(line)
        lines.append("}")
    lines.append("")
    lines.append('tool search(query: str, k: int = 3 "how many passages") -> list[str] = '
                 'python("mypkg.retrieval:search")')
    lines.append('tool lookup(query: str) -> list[Citation] = python("mypkg.kb:lookup")')
    lines.append('tool word_count(text: str) -> int = python("mypkg.text:word_count")')
    return "\n".join(lines)


_TOOLS = [
    _Target("search", [_Field("query", STR, "", ""), _Field("k", INT, "", "", "3")], ("list", STR)),
    _Target("word_count", [_Field("text", STR, "", "")], INT),
    _Target("lookup", [_Field("query", STR, "", "")], ("list", ("record", "Citation"))),
]


def generate_program(n_signatures: int = 2000, n_pipelines: int = 200, seed: int = 0) -> tuple[str, list[str]]:
    """The source of a program and the DSPy string signature of each of its signatures (declaration order)."""
    rng = random.Random(seed)
    sigs: list[_Sig] = []
    sig_sources: list[str] = []
    strings: list[str] = []
    for i in range(n_signatures):
        name = f"{rng.choice(_VERBS)}{rng.choice(_NOUNS)}{i}"
        if rng.random() < 0.5:
            sig, text = _string_signature(name, rng)
            comment = f"  # {rng.choice(_DOCS).lower()}" if rng.random() < 0.1 else ""
            sig_sources.append(f'signature {name} = "{text}"{comment}')
            strings.append(text)
        else:
            sig, src, text = _block_signature(name, rng)
            sig_sources.append(src)
            strings.append(text)
        sigs.append(sig)

    by_input: dict[Ty, list[_Sig]] = {}
    for sig in sigs:
        if sum(f.required for f in sig.inputs) <= 3:
            for f in sig.inputs:
                by_input.setdefault(f.type, []).append(sig)

    callees: list[_Target] = list(_TOOLS)
    pipeline_sources: list[str] = []
    for j in range(n_pipelines):
        name = f"{rng.choice(_VERBS).lower()}_{rng.choice(_NOUNS).lower()}_{j}"
        builder = _PipelineBuilder(name, rng, sigs, by_input, callees)
        src, target = builder.build()
        pipeline_sources.append(src)
        if target.params and rng.random() < 0.3:
            callees.append(target)

    # Interleave: pipelines sit between signatures (and may use ones declared below them).
    parts = [_prelude(n_signatures, n_pipelines), ""]
    every = max(1, n_signatures // max(1, n_pipelines))
    pipes = iter(pipeline_sources)
    for i, src in enumerate(sig_sources):
        parts.append(src)
        if i % every == every - 1:
            parts.append("")
            parts.append(next(pipes, ""))
            parts.append("")
    parts.extend(pipes)
    return "\n".join(parts).rstrip() + "\n", strings
