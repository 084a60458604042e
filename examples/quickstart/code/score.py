"""Quickstart scoring script: the Azure ML batch contract, init() once per process, run() per mini-batch."""
import csv
import json
import logging
import math
import os

model = None


def init():
    global model
    path = os.path.join(os.environ["AZUREML_MODEL_DIR"], "model", "model.json")
    with open(path) as f:
        model = json.load(f)
    logging.info("loaded %s from %s", model["kind"], path)


def run(mini_batch):
    results = []
    for path in mini_batch:
        with open(path, newline="") as f:
            for row in csv.DictReader(f):
                z = model["bias"]
                for name, mean, scale, weight in zip(model["features"], model["means"], model["scales"], model["weights"]):
                    z += weight * (float(row[name]) - mean) / scale
                p = 1.0 / (1.0 + math.exp(-z))
                results.append(f"{os.path.basename(path)},{row['id']},{int(p >= 0.5)},{p:.4f}")
    return results
