"""Documentation and configuration stay true to the code."""

from __future__ import annotations

import re
import tomllib

from gateway import PROJECT_ROOT
from gateway.config import ConfigError, EventsConfig, describe_defaults, load_config


def test_config_example_lists_every_key_at_its_default() -> None:
    example = tomllib.loads((PROJECT_ROOT / "config.example.toml").read_text(encoding="utf-8"))
    events = example.pop("events")
    assert example == describe_defaults()
    assert events["templates"] == dict(EventsConfig().templates)
    assert load_config(PROJECT_ROOT / "config.example.toml", {}) == load_config(None, {})


def test_env_overrides_and_errors() -> None:
    cfg = load_config(None, {"SMSGW_SMPP_WINDOW": "50", "SMSGW_DATABASE_DSN": "postgresql://x/y"})
    assert cfg.smpp.window == 50 and cfg.database.dsn == "postgresql://x/y"
    try:
        load_config(None, {"SMSGW_SENDING_AMBIGUOUS_POLICY": "maybe"})
    except ConfigError as exc:
        assert "ambiguous_policy" in str(exc)
    else:
        raise AssertionError("a bad policy must be refused")


def test_ci_runs_the_readme_test_command() -> None:
    readme = (PROJECT_ROOT / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```sh\n(.*?)\n```", readme, flags=re.S)
    assert len(blocks) >= 2, "quick start: one install+demo command, one install+test command"
    demo, tests = blocks[0].strip(), blocks[1].strip()
    assert "smsgw demo" in demo and "pip install" in demo
    assert "pytest" in tests and "pip install" in tests
    ci = (PROJECT_ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert tests in ci


def test_advertising_text_gets_the_label_and_the_refusal_instructions() -> None:
    from gateway.intake import label_advertising

    refusal = "Tu choi QC soan TC gui 1234"
    assert label_advertising("Uu dai 50% hom nay", refusal) == (
        "[QC] Uu dai 50% hom nay. Tu choi QC soan TC gui 1234")
    already = "[QC] Giam gia! Tu choi QC soan TC gui 1234"
    assert label_advertising(already, refusal) == already
    assert label_advertising("[ad] Sale!", refusal) == "[ad] Sale! Tu choi QC soan TC gui 1234"
    # the refusal may already be there with diacritics
    accented = "[QC] Khuyến mãi. Từ chối QC soạn TC gửi 1234"
    assert label_advertising(accented, refusal) == accented
