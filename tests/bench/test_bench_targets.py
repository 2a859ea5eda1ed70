"""The benchmark's target verdicts (bench/targets.py): each one flips with the figures it
judges, a missing measurement is "not measured" rather than a pass, and the published run
(bench/results/results.json) renders."""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))

import targets  # noqa: E402

SMALL = ("echo-1x64", "echo-50x64", "http-keepalive")


def run(cpu: dict[tuple[str, str], float], instr: dict | None = None, idle: dict | None = None) -> tuple:
    scenarios = sorted({sc for _, sc in cpu})
    report = {
        "scenarios": [{"name": sc, "large": sc == "echo-10x1M"} for sc in scenarios],
        "callgrind_scenarios": [{"name": "echo-1x64"}, {"name": "echo-50x64"}],
        "instructions": instr or {},
        "idle": idle or {},
    }
    med = {key: {"cpu_us_per_op": v} for key, v in cpu.items()}
    return report, med


def verdict(rows: list, prefix: str) -> tuple[str, str]:
    matches = [(v, e) for title, v, e in rows if title.startswith(prefix)]
    assert len(matches) == 1, (prefix, rows)
    return matches[0]


def both(server_a: str, a: float, server_b: str, b: float, scenarios=SMALL) -> dict:
    cpu = {}
    for sc in scenarios:
        cpu[(server_a, sc)] = a
        cpu[(server_b, sc)] = b
    return cpu


def test_the_c_geometric_mean_is_judged_within_two_per_cent() -> None:
    rows = targets.issue12_rows(*run(both("eploop-c", 1.01, "c-epoll", 1.0)))
    assert verdict(rows, "eploop-c CPU/op: geometric mean")[0] == "met"
    rows = targets.issue12_rows(*run(both("eploop-c", 1.03, "c-epoll", 1.0)))
    v, evidence = verdict(rows, "eploop-c CPU/op: geometric mean")
    assert v == "missed" and "1.030×" in evidence


def test_one_scenario_above_the_limit_is_named() -> None:
    cpu = both("eploop-c", 1.0, "c-epoll", 1.0)
    cpu[("eploop-c", "echo-50x64")] = 1.06
    v, _ = verdict(targets.issue12_rows(*run(cpu)), "eploop-c CPU/op: no scenario")
    assert v == "missed in 1/3: echo-50x64"


def test_the_geometric_mean_leaves_out_the_large_scenarios() -> None:
    cpu = both("eploop-c", 1.0, "c-epoll", 1.0, SMALL + ("echo-10x1M",))
    cpu[("eploop-c", "echo-10x1M")] = 5.0
    assert verdict(targets.issue12_rows(*run(cpu)), "eploop-c CPU/op: geometric mean")[0] == "met"


def test_a_missing_server_is_not_measured_not_met() -> None:
    rows = targets.issue12_rows(*run(both("eploop-c", 1.0, "c-epoll", 1.0)))
    assert verdict(rows, "eploop-py CPU/op at or below uvloop")[0] == "not measured"
    assert verdict(rows, "eploop-py idle memory")[0] == "not measured"


def test_python_against_uvloop_only_in_the_issues_scenarios() -> None:
    cpu = both("eploop-py", 1.0, "uvloop", 1.0, ("echo-50x64", "echo-1x64"))
    cpu[("eploop-py", "echo-1x64")] = 2.0  # not one of the issue's uvloop scenarios
    v, evidence = verdict(targets.issue12_rows(*run(cpu)), "eploop-py CPU/op at or below uvloop")
    assert v == "met" and "echo-1x64" not in evidence


def test_instruction_limits_and_idle_memory() -> None:
    instr = {"eploop-c": {"echo-1x64": {"per_op": 399.0}, "echo-50x64": {"per_op": 301.0}}}
    idle = {"eploop-c": {"bytes_per_conn": 250.0}, "eploop-py": {"bytes_per_conn": 513.0}}
    rows = targets.issue12_rows(*run(both("eploop-c", 1.0, "c-epoll", 1.0), instr, idle))
    assert verdict(rows, "eploop-c instructions per echo")[0] == "missed in 1/2: echo-50x64"
    assert verdict(rows, "eploop-c idle memory")[0] == "met"
    assert verdict(rows, "eploop-py idle memory")[0] == "missed"


def test_before_and_after_table() -> None:
    report, _ = run({}, {"eploop-c": {"echo-1x64": {"per_op": 448.0}}})
    lines = targets.before_after_lines(report)
    row = next(line for line in lines if line.startswith("| eploop-c |"))
    assert "896 → 448 (-50%)" in row
    assert row.endswith("| – |"), "a scenario this run did not count is a dash"


def test_the_published_run_renders_every_target() -> None:
    report = json.loads((ROOT / "bench/results/results.json").read_text())
    import report as report_mod  # bench/report.py

    med = report_mod.medians(report)
    rows = targets.issue12_rows(report, med)
    assert len(rows) == 10
    for title, v, _ in rows:
        assert v == "met" or v.startswith("missed") or v == "not measured", (title, v)
    assert any(line.startswith("| eploop-py |") for line in targets.before_after_lines(report))
