"""The sandbox SMS templates render in: what a template may reach and how much it may do.

Programs are written by the care team, but raw template text also arrives over HTTP
(``POST /v1/templates/preview``), so the sandbox assumes hostile source. On top of Jinja2's
:class:`~jinja2.sandbox.ImmutableSandboxedEnvironment` (no ``__class__`` / ``__globals__``
walks, no unsafe callables, no ``append`` / ``update`` on lists and dicts):

* **Names**: no ``cycler``, ``joiner``, ``namespace`` or ``lipsum``; ``range`` is bounded
  (``MAX_RANGE_ITEMS`` per call, ``MAX_RANGE_BUDGET`` per render).
* **Files**: ``include`` / ``import`` / ``extends`` reach only ``NAME.j2`` files of the
  templates directory: no metadata, no paths.
* **Work**: every render has a budget (:class:`RenderBudget`): loop iterations, calls, filters
  and operators together at most ``MAX_RENDER_STEPS``, wall-clock time at most
  ``MAX_RENDER_SECONDS`` (checked at each step).
* **Size**: no value a template builds (a literal, an operator, ``~``, a filter, a call) may
  render to more than ``MAX_VALUE_CHARS`` characters, and what multiplies sizes (``*``, ``**``,
  padding, ``join``, ``replace``, format widths) is checked before it runs. The whole output is
  at most ``MAX_OUTPUT_CHARS`` characters (a 255-part SMS holds 39,015).
* **Text**: a function, a method or a template internal (``self``, ``loop``) rendered as text is
  refused: it is always a mistake, and its ``repr`` shows memory addresses.

Everything refused raises :class:`jinja2.exceptions.SecurityError` with a sentence saying which
limit was passed; :mod:`gateway.templating` turns it into a ``TemplateError``. Loops and ``~``
are guarded by rewriting the template's syntax tree before code generation
(:class:`_GuardedCodeGenerator`): ``{% for x in xs %}`` iterates ``_loop_items(xs)``.
"""

from __future__ import annotations

import functools
import re
import string
import time
import types
from collections.abc import (
    Callable,
    Generator,
    ItemsView,
    Iterator,
    KeysView,
    Mapping,
    Sized,
    ValuesView,
)
from contextvars import ContextVar
from pathlib import Path
from typing import Any

import jinja2
from jinja2 import nodes
from jinja2.compiler import CodeGenerator, Frame
from jinja2.exceptions import SecurityError
from jinja2.runtime import Context, LoopContext, TemplateReference
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.visitor import NodeTransformer

__all__ = [
    "MAX_OUTPUT_CHARS",
    "MAX_RENDER_SECONDS",
    "MAX_RENDER_STEPS",
    "MAX_VALUE_CHARS",
    "RenderBudget",
    "SmsSandbox",
    "check_rendered",
    "make_environment",
    "render_bounded",
    "text_size",
]

MAX_RANGE_ITEMS = 1_000  # per range() call
MAX_RANGE_BUDGET = 10_000  # range() items per render, so nested loops stay bounded
MAX_REPEAT_LEN = 10_000  # longest sequence "x" * n may build
MAX_POWER_BITS = 1_024  # largest integer a ** b or a * b may build
MAX_RENDER_STEPS = 50_000  # loop iterations + calls + filters + guarded operators per render
MAX_RENDER_SECONDS = 0.5  # wall-clock time per render (a typical one takes tens of µs)
MAX_OUTPUT_CHARS = 40_000  # rendered text; 255 parts × 153 GSM-7 characters = 39,015
MAX_VALUE_CHARS = MAX_OUTPUT_CHARS  # any one value a template builds

TEMPLATE_FILE_RE = re.compile(r"_?[a-z0-9][a-z0-9_]*\.j2")
_UNSAFE_GLOBALS = ("cycler", "joiner", "namespace", "lipsum")
_PADDING_METHODS = frozenset({"center", "ljust", "rjust", "zfill", "expandtabs"})
_PRINTF_RE = re.compile(r"%(?:\([^)]*\))?[-#0 +]*(\*|\d+)?(?:\.(\*|\d+))?")
_DIGITS_RE = re.compile(r"\d+")
_FORMATTER = string.Formatter()
_SEQUENCES = (list, tuple, set, frozenset, KeysView, ValuesView, ItemsView)
_MAPPINGS = (dict, types.MappingProxyType)


# --------------------------------------------------------------------------- budget


class RenderBudget:
    """What one render may still spend: steps, ``range()`` items, time."""

    __slots__ = ("deadline", "range_items", "steps")

    def __init__(self) -> None:
        self.steps = MAX_RENDER_STEPS
        self.range_items = MAX_RANGE_BUDGET
        self.deadline = time.monotonic() + MAX_RENDER_SECONDS

    def step(self) -> None:
        self.steps -= 1
        if self.steps < 0:
            raise SecurityError(
                f"more than {MAX_RENDER_STEPS} loop iterations, calls and operations")
        if time.monotonic() > self.deadline:
            raise SecurityError(f"rendering took longer than {MAX_RENDER_SECONDS} s")

    def take_range(self, items: int) -> None:
        self.range_items -= items
        if self.range_items < 0:
            raise SecurityError(f"loops over more than {MAX_RANGE_BUDGET} range() items in total")


_BUDGET: ContextVar[RenderBudget | None] = ContextVar("smsgw_render_budget", default=None)


def _step() -> None:
    budget = _BUDGET.get()
    if budget is not None:
        budget.step()


def render_bounded(template: jinja2.Template, data: Mapping[str, Any]) -> str:
    """Render ``template`` with ``data`` on a fresh :class:`RenderBudget`, output capped."""
    token = _BUDGET.set(RenderBudget())
    chunks = template.generate(data)
    try:
        out: list[str] = []
        size = 0
        for chunk in chunks:
            size += len(chunk)
            if size > MAX_OUTPUT_CHARS:
                raise SecurityError(f"the output is over {MAX_OUTPUT_CHARS} characters")
            out.append(chunk)
        return "".join(out)
    finally:
        if isinstance(chunks, Generator):
            chunks.close()
        _BUDGET.reset(token)


# --------------------------------------------------------------------------- sizes


def text_size(value: object, limit: int = MAX_VALUE_CHARS) -> int:
    """About how many characters ``str(value)`` has; counting stops once over ``limit``.

    Containers are walked without calling ``str()`` (a list holding the same big list ten times
    renders ten copies of it), so a value is measured before it can cost anything.
    """
    if isinstance(value, str):
        return len(value)
    total = 0
    stack: list[object] = [value]
    while stack and total <= limit:
        item = stack.pop()
        if isinstance(item, str):
            total += len(item) + 4  # quotes and ", "
        elif isinstance(item, bool) or item is None:
            total += 5
        elif isinstance(item, int):
            total += item.bit_length() * 3 // 10 + 2  # decimal digits ≈ bits × log10(2)
        elif isinstance(item, _MAPPINGS):
            total += 2 + 4 * len(item)
            if total <= limit:
                stack.extend(item.keys())
                stack.extend(item.values())
        elif isinstance(item, _SEQUENCES):
            total += 2 + 2 * len(item)
            if total <= limit:
                stack.extend(item)
        else:
            total += 16
    return total


def check_value(value: object, what: str) -> None:
    """Refuse a value that would render to more than ``MAX_VALUE_CHARS`` characters."""
    if isinstance(value, str):
        size = len(value)
    elif isinstance(value, float | bool) or value is None:
        return
    else:
        size = text_size(value)
    if size > MAX_VALUE_CHARS:
        raise SecurityError(f"{what} would be over {MAX_VALUE_CHARS} characters")


def check_rendered(value: object) -> None:
    """What ``{{ expression }}`` may print: bounded text, not functions or template internals."""
    if isinstance(value, jinja2.Undefined):
        return  # str() raises StrictUndefined's error naming the variable
    if isinstance(value, TemplateReference | LoopContext | Context):
        raise SecurityError("an expression renders a template internal ('self', 'loop'), "
                            "not text")
    if callable(value):
        raise SecurityError("an expression renders a function or method, not text "
                            "(missing parentheses?)")
    check_value(value, "an expression")


def _too_wide(digits: str | None) -> bool:
    return digits == "*" or (
        digits is not None and (len(digits) > 9 or int(digits) > MAX_VALUE_CHARS))


def check_printf(fmt: object) -> None:
    """``fmt % args``: refuse ``*`` widths and widths / precisions over ``MAX_VALUE_CHARS``."""
    if isinstance(fmt, str):
        for found in _PRINTF_RE.finditer(fmt):
            if _too_wide(found.group(1)) or _too_wide(found.group(2)):
                raise SecurityError(f"a % format width over {MAX_VALUE_CHARS} (or '*')")


def check_format(fmt: str) -> None:
    """``fmt.format(...)``: refuse nested ``{}`` in a spec and widths over the value limit."""
    try:
        fields = list(_FORMATTER.parse(fmt))
    except ValueError:
        return  # the call itself reports the malformed format string
    for _literal, _field, spec, _conversion in fields:
        if not spec:
            continue
        if "{" in spec:
            raise SecurityError("a format spec that takes its width from an argument")
        if any(_too_wide(n) for n in _DIGITS_RE.findall(spec)):
            raise SecurityError(f"a format width over {MAX_VALUE_CHARS}")


def _check_power(base: Any, exponent: Any) -> None:
    if (
        isinstance(base, int)
        and isinstance(exponent, int)
        and exponent > 0
        and base.bit_length() * exponent > MAX_POWER_BITS
        and abs(base) > 1
    ):
        raise SecurityError(f"power with a result over {MAX_POWER_BITS} bits")


def _check_product(left: Any, right: Any) -> None:
    if isinstance(left, int) and isinstance(right, int):
        if left.bit_length() + right.bit_length() > MAX_POWER_BITS:
            raise SecurityError(f"product with a result over {MAX_POWER_BITS} bits")
        return
    for seq, times in ((left, right), (right, left)):
        if isinstance(seq, str | bytes | list | tuple) and isinstance(times, int) and times > 0:
            if len(seq) * times > MAX_REPEAT_LEN:
                raise SecurityError(f"repetition building over {MAX_REPEAT_LEN} items")
            if text_size(seq, MAX_VALUE_CHARS // times) * times > MAX_VALUE_CHARS:
                raise SecurityError(f"repetition building over {MAX_VALUE_CHARS} characters")


def _estimate_replace(text: str, args: tuple[Any, ...]) -> int:
    old, new = args[0], args[1]
    if not isinstance(old, str) or not isinstance(new, str):
        return len(text)
    count = text.count(old) if old else len(text) + 1
    if len(args) > 2 and isinstance(args[2], int) and args[2] >= 0:
        count = min(count, args[2])
    return len(text) + count * len(new)


def _check_str_method(obj: Any, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> None:
    """Before a ``str`` method runs: would it build more than ``MAX_VALUE_CHARS``?"""
    if not isinstance(obj, types.BuiltinMethodType) or not isinstance(obj.__self__, str):
        return
    text: str = obj.__self__
    name = obj.__name__
    estimate = 0
    if name in _PADDING_METHODS:
        widths = [a for a in (*args, *kwargs.values()) if isinstance(a, int)]
        width = max(widths, default=0)
        estimate = len(text) + text.count("\t") * width if name == "expandtabs" else width
    elif name == "join" and args and isinstance(args[0], Sized):
        estimate = len(text) * max(0, len(args[0]) - 1)
    elif name == "replace" and len(args) >= 2:
        estimate = _estimate_replace(text, args)
    if estimate > MAX_VALUE_CHARS:
        raise SecurityError(f"str.{name}() would build over {MAX_VALUE_CHARS} characters")


# --------------------------------------------------------------------------- guards in templates


class _CountedItems:
    """What ``{% for %}`` iterates: the items, one budget step each (``len`` passes through)."""

    __slots__ = ("_items",)

    def __init__(self, items: Any) -> None:
        self._items = items

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[Any]:
        for item in self._items:
            _step()
            yield item


def _loop_items(items: Any) -> _CountedItems:
    return _CountedItems(items)


def _concat(*parts: Any) -> str:
    """``a ~ b ~ c``: sizes checked before anything is converted to text."""
    total = 0
    for part in parts:
        total += text_size(part, MAX_VALUE_CHARS)
        if total > MAX_VALUE_CHARS:
            raise SecurityError(f"joining with ~ would build over {MAX_VALUE_CHARS} characters")
    return "".join(map(str, parts))


def _built(value: Any) -> Any:
    """A list, tuple or dict literal: a few references to big values can make a huge text."""
    check_value(value, "a literal")
    return value


class _AddGuards(NodeTransformer):
    """Rewrites loops, ``~`` and literals into calls of the guards above."""

    def __init__(self, environment: jinja2.Environment) -> None:
        self.environment = environment

    def _guard(self, func: Callable[..., Any], args: list[Any], lineno: int) -> nodes.Call:
        target = nodes.ImportedName(f"{__name__}.{func.__name__}")
        call = nodes.Call(target, args, [], None, None, lineno=lineno)
        call.set_environment(self.environment)
        return call

    def visit_For(self, node: nodes.For) -> nodes.Node:
        self.generic_visit(node)
        node.iter = self._guard(_loop_items, [node.iter], node.lineno)
        return node

    def visit_Concat(self, node: nodes.Concat) -> nodes.Node:
        self.generic_visit(node)
        return self._guard(_concat, list(node.nodes), node.lineno)

    def _literal(self, node: nodes.Expr) -> nodes.Node:
        self.generic_visit(node)
        return self._guard(_built, [node], node.lineno)

    def visit_List(self, node: nodes.List) -> nodes.Node:
        return self._literal(node)

    def visit_Dict(self, node: nodes.Dict) -> nodes.Node:
        return self._literal(node)

    def visit_Tuple(self, node: nodes.Tuple) -> nodes.Node:
        if node.ctx != "load":  # a target: {% for a, b in ... %}, {% set a, b = ... %}
            self.generic_visit(node)
            return node
        return self._literal(node)


class _GuardedCodeGenerator(CodeGenerator):
    def visit_Template(self, node: nodes.Template, frame: Frame | None = None) -> None:
        _AddGuards(self.environment).visit(node)
        super().visit_Template(node, frame)


# --------------------------------------------------------------------------- filters


def _filter_center(value: Any, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> None:
    width = args[0] if args else kwargs.get("width", 80)
    if isinstance(width, int) and width > MAX_VALUE_CHARS:
        raise SecurityError(f"|center wider than {MAX_VALUE_CHARS}")


def _filter_indent(value: Any, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> None:
    width = args[0] if args else kwargs.get("width", 4)
    pad = width if isinstance(width, str) else None
    if isinstance(width, int):
        if width > MAX_VALUE_CHARS:
            raise SecurityError(f"|indent wider than {MAX_VALUE_CHARS}")
        pad = " " * width
    text = value if isinstance(value, str) else ""
    if pad is not None and len(text) + (text.count("\n") + 1) * len(pad) > MAX_VALUE_CHARS:
        raise SecurityError(f"|indent would build over {MAX_VALUE_CHARS} characters")


def _filter_join(value: Any, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> None:
    sep = args[0] if args else kwargs.get("d", "")
    if (isinstance(sep, str) and isinstance(value, Sized)
            and len(sep) * max(0, len(value) - 1) + text_size(value) > MAX_VALUE_CHARS):
        raise SecurityError(f"|join would build over {MAX_VALUE_CHARS} characters")


def _filter_replace(value: Any, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> None:
    if (isinstance(value, str) and len(args) >= 2
            and _estimate_replace(value, args) > MAX_VALUE_CHARS):
        raise SecurityError(f"|replace would build over {MAX_VALUE_CHARS} characters")


def _filter_wordwrap(value: Any, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> None:
    wrap = args[2] if len(args) > 2 else kwargs.get("wrapstring")
    if (isinstance(value, str) and isinstance(wrap, str)
            and len(value) * (1 + len(wrap)) > MAX_VALUE_CHARS):
        raise SecurityError(f"|wordwrap would build over {MAX_VALUE_CHARS} characters")


def _filter_format(value: Any, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> None:
    check_printf(value)


def _filter_slice(value: Any, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> None:
    slices = args[0] if args else kwargs.get("slices", 1)
    if isinstance(slices, int) and slices > MAX_RANGE_ITEMS:
        raise SecurityError(f"|slice into more than {MAX_RANGE_ITEMS} pieces")


_FilterCheck = Callable[[Any, tuple[Any, ...], Mapping[str, Any]], None]
_FILTER_CHECKS: Mapping[str, _FilterCheck] = {
    "center": _filter_center,
    "indent": _filter_indent,
    "join": _filter_join,
    "replace": _filter_replace,
    "wordwrap": _filter_wordwrap,
    "format": _filter_format,
    "slice": _filter_slice,
}


def _guard_filter(name: str, func: Callable[..., Any]) -> Callable[..., Any]:
    """``func`` with a budget step, a pre-check for filters that multiply sizes, a size check."""
    check = _FILTER_CHECKS.get(name)
    # pass_context / pass_eval_context / pass_environment filters get that object first
    skip = 1 if getattr(func, "jinja_pass_arg", None) is not None else 0

    @functools.wraps(func)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        _step()
        if check is not None and len(args) > skip:
            check(args[skip], args[skip + 1:], kwargs)
        result = func(*args, **kwargs)
        check_value(result, f"the result of |{name}")
        return result

    return guarded


# --------------------------------------------------------------------------- environment


def _bounded_range(*args: int) -> range:
    items = range(*args)
    if len(items) > MAX_RANGE_ITEMS:
        raise SecurityError(f"range() of {len(items)} items is over the limit of {MAX_RANGE_ITEMS}")
    budget = _BUDGET.get()
    if budget is not None:
        budget.take_range(len(items))
    return items


class _TemplateFileLoader(jinja2.FileSystemLoader):
    """Loads only ``NAME.j2`` / ``_NAME.j2`` files of the directory: no metadata, no paths."""

    def get_source(
        self, environment: jinja2.Environment, template: str
    ) -> tuple[str, str, Callable[[], bool]]:
        if not TEMPLATE_FILE_RE.fullmatch(template):
            raise jinja2.TemplateNotFound(template)
        return super().get_source(environment, template)


class SmsSandbox(ImmutableSandboxedEnvironment):
    """Jinja2's immutable sandbox with budgets and size checks (see the module docstring)."""

    code_generator_class = _GuardedCodeGenerator
    intercepted_binops = frozenset({"**", "*", "+", "%"})

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        _step()
        if operator == "**":
            _check_power(left, right)
        elif operator == "*":
            _check_product(left, right)
        elif operator == "%":
            check_printf(left)
        result = super().call_binop(context, operator, left, right)
        check_value(result, f"the result of {operator}")
        return result

    def call(self, context: Context, obj: Any, /, *args: Any, **kwargs: Any) -> Any:
        _step()
        _check_str_method(obj, args, kwargs)
        result = super().call(context, obj, *args, **kwargs)
        check_value(result, "the result of a call")
        return result

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        wrapped = super().wrap_str_format(value)
        if wrapped is not None:
            check_format(value.__self__)
        return wrapped


def make_environment(
    templates_dir: Path,
    *,
    filters: Mapping[str, Callable[..., Any]],
    defaults: Mapping[str, Any],
    finalize: Callable[[Any], Any],
) -> SmsSandbox:
    """The sandbox for one templates directory: plain text (no HTML escaping), strict
    undefined, ``filters`` added to Jinja's own, ``defaults`` as globals."""
    env = SmsSandbox(
        loader=_TemplateFileLoader(str(templates_dir)),
        undefined=jinja2.StrictUndefined,
        autoescape=False,
        keep_trailing_newline=False,
        trim_blocks=True,
        lstrip_blocks=True,
        auto_reload=False,
        finalize=finalize,
    )
    for unsafe in _UNSAFE_GLOBALS:
        env.globals.pop(unsafe, None)
    env.globals["range"] = _bounded_range
    env.globals.update(defaults)
    env.filters.update(filters)
    for name, func in list(env.filters.items()):
        env.filters[name] = _guard_filter(name, func)
    return env
