"""Profiles Cove on one benchmark scenario with perf (sampling, call graphs), to say where time goes.

    python3 bench/suite/profile.py {tiny,tabular,script,overhead} [--quick] [--target control-plane|worker]

Starts a control plane like the suite's Cove contender, runs the scenario's job once to warm up, then
once under `perf record` attached to the control plane (or to every worker process of the job, or to
the whole machine), and writes the hottest functions (for the machine: the processes, by name, with
`swapper` for idle) to bench/results/profile-<scenario>-<target>.txt.
"""

import argparse
import os
import subprocess
import sys
import threading
import time

SUITE_DIR = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(os.path.dirname(SUITE_DIR))
sys.path.insert(0, SUITE_DIR)

import cove_contender  # noqa: E402

DATA = {"tiny": "tiny", "tabular": "tabular", "script": "tabular", "overhead": "tiny"}


def workers_of(pid: int) -> list:
    """PIDs of the `cove worker` processes the control plane started."""
    out = subprocess.run(["ps", "-o", "pid=,args=", "--ppid", str(pid)], capture_output=True, text=True).stdout
    return [int(line.split()[0]) for line in out.splitlines() if " worker " in line]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("scenario", choices=sorted(DATA))
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--target", choices=["control-plane", "worker", "system"], default="control-plane",
                    help="system: every process on the machine, by process name (scorers, Cove, idle)")
    args = ap.parse_args()
    data_root = os.path.join(REPO_ROOT, "target", "bench-data", "quick" if args.quick else "full")
    data = os.path.join(data_root, DATA[args.scenario])
    model = os.path.join(data_root, "model", "classifier.onnx")
    if not os.path.isdir(data):
        raise SystemExit(f"no data in {data}: run `python3 bench/suite/run.py{' --quick' if args.quick else ''}` first")
    work = os.path.join(REPO_ROOT, "target", "bench-work", "profile")
    subprocess.run(["rm", "-rf", work], check=True)
    python = os.path.join(REPO_ROOT, "target", "bench-venv", "bin", "python")
    cove_contender.setup(REPO_ROOT, work, python, data_root)
    try:
        endpoint = "script" if args.scenario == "script" else "tabular"
        run = (lambda: cove_contender.overhead(data, work)) if args.scenario == "overhead" else (
            lambda: cove_contender._scored(data, model, DATA[args.scenario], endpoint))
        if args.scenario == "overhead":
            cove_contender._ready(model)
        run()  # warm-up: page cache, first deployment use
        cp = cove_contender._state["cp"]
        out = os.path.join(work, "perf.data")
        perf = None
        if args.target == "control-plane":
            perf = subprocess.Popen(["perf", "record", "--no-inherit", "-F", "999", "--call-graph", "dwarf,16384", "-o", out,
                                     "-p", str(cp.proc.pid)],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(0.5)
            result = run()
        elif args.target == "system":
            perf = subprocess.Popen(["perf", "record", "-a", "-F", "999", "-o", out],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(0.5)
            result = run()
        else:
            holder = {}
            t = threading.Thread(target=lambda: holder.update(result=run()))
            t.start()
            pids = []
            while not pids and t.is_alive():
                pids = workers_of(cp.proc.pid)
            perf = subprocess.Popen(["perf", "record", "-F", "1999", "-g", "-o", out, "-p", ",".join(map(str, pids))],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            t.join()
            result = holder["result"]
        perf.send_signal(2)
        perf.wait()
        system = args.target == "system"
        sort = ["--sort", "comm"] if system else ["-g", "none", "--sort", "dso,symbol"]
        limit = "0.1" if system else "0.7"
        report = subprocess.run(
            ["perf", "report", "-i", out, "--no-children", "--percent-limit", limit, "--stdio", *sort],
            capture_output=True, text=True).stdout
        dest = os.path.join(REPO_ROOT, "bench", "results", f"profile-{args.scenario}-{args.target}.txt")
        with open(dest, "w") as f:
            f.write(f"# perf profile of the {args.target} during the {args.scenario} scenario"
                    f"{' (quick data)' if args.quick else ''}: {result}\n")
            lines = [" ".join(l.split()[:4]) for l in report.splitlines() if l.strip() and not l.startswith("#")]
            f.write("\n".join(lines) + "\n")
        print(f"wrote {dest}")
    finally:
        cove_contender.teardown()


if __name__ == "__main__":
    main()
