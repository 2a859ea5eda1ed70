"""Runs the eploop benchmark: behaviour checks, load runs in alternating rounds, idle memory,
then writes bench/results/RESULTS.md, results.json and chart.svg. Started by bench/run.

    runner.py [--quick] [--rounds N] [--duration SEC] [--only NAME,NAME] [--scenarios NAME,...]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(BENCH))
import checks  # noqa: E402

BUILD = ROOT / "target" / "bench"
RESULTS = BENCH / "results"
RAW = RESULTS / "raw"
SERVERS_DIR = BENCH / "servers"
BENCH_PY = ROOT / "target" / "bench-venv" / "bin" / "python"
EPLOOP_PY = BENCH_PY  # bench/run installs python-bindings into the bench venv (a private copy)
PRIVATE_LIB = BUILD / "lib"  # bench/run's copy of libeploop.so, used by the eploop C examples too
EPLOOP_C = ROOT / "c-examples" / "build"
EPLOOP_PY_EXAMPLES = ROOT / "python-bindings" / "examples"
WRK_SCRIPT = BENCH / "wrk" / "report.lua"

SERVER_CPU = "1"   # core the servers run on
CLIENT_CPU = "0"   # core loadgen / wrk run on

from catalog import (  # noqa: E402  (the servers and scenarios measured)
    CALLGRIND_SCENARIOS,
    CHECKS_FOR,
    ECHO,
    HTTP_CLOSE,
    HTTP_KA,
    LARGE_MODES,
    REFERENCE,
    SCENARIOS,
    Scenario,
    Server,
    all_servers,
    make_large_body,
)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ------------------------------------------------------------------ processes

class Running:
    """A server process pinned to the server core; stopped with SIGTERM (then SIGKILL)."""

    def __init__(self, server: Server, mode: str):
        argv = [a.replace("{port}", "0") for a in server.commands[mode]]
        RAW.mkdir(parents=True, exist_ok=True)
        self.stderr_path = RAW / f"stderr-{server.name}-{mode}.txt"
        self.stderr = open(self.stderr_path, "w")
        env = dict(os.environ, LD_LIBRARY_PATH=str(PRIVATE_LIB))
        self.proc = subprocess.Popen(
            ["taskset", "-c", SERVER_CPU, *argv], stdout=subprocess.PIPE, stderr=self.stderr,
            text=True, cwd=str(ROOT), env=env)
        self.port = self._read_port()

    def _read_port(self) -> int:
        import selectors
        sel = selectors.DefaultSelector()
        sel.register(self.proc.stdout, selectors.EVENT_READ)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if sel.select(timeout=0.5):
                line = self.proc.stdout.readline()
                if not line:
                    break
                if line.startswith("listening "):
                    return int(line.split()[1])
        self.stop()
        raise RuntimeError(f"no 'listening <port>' line: {self.stderr_tail()}")

    def stderr_tail(self) -> str:
        return self.stderr_path.read_text(errors="replace").strip()[-300:]

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def cpu_seconds(self) -> tuple[float, float]:
        """(user+system, user) CPU seconds so far."""
        with open(f"/proc/{self.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        tick = os.sysconf("SC_CLK_TCK")
        return (int(fields[11]) + int(fields[12])) / tick, int(fields[11]) / tick

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.stderr.close()


def run_tool(argv: list[str], timeout: float) -> tuple[int, str, str]:
    try:
        p = subprocess.run(["taskset", "-c", CLIENT_CPU, *argv], capture_output=True, text=True,
                           timeout=timeout)
        return p.returncode, p.stdout, p.stderr
    except subprocess.TimeoutExpired as e:
        return -1, e.stdout or "", f"timed out after {timeout} s"


# -- one server under a profiler (callgrind here, strace in profile_server.py): started alone,
# loaded unpinned, instrumented only while the load runs.

def start_server(argv: list[str]) -> tuple[subprocess.Popen, int]:
    env = dict(os.environ, LD_LIBRARY_PATH=str(PRIVATE_LIB))
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            cwd=str(ROOT), env=env)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        if line.startswith("listening "):
            return proc, int(line.split()[1])
    proc.kill()
    raise SystemExit("server did not start")


def profile_load(sc: Scenario, port: int, seconds: float, cpu: int | None = None) -> int:
    """Runs the scenario's load (unpinned, or pinned to `cpu`; no CPU sampling); returns
    operations completed."""
    a = sc.args
    pin = [] if cpu is None else ["taskset", "-c", str(cpu)]
    if sc.tool == "loadgen":
        argv = [*pin, str(BUILD / "loadgen"), a["kind"], "--port", str(port), "--conns", str(a["conns"]),
                "--size", str(a["size"]), "--duration", str(seconds), "--warmup", "0"]
        out = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 120).stdout
        return last_json(out)["ops"]
    argv = [*pin, "wrk", "-t1", f"-c{a['conns']}", f"-d{max(1, round(seconds))}s", "--timeout", "10s",
            "-s", str(WRK_SCRIPT), f"http://127.0.0.1:{port}/", "--", str(a["depth"])]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 120).stdout
    return last_json(out)["requests"]


def stop_server(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


def callgrind_run(argv: list[str], sc: Scenario, seconds: float, out_file: Path) -> tuple[int, int]:
    """Runs the server under callgrind with instrumentation on only during the load.
    Returns (operations, user-space instructions)."""
    proc, port = start_server(["valgrind", "--tool=callgrind", "--instr-atstart=no",
                        f"--callgrind-out-file={out_file}", *argv])
    try:
        subprocess.run(["callgrind_control", "-i", "on", str(proc.pid)], capture_output=True, timeout=60)
        ops = profile_load(sc, port, seconds)
        subprocess.run(["callgrind_control", "-i", "off", str(proc.pid)], capture_output=True, timeout=60)
    finally:
        stop_server(proc)
    total = 0
    for line in out_file.read_text(errors="replace").splitlines():
        if line.startswith(("summary:", "totals:")):
            total = int(line.split()[1])
    return ops, total


def last_json(text: str) -> dict | None:
    for line in reversed(text.strip().splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                return json.loads(line)
            except json.JSONDecodeError:
                return None
    return None


def measure(server: Running, sc: Scenario, duration: float, warmup: float) -> dict:
    """One load run; returns ops, ops_per_s, cpu_us_per_op, p50_us, p99_us (or error)."""
    if sc.tool == "loadgen":
        a = sc.args
        argv = [str(BUILD / "loadgen"), a["kind"], "--port", str(server.port), "--conns", str(a["conns"]),
                "--size", str(a["size"]), "--duration", str(duration), "--warmup", str(warmup),
                "--pid", str(server.pid)]
        rc, out, err = run_tool(argv, duration + warmup + 60)
        res = last_json(out)
        if rc != 0 or not res:
            return {"error": (err or out).strip()[-300:] or f"exit {rc}"}
        ops, cpu, user = res["ops"], res["server_cpu_s"], res["server_user_s"]
        return {"ops": ops, "ops_per_s": res["ops_per_s"], "server_cpu_s": cpu, "server_user_s": user,
                "cpu_us_per_op": cpu / ops * 1e6 if ops else None,
                "user_us_per_op": user / ops * 1e6 if ops else None,
                "p50_us": res["p50_us"], "p99_us": res["p99_us"], "client_cpu_s": res["client_cpu_s"]}
    a = sc.args
    argv = ["wrk", "-t1", f"-c{a['conns']}", f"-d{max(1, round(duration + warmup))}s", "--timeout", "5s",
            "-s", str(WRK_SCRIPT), f"http://127.0.0.1:{server.port}/", "--", str(a["depth"])]
    cpu0, user0 = server.cpu_seconds()
    rc, out, err = run_tool(argv, duration + warmup + 60)
    cpu1, user1 = server.cpu_seconds()
    res = last_json(out)
    if rc != 0 or not res:
        return {"error": (err or out).strip()[-300:] or f"exit {rc}"}
    errors = sum(res[k] for k in res if k.startswith("errors_"))
    # wrk counts a reconnect after the server's close as a read error only when a response was
    # cut short; any error at all means a response went missing or was malformed.
    if errors:
        return {"error": "wrk reported errors: " + ", ".join(f"{k[7:]}={res[k]}" for k in res
                                                             if k.startswith("errors_") and res[k])}
    secs = res["duration_us"] / 1e6
    ops = res["requests"]
    cpu, user = cpu1 - cpu0, user1 - user0
    return {"ops": ops, "ops_per_s": ops / secs, "server_cpu_s": cpu, "server_user_s": user,
            "cpu_us_per_op": cpu / ops * 1e6 if ops else None,
            "user_us_per_op": user / ops * 1e6 if ops else None,
            "mib_per_s": res["bytes"] / secs / (1 << 20),  # every byte wrk read, headers included
            "p50_us": res["p50_us"], "p99_us": res["p99_us"] or None}


def idle_memory(server: Server, conns: int) -> dict:
    """Fresh echo server; one round trip to warm it, then `conns` idle connections."""
    running = Running(server, ECHO)
    try:
        problem = checks.echo_ping_pong(running.port)
        if problem:
            return {"error": problem}
        time.sleep(0.3)
        argv = [str(BUILD / "loadgen"), "idle", "--port", str(running.port), "--conns", str(conns),
                "--size", "64", "--pid", str(running.pid)]
        rc, out, err = run_tool(argv, 180)
        res = last_json(out)
        if rc != 0 or not res:
            return {"error": (err or out).strip()[-300:] or f"exit {rc}"}
        return res
    finally:
        running.stop()


# ------------------------------------------------------------------ machine description

def sh(cmd: str) -> str:
    try:
        return subprocess.run(cmd, shell=True, capture_output=True, text=True, timeout=20).stdout.strip()
    except subprocess.TimeoutExpired:
        return ""


def machine_description() -> dict:
    lscpu = {}
    for line in sh("lscpu").splitlines():
        if ":" in line:
            k, v = line.split(":", 1)
            lscpu[k.strip()] = v.strip()
    desc = {
        "cpu": lscpu.get("Model name", "?"),
        "cpus": lscpu.get("CPU(s)", "?"),
        "hypervisor": lscpu.get("Hypervisor vendor", "none"),
        "kernel": platform.release(),
        "memory": sh("free -h | awk '/Mem:/ {print $2}'"),
        "os": sh(". /etc/os-release && echo $PRETTY_NAME"),
        "gcc": sh("gcc --version | head -1"),
        "python": sh(f"{BENCH_PY} -c 'import sys; print(sys.version.split()[0])'"),
        "libuv": sh("dpkg-query -W -f='${Version}' libuv1-dev"),
        "libevent": sh("dpkg-query -W -f='${Version}' libevent-dev"),
        "wrk": sh("dpkg-query -W -f='${Version}' wrk"),
        "uvloop": sh(f"{BENCH_PY} -c 'import uvloop; print(uvloop.__version__)'"),
        "eploop": sh(f"cd {ROOT} && git rev-parse --short HEAD 2>/dev/null") or "uncommitted",
        "eploop_version": sh(f"grep -m1 '^version' {ROOT}/Cargo.toml | cut -d'\"' -f2"),
        "loadavg_at_start": sh("cut -d' ' -f1-3 /proc/loadavg"),
        "lscpu": sh("lscpu"),
    }
    return desc


# ------------------------------------------------------------------ main

def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="1 round of short runs (~2-3 minutes)")
    ap.add_argument("--rounds", type=int, help="rounds (A B C, A B C, ...); default 3, quick 1")
    ap.add_argument("--duration", type=float, help="measured seconds per run; default 2, quick 0.5")
    ap.add_argument("--only", help="comma-separated server names")
    ap.add_argument("--scenarios", help="comma-separated scenario names")
    ap.add_argument("--idle-conns", type=int, default=10000)
    ap.add_argument("--no-idle", action="store_true")
    ap.add_argument("--callgrind", action=argparse.BooleanOptionalAction, default=None,
                    help="instructions per operation under callgrind (default: on in full mode)")
    ap.add_argument("--out", default=str(RESULTS), help="results directory")
    ap.add_argument("--checks-only", action="store_true",
                    help="only start every server and run the behaviour checks; exit 1 if any fails")
    args = ap.parse_args()
    rounds = args.rounds or (1 if args.quick else 3)
    duration = args.duration or (0.5 if args.quick else 2.0)
    warmup = 0.2 if args.quick else 0.3
    out_dir = Path(args.out)
    raw_dir = out_dir / "raw"
    raw_dir.mkdir(parents=True, exist_ok=True)

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if hard < args.idle_conns + 100:
        log(f"RLIMIT_NOFILE hard limit {hard} < {args.idle_conns + 100}: idle test uses {hard - 200}")
        args.idle_conns = max(100, hard - 200)

    servers = all_servers()
    if args.only:
        wanted = args.only.split(",")
        servers = [s for s in servers if s.name in wanted]
    scenarios = SCENARIOS
    if args.scenarios:
        wanted = args.scenarios.split(",")
        scenarios = [s for s in SCENARIOS if s.name in wanted]
    modes = sorted({sc.mode for sc in scenarios} | ({ECHO} if not args.no_idle else set()))
    if args.checks_only:
        modes = [ECHO, HTTP_KA, HTTP_CLOSE, *LARGE_MODES]
    if set(modes) & set(LARGE_MODES):
        make_large_body()

    for s in servers:
        for mode in modes:
            if mode not in s.commands:
                continue
            exe = Path(s.commands[mode][1] if s.language == "Python" else s.commands[mode][0])
            if not exe.exists():
                s.missing = f"{exe.relative_to(ROOT)} not built"
        if s.language == "Python" and s.name.startswith("eploop-py") and not s.missing:
            r = subprocess.run([s.commands[ECHO][0], "-c", "import eploop"], capture_output=True, text=True)
            if r.returncode != 0:
                s.missing = "python package eploop not importable from target/bench-venv"
    for s in servers:
        if s.missing:
            log(f"skipping {s.name}: {s.missing}")

    started = time.time()
    machine = machine_description()
    log(f"machine: {machine['cpu']} x{machine['cpus']}, kernel {machine['kernel']}")

    # -- start every server (each mode its own process) and check its behaviour
    running: dict[tuple[str, str], Running] = {}
    try:
        for s in servers:
            if s.missing:
                continue
            for mode in modes:
                if mode not in s.commands:  # (a large-response mode it does not implement)
                    continue
                try:
                    r = Running(s, mode)
                except RuntimeError as e:
                    s.failures.setdefault(mode, []).append(f"did not start: {e}")
                    log(f"FAIL {s.name} {mode}: did not start: {e}")
                    continue
                problems = checks.run_checks(r.port, CHECKS_FOR[mode])
                if not r.alive():
                    problems.append("server died during the checks")
                if problems:
                    s.failures[mode] = problems
                    r.stop()
                    log(f"FAIL {s.name} {mode}: {problems}")
                else:
                    running[(s.name, mode)] = r
            log(f"checked {s.name}: " + ("ok" if not s.failures else "FAILED " + ", ".join(s.failures)))

        if args.checks_only:
            failed = [s.name for s in servers if s.failures or s.missing]
            passed = sum(1 for s in servers if not s.failures and not s.missing)
            print(f"{passed} passed, {len(failed)} failed" + (f": {', '.join(failed)}" if failed else ""))
            return 1 if failed else 0

        # -- load runs: for each round, for each scenario, every server in turn
        runs: dict[tuple[str, str], list[dict]] = {}
        active = [s for s in servers if not s.missing]
        total = rounds * len(scenarios) * len(active)
        done = 0
        for rnd in range(rounds):
            for sc in scenarios:
                for s in active:
                    done += 1
                    r = running.get((s.name, sc.mode))
                    if r is None:
                        continue
                    if not r.alive():
                        runs.setdefault((s.name, sc.name), []).append(
                            {"error": f"server died (exit {r.proc.returncode}): {r.stderr_tail()}"})
                        continue
                    res = measure(r, sc, duration, warmup)
                    res["round"] = rnd
                    runs.setdefault((s.name, sc.name), []).append(res)
                    shown = (f"{res['ops_per_s']:>10.0f} ops/s {res['cpu_us_per_op']:7.2f} us/op"
                             if "error" not in res else "ERROR " + res["error"][:120])
                    log(f"[{done}/{total}] round {rnd + 1} {sc.name:15s} {s.name:16s} {shown}")
                    time.sleep(0.2)
    finally:
        for r in running.values():
            r.stop()

    # -- idle connections, one fresh server at a time
    idle: dict[str, dict] = {}
    if not args.no_idle:
        for s in servers:
            if s.missing or ECHO in s.failures:
                continue
            idle[s.name] = idle_memory(s, args.idle_conns)
            res = idle[s.name]
            log(f"idle {s.name}: " + (f"{res['bytes_per_conn']:.0f} B/conn" if "error" not in res
                                     else "ERROR " + res["error"]))

    # -- user-space instructions per operation (callgrind), one server at a time
    instructions: dict[str, dict] = {}
    use_callgrind = args.callgrind if args.callgrind is not None else not args.quick
    if use_callgrind and shutil.which("valgrind"):
        cg_dir = raw_dir / "callgrind"
        cg_dir.mkdir(exist_ok=True)
        for s in servers:
            if s.missing:
                continue
            for sc in CALLGRIND_SCENARIOS:
                if sc.mode in s.failures:
                    continue
                argv = [a.replace("{port}", "0") for a in s.commands[sc.mode]]
                try:
                    ops, total = callgrind_run(argv, sc, 1.5, cg_dir / f"{s.name}-{sc.name}.out")
                except Exception as e:  # noqa: BLE001 - recorded in the report
                    instructions.setdefault(s.name, {})[sc.name] = {"error": str(e)[:200]}
                    continue
                instructions.setdefault(s.name, {})[sc.name] = {"ops": ops, "instructions": total,
                                                                "per_op": total / ops if ops else None}
                log(f"callgrind {s.name} {sc.name}: {total / max(ops, 1):,.0f} instructions/op")

    elapsed = time.time() - started
    report = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "command": "bench/run " + " ".join(sys.argv[1:]),
        "rounds": rounds, "duration_s": duration, "warmup_s": warmup, "elapsed_s": round(elapsed),
        "machine": machine,
        "servers": [{"name": s.name, "language": s.language, "note": s.note, "missing": s.missing,
                     "failures": s.failures} for s in servers],
        "scenarios": [{"name": sc.name, "title": sc.title, "large": sc.large} for sc in scenarios],
        "runs": {f"{k[0]}|{k[1]}": v for k, v in runs.items()},
        "idle": idle, "idle_conns": args.idle_conns,
        "instructions": instructions,
        "callgrind_scenarios": [{"name": sc.name, "title": sc.title} for sc in CALLGRIND_SCENARIOS],
    }
    stamp = time.strftime("%Y%m%d-%H%M%S")
    (raw_dir / f"run-{stamp}.json").write_text(json.dumps(report, indent=1))
    (out_dir / "results.json").write_text(json.dumps(report, indent=1))
    import report as report_mod
    report_mod.write_all(report, out_dir)
    log(f"done in {elapsed:.0f} s: {out_dir / 'RESULTS.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
