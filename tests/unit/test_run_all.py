"""bench/run_all.py: discovery, the RESULT convention, the summary (no benchmark is run)."""

from __future__ import annotations

import datetime as dt
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

from gateway import PROJECT_ROOT

BENCH = PROJECT_ROOT / "bench"


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


run_all = _load("run_all")
simtools = _load("simtools")

TABLE = """SMPP throughput, 2 CPU(s)

| window | submit_sm/s | p50 ms | p99 ms |
|---:|---:|---:|---:|
| 50 | 19,865 | 2.16 | 4.76 |
"""


def _run(name: str = "smpp_throughput", *, returncode: int | None = 0, stdout: str = "",
         seconds: float = 12.34, stderr: str = "") -> object:
    result, problems = run_all.parse_result(stdout)
    return run_all.Run(name, ("python3", f"bench/{name}.py"), returncode, seconds, stdout,
                       stderr, result, tuple(problems))


def test_discover_skips_helpers_and_sorts(tmp_path: Path) -> None:
    for name in ("smpp_throughput.py", "chaos.py", "campaign_ingest.py", "simtools.py",
                 "run_all.py", "_private.py", "test_x.py", "RESULTS.md"):
        (tmp_path / name).write_text("", encoding="utf-8")
    assert [p.name for p in run_all.discover(tmp_path)] == [
        "campaign_ingest.py", "chaos.py", "smpp_throughput.py"]


def test_discover_finds_the_repository_benchmarks() -> None:
    names = {p.stem for p in run_all.discover()}
    assert {"smpp_throughput", "pipeline_throughput", "ledger_receipts", "throttle_accuracy",
            "multi_bind", "priority_latency"} <= names
    assert not names & {"simtools", "run_all"}


def test_every_original_benchmark_follows_the_conventions() -> None:
    for name in ("smpp_throughput", "pipeline_throughput", "ledger_receipts",
                 "throttle_accuracy", "multi_bind", "priority_latency"):
        source = (BENCH / f"{name}.py").read_text(encoding="utf-8")
        assert "add_quick(" in source and run_all.supports_quick(source), name
        assert f'print_result("{name}"' in source, name


def test_select_by_name() -> None:
    scripts = [Path("bench/a.py"), Path("bench/b_c.py"), Path("bench/d.py")]
    assert run_all.select(scripts, []) == scripts
    assert run_all.select(scripts, ["d", "b_c.py"]) == [Path("bench/b_c.py"), Path("bench/d.py")]
    with pytest.raises(ValueError, match="no benchmark named x; there are: a, b_c, d"):
        run_all.select(scripts, ["a", "x"])


def test_command_uses_quick_or_fallback_arguments(tmp_path: Path) -> None:
    script = tmp_path / "smpp_throughput.py"
    with_quick = 'ap.add_argument("--quick", action="store_true")'
    assert run_all.command_for(script, quick=True, source=with_quick)[1:] == [
        str(script), "--quick"]
    assert run_all.command_for(script, quick=False, source=with_quick)[1:] == [str(script)]
    assert run_all.command_for(script, quick=True, source="no such flag")[1:] == [str(script)]
    assert run_all.command_for(script, quick=True, source="add_quick(ap)")[1:] == [
        str(script), "--quick"]
    chaos = tmp_path / "chaos.py"
    assert run_all.command_for(chaos, quick=True, source="")[2:] == list(
        run_all.QUICK_ARGS["chaos"])


def test_parse_result_takes_the_last_valid_line() -> None:
    output = (TABLE + 'RESULT {"name": "x", "throughput_per_s": 1}\n'
              'RESULT {"name": "smpp_throughput", "throughput_per_s": 19865.0, '
              '"p50_ms": 2.16, "p99_ms": 4.76}\n')
    result, problems = run_all.parse_result(output)
    assert result == {"name": "smpp_throughput", "throughput_per_s": 19865.0, "p50_ms": 2.16,
                      "p99_ms": 4.76}
    assert problems == []


@pytest.mark.parametrize(("output", "problem"), [
    ("RESULT {not json}\n", "unreadable RESULT line"),
    ("RESULT [1, 2]\n", "RESULT is not a JSON object"),
])
def test_parse_result_reports_bad_lines(output: str, problem: str) -> None:
    result, problems = run_all.parse_result(output)
    assert result is None and len(problems) == 1 and problems[0].startswith(problem)


def test_parse_result_flags_a_result_without_the_agreed_figures() -> None:
    result, problems = run_all.parse_result('RESULT {"benchmark": "x", "best_seconds": 7.5}\n')
    assert result == {"benchmark": "x", "best_seconds": 7.5}
    assert problems == ["the RESULT line has none of throughput_per_s, p50_ms, p99_ms "
                        "(the convention of simtools.print_result)"]
    assert run_all.status_of(0, result, problems) == "ok, bad RESULT line"


def test_parse_result_ignores_lines_that_merely_mention_result() -> None:
    assert run_all.parse_result(TABLE + "  RESULT {}\nRESULTS: none\n") == (None, [])


def test_simtools_print_result_round_trips(capsys: pytest.CaptureFixture[str]) -> None:
    simtools.print_result("multi_bind", throughput_per_s=940.123456, p50_ms=float("nan"),
                          unit="parts/s", lost=0)
    result, problems = run_all.parse_result(capsys.readouterr().out)
    assert problems == []
    assert result == {"name": "multi_bind", "throughput_per_s": 940.123, "p50_ms": None,
                      "p99_ms": None, "unit": "parts/s", "lost": 0}


def test_simtools_apply_quick_keeps_explicit_options() -> None:
    import argparse

    ap = argparse.ArgumentParser()
    ap.add_argument("--count", type=int, default=20000)
    ap.add_argument("--seconds", type=float, default=5.0)
    simtools.add_quick(ap)
    args = simtools.apply_quick(ap, ap.parse_args(["--quick", "--seconds", "9"]), count=2000,
                                seconds=1.0)
    assert (args.count, args.seconds) == (2000, 9.0)
    args = simtools.apply_quick(ap, ap.parse_args([]), count=2000)
    assert args.count == 20000


def test_tables_drop_result_lines() -> None:
    output = TABLE + 'RESULT {"name": "x"}\n'
    assert run_all.tables_of(output) == TABLE.strip()


@pytest.mark.parametrize(("returncode", "result", "problems", "status"), [
    (0, {"name": "x"}, (), "ok"),
    (0, None, (), "ok, no RESULT line"),
    (0, {"name": "x"}, ("unreadable RESULT line",), "ok, bad RESULT line"),
    (2, {"name": "x"}, (), "failed (exit 2)"),
    (None, None, (), "timed out"),
])
def test_status(returncode: int | None, result: dict[str, str] | None,
                problems: tuple[str, ...], status: str) -> None:
    assert run_all.status_of(returncode, result, problems) == status


@pytest.mark.parametrize(("value", "text"), [
    (19865.04, "19,865"), (2.156, "2.16"), (-11, "-11.00"), (None, "-"), (float("nan"), "-"),
    ("12", "-"), (True, "-"), (100, "100"),
])
def test_fmt(value: object, text: str) -> None:
    assert run_all.fmt(value) == text


def test_summary_table_rows() -> None:
    good = _run(stdout=TABLE + 'RESULT {"name": "smpp_throughput", "throughput_per_s": 19865, '
                '"p50_ms": 2.16, "p99_ms": 4.76, "unit": "submit_sm/s", '
                '"note": "window 50 | no receipts"}\n')
    silent = _run("chaos", stdout="| killed | lost |\n|---|---|\n| 3 | 0 |\n", seconds=61.0)
    broken = _run("multi_bind", returncode=1, stderr="Traceback ...\nboom", seconds=0.5)
    table = run_all.summary_table([good, silent, broken]).splitlines()
    assert table[0] == ("| benchmark | throughput | p50 ms | p99 ms | status | duration "
                        "| figures from |")
    assert table[2] == ("| smpp_throughput | 19,865 submit_sm/s | 2.16 | 4.76 | ok | 12.3 s "
                        "| window 50 \\| no receipts |")
    assert table[3] == "| chaos | - | - | - | ok, no RESULT line | 61.0 s |  |"
    assert table[4] == "| multi_bind | - | - | - | failed (exit 1) | 0.5 s |  |"


def test_markdown_has_summary_chart_and_every_full_table() -> None:
    good = _run(stdout=TABLE + 'RESULT {"name": "smpp_throughput", "throughput_per_s": 1}\n')
    broken = _run("multi_bind", returncode=1, stdout="", stderr="line\n" * 30 + "boom")
    text = run_all.render_markdown([good, broken], quick=True,
                                   when=dt.datetime(2026, 11, 23, 20, 5, tzinfo=dt.UTC),
                                   machine="2 CPU(s)", chart="latest.png")
    assert text.startswith("# Benchmarks — latest run\n")
    assert "2026-11-23 20:05 UTC, quick (`--quick`) run" in text
    assert "| smpp_throughput | 1.00 /s |" in text
    assert "![throughput and latency](latest.png)" in text
    assert "## smpp_throughput\n\n`python3 bench/smpp_throughput.py` — ok, 12.3 s" in text
    assert TABLE.strip() in text and "RESULT {" not in text
    assert "## multi_bind" in text and "(printed nothing)" in text
    assert "boom" in text and text.count("line\n") == 19  # last 20 lines of stderr
    assert text.index("## smpp_throughput") < text.index("## multi_bind")


def test_chart_series_picks_reported_figures() -> None:
    runs = [
        _run(stdout='RESULT {"name": "a", "throughput_per_s": 10, "p50_ms": 1, "p99_ms": 2}'),
        _run("b", stdout='RESULT {"name": "b", "throughput_per_s": null, "p50_ms": -11, '
                         '"p99_ms": 42}'),
        _run("c", stdout='RESULT {"name": "c", "throughput_per_s": 5}'),
        _run("d", returncode=1),
    ]
    throughput, latency = run_all.chart_series(runs)
    assert throughput == [("smpp_throughput", 10.0), ("c", 5.0)]
    assert latency == [("smpp_throughput", 1.0, 2.0), ("b", -11.0, 42.0)]


def test_write_chart_makes_a_png(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    runs = [_run(stdout='RESULT {"name": "a", "throughput_per_s": 4564, "p50_ms": 11, '
                        '"p99_ms": 18}'),
            _run("priority_latency", stdout='RESULT {"name": "p", "p50_ms": -11, "p99_ms": 42}')]
    path = tmp_path / "out" / "latest.png"
    assert run_all.write_chart(runs, path, title="test") is True
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert run_all.write_chart([_run(returncode=1)], tmp_path / "none.png", title="x") is False
    assert not (tmp_path / "none.png").exists()
