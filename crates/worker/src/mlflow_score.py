"""Cove's scoring script for an MLflow model deployed with no scoring script (the reference's no-code path).

init() loads the model's python_function flavour once per scorer process. run() calls predict() once per
file: .csv, .parquet and .pqt files are read into DataFrames as they are, and the model's signature is
enforced by MLflow's own pyfunc predict(), as it documents (a missing column or a type that cannot be
converted safely fails the file; extra columns are ignored); images are read into arrays. Each output line is `row,prediction,file` for tabular files (row is the index within
the file) and `prediction,file` for images. A file that cannot be read or scored fails alone, with the
reason in the log; a mini-batch in which every file fails raises, as the reference's does.
"""
import csv
import io
import logging
import os

import mlflow.pyfunc
import numpy as np
import pandas as pd

TABULAR = {".csv", ".parquet", ".pqt"}
IMAGES = {".png", ".jpg", ".jpeg", ".tiff", ".bmp", ".gif"}

model = None
tensor_spec = None

# Read by Cove's driver after each run(): how many files of the mini-batch failed.
cove_failed_items = 0

log = logging.getLogger("cove.mlflow")


def find_model_dir(root):
    """The folder holding MLmodel: the model folder itself, or one folder below it."""
    for base, dirs, files in os.walk(root):
        if "MLmodel" in files:
            return base
        if base.count(os.sep) - root.count(os.sep) >= 2:
            dirs[:] = []
    raise FileNotFoundError(f"no MLmodel file under {root}")


def init():
    global model, tensor_spec
    path = find_model_dir(os.environ["AZUREML_MODEL_DIR"])
    model = mlflow.pyfunc.load_model(path)
    schema = model.metadata.get_input_schema()
    if schema is not None and schema.is_tensor_spec():
        tensor_spec = schema.inputs[0]
    log.info("loaded MLflow model from %s", path)


def read_table(path, ext):
    # No conversion here: predict() enforces the signature as MLflow does for every pyfunc model.
    if ext == ".csv":
        return pd.read_csv(path)
    return pd.read_parquet(path)


def read_image(path):
    from PIL import Image

    with Image.open(path) as image:
        data = np.asarray(image)
    if tensor_spec is not None:
        shape = [d if d != -1 else 1 for d in tensor_spec.shape]
        data = data.astype(tensor_spec.type).reshape(shape)
    else:
        data = data.astype(np.uint8)
    return data


def as_rows(predictions):
    if hasattr(predictions, "to_numpy"):
        predictions = predictions.to_numpy()
    predictions = np.asarray(predictions)
    if predictions.ndim == 0:
        predictions = predictions.reshape(1)
    return list(predictions)


def render(value):
    if isinstance(value, np.ndarray):
        return str([render_scalar(v) for v in value.reshape(-1)])
    return render_scalar(value)


def render_scalar(value):
    return value.item() if hasattr(value, "item") else value


def line(*fields):
    out = io.StringIO()
    csv.writer(out, lineterminator="").writerow(fields)
    return out.getvalue()


def run(mini_batch):
    global cove_failed_items
    cove_failed_items = 0
    lines = []
    for path in mini_batch:
        name = os.path.basename(path)
        ext = os.path.splitext(name)[1].lower()
        try:
            if ext in TABULAR:
                frame = read_table(path, ext)
                for i, p in enumerate(as_rows(model.predict(frame))):
                    lines.append(line(i, render(p), name))
            elif ext in IMAGES:
                prediction = as_rows(model.predict(read_image(path)))
                value = prediction[0] if len(prediction) == 1 else np.asarray(prediction)
                lines.append(line(render(value), name))
            else:
                raise ValueError(f"File type '{ext.lstrip('.')}' is not supported")
        except Exception:
            log.exception("failed to score %s", name)
            cove_failed_items += 1
    if mini_batch and cove_failed_items == len(mini_batch):
        raise ValueError("No objects to concatenate: every file of the mini-batch failed (reasons above)")
    return lines
