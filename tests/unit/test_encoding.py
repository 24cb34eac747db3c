"""GSM-7 / UCS-2 choice, segment counting, splitting, UDH and decoding."""

from __future__ import annotations

import random
import unicodedata

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from smpplib import consts as smpp_consts
from smpplib import gsm as smpplib_gsm

from gateway.domain import Encoding
from gateway.smpp.encoding import (
    GSM7_BASIC,
    GSM7_EXTENSION,
    EncodedMessage,
    Udh,
    analyse,
    decode_text,
    encode_message,
    gsm7_decode,
    gsm7_encode,
    khong_dau,
    normalise,
    quick_count,
    split_udh,
)

GSM_ALPHABET = "".join(ch for i, ch in enumerate(GSM7_BASIC) if i != 0x1B) + "".join(GSM7_EXTENSION)


def _payloads(msg: EncodedMessage) -> list[tuple[Udh | None, bytes]]:
    return [split_udh(part, msg.esm_class) for part in msg.parts]


def _reassemble(msg: EncodedMessage, *, shuffle: bool = False) -> str:
    pieces = _payloads(msg)
    if shuffle:
        random.Random(7).shuffle(pieces)
    if len(pieces) > 1:
        assert all(udh is not None for udh, _ in pieces)
        pieces.sort(key=lambda item: item[0].seq if item[0] else 0)
    return "".join(decode_text(payload, msg.data_coding) for _, payload in pieces)


# --------------------------------------------------------------------------- tables


def test_tables_shape() -> None:
    assert len(GSM7_BASIC) == 128
    assert GSM7_BASIC[0x00] == "@"
    assert GSM7_BASIC[0x02] == "$"
    assert GSM7_BASIC[0x11] == "_"
    assert GSM7_BASIC[0x24] == "¤"
    assert GSM7_BASIC[0x40] == "¡"
    assert GSM7_BASIC[0x5F] == "§"
    assert GSM7_BASIC[0x60] == "¿"
    assert GSM7_BASIC[0x7F] == "à"
    assert GSM7_EXTENSION["€"] == 0x65
    assert GSM7_EXTENSION["\x0c"] == 0x0A
    assert set(GSM7_EXTENSION) == set("^{}\\[~]|€\x0c")


# --------------------------------------------------------------------------- segment counts


@pytest.mark.parametrize(
    ("length", "segments"),
    [(0, 1), (1, 1), (160, 1), (161, 2), (153 * 2, 2), (153 * 2 + 1, 3), (153 * 3, 3)],
)
def test_gsm7_segments(length: int, segments: int) -> None:
    text = "a" * length
    info = analyse(text)
    assert info.encoding is Encoding.GSM7
    assert info.units == length
    assert info.segments == segments
    assert info.ucs2_chars == ()
    msg = encode_message(text, ref=1)
    assert msg.segments == segments == len(msg.parts)


@pytest.mark.parametrize(("length", "segments"), [(70, 1), (71, 2), (67 * 2, 2), (67 * 2 + 1, 3)])
def test_ucs2_segments(length: int, segments: int) -> None:
    text = "ư" * length
    info = analyse(text)
    assert info.encoding is Encoding.UCS2
    assert info.units == length
    assert info.segments == segments
    msg = encode_message(text, ref=1)
    assert msg.segments == segments == len(msg.parts)
    assert msg.data_coding == 8


def test_empty_text_is_one_segment() -> None:
    assert analyse("").segments == 1
    msg = encode_message("", ref=0)
    assert msg.parts == (b"",)
    assert msg.esm_class == 0


def test_extension_chars_cost_two_septets() -> None:
    assert analyse("[QC] ").units == 7
    assert gsm7_encode("[QC] ") == b"\x1b\x3cQC\x1b\x3e "
    assert analyse("€" * 80).segments == 1  # exactly 160 septets
    assert analyse("€" * 80 + "a").segments == 2


def test_escape_pair_is_never_split() -> None:
    text = "a" * 152 + "€" + "b" * 20
    info = analyse(text)
    assert info.units == 174
    assert info.segments == 2
    msg = encode_message(text, ref=42)
    assert len(msg.parts) == 2
    first = msg.parts[0]
    second = msg.parts[1]
    assert first[:6] == bytes((5, 0, 3, 42, 2, 1))
    assert first[6:] == b"a" * 152  # part ends at 152 septets, no dangling escape
    assert second[6:8] == b"\x1b\x65"
    assert _reassemble(msg) == text


def test_smpplib_make_parts_splits_escape_pair() -> None:
    """Documents why encoding.py does not use smpplib.gsm.make_parts."""
    text = "a" * 152 + "€" + "b" * 20
    parts, _encoding, _esm = smpplib_gsm.make_parts(text, smpp_consts.SMPP_ENCODING_DEFAULT)
    assert len(parts) == 2
    assert parts[0].endswith(b"\x1b")
    assert parts[1][6] == 0x65  # the other half of the escape pair starts the next part


def test_emoji_is_not_split_at_ucs2_boundary() -> None:
    text = "ư" * 66 + "😀" + "ơ" * 10
    info = analyse(text)
    assert info.encoding is Encoding.UCS2
    assert info.units == 66 + 2 + 10
    assert info.segments == 2
    msg = encode_message(text, ref=9)
    assert len(msg.parts) == 2
    payloads = [part[6:] for part in msg.parts]
    assert len(payloads[0]) == 66 * 2  # emoji did not fit (would be 68 units), moved whole
    decoded = [p.decode("utf-16-be") for p in payloads]  # strict: no lone surrogate
    assert decoded[1].startswith("😀")
    assert "".join(decoded) == text


def test_smpplib_make_parts_splits_surrogate_pair() -> None:
    text = "ư" * 66 + "😀" + "ơ" * 10
    parts, _encoding, _esm = smpplib_gsm.make_parts(text, smpp_consts.SMPP_ENCODING_DEFAULT)
    with pytest.raises(UnicodeDecodeError):
        parts[0][6:].decode("utf-16-be")


def test_emoji_only_text_counts_units() -> None:
    info = analyse("😀" * 35)
    assert info.units == 70
    assert info.segments == 1
    info = analyse("😀" * 36)
    assert info.segments == 2  # 33 emoji (66 units) per part + 3
    msg = encode_message("😀" * 36, ref=1)
    assert [len(p) - 6 for p in msg.parts] == [132, 12]


# --------------------------------------------------------------------------- Vietnamese


def test_vietnamese_forces_ucs2_and_lists_offending_chars() -> None:
    info = analyse("Chúc mừng sinh nhật")
    assert info.encoding is Encoding.UCS2
    assert info.ucs2_chars == ("ú", "ừ", "ậ")
    assert info.units == 19


def test_gsm_accented_letters_stay_gsm7() -> None:
    info = analyse("à è é ì ò ù É")
    assert info.encoding is Encoding.GSM7
    assert info.ucs2_chars == ()
    mixed = analyse("Hà Nội é")
    assert mixed.ucs2_chars == ("ộ",)


def test_khong_dau() -> None:
    text = "Đặng Thị Ngọc Ánh, chúc mừng sinh nhật!"
    assert khong_dau(text) == "Dang Thi Ngoc Anh, chuc mung sinh nhat!"
    msg = encode_message(text, ref=1, khong_dau=True)
    assert msg.encoding is Encoding.GSM7
    assert msg.data_coding == 0
    assert msg.text == "Dang Thi Ngoc Anh, chuc mung sinh nhat!"
    assert msg.ucs2_chars == ()
    assert msg.parts == (msg.text.encode("ascii"),)
    assert khong_dau("đường Đồng Khởi") == "duong Dong Khoi"


def test_nfc_normalisation() -> None:
    decomposed = "e\u0301"
    assert len(decomposed) == 2
    assert normalise(decomposed) == "é"
    assert analyse(normalise(decomposed)).units == 1
    msg = encode_message("Vie\u0302\u0323t", ref=1)  # "Việt" fully decomposed
    assert msg.text == "Việt"
    assert msg.encoding is Encoding.UCS2
    assert msg.parts == ("Việt".encode("utf-16-be"),)
    # é survives NFC as a GSM character
    assert encode_message(decomposed, ref=1).encoding is Encoding.GSM7


def test_force_ucs2() -> None:
    msg = encode_message("hello", ref=1, force_ucs2=True)
    assert msg.encoding is Encoding.UCS2
    assert msg.data_coding == 8
    assert msg.parts == ("hello".encode("utf-16-be"),)
    assert msg.ucs2_chars == ()


# --------------------------------------------------------------------------- round trips


def test_round_trip_vietnamese_400() -> None:
    sentence = "Kính gửi Quý khách, cước tháng 10 của thuê bao 0912345678 là 125.000đ. 😀 "
    text = normalise((sentence * 10)[:400])
    assert len(text) == 400
    msg = encode_message(text, ref=200)
    info = analyse(text)
    assert msg.encoding is Encoding.UCS2
    assert msg.esm_class == 0x40
    assert msg.segments == info.segments == len(msg.parts)
    udhs = [udh for udh, _ in _payloads(msg)]
    assert udhs == [Udh(200, msg.segments, i) for i in range(1, msg.segments + 1)]
    for part in msg.parts:
        assert len(part) <= 140
    assert _reassemble(msg, shuffle=True) == text


def test_round_trip_gsm_400_with_extension_chars() -> None:
    base = "[QC] Uu dai {50%} cho ban~ goi |Max| 100€ ^_^ \\o/ "
    text = (base * 10)[:400]
    assert len(text) == 400
    msg = encode_message(text, ref=5)
    info = analyse(text)
    assert msg.encoding is Encoding.GSM7
    assert msg.segments == info.segments == len(msg.parts)
    for udh, payload in _payloads(msg):
        assert udh is not None
        assert len(payload) <= 153
        assert not payload.endswith(b"\x1b")
        assert gsm7_decode(payload) == decode_text(payload, 0)
    assert _reassemble(msg, shuffle=True) == text


def test_gsm7_round_trip_whole_alphabet() -> None:
    assert gsm7_decode(gsm7_encode(GSM_ALPHABET)) == GSM_ALPHABET
    assert analyse(GSM_ALPHABET).encoding is Encoding.GSM7
    assert analyse(GSM_ALPHABET).units == 127 + 2 * 10


def test_gsm7_encode_rejects_with_position() -> None:
    with pytest.raises(ValueError, match=r"'ừ'.*position 5"):
        gsm7_encode("Chuc ừ")
    with pytest.raises(ValueError):
        gsm7_encode("\x1b")  # the escape itself is not text


def test_gsm7_decode_never_raises() -> None:
    out = gsm7_decode(bytes(range(256)))
    assert isinstance(out, str)
    assert gsm7_decode(b"ab\x1b") == "ab"  # trailing lone escape dropped
    assert gsm7_decode(b"\x1bA") == "A"  # unknown escape -> default-alphabet fallback
    assert gsm7_decode(b"\x1b\x1b") == " "
    assert gsm7_decode(bytes([0x80 | 0x41])) == "A"  # high bit masked


# --------------------------------------------------------------------------- UDH


def test_8bit_reference_udh() -> None:
    msg = encode_message("x" * 200, ref=255)
    assert [p[:6] for p in msg.parts] == [bytes((5, 0, 3, 255, 2, 1)), bytes((5, 0, 3, 255, 2, 2))]
    assert split_udh(msg.parts[1], 0x40) == (Udh(255, 2, 2), b"x" * 47)


def test_16bit_reference_udh() -> None:
    msg = encode_message("x" * 200, ref=0x1234)
    assert msg.parts[0][:7] == bytes((6, 8, 4, 0x12, 0x34, 2, 1))
    udh, payload = split_udh(msg.parts[0], msg.esm_class)
    assert udh == Udh(0x1234, 2, 1)
    assert payload == b"x" * 152  # one septet less than with an 8-bit reference
    assert _reassemble(msg) == "x" * 200
    assert msg.segments == analyse("x" * 200, ref16=True).segments


def test_16bit_reference_keeps_parts_within_140_octets() -> None:
    text = "ư" * 300
    msg = encode_message(text, ref=1000)
    assert all(len(p) <= 140 for p in msg.parts)
    assert msg.segments == len(msg.parts) == analyse(text, ref16=True).segments
    assert _reassemble(msg) == text


def test_single_part_has_no_udh() -> None:
    msg = encode_message("hello", ref=77)
    assert msg.esm_class == 0
    assert msg.parts == (b"hello",)


def test_ref_out_of_range() -> None:
    with pytest.raises(ValueError):
        encode_message("x", ref=-1)
    with pytest.raises(ValueError):
        encode_message("x", ref=65536)


def test_too_many_parts() -> None:
    encode_message("a" * 153 * 255, ref=1)  # exactly 255 parts is fine
    with pytest.raises(ValueError, match="255"):
        encode_message("a" * (153 * 255 + 1), ref=1)


def test_split_udh_without_udhi_flag() -> None:
    data = bytes((5, 0, 3, 1, 2, 1)) + b"abc"
    assert split_udh(data, 0) == (None, data)


def test_split_udh_skips_other_ies() -> None:
    # port addressing IE (0x05, 4 octets) before the concat IE
    header = bytes((0x05, 4, 0x0B, 0x84, 0x23, 0xF0, 0x00, 3, 9, 3, 2))
    data = bytes((len(header),)) + header + b"payload"
    assert split_udh(data, 0x43) == (Udh(9, 3, 2), b"payload")


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x05",
        b"\x05\x00\x03",  # length runs past the end
        b"\xff" + b"x" * 10,
        b"\x03\x00\x03\x01",  # IE longer than the header
        b"\x05\x00\x03\x01\x02\x00abc",  # seq 0
        b"\x05\x00\x03\x01\x02\x03abc",  # seq > total
        b"\x02\x07\x00abc",  # no concat IE
    ],
)
def test_split_udh_malformed_does_not_raise(data: bytes) -> None:
    udh, payload = split_udh(data, 0x40)
    assert udh is None
    assert isinstance(payload, bytes)


def test_split_udh_fuzz_never_raises() -> None:
    rng = random.Random(1)
    for _ in range(2000):
        data = bytes(rng.randrange(256) for _ in range(rng.randrange(12)))
        split_udh(data, 0x40)


# --------------------------------------------------------------------------- decode_text


def test_decode_text_codings() -> None:
    assert decode_text("Việt 😀".encode("utf-16-be"), 8) == "Việt 😀"
    assert decode_text(b"\xd8\x3d", 8) == "\ufffd"  # lone surrogate half
    assert decode_text(b"\x00", 8) == "\ufffd"  # odd length
    assert decode_text(b"caf\xe9", 3) == "café"
    assert decode_text(b"ab\xff", 1) == "ab\ufffd"
    assert decode_text(b"caf\xe9", 4) == "café"
    assert decode_text(b"\x00\x01\x1b\x65", 0) == "@£€"


def test_decode_text_never_raises() -> None:
    junk = bytes(range(256))
    for coding in range(256):
        assert isinstance(decode_text(junk, coding), str)


def test_analyse_matches_encode_message_on_random_text() -> None:
    rng = random.Random(3)
    pool = "aZ0 €[]{}ưộ😀é\n^"
    for _ in range(300):
        text = "".join(rng.choice(pool) for _ in range(rng.randrange(400)))
        text = unicodedata.normalize("NFC", text)
        msg = encode_message(text, ref=3)
        assert msg.segments == analyse(text).segments == len(msg.parts)
        assert _reassemble(msg) == text


@settings(max_examples=2000, deadline=None)
@given(st.text(alphabet=st.sampled_from(
    "aZ09 .,@€^{}[]~|\\\nàèéìòùÀÉÇåÅßÆæ"  # GSM-7 basic and extension characters
    "ăâđêôơưĂĐƯạảấầẩẫậ\u0301"  # Vietnamese (UCS-2)
    "😀🇻🇳\U00020000\ud800"), max_size=400))  # beyond the BMP, and a lone surrogate
def test_quick_count_answers_as_analyse(text: str) -> None:
    info = analyse(text)
    assert quick_count(text) == (info.encoding, info.segments)


@settings(max_examples=2000, deadline=None)
@given(text=st.text(alphabet=st.sampled_from(
    "aZ09 .,@€^{}[]~|\\\nàèéìòùÀÉÇåÅßÆæ"
    "ăâđêôơưĂĐƯạảấầẩẫậ\u0301"
    "😀🇻🇳\U00020000\ud800"), max_size=400), force_ucs2=st.booleans(), ref16=st.booleans())
def test_plan_fast_paths_split_as_the_general_planner(text: str, force_ucs2: bool,
                                                      ref16: bool) -> None:
    from gateway.smpp.encoding import _plan, _plan_general

    assert _plan(text, force_ucs2=force_ucs2, ref16=ref16) == _plan_general(
        text, force_ucs2=force_ucs2, ref16=ref16)
