"""Cove's contenders in the comparative benchmark suite (see run.py).

One control plane (`cove up`, release build) serves every round, as a workspace's control plane
serves every job: its start-up is not part of a job's time. Each contender invokes a job with
`cove endpoint invoke --stream`, as a user following it would; a job's wall time runs from just before
the CLI starts to its exit once the job is Completed, so it includes planning, worker start, scoring,
and assembling and publishing the output.

The benchmark data folder is registered as a local datastore (`bench_data`), so no bytes are copied
or uploaded, and the workers read the files in place. The scale scenario runs on a control plane of its own, so its peak
memory is that job's alone.
"""

import json
import os
import ssl
import subprocess
import time
import urllib.request
from datetime import datetime

SUITE_DIR = os.path.dirname(os.path.abspath(__file__))

_state = {}


class ControlPlane:
    """A `cove up` child process on an ephemeral loopback port."""

    def __init__(self, cove: str, workspace: str, python: str = "python3", data_root: str = ""):
        self.cove, self.workspace = cove, workspace
        os.makedirs(workspace, exist_ok=True)
        url_file = os.path.join(workspace, "state", "url")
        if os.path.exists(url_file):
            os.remove(url_file)
        self.log = open(os.path.join(os.path.dirname(workspace), os.path.basename(workspace) + ".log"), "wb")
        self.proc = subprocess.Popen(
            [cove, "up", "--dir", workspace, "--listen", "127.0.0.1:0", "--python", python],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.time() + 30
        while not os.path.exists(url_file):
            if self.proc.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"cove up did not start; see {self.log.name}")
            time.sleep(0.05)
        with open(url_file) as f:
            self.url = f.read().strip()
        with open(os.path.join(workspace, "owner.token")) as f:
            self.token = f.read().strip()
        # The control plane speaks only TLS; its certificate is the workspace CA's.
        self.tls = ssl.create_default_context(cafile=os.path.join(workspace, "tls", "trust.pem"))
        if data_root:
            yml = os.path.join(os.path.dirname(workspace), "bench-data.yml")
            _write(yml, f"name: bench_data\ntype: local\npath: {os.path.abspath(data_root)}\n")
            self.cli("datastore", "create", "-f", yml)

    def cli(self, *args: str) -> dict:
        out = subprocess.run(
            [self.cove, "--workspace", self.workspace, "--json", *args], capture_output=True, text=True
        )
        if out.returncode != 0:
            raise RuntimeError(f"cove {' '.join(args)} failed: {out.stderr.strip()}")
        return json.loads(out.stdout) if out.stdout.strip() else {}

    def get(self, path: str) -> dict:
        req = urllib.request.Request(self.url + path, headers={"Authorization": f"Bearer {self.token}"})
        with urllib.request.urlopen(req, timeout=30, context=self.tls) as resp:
            return json.loads(resp.read())

    @staticmethod
    def data_uri(name: str) -> str:
        """The datastore URI of one scenario's data folder."""
        return f"azureml://datastores/bench_data/paths/{name}"

    def cpu_seconds(self) -> float:
        """User plus system CPU time of the control plane process itself (not its workers)."""
        with open(f"/proc/{self.proc.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def peak_rss_mb(self) -> float:
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
        raise RuntimeError("no VmHWM in /proc status")

    def run_job(self, endpoint: str, input_uri: str, *overrides: str) -> tuple:
        """Invokes a job with `cove endpoint invoke --stream`, as a user following it would; returns
        (wall seconds from the invocation to the CLI's exit, the finished job)."""
        extra = [a for o in overrides for a in ("--set", o)]
        start = time.perf_counter()
        out = subprocess.run(
            [self.cove, "--workspace", self.workspace, "--json", "endpoint", "invoke", endpoint,
             "--input", input_uri, "--stream", *extra],
            capture_output=True, text=True,
        )
        wall = time.perf_counter() - start
        results = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
        results = [r for r in results if r.get("type") == "result"]
        if not results:
            raise RuntimeError(f"cove endpoint invoke --stream gave no result: {out.stderr.strip()}")
        job = results[-1]["job"]
        if job["status"] != "Completed":
            raise RuntimeError(f"job {job['name']} {job['status']}: {job.get('error')}")
        return wall, job

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def _write(path: str, text: str):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)


def _deploy(cp: ControlPlane, project: str, endpoint: str, deployment_body: str):
    _write(os.path.join(project, "endpoint.yml"), f"name: {endpoint}\n")
    _write(os.path.join(project, "deployment.yml"), deployment_body)
    cp.cli("endpoint", "create", "-f", os.path.join(project, "endpoint.yml"))
    cp.cli("deployment", "create", "-f", os.path.join(project, "deployment.yml"), "--set-default")


NOOP_SCRIPT = '''\
def init():
    pass


def run(mini_batch):
    return mini_batch
'''


# What the plain loop does, as a scoring script: pyarrow's CSV reader and one single-threaded
# onnxruntime session per process, one line per input row.
SCRIPT = """\
import os

import numpy as np
import onnxruntime as ort
import pyarrow.csv as pacsv

session = None


def init():
    global session
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    model = os.path.join(os.environ["AZUREML_MODEL_DIR"], "model", "classifier.onnx")
    session = ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])


def run(mini_batch):
    lines = []
    for path in mini_batch:
        table = pacsv.read_csv(path)
        x = np.column_stack([table.column(i).to_numpy() for i in range(1, table.num_columns)]).astype(np.float32)
        probs, label = session.run(["probabilities", "label"], {"features": x})
        name = os.path.basename(path)
        lines.extend(
            f"{i},{label[i]},{p[0]:.6g},{p[1]:.6g},{p[2]:.6g},{name}" for i, p in enumerate(probs.tolist())
        )
    return lines
"""


def _deploy_all(cp: ControlPlane, project: str, model: str):
    cores = os.cpu_count() or 1
    os.makedirs(os.path.join(project, "model"), exist_ok=True)
    with open(model, "rb") as src, open(os.path.join(project, "model", "classifier.onnx"), "wb") as dst:
        dst.write(src.read())
    # The no-code ONNX deployment: one worker process per core, default mini-batch size (10 files).
    _deploy(
        cp,
        os.path.join(project, "onnx"),
        "tabular",
        "name: onnx\nendpoint_name: tabular\ntype: model\n"
        f"model:\n  name: bench-mlp\n  path: {os.path.join(project, 'model')}\n  type: onnx_model\n"
        f"compute: azureml:local\nsettings:\n  max_concurrency_per_instance: {cores}\n",
    )
    # The plain loop's work as a scoring script, on the baselines' interpreter (the workspace's default).
    _write(os.path.join(project, "script", "code", "score.py"), SCRIPT)
    _deploy(
        cp,
        os.path.join(project, "script"),
        "script",
        "name: script\nendpoint_name: script\ntype: model\n"
        f"model:\n  name: bench-mlp\n  path: {os.path.join(project, 'model')}\n  type: custom_model\n"
        "code_configuration:\n  code: code\n  scoring_script: score.py\n"
        f"compute: azureml:local\nsettings:\n  max_concurrency_per_instance: {cores}\n",
    )
    # A scoring script that does nothing: what is left is Cove's cost per mini-batch.
    _write(os.path.join(project, "noop", "code", "score.py"), NOOP_SCRIPT)
    _write(os.path.join(project, "noop", "model", "empty.txt"), "")
    _deploy(
        cp,
        os.path.join(project, "noop"),
        "noop",
        "name: noop\nendpoint_name: noop\ntype: model\nmodel:\n  name: bench-noop\n  path: model\n"
        "code_configuration:\n  code: code\n  scoring_script: score.py\n"
        f"compute: azureml:local\nsettings:\n  max_concurrency_per_instance: {cores}\n  output_action: summary_only\n",
    )


def _cove_binary(repo_root: str) -> str:
    subprocess.run(["cargo", "build", "--quiet", "--release", "-p", "cove-cli"], cwd=repo_root, check=True)
    return os.path.join(repo_root, "target", "release", "cove")


def setup(repo_root: str, work: str, python: str, data_root: str) -> None:
    """Builds the release binary and starts the control plane every round uses, with the baselines'
    interpreter as its default and the benchmark data as a local datastore."""
    cove = _cove_binary(repo_root)
    _state.update(repo_root=repo_root, work=work, cove=cove, deployed=False, python=python, data_root=data_root)
    _state["cp"] = ControlPlane(cove, os.path.join(work, "workspace"), python, data_root)


def _ready(model: str) -> ControlPlane:
    cp = _state["cp"]
    if not _state["deployed"]:
        _deploy_all(cp, os.path.join(_state["work"], "project"), model)
        _state["deployed"] = True
    return cp


def teardown() -> None:
    cp = _state.pop("cp", None)
    if cp:
        cp.stop()


def _scored(data_dir: str, model: str, name: str, endpoint: str = "tabular", *overrides: str) -> dict:
    cp = _ready(model)
    wall, job = cp.run_job(endpoint, cp.data_uri(name), *overrides)
    p = job["progress"]
    if p["items_failed"]:
        raise RuntimeError(f"{p['items_failed']} files failed: {job.get('failed_batches')}")
    return {"wall_s": wall, "job": job["name"], "files": p["files_total"], "mini_batches": p["batches_total"]}


def tabular(data_dir: str, model: str, work: str) -> dict:
    return _scored(data_dir, model, "tabular")


def script(data_dir: str, model: str, work: str) -> dict:
    return _scored(data_dir, model, "tabular", "script")


def tiny(data_dir: str, model: str, work: str) -> dict:
    return _scored(data_dir, model, "tiny")


def tiny_large(data_dir: str, model: str, work: str, mini_batch_size: int) -> dict:
    """The tiny files at a mini-batch size other than the default (a per-job override)."""
    return _scored(data_dir, model, "tiny", "tabular", f"mini_batch_size={mini_batch_size}")


def _ms(stamp: str) -> float:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp() * 1000


def overhead(data_dir: str, work: str) -> dict:
    """A no-op script over every file, one file per mini-batch: Cove's own cost per mini-batch."""
    cp = _state["cp"]
    if not _state["deployed"]:
        raise RuntimeError("the overhead scenario runs after tabular or tiny (it needs the deployments)")
    before = cp.cpu_seconds()
    wall, job = cp.run_job("noop", cp.data_uri("tiny"), "mini_batch_size=1")
    cpu = cp.cpu_seconds() - before
    batches = job["progress"]["batches_total"]
    full = cp.get(f"/api/v1/jobs/{job['name']}")
    started = [_ms(a["started_at"]) for a in full.get("attempts", []) if a.get("started_at")]
    first = (min(started) - _ms(job["created_at"])) if started else None
    return {
        "wall_s": wall,
        "mini_batches": batches,
        "mini_batches_per_s": batches / wall,
        "invoke_to_first_batch_ms": first,
        "control_plane_cpu_ms_per_batch": cpu * 1000 / batches,
    }


def scale(data_dir: str, work: str) -> dict:
    """A job over a million empty files on a fresh control plane: its peak memory is this job's."""
    cp = ControlPlane(_state["cove"], os.path.join(work, "workspace"), _state["python"], _state["data_root"])
    try:
        project = os.path.join(work, "project")
        _write(os.path.join(project, "code", "score.py"), NOOP_SCRIPT)
        _write(os.path.join(project, "model", "empty.txt"), "")
        cores = os.cpu_count() or 1
        _deploy(
            cp,
            project,
            "million",
            "name: noop\nendpoint_name: million\ntype: model\nmodel:\n  name: bench-noop\n  path: model\n"
            "code_configuration:\n  code: code\n  scoring_script: score.py\n"
            f"compute: azureml:local\nsettings:\n  max_concurrency_per_instance: {cores}\n"
            "  mini_batch_size: 1000\n  output_action: summary_only\n",
        )
        wall, job = cp.run_job("million", cp.data_uri("million"))
        return {
            "wall_s": wall,
            "files": job["progress"]["files_total"],
            "mini_batches": job["progress"]["batches_total"],
            "control_plane_peak_rss_mb": cp.peak_rss_mb(),
        }
    finally:
        cp.stop()


def output(work: str) -> dict:
    """Assembling a large append_row output from its parts, against copying the same bytes."""
    repo = _state["repo_root"]
    out = subprocess.run(
        ["cargo", "run", "--quiet", "--release", "-p", "cove-server", "--example", "output_assembly", "--", work],
        cwd=repo,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])
