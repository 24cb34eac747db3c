"""Routing: which SMSC links may carry a message, in the order to try them.

Rules are ordered (``[[route]]`` in the config); the first rule whose prefix/pattern, class and
sender all match gives the links. No rule matching, or no rules at all, means every link in
config order. Failover to the next link is the sender's job (link down, or an SMPP status in
the link's ``failover_statuses``).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from gateway.config import RouteConfig


@dataclass(frozen=True, slots=True)
class _Rule:
    prefixes: tuple[str, ...]
    pattern: re.Pattern[str] | None
    message_class: str
    sender: str
    links: tuple[str, ...]

    def matches(self, msisdn: str, message_class: str, sender: str) -> bool:
        if self.prefixes and not msisdn.startswith(self.prefixes):
            return False
        if self.pattern is not None and not self.pattern.search(msisdn):
            return False
        if self.message_class and self.message_class != message_class:
            return False
        return not self.sender or self.sender == sender


class Router:
    def __init__(self, routes: Sequence[RouteConfig], link_names: Sequence[str]) -> None:
        self._rules = [
            _Rule(tuple(r.prefixes), re.compile(r.pattern) if r.pattern else None,
                  r.message_class, r.sender, tuple(r.links)) for r in routes]
        self._default = tuple(link_names)

    def links_for(self, msisdn: str, message_class: str, sender: str) -> tuple[str, ...]:
        for rule in self._rules:
            if rule.matches(msisdn, message_class, sender):
                return rule.links
        return self._default
