"""Makes the benchmark suite's model and input data, deterministically.

Runs inside the suite's venv (needs numpy, onnx, onnxruntime). Every dataset comes
from a fixed seed, so two machines benchmark the same bytes. Each dataset writes a
stamp (DIR/.NAME.done, holding its parameters) only once it is complete: a dataset
whose stamp matches is skipped, and an interrupted or resized one is made again.

    python make_data.py --out DIR [--tabular-files N] [--tiny-files N] [--million]
"""

import argparse
import json
import os
import shutil
import sys

import numpy as np

SEED = 20251126
FEATURES = 32
HIDDEN = 64
CLASSES = 3
HEADER = "id," + ",".join(f"f{i}" for i in range(FEATURES))


def stamp_path(out: str, name: str) -> str:
    return os.path.join(out, f".{name}.done")


def is_done(out: str, name: str, params: dict) -> bool:
    """True when the dataset's stamp exists and was written for the same parameters."""
    try:
        with open(stamp_path(out, name)) as f:
            return json.load(f) == params
    except (OSError, ValueError):
        return False


def mark_done(out: str, name: str, params: dict) -> None:
    with open(stamp_path(out, name), "w") as f:
        json.dump(params, f)


def fresh_dir(path: str) -> None:
    """Empties a dataset's folder so a redo never mixes old and new files."""
    if os.path.exists(path):
        shutil.rmtree(path)
    os.makedirs(path)


def features(rng: np.random.Generator, rows: int) -> np.ndarray:
    """The feature distribution shared by the data and the model's calibration."""
    return rng.standard_normal((rows, FEATURES)).astype(np.float32)


# ---------------------------------------------------------------- model


def mlp_weights() -> dict:
    """Seeded MLP weights; the output bias centres the logits so all three classes occur.

    Random weights alone often favour one class over the data; subtracting the mean
    logit over a calibration sample of the same distribution balances them.
    """
    rng = np.random.default_rng([SEED, 1])
    w1 = (rng.standard_normal((FEATURES, HIDDEN)) / np.sqrt(FEATURES)).astype(np.float32)
    b1 = (0.1 * rng.standard_normal(HIDDEN)).astype(np.float32)
    w2 = (rng.standard_normal((HIDDEN, CLASSES)) / np.sqrt(HIDDEN)).astype(np.float32)
    calib = features(np.random.default_rng([SEED, 2]), 20_000)
    logits = np.maximum(calib @ w1 + b1, 0) @ w2
    b2 = (-logits.mean(axis=0)).astype(np.float32)
    return {"w1": w1, "b1": b1, "w2": w2, "b2": b2}


def build_model(path: str) -> None:
    """Writes the classifier with only MatMul, Add, Relu, Softmax and ArgMax, which tract loads too."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = mlp_weights()
    inits = [numpy_helper.from_array(v, name=k) for k, v in w.items()]
    nodes = [
        helper.make_node("MatMul", ["features", "w1"], ["h_mm"]),
        helper.make_node("Add", ["h_mm", "b1"], ["h_pre"]),
        helper.make_node("Relu", ["h_pre"], ["h"]),
        helper.make_node("MatMul", ["h", "w2"], ["o_mm"]),
        helper.make_node("Add", ["o_mm", "b2"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
        helper.make_node("ArgMax", ["logits"], ["label"], axis=1, keepdims=0),
    ]
    graph = helper.make_graph(
        nodes,
        "cove_bench_classifier",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", FEATURES])],
        [
            helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", CLASSES]),
            helper.make_tensor_value_info("label", TensorProto.INT64, ["N"]),
        ],
        initializer=inits,
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 13)], producer_name="cove-bench"
    )
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    tmp = path + ".tmp"
    onnx.save(model, tmp)
    os.replace(tmp, path)


def check_model(path: str) -> dict:
    """Runs the saved model once with onnxruntime; all three classes must be predicted."""
    import onnxruntime as ort

    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    x = features(np.random.default_rng([SEED, 3]), 5_000)
    probs, label = sess.run(["probabilities", "label"], {"features": x})
    assert probs.shape == (len(x), CLASSES) and probs.dtype == np.float32
    assert label.shape == (len(x),) and label.dtype == np.int64
    assert np.allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    counts = np.bincount(label, minlength=CLASSES)
    if (counts == 0).any():
        raise SystemExit(f"model predicts only some classes: {counts.tolist()}")
    return {"class_counts": counts.tolist()}


def make_model(out: str) -> None:
    params = {"seed": SEED, "features": FEATURES, "hidden": HIDDEN, "classes": CLASSES}
    if is_done(out, "model", params):
        return
    d = os.path.join(out, "model")
    fresh_dir(d)
    path = os.path.join(d, "classifier.onnx")
    build_model(path)
    info = check_model(path)
    print(f"model: {path} {info}", file=sys.stderr)
    mark_done(out, "model", params)


# ---------------------------------------------------------------- CSV data


def write_csv(path: str, first_id: int, x: np.ndarray) -> None:
    """One CSV with header; features as %.6g, id as the global row id."""
    ids = np.arange(first_id, first_id + len(x), dtype=np.int64)
    with open(path, "w") as f:
        f.write(HEADER + "\n")
        # Formatting the whole block through one format string is far faster than savetxt's per-row loop.
        row_fmt = "%d" + ",%.6g" * FEATURES + "\n"
        table = np.empty((len(x), FEATURES + 1), dtype=object)
        table[:, 0] = ids
        table[:, 1:] = x.astype(np.float64)
        f.write("".join(row_fmt % tuple(r) for r in table))


def make_tabular(out: str, files: int, rows: int) -> None:
    params = {"seed": SEED, "files": files, "rows": rows}
    if is_done(out, "tabular", params):
        return
    d = os.path.join(out, "tabular")
    fresh_dir(d)
    for i in range(files):
        x = features(np.random.default_rng([SEED, 10, i]), rows)
        write_csv(os.path.join(d, f"part-{i:03d}.csv"), i * rows, x)
    print(f"tabular: {files} files x {rows} rows in {d}", file=sys.stderr)
    mark_done(out, "tabular", params)


def make_tiny(out: str, files: int) -> None:
    params = {"seed": SEED, "files": files}
    if is_done(out, "tiny", params):
        return
    d = os.path.join(out, "tiny")
    fresh_dir(d)
    x = features(np.random.default_rng([SEED, 20]), files)
    row_fmt = "%d" + ",%.6g" * FEATURES + "\n"
    for i in range(files):
        with open(os.path.join(d, f"row-{i:05d}.csv"), "w") as f:
            f.write(HEADER + "\n" + row_fmt % ((i,) + tuple(x[i].astype(np.float64))))
    print(f"tiny: {files} one-row files in {d}", file=sys.stderr)
    mark_done(out, "tiny", params)


def make_million(out: str, count: int) -> None:
    """Empty files: the scale scenario measures the control plane's memory per file, not I/O."""
    params = {"files": count}
    if is_done(out, "million", params):
        return
    d = os.path.join(out, "million")
    fresh_dir(d)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
    for i in range(count):
        os.close(os.open(os.path.join(d, f"f-{i:07d}"), flags, 0o644))
    print(f"million: {count} empty files in {d}", file=sys.stderr)
    mark_done(out, "million", params)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="folder to hold model/, tabular/, tiny/, million/")
    ap.add_argument("--tabular-files", type=int, default=200)
    ap.add_argument("--tabular-rows", type=int, default=5_000)
    ap.add_argument("--tiny-files", type=int, default=20_000)
    ap.add_argument("--million", action="store_true", help="also make the folder of empty files (slow)")
    ap.add_argument("--million-count", type=int, default=1_000_000, help=argparse.SUPPRESS)
    args = ap.parse_args()

    os.makedirs(args.out, exist_ok=True)
    make_model(args.out)
    make_tabular(args.out, args.tabular_files, args.tabular_rows)
    make_tiny(args.out, args.tiny_files)
    if args.million:
        make_million(args.out, args.million_count)


if __name__ == "__main__":
    main()
