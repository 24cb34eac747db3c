"""Subscriber numbers: parse whatever people type, store E.164 digits (``84901234567``).

Number portability means the prefix does not prove the operator, so nothing here guesses it.
"""

from __future__ import annotations

import re

import phonenumbers
from phonenumbers import NumberParseException, PhoneNumberType, ValidationResult

_SEPARATORS = re.compile(r"[\s.\-()/]")


class InvalidNumber(ValueError):
    """The number cannot be used; ``reason`` says why in words a person can act on."""

    def __init__(self, value: str, reason: str) -> None:
        super().__init__(f"{value!r}: {reason}")
        self.value = value
        self.reason = reason


_MOBILE = (PhoneNumberType.MOBILE, PhoneNumberType.FIXED_LINE_OR_MOBILE)

# Mobile ranges allocated in Viet Nam (shared/docs/domain-vietnam.md). phonenumbers' metadata
# misses a few (089x, 099x, 055x seen missing in 9.0), so these national prefixes are accepted
# even when the library calls the number invalid. They say nothing about today's operator.
VN_MOBILE_PREFIXES = frozenset({
    "32", "33", "34", "35", "36", "37", "38", "39", "55", "56", "58", "59", "70", "76", "77",
    "78", "79", "81", "82", "83", "84", "85", "86", "87", "88", "89", "90", "91", "92", "93",
    "94", "96", "97", "98", "99",
})


def _check_length(num: phonenumbers.PhoneNumber, raw: str) -> None:
    why = phonenumbers.is_possible_number_with_reason(num)
    if why == ValidationResult.TOO_SHORT:
        raise InvalidNumber(raw, "too short")
    if why in (ValidationResult.TOO_LONG, ValidationResult.INVALID_LENGTH):
        raise InvalidNumber(raw, "too long" if len(str(num.national_number)) > 9 else "too short")


def normalise_msisdn(raw: str, *, region: str = "VN") -> str:
    """``0901 234 567`` / ``84901234567`` / ``+84 90-123-4567`` → ``84901234567``."""
    value = _SEPARATORS.sub("", str(raw or "").strip())
    if not value:
        raise InvalidNumber(str(raw), "empty number")
    if re.fullmatch(r"\+?[0-9oO]+", value) and re.search(r"[oO]", value):
        raise InvalidNumber(str(raw), "letter O instead of zero")
    if value.startswith("00"):
        value = "+" + value[2:]
    if not value.lstrip("+").isdigit():
        raise InvalidNumber(str(raw), "not a number: contains characters other than digits")
    code = str(phonenumbers.country_code_for_region(region))
    if not value.startswith("+") and value.startswith(code) and len(value) > 10:
        value = "+" + value
    try:
        num = phonenumbers.parse(value, region)
    except NumberParseException as exc:
        raise InvalidNumber(str(raw), f"not a phone number ({exc})") from exc
    digits = f"{num.country_code}{num.national_number}"
    if num.country_code != int(code):
        raise InvalidNumber(str(raw), f"foreign number (country code +{num.country_code})")
    _check_length(num, str(raw))
    national = str(num.national_number)
    if region == "VN" and len(national) == 9 and national[:2] in VN_MOBILE_PREFIXES:
        return digits
    if not phonenumbers.is_valid_number(num):
        raise InvalidNumber(str(raw), "unassigned prefix (no operator holds this range)")
    if phonenumbers.number_type(num) not in _MOBILE:
        raise InvalidNumber(str(raw), "landline or service number, not a mobile")
    return digits
