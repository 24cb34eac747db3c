"""Masking of personal data for log lines at INFO and above."""

from __future__ import annotations


def mask_msisdn(msisdn: str) -> str:
    """``84901234567`` → ``84901***567``; short or odd values keep only their last 2 chars."""
    digits = msisdn.strip()
    if len(digits) >= 9:
        return f"{digits[:5]}***{digits[-3:]}"
    if len(digits) <= 2:
        return "***"
    return f"***{digits[-2:]}"
