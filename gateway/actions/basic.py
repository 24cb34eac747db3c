"""Built-in keyword actions: help (HD/HELP/?) and the stand-in for an action not built yet.

Both only answer; the keyword router (gateway/keywords.py) records what they return.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from gateway.actions import ActionResult, MoContext
from gateway.masking import mask_msisdn

log = logging.getLogger("smsgw.actions.basic")

#: Template of the help reply; it gets ``help_text`` (the keyword list of keywords.toml).
HELP_TEMPLATE = "keyword_help"

#: Reply of a keyword whose action is not available (GSM-7 on purpose: one SMS).
NOT_CONFIGURED_TEXT = ("Dich vu nay dang duoc cap nhat. Quy khach vui long thu lai sau. "
                       "Xin cam on!")


class HelpAction:
    """``HD``: the list of keywords.

    ``help_text`` is the text, or a callable giving the current one (the router passes its
    table's, so a reload changes the answer). With ``template`` (default ``keyword_help``)
    the reply renders it with ``help_text`` as data; with ``template=None`` the text itself is
    the reply.
    """

    def __init__(self, help_text: str | Callable[[], str], *,
                 template: str | None = HELP_TEMPLATE) -> None:
        self._help_text = help_text
        self._template = template

    def text(self) -> str:
        return self._help_text() if callable(self._help_text) else self._help_text

    async def __call__(self, ctx: MoContext) -> ActionResult:
        text = self.text()
        if self._template is None:
            return ActionResult(action="help", detail="help sent", reply_text=text)
        return ActionResult(action="help", detail="help sent", reply_template=self._template,
                            reply_data={"help_text": text})


class NotConfiguredAction:
    """A keyword whose action ``name`` has no implementation in this gateway (yet): a polite
    "being updated" reply, and the MO is recorded as such."""

    def __init__(self, name: str, *, text: str = NOT_CONFIGURED_TEXT) -> None:
        self.name = name
        self._text = text

    async def __call__(self, ctx: MoContext) -> ActionResult:
        log.info("keyword %s from %s: action %r is not configured", ctx.keyword,
                 mask_msisdn(ctx.msisdn), self.name)
        return ActionResult(action=self.name, detail="action not configured",
                            reply_text=self._text)
