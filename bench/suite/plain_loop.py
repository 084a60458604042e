"""Baseline: the scoring loop a user would write by hand, one process per core.

    python plain_loop.py DATA_FOLDER MODEL OUT_FILE

Each process gets every n-th file, opens one single-threaded onnxruntime session,
reads each file with the fastest reader a Python user would pick for it (pyarrow's CSV reader for
large files; numpy's loadtxt, twenty times faster than pyarrow on a one-row file, for small ones),
runs the model once per file and writes one line per
input row, `row,prediction,p0,p1,p2,file_name`, to its own part; the parent then
concatenates the parts into OUT_FILE. Prints a one-line JSON summary.
"""

import json
import multiprocessing as mp
import os
import shutil
import sys
import time

import numpy as np
import onnxruntime as ort
import pyarrow.csv as pacsv


SMALL_FILE = 64 * 1024


def read_features(path: str) -> np.ndarray:
    """Every column but `id`, as one float32 matrix."""
    if os.path.getsize(path) < SMALL_FILE:
        return np.loadtxt(path, delimiter=",", skiprows=1, ndmin=2, dtype=np.float32)[:, 1:]
    table = pacsv.read_csv(path)
    return np.column_stack([table.column(i).to_numpy() for i in range(1, table.num_columns)]).astype(np.float32)


def score_files(model: str, files: list, part: str) -> int:
    """Scores `files` in this process into `part`; returns the number of rows written."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
    rows = 0
    with open(part, "w") as out:
        for path in files:
            x = read_features(path)
            probs, label = sess.run(["probabilities", "label"], {"features": x})
            name = os.path.basename(path)
            out.writelines(
                f"{i},{label[i]},{p[0]:.6g},{p[1]:.6g},{p[2]:.6g},{name}\n"
                for i, p in enumerate(probs.tolist())
            )
            rows += len(x)
    return rows


def worker(model: str, files: list, part: str, counts, k: int) -> None:
    counts[k] = score_files(model, files, part)


def main() -> None:
    if len(sys.argv) != 4:
        raise SystemExit(__doc__)
    folder, model, out_file = sys.argv[1:]
    start = time.perf_counter()
    files = sorted(
        os.path.join(folder, n) for n in os.listdir(folder) if not n.startswith(".")
    )
    n = max(1, min(os.cpu_count() or 1, len(files)))
    parts = [f"{out_file}.part-{k}" for k in range(n)]
    counts = mp.Array("q", n)
    procs = [
        mp.Process(target=worker, args=(model, files[k::n], parts[k], counts, k))
        for k in range(n)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    failed = [p.exitcode for p in procs if p.exitcode != 0]
    if failed:
        raise SystemExit(f"{len(failed)} scoring process(es) failed: exit codes {failed}")
    with open(out_file, "wb") as out:
        for part in parts:
            with open(part, "rb") as f:
                shutil.copyfileobj(f, out, 1 << 20)
            os.remove(part)
    print(
        json.dumps(
            {
                "rows": sum(counts),
                "files": len(files),
                "processes": n,
                "inner_wall_s": round(time.perf_counter() - start, 3),
            }
        )
    )


if __name__ == "__main__":
    main()
