"""The campaign upload's per-row fast paths answer exactly as the general functions they skip."""

from __future__ import annotations

import random

import pytest

from gateway.campaign_ingest import fast_msisdn, labelled
from gateway.intake import label_advertising
from gateway.numbers import VN_MOBILE_PREFIXES
from gateway.smpp.encoding import khong_dau
from gateway.subscribers_import import _BadValue, parse_msisdn

REFUSAL = "Tu choi QC soan TC gui 1234"


def _parsed(raw: str) -> str | None:
    try:
        return parse_msisdn(raw)
    except _BadValue:
        return None


def _written(rnd: random.Random) -> str:
    prefix = rnd.choice([*sorted(VN_MOBILE_PREFIXES), "12", "20", "24", "80", "95", "01"])
    sub = prefix + "".join(rnd.choice("0123456789") for _ in range(rnd.choice((6, 7, 8))))
    lead = rnd.choice(("0", "84", "+84", "+84 ", "0084", "00", "", "+", "8 4", "(0)"))
    sep = rnd.choice(("", " ", ".", "-", "/", "  ", "\t", "\u00a0", "\u2003", "_", ","))
    cut = sorted(rnd.sample(range(1, len(sub)), 2))
    body = sep.join((sub[:cut[0]], sub[cut[0]:cut[1]], sub[cut[1]:]))
    text = lead + body
    if rnd.random() < 0.1:
        text = rnd.choice((" ", "\u00a0", "(", "")) + text + rnd.choice((" ", ")", "", "x"))
    if rnd.random() < 0.03:
        i = rnd.randrange(len(text))
        text = text[:i] + rnd.choice("O٣０o") + text[i + 1:]
    return text


def test_fast_msisdn_answers_as_parse_msisdn() -> None:
    rnd = random.Random(5)
    fast = 0
    for _ in range(20000):
        raw = _written(rnd)
        got = fast_msisdn(raw)
        if got is not None:
            fast += 1
            assert got == _parsed(raw), raw
    assert fast > 1000  # the usual ways of writing a number take the fast path
    for raw in ("0901234567", "84901234567", "+84901234567", "0901 234 567", "0901.234.567",
                "+84 90-123-4567", "(090) 123 4567"):
        assert fast_msisdn(raw) == "84901234567" == _parsed(raw), raw
    for raw in ("0901234", "0123456789", "0901 234 56７", "0901٢34567", "", " 0901234567x"):
        assert fast_msisdn(raw) is None
    assert fast_msisdn(901234567) is None  # an XLSX number cell: parse_msisdn decides


_PIECES = ["Chào", " ", "anh", "Nguyễn Văn An", "ưu đãi", "1.250.000đ", "cho hạng", "Vàng",
           "Kim cương", ".", "!", "?", " . ", "Tu choi QC soan TC gui 1234",
           "Từ chối QC soạn TC gửi 1234", "TỪ CHỐI QC SOẠN TC GỬI 1234", "tu choi qc soan tc",
           "gui 1234", "1234", "4", "Σ", "ΣΣ", "ς", "İ", "ß", "\u0301", "\u0323", "e\u0301",
           "Đ", "đ", "\u1100\u1161", "\u11a8", "各", "😀", "[QC]", "[AD] ", "[qc]", "QC", "\u0385",
           "\u2126", "ﬀ", "\u00a0", "\t"]


@pytest.mark.parametrize("refusal", [REFUSAL, "Từ chối: soạn TC gửi 1234!", "  ", "...",
                                     "Σ 4", "gửi 1234\u0301"])
def test_labelled_answers_as_label_advertising(refusal: str) -> None:
    rnd = random.Random(hash(refusal) & 0xFFFF)
    folded = khong_dau(refusal.strip()).lower().rstrip(" .!")
    for _ in range(6000):
        text = "".join(rnd.choice(_PIECES) for _ in range(rnd.randrange(0, 12)))
        if rnd.random() < 0.3:
            text += rnd.choice((refusal, refusal.upper(), khong_dau(refusal), refusal + "."))
        assert labelled(text, refusal, folded) == label_advertising(text, refusal), text
