"""SMS templates: a sandboxed Jinja2 environment, SMS filters and render -> text + encoding.

Layout of ``templates_sms/``: one ``NAME.j2`` per program (plain text, no HTML escaping) and a
``NAME.toml`` beside it::

    class = "care"              # or "advertising" (Decree 91/2020: needs [QC] + refusal text)
    sender = "CSKH"             # default brandname, at most 11 characters
    max_segments = 3            # a rendered sample over this is reported as a warning
    description = "..."

    [sample]                    # data used by `smsgw templates check` and the tests
    full_name = "Nguyễn Thị Mai"

Files whose name starts with ``_`` are partials (for ``{% include %}``), not programs.

Rendering is strict: a variable the data does not provide raises :class:`TemplateError` naming
it (never a blank in a message sent to thousands of subscribers), and so does a value that
renders as ``None``. Templates render in :mod:`gateway.template_sandbox`, which assumes hostile
source (raw text arrives over HTTP for previews): no attribute walks (``__class__``,
``__globals__``...), no ``cycler``/``joiner``/``namespace``/``lipsum``, only ``.j2`` files of the
templates directory for ``include``/``import``/``extends``, and every render bounded in steps
(loop iterations, calls), time, value sizes and output (at most 40,000 characters).

Compiled templates and metadata are cached for the life of the renderer (rendering a typical
template costs tens of microseconds); call :meth:`TemplateRenderer.clear_cache` after editing
files in a running process.
"""

from __future__ import annotations

import logging
import math
import re
import threading
import tomllib
import traceback
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import date, datetime
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from pathlib import Path
from types import MappingProxyType
from typing import Any

import jinja2
import jinja2.nodes
from jinja2.exceptions import SecurityError

from gateway import PROJECT_ROOT
from gateway.config import SendingConfig
from gateway.domain import Encoding, MessageClass
from gateway.masking import mask_msisdn
from gateway.smpp.encoding import MAX_PARTS, analyse, normalise
from gateway.smpp.encoding import khong_dau as strip_diacritics
from gateway.template_sandbox import (
    MAX_VALUE_CHARS,
    check_rendered,
    make_environment,
    render_bounded,
)

__all__ = [
    "DEFAULT_TEMPLATES_DIR",
    "Rendered",
    "TemplateError",
    "TemplateMeta",
    "TemplateRenderer",
    "filter_date",
    "filter_first_name",
    "filter_khong_dau",
    "filter_mask",
    "filter_number",
    "filter_vnd",
]

logger = logging.getLogger("smsgw.templating")

DEFAULT_TEMPLATES_DIR = PROJECT_ROOT / "templates_sms"

MAX_SOURCE_CACHE = 128  # compiled render_source() sources kept

TEMPLATE_SUFFIX = ".j2"
META_SUFFIX = ".toml"
AD_LABELS = ("[QC]", "[AD]")

_NAME_RE = re.compile(r"[a-z0-9][a-z0-9_]*")
_SENDER_RE = re.compile(r"[A-Za-z0-9_.\- ]{1,11}")
_META_KEYS = frozenset({"class", "sender", "max_segments", "description", "sample"})
_DIGITS_RE = re.compile(r"[+-]?\d+")
_BLANK_LINES_RE = re.compile(r"\n{3,}")
_INVISIBLE_RE = re.compile("[\u200b\u2060\ufeff\u00ad]")  # zero-width / soft hyphen
_SENTENCE_SPLIT_RE = re.compile(r"(?<=[.!?])\s+|\n+")
_REFUSAL_RE = re.compile(r"\btc\d*\b|\btu choi\b")
_UNDEFINED_NAME_RE = re.compile(r"'([^']+)' is undefined")
_UNDEFINED_ATTR_RE = re.compile(r".+ has no attribute '([^']+)'")


# --------------------------------------------------------------------------- errors


class TemplateError(Exception):
    """A template cannot be found, loaded, compiled or rendered with the given data.

    ``reason`` is phrased to follow the template name: ``str(err)`` is
    ``"template 'bill_issued' needs variable 'amount'"``. ``line`` is the template line when
    known.
    """

    def __init__(self, template: str | None, reason: str, line: int | None = None) -> None:
        self.template = template
        self.reason = reason
        self.line = line
        prefix = f"template {template!r}" if template is not None else "inline template"
        super().__init__(f"{prefix} {reason}")

    def __reduce__(self) -> tuple[type[TemplateError], tuple[str | None, str, int | None]]:
        return (type(self), (self.template, self.reason, self.line))


class _NoneValue(Exception):
    """Raised by ``finalize`` when an expression renders as ``None``."""


# --------------------------------------------------------------------------- filters


def _require_defined(value: object) -> None:
    """Filters get Undefined objects as arguments: make them fail with the variable's name."""
    if isinstance(value, jinja2.Undefined):
        str(value)  # StrictUndefined raises UndefinedError("'amount' is undefined")
        raise jinja2.UndefinedError("a filter got an undefined value")


def _to_integer_amount(value: object, what: str) -> int:
    _require_defined(value)
    if isinstance(value, bool):
        raise TypeError(f"{what}: a boolean is not an amount")
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{what}: {value!r} is not an amount")
        value = Decimal(repr(value))
    if isinstance(value, str):
        text = value.strip()
        if not _DIGITS_RE.fullmatch(text):
            raise ValueError(f"{what}: {value[:30]!r} is not a whole number of digits")
        return int(text)
    if isinstance(value, Decimal):
        if not value.is_finite():
            raise ValueError(f"{what}: {value!r} is not an amount")
        try:
            return int(value.quantize(Decimal(1), rounding=ROUND_HALF_UP))
        except InvalidOperation as exc:
            raise ValueError(f"{what}: {value!r} is too large") from exc
    raise TypeError(f"{what}: expects a number, got {type(value).__name__}")


def _group_thousands(amount: int) -> str:
    sign = "-" if amount < 0 else ""
    return sign + f"{abs(amount):,}".replace(",", ".")


def filter_vnd(value: object) -> str:
    """Amount in đồng with Vietnamese grouping: ``1250000`` -> ``"1.250.000đ"``.

    Negative amounts get a leading ``-``. Accepts int, float and Decimal (rounded half up to
    whole đồng) and strings of digits.
    """
    return _group_thousands(_to_integer_amount(value, "vnd")) + "đ"


def filter_number(value: object) -> str:
    """Whole number with dots between thousands (points, minutes...): ``12500`` -> ``"12.500"``."""
    return _group_thousands(_to_integer_amount(value, "number"))


def _to_date(value: object) -> date:
    _require_defined(value)
    if isinstance(value, date):  # datetime is a date too
        return value
    if isinstance(value, str):
        text = value.strip()
        try:
            if len(text) == 10:
                return date.fromisoformat(text)
            return datetime.fromisoformat(text)
        except ValueError as exc:
            raise ValueError(f"date: {value[:40]!r} is not an ISO date or date-time") from exc
    raise TypeError(f"date: expects a date, datetime or ISO string, got {type(value).__name__}")


def filter_date(value: object, fmt: str | None = None) -> str:
    """``dd/mm/yyyy`` (``"2026-12-05"`` -> ``"05/12/2026"``), or ``strftime(fmt)`` when given.

    A datetime keeps its own time zone (no conversion): pass local (UTC+7) times.
    """
    when = _to_date(value)
    if fmt is None:
        return f"{when.day:02d}/{when.month:02d}/{when.year:04d}"
    return when.strftime(fmt)


def filter_khong_dau(value: object) -> str:
    """Vietnamese without diacritics: ``"Nguyễn Văn Đức"`` -> ``"Nguyen Van Duc"``."""
    _require_defined(value)
    return strip_diacritics(normalise(str(value)))


def filter_first_name(value: object) -> str:
    """Given name of a Vietnamese full name (the last word): ``"Nguyễn Thị Mai"`` -> ``"Mai"``.

    An all-upper or all-lower name is capitalised (``"NGUYỄN VĂN ĐỨC"`` -> ``"Đức"``).
    """
    _require_defined(value)
    words = normalise(str(value)).split()
    if not words:
        raise ValueError("first_name: the name is empty")
    given = words[-1]
    if given.isupper() or given.islower():
        given = given.capitalize()
    return given


def filter_mask(value: object) -> str:
    """Masked phone number: ``"84901234567"`` -> ``"84901***567"``."""
    _require_defined(value)
    return mask_msisdn(str(value).strip().lstrip("+"))


FILTERS: Mapping[str, Any] = MappingProxyType(
    {
        "vnd": filter_vnd,
        "number": filter_number,
        "date": filter_date,
        "khong_dau": filter_khong_dau,
        "first_name": filter_first_name,
        "mask": filter_mask,
    }
)


# --------------------------------------------------------------------------- sandbox


def _finalize(value: Any) -> Any:
    if value is None:
        raise _NoneValue("an expression renders as None (missing data?)")
    check_rendered(value)
    return value


# --------------------------------------------------------------------------- records


@dataclass(frozen=True, slots=True)
class TemplateMeta:
    name: str
    message_class: MessageClass
    sender: str  # default brandname
    max_segments: int
    description: str
    sample: Mapping[str, Any]  # read-only


@dataclass(frozen=True, slots=True)
class Rendered:
    text: str  # NFC, stripped, runs of spaces collapsed, newlines kept
    encoding: Encoding
    segments: int
    ucs2_chars: tuple[str, ...]  # characters that force UCS-2, first-appearance order
    khong_dau: bool  # diacritics were stripped
    warnings: tuple[str, ...]


# --------------------------------------------------------------------------- text checks


def _tidy(text: str) -> str:
    """NFC, no zero-width characters, each line's whitespace runs collapsed to one space and
    trimmed, at most one blank line in a row, no leading/trailing blank."""
    text = normalise(text)
    if "\n" not in text and "\r" not in text:  # one line (the usual SMS): the same, faster
        if _INVISIBLE_RE.search(text):
            text = _INVISIBLE_RE.sub("", text)
        return " ".join(text.split())
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    if _INVISIBLE_RE.search(text):
        text = _INVISIBLE_RE.sub("", text)
    text = "\n".join(" ".join(line.split()) for line in text.split("\n"))
    if "\n\n\n" in text:
        text = _BLANK_LINES_RE.sub("\n\n", text)
    return text.strip()


def _last_sentence(text: str) -> str:
    pieces = [p for p in _SENTENCE_SPLIT_RE.split(text) if p.strip()]
    return pieces[-1] if pieces else ""


def _advertising_warnings(text: str) -> list[str]:
    warnings: list[str] = []
    if not text.startswith(AD_LABELS):
        warnings.append("advertising must start with the label [QC]")
    folded = strip_diacritics(_last_sentence(text)).lower()
    if not _REFUSAL_RE.search(folded):
        warnings.append(
            "advertising must end with refusal instructions (e.g. 'Tu choi QC soan TC gui 1234')"
        )
    return warnings


# --------------------------------------------------------------------------- error mapping


def _template_line(exc: BaseException, filename: str | None) -> int | None:
    """Line of the template frame nearest the error (Jinja rewrites tracebacks to them)."""
    if filename is None:
        return None
    line: int | None = None
    for frame, lineno in traceback.walk_tb(exc.__traceback__):
        if frame.f_code.co_filename == filename:
            line = lineno
    return line


def _runtime_error(exc: Exception, name: str | None, filename: str | None) -> TemplateError:
    line = _template_line(exc, filename)
    at = f" at line {line}" if line is not None else ""
    message = str(exc)
    if isinstance(exc, SecurityError):
        return TemplateError(name, f"was refused by the sandbox{at}: {message}", line)
    if isinstance(exc, jinja2.UndefinedError):
        found = _UNDEFINED_NAME_RE.fullmatch(message)
        if found:
            return TemplateError(name, f"needs variable {found.group(1)!r}", line)
        found = _UNDEFINED_ATTR_RE.fullmatch(message)
        if found:
            return TemplateError(name, f"needs attribute {found.group(1)!r}{at}: {message}", line)
        return TemplateError(name, f"uses an undefined value{at}: {message}", line)
    if isinstance(exc, jinja2.TemplateNotFound):
        return TemplateError(name, f"includes unknown template {exc.name!r}{at}", line)
    if isinstance(exc, jinja2.TemplateSyntaxError):
        return _syntax_error(exc, name)
    if isinstance(exc, _NoneValue):
        return TemplateError(name, f"renders None{at} (missing data?)", line)
    if isinstance(exc, RecursionError):
        return TemplateError(name, f"was refused by the sandbox{at}: it recurses too deeply "
                                   "(a macro or include calling itself?)", line)
    return TemplateError(name, f"failed{at}: {type(exc).__name__}: {message}", line)


def _syntax_error(exc: jinja2.TemplateSyntaxError, name: str | None) -> TemplateError:
    where = f" in {exc.name!r}" if exc.name and exc.name != _template_file(name) else ""
    return TemplateError(
        name, f"has a syntax error at line {exc.lineno}{where}: {exc.message}", exc.lineno
    )


def _too_nested(exc: RecursionError | SyntaxError, name: str | None) -> TemplateError:
    """Jinja's parser and Python's compiler give up on deeply nested source."""
    detail = f" ({exc.msg})" if isinstance(exc, SyntaxError) else ""
    return TemplateError(name, f"is nested too deeply to compile{detail}")


def _template_file(name: str | None) -> str | None:
    return None if name is None else name + TEMPLATE_SUFFIX


# --------------------------------------------------------------------------- renderer


class TemplateRenderer:
    """Loads, checks and renders the SMS templates of one directory.

    ``defaults`` are variables every template sees unless the data overrides them (e.g.
    ``{"hotline": "18001090", "refusal": "Tu choi QC soan TC gui 1234"}``).
    """

    def __init__(
        self,
        templates_dir: Path = DEFAULT_TEMPLATES_DIR,
        *,
        defaults: Mapping[str, Any] | None = None,
    ) -> None:
        self._dir = Path(templates_dir)
        self._defaults = MappingProxyType(dict(defaults or {}))
        self._env = make_environment(self._dir, filters=FILTERS, defaults=defaults or {},
                                     finalize=_finalize)
        self._lock = threading.Lock()
        self._compiled: dict[str, jinja2.Template] = {}
        self._metas: dict[str, TemplateMeta] = {}
        self._sources: OrderedDict[str, jinja2.Template] = OrderedDict()

    @property
    def templates_dir(self) -> Path:
        return self._dir

    @property
    def defaults(self) -> Mapping[str, Any]:
        return self._defaults

    def clear_cache(self) -> None:
        """Forget compiled templates and metadata (after editing files in a live process)."""
        with self._lock:
            self._compiled.clear()
            self._metas.clear()
            self._sources.clear()
            if self._env.cache is not None:
                self._env.cache.clear()

    def row_function(self, *, name: str | None = None, source: str | None = None
                     ) -> Callable[[Mapping[str, Any]], str]:
        """Raw text (before tidying) of one data row, for bulk rendering (campaigns).

        A template made only of text, variables and argument-less filters (``Chào {{ ho_ten
        }}, {{ amount | vnd }}``) is rendered without Jinja's runtime, several times faster;
        it fails the same way (a missing variable names itself, None is refused). Anything
        else goes through the sandbox as :meth:`render` does."""
        if (name is None) == (source is None):
            raise ValueError("give a template name or a source")
        if name is not None:
            self._require(name)
            template = self._template(name)
            text = (self._dir / (name + TEMPLATE_SUFFIX)).read_text(encoding="utf-8")
        else:
            assert source is not None
            template, text = self._source_template(source), source
        fast = _fast_row_function(self._env, text, name)
        if fast is not None:
            return fast
        return lambda data: _run(template, name, data)

    def row_variables(self, *, name: str | None = None, source: str | None = None
                      ) -> frozenset[str] | None:
        """The data variables a simple template (see :meth:`row_function`) needs, so that a
        list missing one of those columns is refused at its header; None for any other
        template (its conditions may make a variable optional)."""
        if name is not None:
            self._require(name)
            source = (self._dir / (name + TEMPLATE_SUFFIX)).read_text(encoding="utf-8")
        if source is None:
            raise ValueError("give a template name or a source")
        try:
            pieces = _fast_pieces(self._env, self._env.parse(source))
        except jinja2.TemplateSyntaxError as exc:
            raise _syntax_error(exc, name) from None
        if pieces is None:
            return None
        return frozenset(var for _, var, _ in pieces if var and var not in self._env.globals)

    # ---- discovery

    def names(self) -> list[str]:
        """Program names (``NAME.j2`` files, partials starting with ``_`` excluded), sorted."""
        if not self._dir.is_dir():
            return []
        return sorted(
            path.name.removesuffix(TEMPLATE_SUFFIX)
            for path in self._dir.iterdir()
            if path.name.endswith(TEMPLATE_SUFFIX)
            and _NAME_RE.fullmatch(path.name.removesuffix(TEMPLATE_SUFFIX))
            and path.is_file()
        )

    def _require(self, name: str) -> None:
        if _NAME_RE.fullmatch(name) and (self._dir / (name + TEMPLATE_SUFFIX)).is_file():
            return
        known = ", ".join(self.names()) or "none"
        raise TemplateError(name, f"is unknown; known templates: {known}")

    def meta(self, name: str) -> TemplateMeta:
        cached = self._metas.get(name)
        if cached is not None:
            return cached
        self._require(name)
        meta = self._load_meta(name)
        with self._lock:
            self._metas[name] = meta
        return meta

    def _load_meta(self, name: str) -> TemplateMeta:
        path = self._dir / (name + META_SUFFIX)
        try:
            with path.open("rb") as fh:
                raw = tomllib.load(fh)
        except FileNotFoundError:
            raise TemplateError(name, f"has no metadata file {path.name}") from None
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise TemplateError(name, f"has an unreadable {path.name}: {exc}") from exc
        return _parse_meta(name, path.name, raw)

    def _template(self, name: str) -> jinja2.Template:
        cached = self._compiled.get(name)
        if cached is not None:
            return cached
        self._require(name)
        try:
            compiled = self._env.get_template(name + TEMPLATE_SUFFIX)
        except jinja2.TemplateSyntaxError as exc:
            raise _syntax_error(exc, name) from None
        except jinja2.TemplateNotFound as exc:
            raise TemplateError(name, f"includes unknown template {exc.name!r}") from None
        except (RecursionError, SyntaxError) as exc:
            raise _too_nested(exc, name) from None
        logger.debug("compiled template %s", name)
        with self._lock:
            self._compiled[name] = compiled
        return compiled

    def _source_template(self, source: str) -> jinja2.Template:
        with self._lock:
            cached = self._sources.get(source)
            if cached is not None:
                self._sources.move_to_end(source)
                return cached
        try:
            compiled = self._env.from_string(source)
        except jinja2.TemplateSyntaxError as exc:
            raise _syntax_error(exc, None) from None
        except (RecursionError, SyntaxError) as exc:
            raise _too_nested(exc, None) from None
        with self._lock:
            self._sources[source] = compiled
            while len(self._sources) > MAX_SOURCE_CACHE:
                self._sources.popitem(last=False)
        return compiled

    # ---- rendering

    def render(self, name: str, data: Mapping[str, Any], *, khong_dau: bool = False) -> Rendered:
        """Render program ``name`` with ``data``; warnings list compliance / length issues."""
        meta = self.meta(name)
        raw = _run(self._template(name), name, data)
        return _finish(raw, meta.message_class, meta.max_segments, khong_dau=khong_dau)

    def render_source(
        self,
        source: str,
        data: Mapping[str, Any],
        *,
        khong_dau: bool = False,
        message_class: MessageClass = MessageClass.CARE,
        max_segments: int | None = None,
    ) -> Rendered:
        """Render raw template text (previews, ad-hoc scripts) in the same sandbox."""
        raw = _run(self._source_template(source), None, data)
        return _finish(raw, message_class, max_segments, khong_dau=khong_dau)

    def check_all(self) -> list[tuple[str, Rendered | TemplateError]]:
        """Render every program with its sample data (``smsgw templates check``)."""
        results: list[tuple[str, Rendered | TemplateError]] = []
        for name in self.names():
            outcome: Rendered | TemplateError
            try:
                outcome = self.render(name, self.meta(name).sample)
            except TemplateError as exc:
                logger.warning("template check failed: %s", exc)
                outcome = exc
            else:
                for warning in outcome.warnings:
                    logger.warning("template %s: %s", name, warning)
            results.append((name, outcome))
        return results


def _parse_meta(name: str, filename: str, raw: Mapping[str, Any]) -> TemplateMeta:
    def bad(problem: str) -> TemplateError:
        return TemplateError(name, f"has a bad {filename}: {problem}")

    unknown = sorted(set(raw) - _META_KEYS)
    if unknown:
        raise bad(f"unknown keys {', '.join(unknown)}")
    try:
        message_class = MessageClass(str(raw.get("class")))
    except ValueError:
        allowed = ", ".join(repr(str(c)) for c in MessageClass)
        raise bad(f"class must be one of {allowed}") from None
    sender = raw.get("sender")
    if not isinstance(sender, str) or not _SENDER_RE.fullmatch(sender):
        raise bad("sender must be 1-11 of A-Z a-z 0-9 - _ . and space")
    max_segments = raw.get("max_segments")
    if (
        not isinstance(max_segments, int)
        or isinstance(max_segments, bool)
        or not 1 <= max_segments <= MAX_PARTS
    ):
        raise bad(f"max_segments must be an integer from 1 to {MAX_PARTS}")
    description = raw.get("description")
    if not isinstance(description, str) or not description.strip():
        raise bad("description must be a non-empty string")
    sample = raw.get("sample", {})
    if not isinstance(sample, dict):
        raise bad("[sample] must be a table")
    return TemplateMeta(
        name=name,
        message_class=message_class,
        sender=sender,
        max_segments=max_segments,
        description=description.strip(),
        sample=MappingProxyType(dict(sample)),
    )


def _run(template: jinja2.Template, name: str | None, data: Mapping[str, Any]) -> str:
    try:
        return render_bounded(template, data)
    except Exception as exc:
        raise _runtime_error(exc, name, template.filename or "<template>") from exc


def _finish(
    raw: str, message_class: MessageClass, max_segments: int | None, *, khong_dau: bool
) -> Rendered:
    text = _tidy(raw)
    if khong_dau:
        text = strip_diacritics(text)
    info = analyse(text)
    warnings: list[str] = []
    if not text:
        warnings.append("the message is empty")
    if max_segments is not None and info.segments > max_segments:
        warnings.append(
            f"{info.segments} segments ({info.encoding}, {info.units} units) "
            f"is over max_segments = {max_segments}"
        )
    if message_class is MessageClass.ADVERTISING:
        warnings.extend(_advertising_warnings(text))
    if khong_dau and info.encoding is Encoding.UCS2:
        shown = "".join(info.ucs2_chars[:10])
        warnings.append(f"still UCS-2 without diacritics because of {shown!r}")
    return Rendered(
        text=text,
        encoding=info.encoding,
        segments=info.segments,
        ucs2_chars=info.ucs2_chars,
        khong_dau=khong_dau,
        warnings=tuple(warnings),
    )


_Piece = tuple[str, str, "Callable[[Any], Any] | None"]  # (literal, variable, filter)


def _fast_pieces(env: jinja2.Environment, tree: jinja2.nodes.Template) -> list[_Piece] | None:
    pieces: list[_Piece] = []
    for node in tree.body:
        if not isinstance(node, jinja2.nodes.Output):
            return None
        for item in node.nodes:
            if isinstance(item, jinja2.nodes.TemplateData):
                pieces.append((item.data, "", None))
            elif isinstance(item, jinja2.nodes.Name):
                pieces.append(("", item.name, None))
            elif (isinstance(item, jinja2.nodes.Filter)
                  and isinstance(item.node, jinja2.nodes.Name) and not item.args
                  and not item.kwargs and item.dyn_args is None and item.dyn_kwargs is None
                  and item.name in _FAST_FILTERS and item.name in env.filters):
                # the filter itself, not the sandbox's wrapper (its step budget is for
                # loops; the size check is done by the caller)
                func = env.filters[item.name]
                pieces.append(("", item.node.name, getattr(func, "__wrapped__", func)))
            else:
                return None
    return pieces


def _fast_row_function(env: jinja2.Environment, source: str, name: str | None
                       ) -> Callable[[Mapping[str, Any]], str] | None:
    """See :meth:`TemplateRenderer.row_function`; None when the template is not that simple."""
    try:
        tree = env.parse(source)
    except jinja2.TemplateSyntaxError as exc:
        raise _syntax_error(exc, name) from None
    pieces = _fast_pieces(env, tree)
    if pieces is None:
        return None
    defaults = dict(env.globals)
    # the fast filters are pure: a column's repeated values (offer tiers, amounts, dates)
    # are filtered once; at most _MEMO_SIZE values per filtered variable are kept
    steps: list[tuple[str, str, Callable[[Any], str] | None, dict[str, str]]] = [
        (literal, var, func, {}) for literal, var, func in pieces]

    def render(data: Mapping[str, Any]) -> str:
        # one plain loop (no generator, no call per variable): this runs once per row of a
        # million-row campaign upload
        out: list[str] = []
        memo: dict[str, str]
        for literal, var, func, memo in steps:
            if not var:
                out.append(literal)
                continue
            value = data[var] if var in data else defaults.get(var, _MISSING)
            if value is _MISSING:
                raise TemplateError(name, f"needs variable {var!r}")
            if value is None:
                raise TemplateError(name, f"variable {var!r} is empty (None)")
            if func is not None:
                known = memo.get(value, None) if type(value) is str else None
                value = known if known is not None else _filtered(name, var, func, memo, value)
            out.append(value if type(value) is str else str(value))
        return "".join(out)

    return render


_MISSING = object()
_MEMO_SIZE = 4096


def _filtered(name: str | None, var: str, func: Callable[[Any], str], memo: dict[str, str],
              value: Any) -> str:
    """``func(value)`` for the fast row path, bounded, remembered in ``memo`` (str values)."""
    try:
        out = func(value)
    except Exception as exc:
        raise TemplateError(name, f"{var!r}: {exc}") from None
    if len(out) > MAX_VALUE_CHARS:
        raise TemplateError(name, f"{var!r}: the filtered value would be over "
                                  f"{MAX_VALUE_CHARS} characters")
    if type(value) is str and len(memo) < _MEMO_SIZE:
        memo[value] = out
    return out
#: filters the fast path may call directly (pure, one argument)
_FAST_FILTERS = frozenset({"vnd", "number", "date", "khong_dau", "first_name", "mask", "upper",
                           "lower", "title", "capitalize", "trim"})


def template_defaults(sending: SendingConfig) -> dict[str, Any]:
    """Variables every template sees unless the caller's data overrides them."""
    return {"hotline": sending.hotline, "refusal": sending.refusal}


#: The tidying every rendered SMS gets (NFC, whitespace runs collapsed, trimmed).
tidy_text = _tidy
