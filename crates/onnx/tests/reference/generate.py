"""Generate the reference ONNX models and ONNX Runtime's predictions for them.

Cove scores ONNX models with tract; the files in this folder let a Rust test check tract's numbers
against ONNX Runtime's on models written by a mainstream exporter (skl2onnx), not by Cove's own
`synth` module. The script:

1. makes deterministic training data with numpy (fixed seed): 4 features `a,b,c,d`, 3 classes;
2. trains a multinomial LogisticRegression and exports it with skl2onnx (zipmap off) as
   `logreg-f32.onnx`: input `features` float32 [N, 4], outputs `label` int64 [N] and
   `probabilities` float32 [N, 3];
3. trains a second LogisticRegression (different C) and exports it with a float64 input as
   `linear-f64.onnx`: input `features` float64 [N, 4], outputs `label` int64 [N] and
   `probabilities` float64 [N, 3] (falls back to a LinearRegression with one float64 output
   `variable` [N, 1] if the classifier cannot be exported in double);
4. writes `input.csv` (header `id,a,b,c,d`, 25 rows, fixed seed);
5. runs ONNX Runtime (CPUExecutionProvider) on the feature columns of `input.csv` and writes
   `logreg-f32.expected.csv` and `linear-f64.expected.csv` (header `row,label,p0,p1,p2`, or
   `row,prediction` for the regressor fallback; `row` counts data rows from 0). Floats are written
   with `repr()` of the exact value (a float32 widened to float64 for the f32 model), so they
   round-trip exactly.

Rerun from the repository root with

    python3 crates/onnx/tests/reference/generate.py

It creates its own virtualenv under `target/reference-venv` (with `python3 -m venv`), pip-installs
the exact versions pinned in `PINS` below (binary wheels only, for CPython 3.11 on Linux x86_64),
then re-executes itself inside that venv. The outputs are deterministic for those pins.
"""

import os
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[3]
VENV = REPO / "target" / "reference-venv"

# Exact versions, including the transitive dependencies, so a rerun exports the same graphs.
PINS = [
    "numpy==1.26.4",
    "scipy==1.13.1",
    "scikit-learn==1.5.2",
    "joblib==1.4.2",
    "threadpoolctl==3.5.0",
    "skl2onnx==1.17.0",
    "onnx==1.16.2",
    "onnxconverter-common==1.14.0",
    "protobuf==3.20.2",
    "onnxruntime==1.19.2",
    "coloredlogs==15.0.1",
    "humanfriendly==10.0",
    "flatbuffers==24.3.25",
    "packaging==24.1",
    "sympy==1.13.3",
    "mpmath==1.3.0",
]

# The highest ONNX opsets the export may use (tract is tested against ai.onnx opsets 9 to 18);
# skl2onnx records the lowest version each domain's nodes need, up to these.
TARGET_OPSET = {"": 17, "ai.onnx.ml": 3}

TRAIN_SEED = 20240611
INPUT_SEED = 7
INPUT_ROWS = 25


def venv_python() -> Path:
    return VENV / "bin" / "python"


def in_venv() -> bool:
    return Path(sys.prefix).resolve() == VENV.resolve()


def bootstrap() -> None:
    """Creates the venv, installs the pins (once per set of pins) and re-executes inside it."""
    if not venv_python().exists():
        print(f"creating {VENV}", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    stamp = VENV / "cove-reference-pins.txt"
    wanted = "\n".join(PINS) + "\n"
    if not stamp.exists() or stamp.read_text() != wanted:
        print("installing " + " ".join(PINS), flush=True)
        subprocess.run(
            [str(venv_python()), "-m", "pip", "install", "--disable-pip-version-check", "--only-binary=:all:", *PINS],
            check=True,
        )
        stamp.write_text(wanted)
    os.execv(str(venv_python()), [str(venv_python()), str(Path(__file__).resolve()), *sys.argv[1:]])


def training_data():
    import numpy as np

    rng = np.random.default_rng(TRAIN_SEED)
    centers = np.array(
        [
            [1.0, -0.5, 0.3, 2.0],
            [-1.2, 0.8, 1.5, -0.4],
            [0.4, 1.6, -1.1, 0.2],
        ]
    )
    per_class = 60
    x = np.concatenate([c + rng.normal(scale=0.9, size=(per_class, 4)) for c in centers])
    y = np.repeat(np.arange(3, dtype=np.int64), per_class)
    order = rng.permutation(len(y))
    return x[order], y[order]


def nearest_f32_exactly(text: str) -> bool:
    """Whether float32(float64(text)) is the float32 nearest to the decimal `text` (no double rounding),
    so a reader that parses the text straight to f32 sees the same value ONNX Runtime was fed."""
    import numpy as np

    exact = Fraction(text)
    got = np.float32(float(text))
    below, above = np.nextafter(got, np.float32(-np.inf)), np.nextafter(got, np.float32(np.inf))
    err = abs(Fraction(float(got)) - exact)
    return err <= abs(Fraction(float(below)) - exact) and err <= abs(Fraction(float(above)) - exact)


def write_input_csv(path: Path):
    import numpy as np

    rng = np.random.default_rng(INPUT_SEED)
    # Around the class centres and a little beyond, so every class and some uncertain rows appear.
    values = rng.uniform(-2.5, 3.0, size=(INPUT_ROWS, 4))
    lines = ["id,a,b,c,d"]
    for i, row in enumerate(values):
        cells = []
        for v in row:
            s = f"{v:.3f}"
            if float(s) == 0.0:
                s = "0.000"  # never "-0.000"
            assert nearest_f32_exactly(s), s
            cells.append(s)
        lines.append(",".join([str(101 + i), *cells]))
    path.write_text("\n".join(lines) + "\n")


def read_features(path: Path):
    import numpy as np

    lines = path.read_text().splitlines()
    assert lines[0] == "id,a,b,c,d", lines[0]
    # Parse each decimal text once to float64; float32 inputs are the nearest float32 (checked above).
    return np.array([[float(c) for c in line.split(",")[1:]] for line in lines[1:]], dtype=np.float64)


def export(model, tensor_type, path: Path, is_classifier: bool):
    from skl2onnx import convert_sklearn

    options = {id(model): {"zipmap": False}} if is_classifier else None
    onx = convert_sklearn(
        model,
        initial_types=[("features", tensor_type([None, 4]))],
        options=options,
        # A fixed graph name: skl2onnx otherwise draws a random one, and the file changes each run.
        name=path.stem,
        target_opset=TARGET_OPSET,
    )
    path.write_bytes(onx.SerializeToString())
    return onx


def run_ort(path: Path, x):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    outs = sess.run(None, {"features": x})
    return sess, {o.name: v for o, v in zip(sess.get_outputs(), outs)}


def describe(sess, onx) -> str:
    lines = []
    for i in sess.get_inputs():
        lines.append(f"  input  {i.name}: {i.type} {i.shape}")
    for o in sess.get_outputs():
        lines.append(f"  output {o.name}: {o.type} {o.shape}")
    opsets = ", ".join(f"{d.domain or 'ai.onnx'}={d.version}" for d in onx.opset_import)
    lines.append(f"  opsets {opsets}; nodes {[n.op_type for n in onx.graph.node]}")
    return "\n".join(lines)


def write_classifier_expected(path: Path, label, proba) -> None:
    lines = ["row,label,p0,p1,p2"]
    for r, (l, p) in enumerate(zip(label, proba)):
        lines.append(",".join([str(r), str(int(l)), *(repr(float(v)) for v in p)]))
    path.write_text("\n".join(lines) + "\n")


def main() -> None:
    import numpy as np
    import onnxruntime
    import skl2onnx
    import sklearn
    from skl2onnx.common.data_types import DoubleTensorType, FloatTensorType
    from sklearn.linear_model import LinearRegression, LogisticRegression

    print(
        f"numpy {np.__version__}, scikit-learn {sklearn.__version__}, skl2onnx {skl2onnx.__version__}, "
        f"onnxruntime {onnxruntime.__version__}"
    )
    x_train, y_train = training_data()

    input_csv = HERE / "input.csv"
    write_input_csv(input_csv)
    x = read_features(input_csv)

    # float32 classifier.
    f32_path = HERE / "logreg-f32.onnx"
    clf = LogisticRegression(C=1.0, max_iter=1000).fit(x_train.astype(np.float32), y_train)
    onx = export(clf, FloatTensorType, f32_path, is_classifier=True)
    sess, out = run_ort(f32_path, x.astype(np.float32))
    print(f"{f32_path.name} ({f32_path.stat().st_size} bytes)\n{describe(sess, onx)}")
    label, proba = out["label"], out["probabilities"]
    assert label.dtype == np.int64 and label.shape == (INPUT_ROWS,), (label.dtype, label.shape)
    assert proba.dtype == np.float32 and proba.shape == (INPUT_ROWS, 3), (proba.dtype, proba.shape)
    assert np.array_equal(label, clf.predict(x.astype(np.float32)))
    assert np.allclose(proba, clf.predict_proba(x.astype(np.float32)), atol=1e-5)
    assert len(set(label.tolist())) == 3, "every class should appear in the reference rows"
    write_classifier_expected(HERE / "logreg-f32.expected.csv", label, proba)

    # float64 model: the same kind of classifier if skl2onnx exports it in double, else a regressor.
    f64_path = HERE / "linear-f64.onnx"
    expected64 = HERE / "linear-f64.expected.csv"
    clf64 = LogisticRegression(C=0.5, max_iter=1000).fit(x_train, y_train)
    try:
        onx = export(clf64, DoubleTensorType, f64_path, is_classifier=True)
        sess, out = run_ort(f64_path, x)
        is_classifier = True
    except Exception as e:  # noqa: BLE001 - any failure means: fall back to the regressor
        print(f"the classifier does not export or run in double ({e!r}); using LinearRegression")
        is_classifier = False
    if is_classifier:
        label, proba = out["label"], out["probabilities"]
        assert label.dtype == np.int64 and label.shape == (INPUT_ROWS,), (label.dtype, label.shape)
        assert proba.dtype == np.float64 and proba.shape == (INPUT_ROWS, 3), (proba.dtype, proba.shape)
        assert np.array_equal(label, clf64.predict(x))
        assert np.allclose(proba, clf64.predict_proba(x), atol=1e-12)
        write_classifier_expected(expected64, label, proba)
    else:
        target = x_train @ np.array([0.7, -1.3, 0.25, 2.1]) + 0.5
        reg = LinearRegression().fit(x_train, target)
        onx = export(reg, DoubleTensorType, f64_path, is_classifier=False)
        sess, out = run_ort(f64_path, x)
        pred = out["variable"]
        assert pred.dtype == np.float64 and pred.shape == (INPUT_ROWS, 1), (pred.dtype, pred.shape)
        assert np.allclose(pred[:, 0], reg.predict(x), atol=1e-12)
        lines = ["row,prediction"] + [f"{r},{float(v)!r}" for r, v in enumerate(pred[:, 0])]
        expected64.write_text("\n".join(lines) + "\n")
    print(f"{f64_path.name} ({f64_path.stat().st_size} bytes)\n{describe(sess, onx)}")

    for name in ["input.csv", "logreg-f32.expected.csv", "linear-f64.expected.csv"]:
        head = (HERE / name).read_text().splitlines()[:4]
        print(f"{name}:\n  " + "\n  ".join(head))


if __name__ == "__main__":
    if in_venv():
        main()
    else:
        bootstrap()
