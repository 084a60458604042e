"""Writes the MLflow model the no-code tests deploy: a scikit-learn logistic regression on two
features, saved with mlflow.sklearn (pickle format) with its signature, conda.yaml and
requirements.txt, as MLflow writes them. Run it in an environment with the versions that
scripts/wheelhouse.txt pins:

    uv venv /tmp/mlv && VIRTUAL_ENV=/tmp/mlv uv pip install --no-index --find-links .cache/wheelhouse \
        -r scripts/wheelhouse.txt && /tmp/mlv/bin/python crates/cli/tests/mlflow/generate.py
"""
import os
import shutil

import mlflow.sklearn
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
# The save time and a random id are the only parts that change from run to run.
path = os.path.join(OUT, "MLmodel")
lines = [l for l in open(path) if not l.startswith(("utc_time_created", "model_uuid"))]
open(path, "w").writelines(lines)
