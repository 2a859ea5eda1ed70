"""Turns a results.json (written by runner.py) into RESULTS.md and chart.svg.

    python bench/report.py [bench/results/results.json]   # re-renders without re-measuring
"""

from __future__ import annotations

import json
import math
import statistics
import sys
from pathlib import Path

import targets

REFERENCE = targets.REFERENCE  # (the server every ratio is to; the targets judge against it too)
LARGE_RESPONSE_BYTES = (1 << 20) + 84  # the large scenarios' response: 1 MiB body, 84-byte header
LARGE_MESSAGE_BYTES = 1 << 20  # echo-10x1M's message


def is_large(sc: dict) -> bool:
    """A 1 MiB scenario (results from before the flag was recorded: the HTTP ones by name)."""
    return bool(sc.get("large")) or sc["name"].startswith("http-large")


def medians(report: dict) -> dict:
    """(server, scenario) -> {metric: median} over the rounds that succeeded, or {"error": ...}."""
    out = {}
    for key, runs in report["runs"].items():
        server, scenario = key.split("|")
        good = [r for r in runs if "error" not in r and r.get("cpu_us_per_op")]
        if len(good) < len(runs):
            errors = [r["error"] for r in runs if "error" in r]
            out[(server, scenario)] = {"error": errors[0] if errors else "no operations"}
            continue
        m = {}
        for metric in ("ops_per_s", "cpu_us_per_op", "user_us_per_op", "mib_per_s", "p50_us", "p99_us"):
            values = [r[metric] for r in good if r.get(metric) is not None]
            m[metric] = statistics.median(values) if values else None
        m["cpu_us_per_op_all"] = [round(r["cpu_us_per_op"], 3) for r in good]
        out[(server, scenario)] = m
    return out


def fmt_num(v: float | None, digits: int = 2) -> str:
    if v is None:
        return "–"
    if v >= 100_000:
        return f"{v / 1000:.0f}k"
    if v >= 1000:
        return f"{v:.0f}"
    if v >= 100:
        return f"{v:.0f}"
    return f"{v:.{digits}f}"


def ratio(m: dict, ref: dict, metric: str) -> float | None:
    a, b = m.get(metric), ref.get(metric) if ref else None
    if a is None or not b:
        return None
    return a / b


def cell(med: dict, server: str, scenario: str, metric: str, digits: int = 2) -> str:
    m = med.get((server, scenario))
    if m is None:
        return "–"
    if "error" in m:
        return "error"
    r = ratio(m, med.get((REFERENCE, scenario)), metric)
    value = fmt_num(m.get(metric), digits)
    return f"{value} ({r:.2f}×)" if r is not None else value


def write_markdown(report: dict, med: dict, out_dir: Path) -> None:
    servers = [s for s in report["servers"] if not s["missing"]]
    names = [s["name"] for s in servers]
    scenarios = report["scenarios"]
    mach = report["machine"]
    lines = [
        "# eploop benchmark results",
        "",
        f"Run {report['date']} with `{report['command']}` "
        f"({report['rounds']} round(s), {report['duration_s']} s measured per run after "
        f"{report['warmup_s']} s warm-up, {report['elapsed_s']} s in all).",
        "",
        "## Machine",
        "",
        f"- CPU: {mach['cpu']}, {mach['cpus']} CPUs (hypervisor: {mach['hypervisor']}), memory {mach['memory']}",
        f"- OS: {mach['os']}, kernel {mach['kernel']}",
        f"- gcc: {mach['gcc']}; Python {mach['python']}; uvloop {mach['uvloop']}",
        f"- Debian packages: libuv1-dev {mach['libuv']}, libevent-dev {mach['libevent']}, wrk {mach['wrk']}",
        f"- eploop {mach['eploop_version']} (commit {mach['eploop']})",
        f"- load average when the run started: {mach.get('loadavg_at_start', '?')} "
        "(the machine is shared; CPU per operation is robust to that, throughput and latency less so)",
        "",
        "## Method",
        "",
        "- Every server is single-threaded and runs pinned to CPU 1 (`taskset`); the load generator "
        "(`bench/loadgen.c` for echo, `wrk -t1` for HTTP) runs pinned to CPU 0.",
        "- Before measuring, each server passes the same behaviour checks (`bench/checks.py`): "
        "byte-exact echo of 4 MiB of random binary data, 200 ping-pongs, 50 interleaved connections, "
        "half-close (data then FIN is echoed, then the server closes); HTTP: 20 keep-alive requests, "
        "32 pipelined requests (16 in one write, 16 split at odd places), a request sent byte by byte, "
        "HTTP/1.0 answer-then-close. The load generator also checks every echoed byte, and wrk "
        "errors fail a run. A server that fails is not measured.",
        "- All servers run at once (idle ones cost nothing); for each round, for each scenario, "
        "each server is measured in turn (A B C, A B C), so drift hits all alike. Figures are "
        "medians over the rounds.",
        "- **Server CPU per operation** = server utime+stime (from `/proc/<pid>/stat`) over the "
        "measured window / operations completed. On 2 cores the load generator saturates its own "
        "core first, so throughput flattens for the fast servers; CPU per operation is the figure "
        "that separates them. Ratios in parentheses are to the hand-written C epoll server "
        f"(`{REFERENCE}`, the practical limit).",
        "- Idle memory: a fresh echo server, one round trip, then "
        f"{report['idle_conns']:,} connections that each did one 64-byte round trip and stay "
        "open; (VmRSS after − VmRSS before) / connections, 1 s after the last one. Client in a "
        "separate process; both raise RLIMIT_NOFILE to the hard limit. Kernel socket memory is "
        "not in RSS.",
        "",
        "## Servers",
        "",
        "| server | language | what |",
        "|---|---|---|",
    ]
    for s in report["servers"]:
        what = s["note"] + (f" — **not run: {s['missing']}**" if s["missing"] else "")
        lines.append(f"| {s['name']} | {s['language']} | {what} |")

    check_modes = ("echo", "http-keepalive", "http-close", "http-large-mem", "http-large-file")
    lines += ["", "## Behaviour checks", "", "| server | " + " | ".join(check_modes) + " |",
              "|---|" + "---|" * len(check_modes)]
    measured = {key.split("|")[0] + "|" + key.split("|")[1] for key in report["runs"]}
    for s in servers:
        row = [s["name"]]
        for mode in check_modes:
            if mode in s["failures"]:
                row.append("FAIL: " + "; ".join(s["failures"][mode])[:200])
            elif mode.startswith("http-large") and f"{s['name']}|{mode}" not in measured:
                row.append("–")
            else:
                row.append("pass")
        lines.append("| " + " | ".join(row) + " |")

    def geomean_ratio(server: str, names_: list[str]) -> str:
        logs = []
        for sc in names_:
            m, ref = med.get((server, sc)), med.get((REFERENCE, sc))
            if not m or "error" in m or not ref or "error" in ref:
                return "–"
            logs.append(math.log(m["cpu_us_per_op"] / ref["cpu_us_per_op"]))
        return f"{math.exp(sum(logs) / len(logs)):.2f}×" if logs else "–"

    # The 1 MiB scenarios have their own table (not every server implements the HTTP ones).
    sc_names = [sc["name"] for sc in scenarios if not is_large(sc)]
    echo_names = [n for n in sc_names if n.startswith("echo")]
    http_names = [n for n in sc_names if n.startswith("http")]
    idle_all = report.get("idle", {})
    instr_all = report.get("instructions") or {}
    lines += ["", "## Summary", "",
              "Server CPU time per operation as a ratio to c-epoll, geometric mean over the scenarios "
              "(details below); idle memory; user-space instructions per echo (callgrind).", "",
              "| server | all scenarios | echo | HTTP | bytes per idle connection | instructions per echo |",
              "|---|---|---|---|---|---|"]
    for n in names:
        idle_n = idle_all.get(n, {})
        idle_cell = f"{idle_n['bytes_per_conn']:.0f}" if idle_n and "error" not in idle_n else "–"
        ins = (instr_all.get(n) or {}).get("echo-1x64") or {}
        ins_cell = f"{ins['per_op']:,.0f}" if ins.get("per_op") else "–"
        lines.append(f"| {n} | {geomean_ratio(n, sc_names)} | {geomean_ratio(n, echo_names)} | "
                     f"{geomean_ratio(n, http_names)} | {idle_cell} | {ins_cell} |")

    def table(title: str, metric: str, digits: int, intro: str) -> None:
        nonlocal lines
        lines += ["", f"## {title}", "", intro, "",
                  "| server | " + " | ".join(sc["name"] for sc in scenarios) + " |",
                  "|---|" + "---|" * len(scenarios)]
        for n in names:
            lines.append(f"| {n} | " + " | ".join(cell(med, n, sc["name"], metric, digits) for sc in scenarios) + " |")

    table("Server CPU time per operation (µs)", "cpu_us_per_op", 2,
          "Lower is better. Operation = one echoed message, one HTTP response, or one "
          "connection (connect, echo, close) for echo-connreq.")
    lines += ["", "## Round-to-round spread of CPU per operation", "",
              "(max − min) / median over the rounds, per server and scenario: how far a single "
              "figure above can be trusted on this (shared) machine.", "",
              "| server | " + " | ".join(sc["name"] for sc in scenarios) + " |",
              "|---|" + "---|" * len(scenarios)]
    for n in names:
        cells = []
        for sc in scenarios:
            m = med.get((n, sc["name"]))
            vals = m.get("cpu_us_per_op_all") if m and "error" not in m else None
            if not vals or len(vals) < 2:
                cells.append("–")
            else:
                cells.append(f"{(max(vals) - min(vals)) / statistics.median(vals) * 100:.0f} %")
        lines.append(f"| {n} | " + " | ".join(cells) + " |")

    table("Throughput (operations per second)", "ops_per_s", 0,
          "Higher is better; limited by the load generator's core for the fast servers.")
    table("Latency p50 (µs)", "p50_us", 0, "As seen by the load generator.")
    table("Latency p99 (µs)", "p99_us", 0, "As seen by the load generator (wrk gives no p99 for "
          "pipelined batches: –).")

    large = [sc["name"] for sc in scenarios if is_large(sc)]
    if large:
        lines += ["", "## Large messages (1 MiB)", "",
                  "`echo-10x1M`: 10 connections, each echoing 1 MiB messages (an operation is one "
                  "message there and back; MiB/s counts one direction). "
                  "HTTP/1.1 keep-alive, 10 connections, every response a 1 MiB body: from memory "
                  "(`http-large-mem`: eploop `ep_sendv`/`send_many` of header and body, libuv one `uv_write` "
                  "of two buffers, c-epoll `sendmsg` of header and body, asyncio/uvloop `writelines`) or from a "
                  "file (`http-large-file`: eploop `ep_send_file`/`send_file`, c-epoll `sendfile`, "
                  "asyncio `loop.sendfile`; libuv `uv_fs_sendfile`, which on Linux never calls sendfile(2) "
                  "into a socket but copies 8 KiB at a time with pread + write on its thread pool; uvloop "
                  "has no `loop.sendfile` and reads the file per response). Server CPU per request "
                  "(ratio to c-epoll) and throughput: requests/s and MiB/s (every byte wrk read, headers "
                  "included; a response is 1 MiB + 84 B).", "",
                  "| server | " + " | ".join(f"{n}: CPU µs/op | {n}: ops/s | {n}: MiB/s" for n in large) + " |",
                  "|---|" + "---|---|---|" * len(large)]
        for n in names:
            cells = []
            for sc in large:
                m = med.get((n, sc))
                if not m or "error" in m:
                    cells += ["error" if m else "–", "–", "–"]
                    continue
                mib = m.get("mib_per_s")
                if mib is None and m.get("ops_per_s"):  # loadgen's messages, or results recorded
                    size = LARGE_MESSAGE_BYTES if sc.startswith("echo") else LARGE_RESPONSE_BYTES
                    mib = m["ops_per_s"] * size / (1 << 20)  # before wrk's bytes were kept
                cells += [cell(med, n, sc, "cpu_us_per_op", 0), fmt_num(m.get("ops_per_s"), 0), fmt_num(mib, 0)]
            lines.append(f"| {n} | " + " | ".join(cells) + " |")

    lines += ["", "Scenarios:", ""]
    for sc in scenarios:
        lines.append(f"- `{sc['name']}`: {sc['title']}")

    idle = report.get("idle", {})
    if idle:
        ref = idle.get(REFERENCE, {})
        lines += ["", f"## Idle connections ({report['idle_conns']:,})", "",
                  "| server | RSS before (KiB) | RSS with connections (KiB) | bytes per connection |",
                  "|---|---|---|---|"]
        for n in names:
            res = idle.get(n)
            if not res:
                continue
            if "error" in res:
                lines.append(f"| {n} | error: {res['error'][:120]} | | |")
                continue
            lines.append(f"| {n} | {res['rss_before_kb']:,} | {res['rss_after_1s_kb']:,} | "
                         f"{res['bytes_per_conn']:.0f} |")

    instr = report.get("instructions") or {}
    if instr:
        cg_scenarios = report.get("callgrind_scenarios", [])
        ref = instr.get(REFERENCE, {})
        lines += ["", "## User-space instructions per operation (callgrind)", "",
                  "Counted by `valgrind --tool=callgrind` while the load runs, on one connection (every "
                  "server handles one event at a time) and on 50 (a wakeup brings several): repeatable "
                  "whatever else the machine does, but blind to the kernel. Reproduce with "
                  "`bench/profile_server.py SERVER SCENARIO`.", "",
                  "| server | " + " | ".join(f"{sc['name']} ({sc['title']})" for sc in cg_scenarios) + " |",
                  "|---|" + "---|" * len(cg_scenarios)]
        for n in names:
            if n not in instr:
                continue
            cells = []
            for sc in cg_scenarios:
                r = instr[n].get(sc["name"])
                if not r or "error" in r or not r.get("per_op"):
                    cells.append("error" if r else "–")
                    continue
                base = ref.get(sc["name"], {}).get("per_op")
                cells.append(f"{r['per_op']:,.0f}" + (f" ({r['per_op'] / base:.1f}×)" if base else ""))
            lines.append(f"| {n} | " + " | ".join(cells) + " |")

        lines += targets.before_after_lines(report)

    for title, rows in (("Targets (issue 12, performance)", targets.issue12_rows(report, med)),
                        ("Earlier targets (issue 4)", targets.issue4_rows(report, med))):
        lines += ["", f"## {title}", "", "| target | verdict | evidence (ratio per scenario) |", "|---|---|---|"]
        lines += [f"| {target} | {verdict} | {evidence} |" for target, verdict, evidence in rows]

    errors = [(k, m["error"]) for k, m in med.items() if "error" in m]
    if errors:
        lines += ["", "## Runs that failed", ""]
        for (server, scenario), err in errors:
            lines.append(f"- {server} / {scenario}: {err[:300]}")
    lines += ["", "![chart](chart.svg)", "", "<details><summary>lscpu</summary>", "", "```",
              mach.get("lscpu", ""), "```", "", "</details>", ""]
    (out_dir / "RESULTS.md").write_text("\n".join(lines))


def write_chart(report: dict, med: dict, out_dir: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    servers = [s["name"] for s in report["servers"] if not s["missing"]]
    scenarios = [sc["name"] for sc in report["scenarios"]]
    colors = {"eploop-c": "#d62728", "c-epoll": "#1f1f1f", "libuv": "#1f77b4", "libevent": "#17becf",
              "eploop-py": "#ff7f0e", "py-select-epoll": "#2ca02c", "py-seed-style": "#8c564b",
              "asyncio": "#9467bd", "uvloop": "#e377c2", "eploop-c-example": "#ff9896",
              "eploop-py-example": "#ffbb78"}
    fig, (ax_c, ax_py, ax_mem) = plt.subplots(3, 1, figsize=(14, 13),
                                              gridspec_kw={"height_ratios": [2, 2, 1.3]})
    languages = {s["name"]: s["language"] for s in report["servers"]}
    clip = 3.0
    for ax, language in ((ax_c, "C"), (ax_py, "Python")):
        group = [n for n in servers if languages[n] == language]
        width = 0.8 / max(1, len(group))
        for i, server in enumerate(group):
            for j, sc in enumerate(scenarios):
                m, ref = med.get((server, sc)), med.get((REFERENCE, sc))
                if not m or "error" in m or not ref or "error" in ref or not m.get("cpu_us_per_op"):
                    continue
                r = m["cpu_us_per_op"] / ref["cpu_us_per_op"]
                x = j + (i - (len(group) - 1) / 2) * width
                ax.bar(x, min(r, clip), width, color=colors.get(server),
                       label=server if j == 0 or not ax.get_legend_handles_labels()[1].count(server) else None)
                if r > clip:
                    ax.text(x, clip + 0.03, f"{r:.1f}×", ha="center", va="bottom", fontsize=7)
        handles, labels = ax.get_legend_handles_labels()
        seen = {}
        for h, l in zip(handles, labels):
            seen.setdefault(l, h)
        ax.legend(seen.values(), seen.keys(), ncol=6, fontsize=8, loc="upper left")
        ax.axhline(1.0, color="black", linewidth=0.8)
        ax.set_ylim(0, clip + 0.4)
        ax.set_xticks(range(len(scenarios)))
        ax.set_xticklabels(scenarios, rotation=15, ha="right", fontsize=8)
        ax.set_ylabel("server CPU per operation\n÷ c-epoll (lower is better)")
        ax.grid(axis="y", alpha=0.3)
        ax.set_title(f"{language} servers: server CPU time per operation relative to the hand-written C "
                     f"epoll server (median of {report['rounds']} round(s))", fontsize=10)
    fig.suptitle(f"eploop benchmark — {report['machine']['cpu']} ×{report['machine']['cpus']}, "
                 f"kernel {report['machine']['kernel']}, {report['date'][:10]}")

    idle = report.get("idle", {})
    names = [s for s in servers if s in idle and "error" not in idle[s]]
    ax_mem.bar(names, [idle[s]["bytes_per_conn"] for s in names], color=[colors.get(s) for s in names])
    ax_mem.set_ylabel("bytes per idle connection")
    ax_mem.set_title(f"server RSS per idle connection ({report['idle_conns']:,} connections)", fontsize=10)
    for k, s in enumerate(names):
        ax_mem.text(k, idle[s]["bytes_per_conn"], f"{idle[s]['bytes_per_conn']:.0f}", ha="center",
                    va="bottom", fontsize=8)
    ax_mem.tick_params(axis="x", labelsize=8)
    fig.tight_layout()
    fig.savefig(out_dir / "chart.svg")
    fig.savefig(out_dir / "chart.png", dpi=80)
    plt.close(fig)


def write_all(report: dict, out_dir: Path) -> None:
    med = medians(report)
    write_markdown(report, med, out_dir)
    write_chart(report, med, out_dir)


if __name__ == "__main__":
    path = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).parent / "results" / "results.json")
    write_all(json.loads(path.read_text()), path.parent)
