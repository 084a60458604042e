"""Writes the MLflow models the no-code tests deploy, with their signatures, conda.yaml and
requirements.txt, as MLflow writes them: `model`, a scikit-learn logistic regression on two features
saved with mlflow.sklearn (pickle format), and `image-model`, a python_function model whose
prediction is an image's mean pixel value. Run it in an environment with the versions that
scripts/wheelhouse.txt pins:

    uv venv /tmp/mlv && VIRTUAL_ENV=/tmp/mlv uv pip install --no-index --find-links .cache/wheelhouse \
        -r scripts/wheelhouse.txt && /tmp/mlv/bin/python crates/cli/tests/mlflow/generate.py
"""
import os
import shutil

import mlflow.pyfunc
import mlflow.sklearn
import numpy as np
import pandas as pd
from mlflow.models import infer_signature
from sklearn.linear_model import LogisticRegression

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "model")

features = pd.DataFrame({"a": [0.0, 1.0, 2.0, 3.0, 4.0, 5.0], "b": [1.0, 0.0, 1.0, 0.0, 1.0, 0.0]})
labels = [0, 0, 0, 1, 1, 1]
model = LogisticRegression().fit(features, labels)

shutil.rmtree(OUT, ignore_errors=True)
mlflow.sklearn.save_model(
    model,
    OUT,
    signature=infer_signature(features, model.predict(features)),
    serialization_format="pickle",
)


class ImageMean(mlflow.pyfunc.PythonModel):
    def predict(self, context, model_input):
        return np.array([float(np.asarray(model_input).mean())])


IMAGE_OUT = os.path.join(HERE, "image-model")
shutil.rmtree(IMAGE_OUT, ignore_errors=True)
example = np.zeros((1, 4, 4, 3), dtype=np.uint8)
mlflow.pyfunc.save_model(IMAGE_OUT, python_model=ImageMean(), signature=infer_signature(example, np.array([0.0])))

# The save time and random ids are the only parts that change from run to run.
for folder in (OUT, IMAGE_OUT):
    path = os.path.join(folder, "MLmodel")
    lines = [l for l in open(path) if not l.startswith(("utc_time_created", "model_uuid"))]
    open(path, "w").writelines(lines)
