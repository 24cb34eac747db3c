"""Keyword matching, table validation and the reply-limit decision (pure: no services)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import uuid4

import pytest

from gateway import PROJECT_ROOT
from gateway.actions import MoContext
from gateway.actions.basic import HELP_TEMPLATE, HelpAction, NotConfiguredAction
from gateway.config import ConfigError
from gateway.domain import Encoding
from gateway.keywords import (
    KeywordsConfig,
    KeywordTable,
    KeywordTableError,
    Match,
    normalise_words,
    reply_refusal,
)
from gateway.smpp.encoding import analyse
from gateway.store.mo_log import ReplyHistory

T0 = datetime(2026, 12, 5, 8, 0, tzinfo=UTC)


def table(*entries: dict[str, Any], help_text: str = "HD: TC, KT CUOC") -> KeywordTable:
    return KeywordTable.parse({"help_text": help_text, "keyword": list(entries)})


@pytest.fixture(scope="module")
def shipped() -> KeywordTable:
    return KeywordTable.load(PROJECT_ROOT / "keywords.toml")


# --------------------------------------------------------------------------- words


@pytest.mark.parametrize("text", ["HỦY QC", "huy qc", "HUY_QC", "huy  qc", "Hủy-QC", " huy.qc ",
                                  "hủy,qc", "HUY\tQC\n", "Hu\u0309y qc", "ＨＵＹ ＱＣ",
                                  "huy\u200b qc"])
def test_spellings_of_one_keyword_normalise_alike(text: str) -> None:
    assert normalise_words(text) == ["HUY", "QC"]


def test_normalise_words_d_stroke_and_empty() -> None:
    assert normalise_words("Đổi địa chỉ") == ["DOI", "DIA", "CHI"]
    assert normalise_words("  _ - . ") == []
    assert normalise_words("") == []


# --------------------------------------------------------------------------- matching


def test_shipped_table_has_every_keyword_of_the_issue(shipped: KeywordTable) -> None:
    expected = {
        "tc": "refuse_ads", "TU CHOI": "refuse_ads", "dk qc": "optin_ads", "hd": "help",
        "HELP": "help", "?": "help", "KT CUOC": "bill_lookup", "tra cuoc": "bill_lookup",
        "NO CUOC": "bill_lookup", "tam ngung": "suspend", "mở lại": "reconnect",
        "Đổi SIM": "sim_swap", "chuyen tra sau": "to_postpaid",
        "chuyển trả trước": "to_prepaid", "doi dia chi 1 Le Loi": "change_address",
        "y": "confirm",
    }
    for text, action in expected.items():
        found = shipped.match(text)
        assert found is not None and found.action == action, text
    assert len(shipped) == 11
    assert analyse(shipped.help_text).encoding is Encoding.GSM7
    assert analyse(shipped.error_text).encoding is Encoding.GSM7


@pytest.mark.parametrize("text", ["HỦY QC", "huy_qc", "Hủy   Qc", "tu chối", "TC"])
def test_accents_case_and_separators(shipped: KeywordTable, text: str) -> None:
    assert shipped.match(text) == Match(keyword="TC", action="refuse_ads", args=())


def test_longest_keyword_first() -> None:
    t = table({"keyword": "KT", "action": "check"},
              {"keyword": "KT CUOC", "action": "bill_lookup"},
              {"keyword": "KT CUOC CHI TIET", "action": "bill_detail"})
    assert t.match("kt cuoc") == Match(keyword="KT CUOC", action="bill_lookup", args=())
    assert t.match("KT_CUOC chi tiết thang 10") == Match(
        keyword="KT CUOC CHI TIET", action="bill_detail", args=("thang", "10"))
    assert t.match("kt data") == Match(keyword="KT", action="check", args=("data",))
    assert t.match("ktcuoc") is None


def test_multi_word_aliases_and_canonical_keyword() -> None:
    t = table({"keyword": "tc", "aliases": ["Từ chối", "TUCHOI", "huy qc"],
               "action": "refuse_ads"})
    for text in ("TU CHOI", "tuchoi", "Huỷ_QC", "tc"):
        found = t.match(text)
        assert found is not None and found.keyword == "TC", text
    assert t.entries[0].aliases == ("TU CHOI", "TUCHOI", "HUY QC")


def test_args_keep_the_original_spelling(shipped: KeywordTable) -> None:
    found = shipped.match("đổi_địa_chỉ  12 Nguyễn Trãi, P.5, Q.1")
    assert found == Match(keyword="DOI DIA CHI", action="change_address",
                          args=("12", "Nguyễn", "Trãi,", "P.5,", "Q.1"))
    found = shipped.match("KT CUOC: Tháng10")
    assert found is not None and found.args == ("Tháng10",)


@pytest.mark.parametrize("text", ["5", " 5 ", "5.", "５", "1 2", "", "   ", "👍"])
def test_digits_and_empty_are_not_keywords(shipped: KeywordTable, text: str) -> None:
    assert shipped.match(text) is None


def test_unknown_text_and_prefix_words_are_no_match(shipped: KeywordTable) -> None:
    assert shipped.match("Xin chao tong dai") is None
    assert shipped.match("TCX") is None  # a word is matched whole
    assert shipped.match("KT") is None
    assert shipped.match("CHUYEN TRA") is None


def test_max_args_keeps_y_to_itself(shipped: KeywordTable) -> None:
    assert shipped.match("Y") == Match(keyword="Y", action="confirm", args=())
    assert shipped.match("ý.") == Match(keyword="Y", action="confirm", args=())
    assert shipped.match("Ý kiến: mạng yếu") is None


def test_reply_template_override_is_in_the_match() -> None:
    t = table({"keyword": "TC", "action": "refuse_ads", "reply_template": "tc_v2"})
    found = t.match("tc")
    assert found is not None and found.reply_template == "tc_v2"


# --------------------------------------------------------------------------- validation


def _error(raw: dict[str, Any]) -> str:
    with pytest.raises(KeywordTableError) as info:
        KeywordTable.parse(raw, source="k.toml")
    return str(info.value)


def test_duplicate_keyword_across_entries_names_both() -> None:
    msg = _error({"help_text": "h", "keyword": [
        {"keyword": "TC", "action": "refuse_ads"},
        {"keyword": "TU CHOI", "aliases": ["tc"], "action": "other"}]})
    assert "'TC'" in msg and "'TU CHOI'" in msg and "k.toml" in msg


def test_duplicate_alias_after_normalisation() -> None:
    msg = _error({"help_text": "h", "keyword": [
        {"keyword": "TC", "aliases": ["Từ chối"], "action": "refuse_ads"},
        {"keyword": "KT", "aliases": ["TU_CHOI"], "action": "check"}]})
    assert "'TU CHOI'" in msg
    msg = _error({"help_text": "h", "keyword": [
        {"keyword": "TC", "aliases": ["tc"], "action": "refuse_ads"}]})
    assert "twice" in msg


def test_unknown_fields_are_named_with_the_entry() -> None:
    msg = _error({"help_text": "h", "keyword": [
        {"keyword": "TC", "action": "refuse_ads"},
        {"keyword": "KT CUOC", "aliasses": ["TRA CUOC"], "action": "bill_lookup"}]})
    assert "#2 (KT CUOC)" in msg and "aliasses" in msg
    msg = _error({"help_text": "h", "keywords": [], "keyword": [
        {"keyword": "TC", "action": "refuse_ads"}]})
    assert "keywords" in msg


@pytest.mark.parametrize(("entry", "words"), [
    ({"action": "x"}, "keyword must be a string"),
    ({"keyword": "  _ ", "action": "x"}, "has no words"),
    ({"keyword": "5", "action": "x"}, "only digits"),
    ({"keyword": "TC", "aliases": ["1"], "action": "x"}, "only digits"),
    ({"keyword": "TC"}, "action must be"),
    ({"keyword": "TC", "action": "Refuse Ads"}, "action must be"),
    ({"keyword": "TC", "action": "x", "aliases": "TU CHOI"}, "aliases must be a list"),
    ({"keyword": "TC", "action": "x", "reply_template": "../etc"}, "reply_template"),
    ({"keyword": "TC", "action": "x", "max_args": -1}, "max_args"),
    ({"keyword": "TC", "action": "x", "max_args": True}, "max_args"),
    ({"keyword": "TC", "action": "x", "description": 3}, "description"),
])
def test_bad_entries(entry: dict[str, Any], words: str) -> None:
    msg = _error({"help_text": "h", "keyword": [entry]})
    assert words in msg and "[[keyword]] #1" in msg


def test_bad_top_level() -> None:
    assert "help_text" in _error({"keyword": [{"keyword": "TC", "action": "x"}]})
    assert "at least one" in _error({"help_text": "h"})
    assert "at least one" in _error({"help_text": "h", "keyword": []})
    assert "error_text" in _error({"help_text": "h", "error_text": "",
                                   "keyword": [{"keyword": "TC", "action": "x"}]})


def test_load_file_errors(tmp_path: Path) -> None:
    with pytest.raises(KeywordTableError, match="no such file"):
        KeywordTable.load(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text('help_text = "h"\n[[keyword]\n', encoding="utf-8")
    with pytest.raises(KeywordTableError, match="not valid TOML"):
        KeywordTable.load(bad)


# --------------------------------------------------------------------------- reply limits


LIMITS = KeywordsConfig(reply_limit=5, reply_window_s=600, unknown_help_every_s=3600)


def _history(*ages_s: float, help_age_s: float | None = None) -> ReplyHistory:
    return ReplyHistory(recent_replies=tuple(T0 - timedelta(seconds=a) for a in ages_s),
                        last_help_reply=None if help_age_s is None
                        else T0 - timedelta(seconds=help_age_s))


def test_rate_limit_five_per_ten_minutes() -> None:
    assert reply_refusal(_history(), now=T0, help_reply=False, limits=LIMITS) is None
    four = _history(10, 20, 30, 40)
    assert reply_refusal(four, now=T0, help_reply=False, limits=LIMITS) is None
    five = _history(10, 20, 30, 40, 599)
    refusal = reply_refusal(five, now=T0, help_reply=False, limits=LIMITS)
    assert refusal is not None and "rate limited" in refusal
    assert reply_refusal(five, now=T0, help_reply=True, limits=LIMITS) is not None
    # the oldest one leaves the window: a reply is allowed again
    assert reply_refusal(_history(10, 20, 30, 40, 601), now=T0, help_reply=False,
                         limits=LIMITS) is None
    # exactly at the window's start still counts
    assert reply_refusal(_history(10, 20, 30, 40, 600), now=T0, help_reply=False,
                         limits=LIMITS) is not None


def test_unknown_help_once_per_hour() -> None:
    recent_help = _history(help_age_s=3599)
    refusal = reply_refusal(recent_help, now=T0, help_reply=True, limits=LIMITS)
    assert refusal is not None and "help already sent" in refusal
    # a keyword's own answer is not held back by the help limit
    assert reply_refusal(recent_help, now=T0, help_reply=False, limits=LIMITS) is None
    assert reply_refusal(_history(help_age_s=3600), now=T0, help_reply=True,
                         limits=LIMITS) is None


def test_zero_limit_never_replies() -> None:
    limits = KeywordsConfig(reply_limit=0)
    assert reply_refusal(_history(), now=T0, help_reply=False, limits=limits) is not None


def test_keywords_config() -> None:
    cfg = KeywordsConfig()
    assert cfg.path == PROJECT_ROOT / "keywords.toml"
    assert (cfg.reply_limit, cfg.reply_window_s, cfg.unknown_help_every_s) == (5, 600, 3600)
    assert KeywordsConfig(file="/etc/smsgw/keywords.toml").path == Path(
        "/etc/smsgw/keywords.toml")
    with pytest.raises(ConfigError):
        KeywordsConfig(reply_window_s=0)
    with pytest.raises(ConfigError):
        KeywordsConfig(reply_limit=-1)


# --------------------------------------------------------------------------- built-in actions


def _ctx(keyword: str = "HD") -> MoContext:
    return MoContext(inbound_id=uuid4(), msisdn="84901234567", destination="8079",
                     text="hd", received_at=T0, link="default", keyword=keyword)


async def test_help_action_template_or_text() -> None:
    texts = iter(["first", "second"])
    action = HelpAction(lambda: next(texts))
    result = await action(_ctx())
    assert (result.action, result.reply_template, dict(result.reply_data)) == (
        "help", HELP_TEMPLATE, {"help_text": "first"})
    result = await HelpAction("plain", template=None)(_ctx())
    assert (result.reply_text, result.reply_template) == ("plain", None)


async def test_not_configured_action_answers_politely() -> None:
    result = await NotConfiguredAction("sim_swap")(_ctx("DOI SIM"))
    assert result.action == "sim_swap" and result.detail == "action not configured"
    assert result.reply_text is not None and "cap nhat" in result.reply_text
    assert analyse(result.reply_text).segments == 1
