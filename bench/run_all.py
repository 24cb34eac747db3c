"""Run every benchmark in bench/ and summarise them: ``bench/results/latest.md`` and ``.png``.

Each ``bench/*.py`` (except helpers: ``simtools.py``, this file, ``_*.py``) runs in its own
subprocess, one after the other (they measure the machine; running two at once would measure
each other). A benchmark that takes ``--quick`` gets it with ``--quick``; ``QUICK_ARGS`` has
short settings for the ones that do not. Its printed tables are kept whole, and its last
``RESULT {json}`` line (see ``simtools.print_result``: ``name``, ``throughput_per_s``,
``p50_ms``, ``p99_ms``, optional ``unit`` and ``note``) gives the summary figures.

Writes ``latest.md`` (a summary table — benchmark, throughput, latency p50/p99, status,
duration — then each benchmark's full output) and ``latest.png`` (throughput bars, latency
p50/p99 bars; needs matplotlib: ``pip install -e '.[bench]'``).

    python3 bench/run_all.py [--quick] [--only NAME]... [--timeout S] [--out DIR]

Exit status 1 when a benchmark failed or timed out.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import platform
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
PROJECT_DIR = BENCH_DIR.parent
HELPERS = frozenset({"simtools.py", "run_all.py"})
RESULT_PREFIX = "RESULT "
FIGURES = ("throughput_per_s", "p50_ms", "p99_ms")  # a RESULT has these (null if not measured)
QUICK_FLAG = "--quick"
#: short settings for benchmarks without --quick
QUICK_ARGS: Mapping[str, tuple[str, ...]] = {
    "chaos": ("--count", "2000", "--kills", "1", "--policy", "fail"),
}
DEFAULT_TIMEOUT_S = 1800.0
QUICK_TIMEOUT_S = 300.0


@dataclass(frozen=True)
class Run:
    """One benchmark's run: how it ended, what it printed, its RESULT record."""

    name: str
    command: tuple[str, ...]
    returncode: int | None  # None: timed out
    seconds: float
    stdout: str
    stderr: str = ""
    result: Mapping[str, Any] | None = None
    problems: tuple[str, ...] = field(default=())

    @property
    def status(self) -> str:
        return status_of(self.returncode, self.result, self.problems)

    @property
    def ok(self) -> bool:
        return self.returncode == 0


# --------------------------------------------------------------------------- pure helpers


def discover(bench_dir: Path = BENCH_DIR) -> list[Path]:
    """The benchmark scripts of ``bench_dir``, sorted by name."""
    return sorted(
        path for path in bench_dir.glob("*.py")
        if path.name not in HELPERS and not path.name.startswith(("_", "test_"))
    )


def select(scripts: Sequence[Path], only: Sequence[str]) -> list[Path]:
    """The scripts named in ``only`` (stem, with or without ``.py``); all when empty."""
    if not only:
        return list(scripts)
    wanted = {name.removesuffix(".py") for name in only}
    known = {path.stem for path in scripts}
    unknown = sorted(wanted - known)
    if unknown:
        raise ValueError(f"no benchmark named {', '.join(unknown)}; "
                         f"there are: {', '.join(sorted(known))}")
    return [path for path in scripts if path.stem in wanted]


def supports_quick(source: str) -> bool:
    """Whether a benchmark's source declares a ``--quick`` option (itself or by
    ``simtools.add_quick``)."""
    return any(mark in source for mark in (f'"{QUICK_FLAG}"', f"'{QUICK_FLAG}'", "add_quick("))


def command_for(script: Path, *, quick: bool, source: str | None = None) -> list[str]:
    """How to run ``script``: ``python3 script [--quick | QUICK_ARGS]``."""
    command = [sys.executable, str(script)]
    if quick:
        text = script.read_text(encoding="utf-8") if source is None else source
        if supports_quick(text):
            command.append(QUICK_FLAG)
        else:
            command.extend(QUICK_ARGS.get(script.stem, ()))
    return command


def parse_result(output: str) -> tuple[dict[str, Any] | None, list[str]]:
    """The last ``RESULT {json}`` line of ``output`` as a dict, and problems with RESULT lines."""
    result: dict[str, Any] | None = None
    problems: list[str] = []
    for line in output.splitlines():
        if not line.startswith(RESULT_PREFIX):
            continue
        try:
            record = json.loads(line[len(RESULT_PREFIX):])
        except json.JSONDecodeError as exc:
            problems.append(f"unreadable RESULT line ({exc.msg})")
            continue
        if not isinstance(record, dict):
            problems.append("RESULT is not a JSON object")
            continue
        result = record
    if result is not None and not any(key in result for key in FIGURES):
        problems.append(f"the RESULT line has none of {', '.join(FIGURES)} "
                        "(the convention of simtools.print_result)")
    return result, problems


def tables_of(output: str) -> str:
    """What a benchmark printed for people: its output without RESULT lines, trimmed."""
    lines = [line.rstrip() for line in output.splitlines() if not line.startswith(RESULT_PREFIX)]
    return "\n".join(lines).strip()


def status_of(returncode: int | None, result: Mapping[str, Any] | None,
              problems: Iterable[str] = ()) -> str:
    if returncode is None:
        return "timed out"
    if returncode != 0:
        return f"failed (exit {returncode})"
    if result is None:
        return "ok, no RESULT line"
    if list(problems):
        return "ok, bad RESULT line"
    return "ok"


def number(value: Any) -> float | None:
    """A finite float from a RESULT field, else None."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def fmt(value: Any, *, digits: int | None = None) -> str:
    """``12,468`` / ``2.16`` / ``-`` for a missing figure."""
    x = number(value)
    if x is None:
        return "-"
    if digits is None:
        digits = 0 if abs(x) >= 100 else 2
    return f"{x:,.{digits}f}"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def summary_rows(runs: Sequence[Run]) -> list[dict[str, str]]:
    rows = []
    for run in runs:
        result = run.result or {}
        unit = str(result.get("unit") or "/s")
        throughput = fmt(result.get("throughput_per_s"))
        rows.append({
            "benchmark": run.name,
            "throughput": throughput if throughput == "-" else f"{throughput} {unit}",
            "p50": fmt(result.get("p50_ms")),
            "p99": fmt(result.get("p99_ms")),
            "status": run.status,
            "duration": f"{run.seconds:.1f} s",
            "note": str(result.get("note") or ""),
        })
    return rows


def summary_table(runs: Sequence[Run]) -> str:
    lines = ["| benchmark | throughput | p50 ms | p99 ms | status | duration | figures from |",
             "|---|---:|---:|---:|---|---:|---|"]
    for row in summary_rows(runs):
        lines.append("| " + " | ".join(_cell(row[key]) for key in (
            "benchmark", "throughput", "p50", "p99", "status", "duration", "note")) + " |")
    return "\n".join(lines)


def render_markdown(runs: Sequence[Run], *, quick: bool, when: dt.datetime,
                    machine: str, chart: str | None) -> str:
    """The whole ``latest.md``: header, summary table, chart, then each benchmark's output."""
    mode = "quick (`--quick`)" if quick else "full"
    parts = [
        "# Benchmarks — latest run",
        "",
        f"{when:%Y-%m-%d %H:%M} UTC, {mode} run of `python3 bench/run_all.py`, {machine}. "
        "Figures come from each benchmark's `RESULT` line; its full output follows.",
        "",
        summary_table(runs),
        "",
    ]
    if chart:
        parts += [f"![throughput and latency]({chart})", ""]
    for run in runs:
        parts += [f"## {run.name}", "", f"`{' '.join(_display(run.command))}` — {run.status}, "
                  f"{run.seconds:.1f} s", ""]
        printed = tables_of(run.stdout)
        parts += [printed if printed else "(printed nothing)", ""]
        if not run.ok and run.stderr.strip():
            tail = "\n".join(run.stderr.strip().splitlines()[-20:])
            parts += ["Last lines of stderr:", "", "```", tail, "```", ""]
        for problem in run.problems:
            parts += [f"Note: {problem}", ""]
    return "\n".join(parts).rstrip() + "\n"


def _display(command: Sequence[str]) -> list[str]:
    """``python3 bench/x.py --quick`` rather than absolute paths."""
    shown = ["python3"]
    for arg in command[1:]:
        path = Path(arg)
        shown.append(str(path.relative_to(PROJECT_DIR)) if path.is_absolute()
                     and path.is_relative_to(PROJECT_DIR) else arg)
    return shown


def chart_series(runs: Sequence[Run]) -> tuple[list[tuple[str, float]],
                                                 list[tuple[str, float | None, float | None]]]:
    """(name, throughput) for runs reporting one; (name, p50, p99) for runs with a latency."""
    throughput: list[tuple[str, float]] = []
    latency: list[tuple[str, float | None, float | None]] = []
    for run in runs:
        result = run.result or {}
        rate = number(result.get("throughput_per_s"))
        if rate is not None:
            throughput.append((run.name, rate))
        p50, p99 = number(result.get("p50_ms")), number(result.get("p99_ms"))
        if p50 is not None or p99 is not None:
            latency.append((run.name, p50, p99))
    return throughput, latency


# --------------------------------------------------------------------------- chart


def write_chart(runs: Sequence[Run], path: Path, *, title: str) -> bool:
    """Throughput and latency bars as a PNG (matplotlib, Agg). False when nothing to draw."""
    throughput, latency = chart_series(runs)
    if not throughput and not latency:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 5.5))
    fig.suptitle(title)
    if throughput:
        names = [name for name, _ in throughput]
        bars = left.bar(names, [rate for _, rate in throughput], color="#2f6f9f")
        left.bar_label(bars, labels=[f"{rate:,.0f}" for _, rate in throughput], fontsize=8)
        left.set_yscale("log")
        left.set_ylim(top=max(rate for _, rate in throughput) * 3)  # room for the labels
        left.set_ylabel("per second (log scale)")
    left.set_title("Throughput")
    left.tick_params(axis="x", labelrotation=30)
    if latency:
        names = [name for name, _, _ in latency]
        xs = range(len(latency))
        width = 0.38
        p50 = [v if v is not None else 0.0 for _, v, _ in latency]
        p99 = [v if v is not None else 0.0 for _, _, v in latency]
        b50 = right.bar([x - width / 2 for x in xs], p50, width, label="p50", color="#5fa55a")
        b99 = right.bar([x + width / 2 for x in xs], p99, width, label="p99", color="#d1603d")
        right.bar_label(b50, labels=[fmt(v) for _, v, _ in latency], fontsize=8)
        right.bar_label(b99, labels=[fmt(v) for _, _, v in latency], fontsize=8)
        right.set_xticks(list(xs), names)
        right.set_yscale("symlog", linthresh=1.0)  # ms from <1 to seconds; may be negative
        right.set_ylim(top=max([1.0, *p50, *p99]) * 5)
        right.set_ylabel("milliseconds (symlog scale)")
        right.legend()
    right.set_title("Latency")
    right.tick_params(axis="x", labelrotation=30)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


# --------------------------------------------------------------------------- running


def run_one(script: Path, *, quick: bool, timeout_s: float) -> Run:
    """Run one benchmark in its own process group (its simulators go with it on a timeout)."""
    command = command_for(script, quick=quick)
    started = time.monotonic()
    proc = subprocess.Popen(command, cwd=PROJECT_DIR, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=timeout_s)
        returncode: int | None = proc.returncode
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            stdout, stderr = proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            stdout, stderr = proc.communicate()
        returncode = None
    seconds = time.monotonic() - started
    result, problems = parse_result(stdout)
    return Run(script.stem, tuple(command), returncode, seconds, stdout, stderr, result,
               tuple(problems))


def machine_line() -> str:
    return (f"{os.cpu_count()} CPU(s), Python {platform.python_version()}, "
            f"{platform.system()} {platform.machine()}")


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--quick", action="store_true", help="short runs (each benchmark's --quick)")
    ap.add_argument("--only", action="append", default=[], metavar="NAME",
                    help="run only this benchmark (repeatable), e.g. --only smpp_throughput")
    ap.add_argument("--timeout", type=float, default=None,
                    help=f"seconds per benchmark (default {DEFAULT_TIMEOUT_S:.0f}, "
                         f"{QUICK_TIMEOUT_S:.0f} with --quick)")
    ap.add_argument("--out", type=Path, default=BENCH_DIR / "results",
                    help="where latest.md and latest.png go")
    args = ap.parse_args(argv)
    try:
        scripts = select(discover(), args.only)
    except ValueError as exc:
        ap.error(str(exc))
    timeout_s = args.timeout or (QUICK_TIMEOUT_S if args.quick else DEFAULT_TIMEOUT_S)
    when = dt.datetime.now(dt.UTC)
    runs: list[Run] = []
    for i, script in enumerate(scripts, 1):
        print(f"[{i}/{len(scripts)}] {script.stem} …", end=" ", file=sys.stderr, flush=True)
        run = run_one(script, quick=args.quick, timeout_s=timeout_s)
        print(f"{run.status} ({run.seconds:.1f} s)", file=sys.stderr, flush=True)
        runs.append(run)
    args.out.mkdir(parents=True, exist_ok=True)
    png = args.out / "latest.png"
    title = f"smsgw benchmarks, {'quick' if args.quick else 'full'} run {when:%Y-%m-%d %H:%M} UTC"
    try:
        drawn = write_chart(runs, png, title=title)
    except ImportError:
        print("matplotlib is not installed (pip install -e '.[bench]'): no chart",
              file=sys.stderr)
        drawn = False
    markdown = render_markdown(runs, quick=args.quick, when=when, machine=machine_line(),
                               chart=png.name if drawn else None)
    (args.out / "latest.md").write_text(markdown, encoding="utf-8")
    print(summary_table(runs))
    print(f"\nwrote {args.out / 'latest.md'}" + (f" and {png}" if drawn else ""))
    return 0 if all(run.ok for run in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
