"""Comparative benchmark suite: Cove against the baselines a user would otherwise pick.

    python3 bench/suite/run.py [--rounds N] [--quick] [--million] [--contenders LIST]

Runs on the system python with the standard library only. It makes the baselines'
venv (target/bench-venv) and the data (target/bench-data/{full,quick}), then runs
every scenario's contenders interleaved: in each round each contender runs once, in
an order rotated from round to round, so slow drifts of the machine (other work,
thermal, caches) spread over all contenders instead of favouring one. It writes
bench/results/suite.md (tables and targets) and bench/results/suite.json (raw numbers),
both with the machine they ran on.

Baselines are timed as whole processes (interpreter start, imports, Ray start-up and
shutdown included), as a user would wait for them. Cove's contenders live in
cove_contender.py; one that raises NotImplementedError is reported as not run.
"""

import argparse
import datetime
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
import traceback

SUITE_DIR = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(os.path.dirname(SUITE_DIR))
sys.path.insert(0, SUITE_DIR)

import cove_contender  # noqa: E402
import venv as suite_venv  # noqa: E402  (bench/suite/venv.py, first on sys.path)

TARGET = os.path.join(REPO_ROOT, "target")
WORK_ROOT = os.path.join(TARGET, "bench-work")
RESULTS_DIR = os.path.join(REPO_ROOT, "bench", "results")
PLAIN_LOOP = os.path.join(SUITE_DIR, "plain_loop.py")
RAY_DATA = os.path.join(SUITE_DIR, "ray_data.py")
MAKE_DATA = os.path.join(SUITE_DIR, "make_data.py")
VENV_PACKAGES = ["numpy", "pandas", "pyarrow", "onnx", "onnxruntime", "ray"]

SIZES = {
    "full": {"tabular_files": 200, "tabular_rows": 5_000, "tiny_files": 20_000, "million_files": 1_000_000},
    "quick": {"tabular_files": 20, "tabular_rows": 5_000, "tiny_files": 2_000, "million_files": 10_000},
}

PLAIN, RAY, COVE = "plain-loop", "ray-data", "cove"
# Cove on the tiny files at a large mini-batch size (the default is 10).
COVE_LARGE, LARGE_BATCH = "cove-mb200", 200


class Context:
    """What one contender run gets: the scenario's data, the model, and a fresh work folder."""

    def __init__(self, python: str, data_root: str, scenario: dict, work: str):
        self.python = python
        self.model = os.path.join(data_root, "model", "classifier.onnx")
        self.data_dir = os.path.join(data_root, scenario["data"]) if scenario.get("data") else ""
        self.expected_rows = scenario.get("rows")
        self.work = work


# ---------------------------------------------------------------- baselines


def run_timed(cmd: list, work: str) -> tuple:
    """Runs one baseline process; returns (wall seconds, its JSON summary line).

    stderr goes to a log file in the work folder (Ray's is long); a failure raises
    with its tail so the report says why.
    """
    log_path = os.path.join(work, "stderr.log")
    with open(log_path, "w") as log:
        start = time.perf_counter()
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=log, text=True)
        wall = time.perf_counter() - start
    if proc.returncode != 0:
        with open(log_path) as f:
            tail = f.read()[-2000:]
        raise RuntimeError(f"{os.path.basename(cmd[1])} exited {proc.returncode}: {tail}")
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    return wall, (json.loads(lines[-1]) if lines else {})


def count_lines(path: str) -> int:
    n = 0
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            n += block.count(b"\n")
    return n


def plain_loop(ctx: Context) -> dict:
    out = os.path.join(ctx.work, "predictions.csv")
    wall, summary = run_timed([ctx.python, PLAIN_LOOP, ctx.data_dir, ctx.model, out], ctx.work)
    rows = count_lines(out)
    if rows != ctx.expected_rows:
        raise RuntimeError(f"plain loop wrote {rows} lines for {ctx.expected_rows} input rows")
    return {"wall_s": wall, "rows": rows, "files": summary.get("files")}


def ray_data(ctx: Context) -> dict:
    out = os.path.join(ctx.work, "out")
    wall, summary = run_timed([ctx.python, RAY_DATA, ctx.data_dir, ctx.model, out], ctx.work)
    # write_csv gives each output file a header line.
    parts = [os.path.join(out, n) for n in os.listdir(out) if n.endswith(".csv")]
    rows = sum(count_lines(p) - 1 for p in parts)
    if rows != ctx.expected_rows:
        raise RuntimeError(f"Ray Data wrote {rows} rows for {ctx.expected_rows} input rows")
    return {"wall_s": wall, "rows": rows, "files": summary.get("files"), "output_files": len(parts)}


# ---------------------------------------------------------------- Cove


def cove(fn_name: str):
    """Wraps a cove_contender function; its own wall_s wins, the call's time is the fallback."""

    def run(ctx: Context) -> dict:
        fn = getattr(cove_contender, fn_name)
        args = {
            "tabular": (ctx.data_dir, ctx.model, ctx.work),
            "script": (ctx.data_dir, ctx.model, ctx.work),
            "tiny": (ctx.data_dir, ctx.model, ctx.work),
            "tiny_large": (ctx.data_dir, ctx.model, ctx.work, LARGE_BATCH),
            "overhead": (ctx.data_dir, ctx.work),
            "scale": (ctx.data_dir, ctx.work),
            "output": (ctx.work,),
        }[fn_name]
        start = time.perf_counter()
        result = dict(fn(*args))
        result.setdefault("wall_s", time.perf_counter() - start)
        return result

    return run


# ---------------------------------------------------------------- scenarios


def scenarios(sizes: dict, with_million: bool) -> dict:
    """The registry: each scenario's data and its contenders, in their base order."""
    t_files, t_rows, tiny = sizes["tabular_files"], sizes["tabular_rows"], sizes["tiny_files"]
    return {
        "tabular": {
            "title": f"tabular: {t_files} CSV files x {t_rows:,} rows x 32 features",
            "data": "tabular",
            "rows": t_files * t_rows,
            "files": t_files,
            "rate": "rows",
            "contenders": {PLAIN: plain_loop, RAY: ray_data, COVE: cove("tabular")},
        },
        "script": {
            "title": f"script: the {t_files} tabular files through a Python scoring script doing what the plain loop does",
            "data": "tabular",
            "rows": t_files * t_rows,
            "files": t_files,
            "rate": "rows",
            "contenders": {PLAIN: plain_loop, COVE: cove("script")},
        },
        "tiny": {
            "title": f"tiny: {tiny:,} one-row CSV files",
            "data": "tiny",
            "rows": tiny,
            "files": tiny,
            "rate": "files",
            "contenders": {PLAIN: plain_loop, RAY: ray_data, COVE: cove("tiny"), COVE_LARGE: cove("tiny_large")},
        },
        "overhead": {
            "title": f"overhead: control-plane cost of a job over the {tiny:,} tiny files",
            "data": "tiny",
            "contenders": {COVE: cove("overhead")},
        },
        "scale": {
            "title": f"scale: a job over {sizes['million_files']:,} empty files",
            "data": "million",
            "needs": None if with_million else "run with --million to make the files",
            "contenders": {COVE: cove("scale")},
        },
        "output": {
            "title": "output: assembling the output",
            "contenders": {COVE: cove("output")},
        },
    }


def fresh(path: str) -> str:
    shutil.rmtree(path, ignore_errors=True)
    os.makedirs(path)
    return path


def run_rounds(plan: dict, rounds: int, python: str, data_root: str, only: set = None) -> dict:
    """Runs all contenders interleaved; returns per scenario and contender its status and runs."""
    state = {
        s: {
            c: {"status": "ok", "detail": "", "runs": []}
            for c in sc["contenders"]
        }
        for s, sc in plan.items()
    }
    for s, sc in plan.items():
        for c in sc["contenders"]:
            if only and c not in only:
                state[s][c].update(status="not run", detail="not selected (--contenders)")
            elif sc.get("needs"):
                state[s][c].update(status="not run", detail=sc["needs"])

    # Cove's setup (which may build Cove) runs only when a Cove contender is to run.
    cove_runs = any(c in state[s] and state[s][c]["status"] == "ok" for s in plan for c in (COVE, COVE_LARGE))
    cove_setup_error = None
    try:
        if cove_runs:
            cove_contender.setup(REPO_ROOT, fresh(os.path.join(WORK_ROOT, "cove")), python, data_root)
    except NotImplementedError as e:
        cove_setup_error = ("not run", f"setup: {e}")
    except Exception as e:  # noqa: BLE001 - reported, the baselines still run
        cove_setup_error = ("failed", f"setup: {e!r}")
    if cove_setup_error:
        for s in plan:
            for c in (COVE, COVE_LARGE):
                if c in state[s] and state[s][c]["status"] == "ok":
                    state[s][c].update(status=cove_setup_error[0], detail=cove_setup_error[1])

    try:
        for r in range(rounds):
            for s, sc in plan.items():
                names = list(sc["contenders"])
                k = r % len(names)
                for pos, name in enumerate(names[k:] + names[:k]):
                    st = state[s][name]
                    if st["status"] != "ok":
                        continue
                    work = fresh(os.path.join(WORK_ROOT, s, name))
                    ctx = Context(python, data_root, sc, work)
                    print(f"round {r + 1}/{rounds} {s:<8} {name:<10} ", end="", flush=True)
                    try:
                        m = sc["contenders"][name](ctx)
                    except NotImplementedError as e:
                        st.update(status="not run", detail=str(e))
                        print("not run")
                    except Exception as e:  # noqa: BLE001 - recorded, the suite goes on
                        st.update(status="failed", detail=f"{e}")
                        print("FAILED")
                        traceback.print_exc()
                    else:
                        st["runs"].append({"round": r + 1, "position": pos + 1, **m})
                        print(f"{m['wall_s']:.3f} s")
                    finally:
                        shutil.rmtree(work, ignore_errors=True)
    finally:
        try:
            if cove_runs:
                cove_contender.teardown()
        except Exception:  # noqa: BLE001
            traceback.print_exc()
    return state


# ---------------------------------------------------------------- summary and targets


def summarize(plan: dict, state: dict) -> dict:
    """Median, min and max of wall_s, medians of the other numbers, throughput and ratios."""
    out = {}
    for s, sc in plan.items():
        out[s] = {}
        for c, st in state[s].items():
            runs = st["runs"]
            if not runs:
                continue
            walls = [x["wall_s"] for x in runs]
            summ = {
                "runs": len(runs),
                "median_wall_s": statistics.median(walls),
                "min_wall_s": min(walls),
                "max_wall_s": max(walls),
            }
            keys = {k for x in runs for k in x if k not in ("wall_s", "round", "position")}
            for k in sorted(keys):
                vals = [x[k] for x in runs if isinstance(x.get(k), (int, float))]
                if vals:
                    summ[f"median_{k}"] = statistics.median(vals)
                    summ[f"max_{k}"] = max(vals)
            if sc.get("rate"):
                summ[f"{sc['rate']}_per_s"] = sc[sc["rate"]] / summ["median_wall_s"]
            out[s][c] = summ
        for c, summ in out[s].items():
            if PLAIN in out[s]:
                summ["wall_vs_plain"] = summ["median_wall_s"] / out[s][PLAIN]["median_wall_s"]
            if RAY in out[s]:
                summ["speedup_vs_ray"] = out[s][RAY]["median_wall_s"] / summ["median_wall_s"]
    return out


def targets(summary: dict) -> list:
    """The design's performance targets, each met, missed or not measured."""

    def get(s, c, key):
        return summary.get(s, {}).get(c, {}).get(key)

    rows = []

    def add(name, value, ok, shown):
        if value is None:
            rows.append({"target": name, "measured": None, "shown": "-", "status": "not measured"})
        else:
            rows.append({"target": name, "measured": value, "shown": shown(value),
                         "status": "met" if ok(value) else "missed"})

    add("script: Cove wall <= 1.05x the plain loop wall", get("script", COVE, "wall_vs_plain"),
        lambda v: v <= 1.05, lambda v: f"{v:.2f}x the plain loop's wall")
    for s, c, what, most, factor in (
        ("tabular", COVE, "tabular", 0.7, 6),
        ("tiny", COVE, "tiny (mini-batch 10)", 0.5, 10),
        ("tiny", COVE_LARGE, f"tiny (mini-batch {LARGE_BATCH})", 0.5, 10),
    ):
        add(f"{what}: Cove wall <= {most}x the plain loop wall", get(s, c, "wall_vs_plain"),
            lambda v, m=most: v <= m, lambda v: f"{v:.2f}x the plain loop's wall")
        add(f"{what}: Cove >= {factor}x faster than Ray Data", get(s, c, "speedup_vs_ray"),
            lambda v, f=factor: v >= f, lambda v: f"{v:.1f}x faster")
    add("invoke -> first mini-batch < 100 ms (median)",
        get("overhead", COVE, "median_invoke_to_first_batch_ms"),
        lambda v: v < 100, lambda v: f"{v:.1f} ms")
    add("control plane < 1 ms CPU per mini-batch (median)",
        get("overhead", COVE, "median_control_plane_cpu_ms_per_batch"),
        lambda v: v < 1.0, lambda v: f"{v:.3f} ms")
    add("1,000,000-file job: control plane peak < 200 MB (max)",
        get("scale", COVE, "max_control_plane_peak_rss_mb"),
        lambda v: v < 200, lambda v: f"{v:.0f} MB")
    return rows


# ---------------------------------------------------------------- machine


def sh(cmd: list, cwd: str = REPO_ROOT) -> str:
    try:
        return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unavailable"


def machine(python: str) -> dict:
    """The machine block recorded with every result."""
    cpu = "unknown"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem_gib = None
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                mem_gib = round(int(line.split()[1]) / 2**20, 1)
    probe = (
        "import importlib.metadata as m, json, platform; "
        f"v = {{p: m.version(p) for p in {VENV_PACKAGES!r}}}; "
        "v['python'] = platform.python_version(); "
        "print(json.dumps(v))"
    )
    try:
        venv_info = json.loads(sh([python, "-c", probe]))
    except ValueError:
        venv_info = {}
    commit = sh(["git", "rev-parse", "HEAD"])
    dirty = sh(["git", "status", "--porcelain", "--untracked-files=no"])
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": mem_gib,
        "kernel": platform.release(),
        "date_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ"),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "python_system": platform.python_version(),
        "python_venv": venv_info.pop("python", "unknown"),
        "packages": venv_info,
        "rustc": sh(["rustc", "--version"]),
        "git_commit": commit + (" (with uncommitted changes)" if dirty and dirty != "unavailable" else ""),
    }


# ---------------------------------------------------------------- report


def fmt(v, digits=3):
    return "-" if v is None else f"{v:.{digits}f}"


def rate(v):
    return "-" if v is None else f"{v:,.0f}"


def markdown(cfg: dict, mach: dict, plan: dict, state: dict, summary: dict, tgts: list) -> str:
    L = ["# Comparative benchmark suite", ""]
    L.append(
        "Cove against the baselines a user would otherwise pick, on the same machine and data: "
        "a plain Python loop with onnxruntime (one process per core, one single-threaded "
        "session each) and Ray Data (read_csv -> map_batches with one onnxruntime actor per "
        "core -> write_csv). Baseline times are whole processes, start-up included. Cove's "
        "run from `cove endpoint invoke` (a CLI process) to the job seen Completed with its output "
        "published, on a control plane already running, as a workspace's is: planning, starting the "
        "workers, loading the model, scoring and assembling the output are all inside. Cove scores "
        "the tabular and tiny files with a no-code ONNX deployment (tract, one worker slot per core); "
        "the overhead and scale jobs run a do-nothing Python scoring script in the sandbox."
    )
    L.append("")
    L.append(
        f"{cfg['rounds']} round(s); in each round every contender runs once, the order rotated "
        "from round to round. Wall times: median, with min and max over the rounds."
    )
    if cfg["mode"] == "quick":
        L += ["", "**Quick smoke run on reduced data: not a measurement to compare with the targets.**"]
    if cfg["contenders"] != "all":
        L += ["", f"Contenders run: {', '.join(cfg['contenders'])} only."]
    L += [
        "",
        "Rerun: `scripts/bench` (everything), or `python3 bench/suite/run.py` (add `--million` for the "
        "scale scenario). Where time goes: `python3 bench/suite/profile.py SCENARIO` (perf, see "
        "`bench/results/profile-*.txt`).",
        "",
    ]

    L += ["## Machine", "", "| | |", "| --- | --- |"]
    pk = mach["packages"]
    for k, v in [
        ("CPU", mach["cpu"]),
        ("cores", mach["cores"]),
        ("memory", f"{mach['memory_gib']} GiB"),
        ("kernel", mach["kernel"]),
        ("date (UTC)", mach["date_utc"]),
        ("load average at start", " ".join(map(str, mach["load_average_at_start"]))),
        ("python", f"{mach['python_system']} (system), {mach['python_venv']} (baselines' venv)"),
        ("baseline packages", ", ".join(f"{p} {pk[p]}" for p in pk)),
        ("rustc", mach["rustc"]),
        ("commit", mach["git_commit"]),
    ]:
        L.append(f"| {k} | {v} |")
    L.append("")

    L += ["## Targets", "", "| target | measured | status |", "| --- | --- | --- |"]
    for t in tgts:
        L.append(f"| {t['target']} | {t['shown']} | {t['status']} |")
    L.append("")

    for s, sc in plan.items():
        L += [f"## {sc['title']}", ""]
        summ = summary.get(s, {})
        has_rate = bool(sc.get("rate"))
        # Row and file counts are the scenario's own sizes where it has a rate column.
        hidden = {"median_wall_s"} | (
            {"median_rows", "median_files", "median_output_files"} if has_rate else set()
        )
        extra = sorted({k for c in summ.values() for k in c if k.startswith("median_") and k not in hidden})
        head = ["contender", "runs", "median wall s", "min", "max"]
        if has_rate:
            head += [f"{sc['rate']}/s", "wall / plain loop", "Ray wall / this"]
        head += [k[len("median_"):] + " (median)" for k in extra]
        L.append("| " + " | ".join(head) + " |")
        L.append("|" + " --- |" * len(head))
        for c, st in state[s].items():
            if c not in summ:
                why = st["status"] + (f": {st['detail']}" if st["detail"] else "")
                L.append(f"| {c} | 0 | {why} |" + " |" * (len(head) - 3))
                continue
            x = summ[c]
            cells = [c, str(x["runs"]), fmt(x["median_wall_s"]), fmt(x["min_wall_s"]), fmt(x["max_wall_s"])]
            if has_rate:
                cells += [
                    rate(x.get(f"{sc['rate']}_per_s")),
                    fmt(x.get("wall_vs_plain"), 2),
                    fmt(x.get("speedup_vs_ray"), 2),
                ]
            cells += [fmt(x.get(k)) for k in extra]
            if st["status"] != "ok":
                cells[0] += f" ({st['status']} later: {st['detail']})"
            L.append("| " + " | ".join(cells) + " |")
        L.append("")
    return "\n".join(L)


# ---------------------------------------------------------------- main


def make_data(python: str, data_root: str, sizes: dict, with_million: bool) -> None:
    cmd = [
        python, MAKE_DATA, "--out", data_root,
        "--tabular-files", str(sizes["tabular_files"]),
        "--tabular-rows", str(sizes["tabular_rows"]),
        "--tiny-files", str(sizes["tiny_files"]),
    ]
    if with_million:
        cmd += ["--million", "--million-count", str(sizes["million_files"])]
    subprocess.run(cmd, check=True)


def main() -> int:
    ap = argparse.ArgumentParser(description="Cove's comparative benchmark suite.")
    ap.add_argument("--rounds", type=int, help="rounds (default 3, or 1 with --quick)")
    ap.add_argument("--quick", action="store_true", help="smoke test: reduced data, 1 round")
    ap.add_argument("--million", action="store_true", help="also run the 1,000,000-file scale scenario")
    ap.add_argument(
        "--contenders",
        help=f"comma-separated subset of {PLAIN},{RAY},{COVE},{COVE_LARGE} to run (default: all); "
        "the others are reported as not run",
    )
    ap.add_argument(
        "--scenarios",
        help="comma-separated subset of scenarios to run (default: all); the results then go to "
        "suite-<scenarios>.md and .json, so suite.md keeps the last full run",
    )
    args = ap.parse_args()

    only = set(args.contenders.split(",")) if args.contenders else None
    known = {PLAIN, RAY, COVE, COVE_LARGE}
    if only and not only <= known:
        ap.error(f"--contenders: unknown {', '.join(sorted(only - known))}")
    mode = "quick" if args.quick else "full"
    rounds = args.rounds or (1 if args.quick else 3)
    sizes = SIZES[mode]
    data_root = os.path.join(TARGET, "bench-data", mode)

    python = suite_venv.ensure_venv()
    make_data(python, data_root, sizes, args.million)
    mach = machine(python)
    plan = scenarios(sizes, args.million)
    if args.scenarios:
        chosen = args.scenarios.split(",")
        unknown = [c for c in chosen if c not in plan]
        if unknown:
            ap.error(f"--scenarios: unknown {', '.join(unknown)} (known: {', '.join(plan)})")
        plan = {s: sc for s, sc in plan.items() if s in chosen}
    stem = "suite" + (f"-{'-'.join(plan)}" if args.scenarios else "")

    state = run_rounds(plan, rounds, python, data_root, only)
    summary = summarize(plan, state)
    tgts = targets(summary)
    cfg = {
        "mode": mode,
        "rounds": rounds,
        "sizes": sizes,
        "million": args.million,
        "contenders": sorted(only) if only else "all",
    }

    os.makedirs(RESULTS_DIR, exist_ok=True)
    md = markdown(cfg, mach, plan, state, summary, tgts)
    with open(os.path.join(RESULTS_DIR, f"{stem}.md"), "w") as f:
        f.write(md + "\n")
    raw = {
        "config": cfg,
        "machine": mach,
        "scenarios": {
            s: {
                "title": plan[s]["title"],
                "contenders": {
                    c: {**state[s][c], "summary": summary.get(s, {}).get(c)}
                    for c in state[s]
                },
            }
            for s in plan
        },
        "targets": tgts,
    }
    with open(os.path.join(RESULTS_DIR, f"{stem}.json"), "w") as f:
        json.dump(raw, f, indent=2)
        f.write("\n")
    print(md)
    failed = [f"{s}/{c}" for s in state for c, st in state[s].items() if st["status"] == "failed"]
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
