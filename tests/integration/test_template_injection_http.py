"""Template injection through ``POST /v1/templates/preview`` (raw ``source``), issue 7 item 6.

Every attempt is a 422 whose reason names the problem (never a 500, never a traceback, a
function or an address), and the gateway keeps answering and sending while they arrive.
The stack's API key has ``messages:send``, the scope previews need.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from typing import Any

from gateway.http.templates import SCOPE_TEMPLATES
from tests.integration.conftest import MakeStack, Stack, numbers

LEAKS = re.compile(r"Traceback|File \"|<function|<built-in|<module|0x[0-9a-f]{6,}|builtins")
SANDBOX = "was refused by the sandbox"
STEPS = "more than 50000 loop iterations, calls and operations"

# (source, field the 422 blames, words the reason must contain)
ATTACKS: list[tuple[str, str, str]] = [
    ("{{ ''.__class__.__mro__ }}", "source", "'__class__' of 'str' object is unsafe"),
    ("{{ ''.__class__.__mro__[1].__subclasses__() }}", "source", "'__class__' of 'str'"),
    ("{{ config }}", "data", "needs variable 'config'"),
    ("{{ request }}", "data", "needs variable 'request'"),
    ("{{ self.__init__.__globals__ }}", "source", "'__init__' of 'TemplateReference'"),
    ("{{ cycler.__init__.__globals__.os }}", "source", "'__init__' of 'StrictUndefined'"),
    ("{{ joiner }}", "data", "needs variable 'joiner'"),
    ("{{ namespace }}", "data", "needs variable 'namespace'"),
    ("{{ lipsum.__globals__ }}", "data", "needs variable 'lipsum'"),
    ("{% for i in range(10**9) %}x{% endfor %}", "source", "range() of 1000000000 items"),
    ("{{ 'a' * 10**9 }}", "source", "repetition building over 10000 items"),
    ("{{ 9 ** (9 ** 9) }}", "source", "power with a result over 1024 bits"),
    ("{% for a in range(100000) %}{% for b in range(100000) %}{% endfor %}{% endfor %}",
     "source", "range() of 100000 items is over the limit of 1000"),
    ("{{ '{0.__class__}'.format(1) }}", "source", "'__class__' of 'int' object is unsafe"),
    ("{{ ''|attr('__class__') }}", "source", "'__class__' of 'str' object is unsafe"),
    ("{% set d = {'a': 1} %}{{ d.items.__self__ }}", "source",
     "'__self__' of 'builtin_function_or_method' object is unsafe"),
    ("{{ d.items.__self__.__class__ }}", "source", "object is unsafe"),
    ("{% include '/etc/passwd' %}", "source", "includes unknown template '/etc/passwd'"),
    ("{% include 'birthday.toml' %}", "source", "includes unknown template 'birthday.toml'"),
    ("{% import '../pyproject.toml' as p %}", "source", "unknown template '../pyproject.toml'"),
    ("{% extends '/etc/passwd' %}", "source", "includes unknown template '/etc/passwd'"),
    ("{% import %}", "source", "has a syntax error at line 1"),
    ("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}", "source",
     "it recurses too deeply"),
    ("{% for i in range(1000) %}{{ 'x' * 10000 }}{% endfor %}", "source",
     "the output is over 40000 characters"),
    ("{% set s = 'x' * 10000 %}{{ s.join(s) }}", "source", "str.join() would build over 40000"),
    ("{{ '{:>999999999}'.format('x') }}", "source", "a format width over 40000"),
    ("{{ " + "(" * 3000 + "1" + ")" * 3000 + " }}", "source", "nested too deeply to compile"),
    ("{{ d.items }}", "source", "renders a function or method, not text"),
]
# heavy ones: each would take seconds or gigabytes unbounded
HEAVY = [
    "{% macro f(n) %}{% if n < 40 %}{{ f(n + 1) }}{{ f(n + 1) }}{% endif %}{% endmacro %}"
    "{{ f(0) }}",
    "{% set s = 'x' * 300 %}{% for a in s %}{% for b in s %}{% for c in s %}{% endfor %}"
    "{% endfor %}{% endfor %}",
    "{% for i in range(1000) %}{{ 'x' * 10000 }}{% endfor %}",
    "{{ '%999999999s'|format('x') }}",
    "{% set a = 'x' * 1000 %}{% set b = [a, a, a, a, a, a, a, a, a, a] %}"
    "{% set c = [b, b, b, b, b, b, b, b, b, b] %}{{ c }}",
]


async def _preview(stack: Stack, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    async with stack.http.post(f"{stack.base}/v1/templates/preview", json=body) as resp:
        data: dict[str, Any] = await resp.json()
        return resp.status, data


async def test_stack_key_has_the_preview_scope(make_stack: MakeStack) -> None:
    stack = await make_stack()
    assert SCOPE_TEMPLATES == "messages:send"
    status, body = await _preview(stack, {"source": "Chào {{ ten }}", "data": {"ten": "Mai"}})
    assert (status, body["text"]) == (200, "Chào Mai")


async def test_injection_attempts_are_422_naming_the_problem(make_stack: MakeStack) -> None:
    stack = await make_stack()
    wrong: list[str] = []
    for source, field, words in ATTACKS:
        status, body = await _preview(stack, {"source": source, "data": {"d": {"a": 1}}})
        error = body.get("error", {})
        reason = str(error.get("reason", ""))
        if (status != 422 or error.get("field") != field or words not in reason
                or not reason.startswith("inline template ") or LEAKS.search(json.dumps(body))):
            wrong.append(f"{source[:60]!r}: {status} {body}")
    assert not wrong, "\n".join(wrong)
    # sandbox refusals say so
    status, body = await _preview(stack, {"source": "{{ ''.__class__ }}"})
    assert status == 422 and SANDBOX in body["error"]["reason"]


async def test_server_stays_responsive_under_attack(make_stack: MakeStack) -> None:
    stack = await make_stack()

    async def attack(source: str) -> tuple[int, str, float]:
        started = time.monotonic()
        status, body = await _preview(stack, {"source": source})
        return status, str(body.get("error", {}).get("reason", "")), time.monotonic() - started

    async def healthy_preview() -> float:
        await asyncio.sleep(0.05)  # let the attacks be in flight
        started = time.monotonic()
        status, body = await _preview(stack, {"source": "Cước {{ a | vnd }}",
                                              "data": {"a": 125000}})
        assert (status, body["text"]) == (200, "Cước 125.000đ")
        return time.monotonic() - started

    started = time.monotonic()
    results = await asyncio.gather(*(attack(s) for s in HEAVY * 4), healthy_preview())
    total = time.monotonic() - started
    answers, normal_s = results[:-1], results[-1]
    for (status, reason, _), source in zip(answers, HEAVY * 4, strict=True):
        assert status == 422, (source, status, reason)
        assert SANDBOX in reason and not LEAKS.search(reason), reason
    # 20 hostile renders, each stopped by a step, size or 0.5 s time limit
    assert total < 20, f"the attacks took {total:.1f} s"
    assert normal_s < 15, f"a normal preview waited {normal_s:.1f} s"
    assert max(s for _, _, s in answers) < 20
    # afterwards: health, previews and sending all still work
    async with stack.http.get(f"{stack.base}/healthz") as resp:
        assert resp.status == 200, await resp.text()
    status, _ = await _preview(stack, {"template": "birthday"})
    assert status == 200
    sent = await stack.send(to=numbers(1)[0], text="Thong bao sau tan cong")
    assert (await stack.wait_terminal([sent["id"]]))[sent["id"]] == "delivered"
