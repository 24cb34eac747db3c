"""SMS templates: every program renders its sample cleanly; filters; strictness; sandbox."""

from __future__ import annotations

import pickle
from datetime import date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from gateway.domain import Encoding, MessageClass
from gateway.templating import (
    DEFAULT_TEMPLATES_DIR,
    Rendered,
    TemplateError,
    TemplateRenderer,
    filter_date,
    filter_first_name,
    filter_khong_dau,
    filter_mask,
    filter_number,
    filter_vnd,
)

#: replies of the SMS keyword service (issue 6)
KEYWORD_REPLIES = {
    "keyword_bill", "keyword_bill_unavailable", "keyword_confirm", "keyword_confirm_expired",
    "keyword_help", "keyword_optin", "keyword_refused", "keyword_request", "keyword_unknown",
}

PROGRAMS = KEYWORD_REPLIES | {
    "birthday",
    "bill_issued",
    "payment_due",
    "overdue",
    "suspended_one_way",
    "suspended_two_way",
    "payment_received",
    "usage_high",
    "package_expiring",
    "incident",
    "incident_fixed",
    "survey_invite",
    "holiday_tet",
    "holiday_8_3",
    "holiday_20_10",
    "holiday_20_11",
    "holiday_22_12",
    "holiday_trung_thu",
    "promotion",
}
TIERS = ("Thân thiết", "Bạc", "Titan", "Vàng", "Kim cương")
CARE_LIMIT_UNITS = 201  # three UCS-2 parts


@pytest.fixture(scope="module")
def renderer() -> TemplateRenderer:
    return TemplateRenderer(DEFAULT_TEMPLATES_DIR)


def _render_ok(renderer: TemplateRenderer, source: str, data: dict[str, Any]) -> str:
    return renderer.render_source(source, data).text


# --------------------------------------------------------------------------- the programs


def test_all_programs_present(renderer: TemplateRenderer) -> None:
    assert set(renderer.names()) == PROGRAMS


@pytest.mark.parametrize("name", sorted(PROGRAMS))
def test_program_renders_sample_cleanly(renderer: TemplateRenderer, name: str) -> None:
    meta = renderer.meta(name)
    out = renderer.render(name, meta.sample)
    assert out.warnings == ()
    assert out.text
    assert out.segments <= meta.max_segments
    assert 1 <= len(meta.sender) <= 11
    assert meta.description
    assert "None" not in out.text
    assert "  " not in out.text
    assert out.text == out.text.strip()
    if meta.message_class is MessageClass.CARE:
        assert len(out.text) <= CARE_LIMIT_UNITS
        assert "[QC]" not in out.text


@pytest.mark.parametrize("name", sorted(PROGRAMS))
def test_program_khong_dau_is_gsm7(renderer: TemplateRenderer, name: str) -> None:
    meta = renderer.meta(name)
    out = renderer.render(name, meta.sample, khong_dau=True)
    assert out.khong_dau
    assert out.encoding is Encoding.GSM7
    assert out.ucs2_chars == ()
    assert out.segments <= meta.max_segments
    assert out.warnings == ()


def test_check_all_reports_every_program(renderer: TemplateRenderer) -> None:
    results = dict(renderer.check_all())
    assert set(results) == PROGRAMS
    for name, outcome in results.items():
        assert isinstance(outcome, Rendered), f"{name}: {outcome}"
        assert outcome.warnings == ()


def test_promotion_is_labelled_advertising(renderer: TemplateRenderer) -> None:
    meta = renderer.meta("promotion")
    assert meta.message_class is MessageClass.ADVERTISING
    out = renderer.render("promotion", meta.sample)
    assert out.text.startswith("[QC]")
    assert out.text.endswith(meta.sample["refusal"])
    assert out.text.endswith("Tu choi QC soan TC gui 1234")


def test_promotion_refusal_comes_from_the_variable(renderer: TemplateRenderer) -> None:
    data = dict(renderer.meta("promotion").sample)
    data["refusal"] = "Từ chối nhận QC, soạn TC1 gửi 5656"
    out = renderer.render("promotion", data)
    assert out.text.endswith("Từ chối nhận QC, soạn TC1 gửi 5656")
    assert out.warnings == ()


def test_promotion_without_refusal_warns(renderer: TemplateRenderer) -> None:
    data = dict(renderer.meta("promotion").sample)
    data["refusal"] = "Chi tiết: 18001090."
    out = renderer.render("promotion", data)
    assert any("refusal" in w for w in out.warnings)


def test_birthday_differs_per_tier(renderer: TemplateRenderer) -> None:
    sample = renderer.meta("birthday").sample
    texts = {tier: renderer.render("birthday", {**sample, "tier": tier}).text for tier in TIERS}
    assert len(set(texts.values())) == len(TIERS)
    for tier, text in texts.items():
        assert "sinh nhật" in text
        assert len(text) <= CARE_LIMIT_UNITS, tier
    assert "Kim cương" in texts["Kim cương"]
    assert "Bạc" in texts["Bạc"]


def test_birthday_tier_matches_decomposed_or_unaccented_input(
    renderer: TemplateRenderer,
) -> None:
    sample = renderer.meta("birthday").sample
    want = renderer.render("birthday", {**sample, "tier": "Kim cương"}).text
    decomposed = "Kim cu\u031bo\u031bng"  # NFD from a legacy system
    assert renderer.render("birthday", {**sample, "tier": decomposed}).text == want
    assert renderer.render("birthday", {**sample, "tier": "KIM CUONG"}).text == want


def test_birthday_is_care(renderer: TemplateRenderer) -> None:
    assert renderer.meta("birthday").message_class is MessageClass.CARE
    assert renderer.meta("holiday_tet").message_class is MessageClass.CARE


def test_survey_asks_for_one_to_five(renderer: TemplateRenderer) -> None:
    text = renderer.render("survey_invite", renderer.meta("survey_invite").sample).text
    assert "1" in text and "5" in text


# --------------------------------------------------------------------------- strictness


def test_missing_variable_names_it(renderer: TemplateRenderer) -> None:
    data = dict(renderer.meta("bill_issued").sample)
    del data["amount"]
    with pytest.raises(TemplateError) as info:
        renderer.render("bill_issued", data)
    assert info.value.template == "bill_issued"
    assert str(info.value) == "template 'bill_issued' needs variable 'amount'"
    assert "amount" in info.value.reason


@pytest.mark.parametrize("flt", ["vnd", "number", "date", "khong_dau", "first_name", "mask"])
def test_missing_variable_through_filter_names_it(renderer: TemplateRenderer, flt: str) -> None:
    with pytest.raises(TemplateError) as info:
        renderer.render_source("Số tiền: {{ amount | " + flt + " }}", {})
    assert str(info.value) == "inline template needs variable 'amount'"


def test_none_value_is_refused(renderer: TemplateRenderer) -> None:
    data = {**renderer.meta("holiday_tet").sample, "full_name": None}
    with pytest.raises(TemplateError, match="None"):
        renderer.render("holiday_tet", data)


def test_unknown_template_lists_known(renderer: TemplateRenderer) -> None:
    with pytest.raises(TemplateError) as info:
        renderer.meta("nope")
    assert "bill_issued" in str(info.value)
    with pytest.raises(TemplateError):
        renderer.render("../pyproject", {})


def test_syntax_error_gives_line(renderer: TemplateRenderer) -> None:
    with pytest.raises(TemplateError) as info:
        renderer.render_source("dòng một\ndòng hai {% if %}", {})
    assert info.value.line == 2
    assert "line 2" in str(info.value)


def test_filter_error_is_template_error(renderer: TemplateRenderer) -> None:
    with pytest.raises(TemplateError, match="vnd"):
        renderer.render_source("{{ x | vnd }}", {"x": "một triệu"})


def test_template_error_pickles() -> None:
    err = TemplateError("bill_issued", "needs variable 'amount'", 3)
    back = pickle.loads(pickle.dumps(err))
    assert (back.template, back.reason, back.line, str(back)) == (
        "bill_issued",
        "needs variable 'amount'",
        3,
        str(err),
    )


# --------------------------------------------------------------------------- metadata


def _write(tmp: Path, name: str, source: str, meta: str) -> None:
    (tmp / f"{name}.j2").write_text(source, encoding="utf-8")
    (tmp / f"{name}.toml").write_text(meta, encoding="utf-8")


def test_bad_metadata_is_reported(tmp_path: Path) -> None:
    _write(
        tmp_path,
        "ok",
        "Xin chào",
        'class = "care"\nsender = "CSKH"\nmax_segments = 1\ndescription = "x"\n',
    )
    _write(
        tmp_path,
        "bad_class",
        "x",
        'class = "spam"\nsender = "CSKH"\nmax_segments = 1\ndescription = "x"\n',
    )
    _write(
        tmp_path,
        "bad_sender",
        "x",
        'class = "care"\nsender = "CHAM SOC KHACH"\nmax_segments = 1\ndescription = "x"\n',
    )
    (tmp_path / "no_meta.j2").write_text("x", encoding="utf-8")
    (tmp_path / "_footer.j2").write_text("partial", encoding="utf-8")
    renderer = TemplateRenderer(tmp_path)
    assert renderer.names() == ["bad_class", "bad_sender", "no_meta", "ok"]
    results = dict(renderer.check_all())
    assert isinstance(results["ok"], Rendered)
    for name in ("bad_class", "bad_sender", "no_meta"):
        assert isinstance(results[name], TemplateError), name


def test_over_max_segments_warns(tmp_path: Path) -> None:
    _write(
        tmp_path,
        "long",
        "{{ body }}",
        'class = "care"\nsender = "CSKH"\nmax_segments = 1\n'
        'description = "x"\n[sample]\nbody = "Chào"\n',
    )
    renderer = TemplateRenderer(tmp_path)
    assert renderer.render("long", {"body": "Chào"}).warnings == ()
    out = renderer.render("long", {"body": "Chúc " * 30})
    assert out.segments > 1
    assert any("max_segments" in w for w in out.warnings)


def test_include_partial_and_defaults(tmp_path: Path) -> None:
    _write(
        tmp_path,
        "with_footer",
        "Xin chào.\n{% include '_footer.j2' %}",
        'class = "care"\nsender = "CSKH"\nmax_segments = 2\ndescription = "x"\n',
    )
    (tmp_path / "_footer.j2").write_text("Hỗ trợ: {{ hotline }}", encoding="utf-8")
    renderer = TemplateRenderer(tmp_path, defaults={"hotline": "18001090"})
    assert renderer.render("with_footer", {}).text == "Xin chào.\nHỗ trợ: 18001090"
    assert renderer.render("with_footer", {"hotline": "1080"}).text.endswith("1080")


# --------------------------------------------------------------------------- filters


@pytest.mark.parametrize(
    ("value", "want"),
    [
        (1250000, "1.250.000đ"),
        (0, "0đ"),
        (999, "999đ"),
        (1000, "1.000đ"),
        (-1250000, "-1.250.000đ"),
        (1250000.5, "1.250.001đ"),
        (Decimal("385000.00"), "385.000đ"),
        ("1250000", "1.250.000đ"),
        (" 42 ", "42đ"),
    ],
)
def test_vnd(value: object, want: str) -> None:
    assert filter_vnd(value) == want


@pytest.mark.parametrize("value", ["1.250.000", "abc", "", float("nan"), True, None])
def test_vnd_refuses_non_amounts(value: object) -> None:
    with pytest.raises((TypeError, ValueError)):
        filter_vnd(value)


def test_number() -> None:
    assert filter_number(12500) == "12.500"
    assert filter_number(7) == "7"


def test_date() -> None:
    assert filter_date("2026-12-05") == "05/12/2026"
    assert filter_date(date(2026, 3, 8)) == "08/03/2026"
    assert filter_date(datetime(2026, 12, 5, 8, 30)) == "05/12/2026"
    assert filter_date(datetime(2026, 12, 5, 8, 30), "%H:%M %d/%m/%Y") == "08:30 05/12/2026"
    assert filter_date("2026-12-05T08:30:00", "%H:%M") == "08:30"
    with pytest.raises(ValueError):
        filter_date("05/12/2026")
    with pytest.raises(TypeError):
        filter_date(20261205)


def test_first_name() -> None:
    assert filter_first_name("Nguyễn Thị Mai") == "Mai"
    assert filter_first_name("  Trần   Văn  Hùng ") == "Hùng"
    assert filter_first_name("NGUYỄN VĂN ĐỨC") == "Đức"
    assert filter_first_name("Lan") == "Lan"
    with pytest.raises(ValueError):
        filter_first_name("  ")


def test_khong_dau_filter_is_gsm7(renderer: TemplateRenderer) -> None:
    assert filter_khong_dau("Nguyễn Văn Đức") == "Nguyen Van Duc"
    out = renderer.render_source("{{ name | khong_dau }}", {"name": "Đặng Thị Ngọc Ánh"})
    assert out.text == "Dang Thi Ngoc Anh"
    assert out.encoding is Encoding.GSM7


def test_mask() -> None:
    assert filter_mask("84901234567") == "84901***567"
    assert filter_mask("+84901234567") == "84901***567"
    assert filter_mask(84901234567) == "84901***567"


def test_filters_in_templates(renderer: TemplateRenderer) -> None:
    src = "{{ a | vnd }} {{ d | date }} {{ n | first_name }} {{ m | mask }}"
    data = {"a": 1250000, "d": "2026-12-05", "n": "Nguyễn Thị Mai", "m": "84901234567"}
    assert _render_ok(renderer, src, data) == "1.250.000đ 05/12/2026 Mai 84901***567"


# --------------------------------------------------------------------------- encoding info


def test_vietnamese_is_ucs2_with_chars(renderer: TemplateRenderer) -> None:
    out = renderer.render_source("Chúc mừng {{ name }}", {"name": "Đức"})
    assert out.encoding is Encoding.UCS2
    assert out.ucs2_chars == ("ú", "ừ", "Đ", "ứ")
    assert out.segments == 1
    assert not out.khong_dau


def test_khong_dau_render_is_gsm7(renderer: TemplateRenderer) -> None:
    out = renderer.render_source("Chúc mừng {{ name }}", {"name": "Đức"}, khong_dau=True)
    assert out.text == "Chuc mung Duc"
    assert out.encoding is Encoding.GSM7
    assert out.ucs2_chars == ()
    assert out.khong_dau


def test_khong_dau_warns_when_still_ucs2(renderer: TemplateRenderer) -> None:
    out = renderer.render_source("Chúc mừng 🎂", {}, khong_dau=True)
    assert out.encoding is Encoding.UCS2
    assert any("UCS-2" in w for w in out.warnings)


def test_text_is_tidied(renderer: TemplateRenderer) -> None:
    source = "  Xin   chào\u00a0\t{{ x }} \n\n\n\n  Dòng\u200b hai  \n"
    out = renderer.render_source(source, {"x": "bạn"})
    assert out.text == "Xin chào bạn\n\nDòng hai"


def test_text_is_nfc(renderer: TemplateRenderer) -> None:
    decomposed = "Nguye\u0302\u0303n"
    out = renderer.render_source("{{ n }}", {"n": decomposed})
    assert out.text == "Nguyễn"
    assert len(out.text) == 6


def test_render_source_advertising_checks(renderer: TemplateRenderer) -> None:
    ad = MessageClass.ADVERTISING
    good = renderer.render_source(
        "[QC] Gói mới {{ p }}. {{ refusal }}",
        {"p": "MAX90", "refusal": "Tu choi QC soan TC gui 1234"},
        message_class=ad,
    )
    assert good.warnings == ()
    bad = renderer.render_source("Gói mới giá rẻ!", {}, message_class=ad)
    assert len(bad.warnings) == 2
    care = renderer.render_source("Gói mới giá rẻ!", {})
    assert care.warnings == ()


# --------------------------------------------------------------------------- sandbox


@pytest.mark.parametrize(
    "source",
    [
        "{{ ''.__class__.__mro__ }}",
        "{{ ''.__class__.__mro__[1].__subclasses__() }}",
        "{{ cycler }}",
        "{{ cycler.__init__.__globals__ }}",
        "{{ joiner }}",
        "{{ namespace }}",
        "{{ lipsum.__globals__ }}",
        "{{ range.__globals__ }}",
        "{{ self.__init__.__globals__ }}",
        "{{ x.__class__.__init__.__globals__ }}",
        "{{ 'a'.format.__globals__ }}",
        "{% for i in range(10**9) %}x{% endfor %}",
        "{% for i in range(1001) %}x{% endfor %}",
        "{% for i in range(1000) %}{% for j in range(1000) %}{% endfor %}{% endfor %}",
        "{{ 10 ** 100000 }}",
        "{{ 'x' * 1000000 }}",
    ],
)
def test_sandbox_refuses(renderer: TemplateRenderer, source: str) -> None:
    with pytest.raises(TemplateError) as info:
        renderer.render_source(source, {"x": "chuỗi"})
    message = str(info.value)
    assert "<function" not in message
    assert "<module" not in message
    assert "builtins" not in message


def test_bounded_range_still_works(renderer: TemplateRenderer) -> None:
    out = renderer.render_source("{% for i in range(3) %}{{ i }}{% endfor %}", {})
    assert out.text == "012"


def test_render_source_caches_compilation(renderer: TemplateRenderer) -> None:
    first = renderer.render_source("Chào {{ n }}", {"n": "Mai"})
    second = renderer.render_source("Chào {{ n }}", {"n": "Lan"})
    assert (first.text, second.text) == ("Chào Mai", "Chào Lan")


def test_no_autoescape(renderer: TemplateRenderer) -> None:
    out = renderer.render_source("{{ t }}", {"t": "A & B <3"})
    assert out.text == "A & B <3"


def test_row_function_filters_repeated_values_once_and_still_refuses_bad_ones(
        renderer: TemplateRenderer) -> None:
    """The fast row path remembers a filter's result per value (offer tiers repeat); a value
    the filter refuses is refused every time, and results stay right past the memory's size."""
    render = renderer.row_function(source="Ưu đãi {{ tien | vnd }} cho {{ ten | upper }}")
    assert render({"tien": "50000", "ten": "an"}) == "Ưu đãi 50.000đ cho AN"
    assert render({"tien": "50000", "ten": "bình"}) == "Ưu đãi 50.000đ cho BÌNH"
    assert render({"tien": 50000, "ten": "an"}) == "Ưu đãi 50.000đ cho AN"  # not a str key
    for _ in range(2):
        with pytest.raises(TemplateError, match="tien"):
            render({"tien": "năm mươi", "ten": "an"})
    for i in range(10_000):
        assert render({"tien": str(i), "ten": "x"}).startswith("Ưu đãi ")
    assert render({"tien": "9999", "ten": "x"}) == "Ưu đãi 9.999đ cho X"
