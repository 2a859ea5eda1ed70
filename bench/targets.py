"""The performance issues' targets, judged on one run (RESULTS.md's target tables), and the
instruction counts from before issue 12 (RESULTS.md's before/after table).

Every verdict compares medians of the same run: CPU time per operation (server utime + stime)
or user-space instructions per operation (callgrind). A target this run cannot judge (a server
or scenario not measured) says so instead of passing.
"""

from __future__ import annotations

import math

REFERENCE = "c-epoll"

# Instructions per operation before issue 12's work. echo-1x64 and echo-50x64: the issue's own
# table (measured when it was filed); http-keepalive-1: the last full run published before it
# (results.json of commit e0d0346, eploop d5f814a; echo-1x64 there: C 914, Python 17,813).
BEFORE_ISSUE_12 = {
    "eploop-c": {"echo-1x64": 896, "echo-50x64": 568, "http-keepalive-1": 1393},
    "eploop-py": {"echo-1x64": 17330, "echo-50x64": 8301, "http-keepalive-1": 21284},
}
BEFORE_SOURCE = (
    "echo: issue 12's own table, measured when it was filed; http-keepalive-1: the last full run "
    "before it (bench/results/results.json at commit e0d0346)"
)

# Issue 12's scenarios for "at or below uvloop" (its table is 64-byte echo at 50 connections,
# plus 1,000 connections and HTTP keep-alive at 50), and its large-message scenarios.
PY_VS_UVLOOP = ("echo-50x64", "echo-1000x64", "http-keepalive")
LARGE = ("echo-10x1M", "http-large-mem", "http-large-file")


def instructions_per_op(report: dict, server: str, scenario: str) -> float | None:
    """User-space instructions per operation of `server` in a callgrind scenario, if measured."""
    return (((report.get("instructions") or {}).get(server) or {}).get(scenario) or {}).get("per_op")


class Judge:
    """Collects (target, verdict, evidence) rows for one run."""

    def __init__(self, report: dict, med: dict) -> None:
        self.report, self.med, self.rows = report, med, []
        self.scenarios = [sc["name"] for sc in report["scenarios"]]
        self.small = [sc["name"] for sc in report["scenarios"]
                      if not (sc.get("large") or sc["name"].startswith("http-large"))]

    def cpu(self, server: str, scenario: str) -> float | None:
        m = self.med.get((server, scenario))
        return None if not m or "error" in m else m.get("cpu_us_per_op")

    def add(self, title: str, evidence: list[str], misses: list[str]) -> None:
        if not evidence:
            self.rows.append((title, "not measured", ""))
            return
        verdict = "met" if not misses else f"missed in {len(misses)}/{len(evidence)}: " + ", ".join(misses)
        self.rows.append((title, verdict, "; ".join(evidence)))

    def cpu_ratio(self, title: str, server: str, other: str, limit: float,
                  scenarios: tuple[str, ...] | list[str] | None = None) -> None:
        """CPU per operation of `server` at most `limit` times `other`'s, in each scenario."""
        evidence, misses = [], []
        for sc in scenarios or self.scenarios:
            a, b = self.cpu(server, sc), self.cpu(other, sc)
            if a is None or b is None:
                continue
            evidence.append(f"{sc} {a / b:.2f}")
            if a / b > limit:
                misses.append(sc)
        self.add(title, evidence, misses)

    def cpu_geomean(self, title: str, server: str, other: str, limit: float) -> None:
        """The geometric mean of the CPU ratios over the scenarios every server runs."""
        logs = []
        for sc in self.small:
            a, b = self.cpu(server, sc), self.cpu(other, sc)
            if a is None or b is None:
                self.rows.append((title, "not measured", f"{sc} missing"))
                return
            logs.append(math.log(a / b))
        if not logs:
            self.rows.append((title, "not measured", ""))
            return
        g = math.exp(sum(logs) / len(logs))
        self.rows.append((title, "met" if g <= limit else "missed", f"{g:.3f}× over {len(logs)} scenarios"))

    def per_op(self, server: str, scenario: str) -> float | None:
        return instructions_per_op(self.report, server, scenario)

    def instr_ratio(self, title: str, server: str, other: str, limit: float,
                    scenarios: tuple[str, ...] | None = None) -> None:
        evidence, misses = [], []
        names = scenarios or tuple(sc["name"] for sc in self.report.get("callgrind_scenarios") or [])
        for sc in names:
            a, b = self.per_op(server, sc), self.per_op(other, sc)
            if not a or not b:
                continue
            evidence.append(f"{sc} {a:,.0f} vs {b:,.0f} ({a / b:.2f})")
            if a / b > limit:
                misses.append(sc)
        self.add(title + " (instructions, callgrind)", evidence, misses)

    def instr_at_most(self, title: str, server: str, limits: dict[str, int]) -> None:
        evidence, misses = [], []
        for sc, limit in limits.items():
            a = self.per_op(server, sc)
            if not a:
                continue
            evidence.append(f"{sc} {a:,.0f} (≤ {limit})")
            if a > limit:
                misses.append(sc)
        self.add(title, evidence, misses)

    def idle_at_most(self, server: str, limit: int) -> None:
        title = f"{server} idle memory ≤ {limit} B per connection"
        res = (self.report.get("idle") or {}).get(server)
        if not res or "error" in res:
            self.rows.append((title, "not measured", res.get("error", "") if res else ""))
            return
        b = res["bytes_per_conn"]
        self.rows.append((title, "met" if b <= limit else "missed", f"{b:.0f} B"))


def issue12_rows(report: dict, med: dict) -> list[tuple[str, str, str]]:
    """Issue 12 (performance): C at the hand-written floor, Python at uvloop's speed."""
    j = Judge(report, med)
    j.cpu_geomean("eploop-c CPU/op: geometric mean within 2 % of c-epoll", "eploop-c", REFERENCE, 1.02)
    j.cpu_ratio("eploop-c CPU/op: no scenario above 1.05× c-epoll", "eploop-c", REFERENCE, 1.05)
    j.instr_at_most("eploop-c instructions per echo ≤ 400 (1 conn) and ≤ 300 (50 conns)", "eploop-c",
                    {"echo-1x64": 400, "echo-50x64": 300})
    j.idle_at_most("eploop-c", 250)
    j.cpu_ratio("eploop-py CPU/op at or below uvloop (echo 50 and 1,000 conns, HTTP keep-alive)",
                "eploop-py", "uvloop", 1.0, PY_VS_UVLOOP)
    j.cpu_ratio("eploop-py CPU/op at or below py-select-epoll in every scenario", "eploop-py",
                "py-select-epoll", 1.0)
    j.instr_ratio("eploop-py at or below uvloop at 50 conns", "eploop-py", "uvloop", 1.0, ("echo-50x64",))
    j.instr_ratio("eploop-py at or below py-select-epoll at 1 conn", "eploop-py", "py-select-epoll", 1.0,
                  ("echo-1x64",))
    j.idle_at_most("eploop-py", 512)
    j.cpu_ratio("eploop-py CPU/op at most uvloop's with 1 MiB messages", "eploop-py", "uvloop", 1.0, LARGE)
    return j.rows


def issue4_rows(report: dict, med: dict) -> list[tuple[str, str, str]]:
    """Issue 4 (the first benchmark): eploop against libuv, libevent, asyncio and the scripts."""
    j = Judge(report, med)
    j.cpu_ratio("eploop-c CPU/op within 5 % of c-epoll", "eploop-c", REFERENCE, 1.05)
    j.cpu_ratio("eploop-c CPU/op at or below libuv", "eploop-c", "libuv", 1.0)
    j.cpu_ratio("eploop-c CPU/op clearly below libevent (≤ 0.95×)", "eploop-c", "libevent", 0.95)
    j.cpu_ratio("eploop-py CPU/op at or below uvloop", "eploop-py", "uvloop", 1.0)
    j.cpu_ratio("eploop-py CPU/op at or below py-select-epoll", "eploop-py", "py-select-epoll", 1.0)
    j.cpu_ratio("eploop-py CPU/op at most half of asyncio", "eploop-py", "asyncio", 0.5)
    j.cpu_ratio("eploop-py CPU/op well ahead of py-seed-style (≤ 0.8×)", "eploop-py", "py-seed-style", 0.8)
    j.instr_ratio("eploop-c at or below libuv", "eploop-c", "libuv", 1.0)
    j.instr_ratio("eploop-py at or below uvloop", "eploop-py", "uvloop", 1.0)
    j.instr_ratio("eploop-py at or below py-select-epoll", "eploop-py", "py-select-epoll", 1.0)
    j.instr_ratio("eploop-py at most half of asyncio", "eploop-py", "asyncio", 0.5)
    j.instr_ratio("eploop-py well ahead of py-seed-style (≤ 0.8×)", "eploop-py", "py-seed-style", 0.8)
    j.idle_at_most("eploop-c", 300)
    j.idle_at_most("eploop-py", 1024)
    return j.rows


def before_after_lines(report: dict) -> list[str]:
    """RESULTS.md's table of instructions per operation before issue 12 and in this run."""
    names = [sc["name"] for sc in report.get("callgrind_scenarios") or []]
    if not report.get("instructions") or not names:
        return []
    lines = ["", "### Before and after issue 12", "",
             f"Instructions per operation before the issue's work ({BEFORE_SOURCE}) and in this run.", "",
             "| server | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for server, before in BEFORE_ISSUE_12.items():
        cells = []
        for sc in names:
            now = instructions_per_op(report, server, sc)
            was = before.get(sc)
            if now and was:
                cells.append(f"{was:,} → {now:,.0f} ({now / was - 1:+.0%})")
            else:
                cells.append("–")
        lines.append(f"| {server} | " + " | ".join(cells) + " |")
    return lines
