"""Server-side template injection against the SMS template sandbox (issue 7 item 6).

Raw template text reaches the renderer over HTTP (``POST /v1/templates/preview``), so every
attempt here must be refused with a ``TemplateError`` whose message names the problem (and
leaks no traceback, function or address), or be bounded in output, work and time.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import pytest

from gateway import template_sandbox
from gateway.template_sandbox import MAX_OUTPUT_CHARS, MAX_RENDER_STEPS
from gateway.templating import DEFAULT_TEMPLATES_DIR, TemplateError, TemplateRenderer

DATA: dict[str, Any] = {"d": {"a": 1, "b": [1, 2]}, "name": "Mai", "x": "chuỗi"}
SANDBOX = "was refused by the sandbox"
LEAKS = re.compile(r"Traceback|File \"|<function|<built-in|<module|0x[0-9a-f]{6,}|builtins")


@pytest.fixture(scope="module")
def renderer() -> TemplateRenderer:
    return TemplateRenderer(DEFAULT_TEMPLATES_DIR, defaults={"hotline": "18001090"})


def refusal(renderer: TemplateRenderer, source: str, data: dict[str, Any] | None = None,
            *, within_s: float = 2.0) -> str:
    """The TemplateError message for ``source``; fails if it renders or takes too long."""
    started = time.monotonic()
    with pytest.raises(TemplateError) as info:
        renderer.render_source(source, DATA if data is None else data)
    elapsed = time.monotonic() - started
    message = str(info.value)
    assert elapsed < within_s, f"took {elapsed:.2f} s to refuse: {message}"
    assert message.startswith("inline template "), message
    assert not LEAKS.search(message), message
    assert "\n" not in message, message
    return message


# --------------------------------------------------------------------------- attribute walks

WALKS = [
    ("{{ ''.__class__.__mro__ }}", "access to attribute '__class__' of 'str' object is unsafe"),
    ("{{ ''.__class__.__mro__[1].__subclasses__() }}", "'__class__' of 'str' object is unsafe"),
    ("{{ self.__init__.__globals__ }}", "'__init__' of 'TemplateReference' object is unsafe"),
    ("{{ cycler.__init__.__globals__.os }}", "'__init__' of 'StrictUndefined' object is unsafe"),
    ("{{ '{0.__class__}'.format(1) }}", "'__class__' of 'int' object is unsafe"),
    ("{{ '{0.__class__.__base__}'.format(name) }}", "'__class__' of 'str' object is unsafe"),
    ("{{ ''|attr('__class__') }}", "'__class__' of 'str' object is unsafe"),
    ("{{ d.__class__ }}", "'__class__' of 'dict' object is unsafe"),
    ("{{ d['__class__'] }}", "'__class__' of 'dict' object is unsafe"),
    ("{{ d|attr('__init__') }}", "'__init__' of 'dict' object is unsafe"),
    ("{{ d.items.__self__ }}", "'__self__' of 'builtin_function_or_method' object is unsafe"),
    ("{{ d.b.__class__.__base__ }}", "'__class__' of 'list' object is unsafe"),
    ("{{ name.upper.__self__ }}", "'__self__' of 'builtin_function_or_method' object is unsafe"),
    ("{{ range.__globals__ }}", "'__globals__' of 'function' object is unsafe"),
    ("{{ (name|upper).__class__ }}", "'__class__' of 'str' object is unsafe"),
    ("{{ d.update({'a': 2}) }}", "access to attribute 'update' of 'dict' object is unsafe"),
    ("{{ d.b.append(3) }}", "access to attribute 'append' of 'list' object is unsafe"),
]


@pytest.mark.parametrize(("source", "reason"), WALKS)
def test_attribute_walks_are_refused(renderer: TemplateRenderer, source: str, reason: str) -> None:
    message = refusal(renderer, source)
    assert SANDBOX in message and reason in message


@pytest.mark.parametrize("name", ["config", "request", "joiner", "namespace", "lipsum", "cycler",
                                  "os", "settings", "environment", "context"])
def test_flask_style_and_removed_globals_are_not_there(renderer: TemplateRenderer,
                                                      name: str) -> None:
    assert refusal(renderer, f"{{{{ {name} }}}}") == f"inline template needs variable {name!r}"


def test_lipsum_globals_are_not_reachable(renderer: TemplateRenderer) -> None:
    assert refusal(renderer, "{{ lipsum.__globals__ }}") == (
        "inline template needs variable 'lipsum'")


@pytest.mark.parametrize(("source", "what"), [
    ("{{ self }}", "a template internal"),
    ("{% for i in [1] %}{{ loop }}{% endfor %}", "a template internal"),
    ("{{ d.items }}", "a function or method"),
    ("{{ range }}", "a function or method"),
    ("{{ name.upper }}", "a function or method"),
    ("{% macro m() %}x{% endmacro %}{{ m }}", "a function or method"),
])
def test_functions_and_internals_are_not_rendered_as_text(renderer: TemplateRenderer,
                                                          source: str, what: str) -> None:
    message = refusal(renderer, source)
    assert SANDBOX in message and f"an expression renders {what}" in message


# --------------------------------------------------------------------------- files


@pytest.mark.parametrize("source", [
    "{% include '/etc/passwd' %}",
    "{% include '../pyproject.toml' %}",
    "{% include '../../../../etc/passwd' %}",
    "{% include 'birthday.toml' %}",
    "{% include 'BIRTHDAY.J2' %}",
    "{% include 'sub/dir.j2' %}",
    "{% import '/etc/passwd' as p %}",
    "{% from '/etc/hosts' import x %}",
    "{% extends '/etc/passwd' %}",
    "{% extends '../README.md' %}",
])
def test_only_template_files_can_be_included(renderer: TemplateRenderer, source: str) -> None:
    target = source.split("'")[1]
    assert refusal(renderer, source) == (
        f"inline template includes unknown template {target!r} at line 1")


@pytest.mark.parametrize("source", ["{% import %}", "{% extends %}", "{% include %}",
                                    "{% import 'x.j2' %}"])
def test_bare_import_extends_include_are_syntax_errors(renderer: TemplateRenderer,
                                                       source: str) -> None:
    assert "has a syntax error at line 1" in refusal(renderer, source)


def test_partials_in_the_directory_still_work(tmp_path: Path) -> None:
    (tmp_path / "_footer.j2").write_text("HT {{ hotline }}", encoding="utf-8")
    (tmp_path / "base.j2").write_text("A {% block b %}base{% endblock %} Z", encoding="utf-8")
    (tmp_path / "secret.toml").write_text("key = 1", encoding="utf-8")
    local = TemplateRenderer(tmp_path, defaults={"hotline": "1080"})
    assert local.render_source("{% include '_footer.j2' %}", {}).text == "HT 1080"
    assert local.render_source("{% extends 'base.j2' %}{% block b %}con{% endblock %}",
                               {}).text == "A con Z"
    with pytest.raises(TemplateError, match=re.escape("unknown template 'secret.toml'")):
        local.render_source("{% include 'secret.toml' %}", {})


# --------------------------------------------------------------------------- loops and work


@pytest.mark.parametrize(("source", "reason"), [
    ("{% for i in range(10**9) %}x{% endfor %}",
     "range() of 1000000000 items is over the limit of 1000"),
    ("{% for a in range(100000) %}{% for b in range(100000) %}{% endfor %}{% endfor %}",
     "range() of 100000 items is over the limit of 1000"),
    ("{% for a in range(1000) %}{% for b in range(1000) %}{% endfor %}{% endfor %}",
     "loops over more than 10000 range() items in total"),
    ("{% for a in s %}{% for b in s %}{% for c in s %}{% endfor %}{% endfor %}{% endfor %}",
     f"more than {MAX_RENDER_STEPS} loop iterations, calls and operations"),
    ("{% for i in big %}{% endfor %}",
     f"more than {MAX_RENDER_STEPS} loop iterations, calls and operations"),
    ("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}",
     "it recurses too deeply (a macro or include calling itself?)"),
    ("{% macro f() %}{{ f() }}{{ f() }}{% endmacro %}{{ f() }}",
     "it recurses too deeply (a macro or include calling itself?)"),
])
def test_loops_and_recursion_are_bounded(renderer: TemplateRenderer, source: str,
                                         reason: str) -> None:
    data = {"s": "x" * 200, "big": list(range(MAX_RENDER_STEPS + 10))}
    message = refusal(renderer, source, data)
    assert SANDBOX in message and reason in message


def test_exponential_macro_is_stopped_by_steps_or_time(renderer: TemplateRenderer) -> None:
    source = ("{% macro f(n) %}{% if n < 40 %}{{ f(n + 1) }}{{ f(n + 1) }}{% endif %}"
              "{% endmacro %}{{ f(0) }}")  # 2**40 calls
    message = refusal(renderer, source)
    assert SANDBOX in message
    assert (f"more than {MAX_RENDER_STEPS} loop iterations, calls and operations" in message
            or "rendering took longer than 0.5 s" in message), message


def test_render_time_is_bounded(renderer: TemplateRenderer,
                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(template_sandbox, "MAX_RENDER_SECONDS", -1.0)
    message = refusal(renderer, "{% for i in range(3) %}{{ i }}{% endfor %}")
    assert "rendering took longer than -1.0 s" in message


def test_a_loop_under_the_limits_renders(renderer: TemplateRenderer) -> None:
    source = ("{% for a, b in pairs %}{{ loop.index }}/{{ loop.length }} {{ a }}={{ b }}"
              "{% if not loop.last %}, {% endif %}{% else %}none{% endfor %}")
    out = renderer.render_source(source, {"pairs": [("x", 1), ("y", 2)]})
    assert out.text == "1/2 x=1, 2/2 y=2"
    assert renderer.render_source(source, {"pairs": []}).text == "none"


# --------------------------------------------------------------------------- sizes


@pytest.mark.parametrize(("source", "reason"), [
    ("{{ 'a' * 10**9 }}", "repetition building over 10000 items"),
    ("{{ [[1] * 10000] * 10000 }}", "repetition building over 40000 characters"),
    ("{{ 9 ** (9 ** 9) }}", "power with a result over 1024 bits"),
    ("{{ 2 ** 1000 ** 1000 }}", "power with a result over 1024 bits"),
    ("{{ (2 ** 500) * (2 ** 500) * (2 ** 500) }}", "product with a result over 1024 bits"),
    ("{% set a = 'x' * 10000 %}{{ a ~ a ~ a ~ a ~ a }}",
     "joining with ~ would build over 40000 characters"),
    ("{% set a = 'x' * 10000 %}{{ a + a + a + a + a }}",
     "the result of + would be over 40000 characters"),
    ("{% set a = 'x' * 1000 %}{% set b = [a, a, a, a, a, a, a, a, a, a] %}"
     "{% set c = [b, b, b, b, b, b, b, b, b, b] %}{{ c|length }}",
     "a literal would be over 40000 characters"),
    ("{% set a %}{{ 'x' * 10000 }}{% endset %}{% set b %}{{ a }}{{ a }}{{ a }}{{ a }}{{ a }}"
     "{% endset %}{{ b }}", "an expression would be over 40000 characters"),
    ("{% set s = 'x' * 10000 %}{{ s.join(s) }}", "str.join() would build over 40000 characters"),
    ("{% set s = 'x' * 10000 %}{{ s|join(s) }}", "|join would build over 40000 characters"),
    ("{{ 'abcd'.replace('', 'x' * 10000) }}", "str.replace() would build over 40000 characters"),
    ("{{ 'abcd'|replace('', 'x' * 10000) }}", "|replace would build over 40000 characters"),
    ("{{ 'x'.zfill(10**8) }}", "str.zfill() would build over 40000 characters"),
    ("{{ 'x'.center(10**8) }}", "str.center() would build over 40000 characters"),
    ("{{ 'x'|center(10**8) }}", "|center wider than 40000"),
    ("{{ ('x\n' * 5000)|indent(100) }}", "|indent would build over 40000 characters"),
    ("{{ '%999999999s'|format('x') }}", "a % format width over 40000 (or '*')"),
    ("{{ '%*s' % (999999999, 'x') }}", "a % format width over 40000 (or '*')"),
    ("{{ '%.999999999f' % 1.5 }}", "a % format width over 40000 (or '*')"),
    ("{{ '{:>999999999}'.format('x') }}", "a format width over 40000"),
    ("{{ '{:{w}}'.format('x', w=999999999) }}",
     "a format spec that takes its width from an argument"),
    ("{{ [1, 2]|slice(10**9)|list }}", "|slice into more than 1000 pieces"),
])
def test_value_sizes_are_bounded(renderer: TemplateRenderer, source: str, reason: str) -> None:
    message = refusal(renderer, source)
    assert SANDBOX in message and reason in message


def test_power_is_left_associative_and_small(renderer: TemplateRenderer) -> None:
    # Jinja parses 9**9**9 as (9**9)**9 = 9**81: a 78-digit number, not a memory bomb
    assert renderer.render_source("{{ 9**9**9 }}", {}).text == str(9**81)


def test_huge_output_is_refused_and_the_limit_is_exact(renderer: TemplateRenderer) -> None:
    chunk = "{{ 'x' * 10000 }}"
    assert len(renderer.render_source(chunk * 4, {}).text) == MAX_OUTPUT_CHARS
    message = refusal(renderer, chunk * 4 + "y")
    assert message == (f"inline template was refused by the sandbox: the output is over "
                       f"{MAX_OUTPUT_CHARS} characters")
    message = refusal(renderer, "{% for i in range(1000) %}{{ 'x' * 10000 }}{% endfor %}")
    assert f"the output is over {MAX_OUTPUT_CHARS} characters" in message


def test_output_from_data_is_bounded(renderer: TemplateRenderer) -> None:
    message = refusal(renderer, "{{ body }}", {"body": "x" * (MAX_OUTPUT_CHARS + 1)})
    assert "an expression would be over 40000 characters" in message
    message = refusal(renderer, "{{ rows }}", {"rows": [["x" * 100] * 100] * 10})
    assert "an expression would be over 40000 characters" in message


def test_rendered_sms_within_the_limit_counts_its_segments(renderer: TemplateRenderer) -> None:
    source = "{% for i in range(70) %}{{ 'Chao ' * 100 }}{% endfor %}"  # 35,000 characters
    out = renderer.render_source(source, {}, max_segments=3)
    assert len(out.text) <= MAX_OUTPUT_CHARS
    assert out.segments > 3 and any("max_segments = 3" in w for w in out.warnings)


# --------------------------------------------------------------------------- compiling


@pytest.mark.parametrize("source", [
    "{{ " + "(" * 3000 + "1" + ")" * 3000 + " }}",
    "{{ " + "[" * 3000 + "]" * 3000 + " }}",
    "{{ " + "-" * 5000 + "1 }}",
    "{{ 1" + "|string" * 3000 + " }}",
    "{% if 1 %}" * 500 + "x" + "{% endif %}" * 500,
    "{% for a in [1] %}" * 30 + "x" + "{% endfor %}" * 30,
], ids=["parentheses", "lists", "minus", "filters", "ifs", "fors"])
def test_deeply_nested_source_is_a_clear_error(renderer: TemplateRenderer, source: str) -> None:
    assert refusal(renderer, source).startswith("inline template is nested too deeply to compile")


def test_the_sandbox_leaves_the_renderer_usable(renderer: TemplateRenderer) -> None:
    for source, _ in WALKS[:3]:
        with pytest.raises(TemplateError):
            renderer.render_source(source, DATA)
    refusal(renderer, "{% for i in big %}{% endfor %}", {"big": range(10**6)})
    out = renderer.render_source("Chào {{ name }}, {% for i in range(3) %}{{ i }}{% endfor %}",
                                 DATA)
    assert out.text == "Chào Mai, 012"
