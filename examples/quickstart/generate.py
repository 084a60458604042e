"""Generates the quickstart's model and sample data, deterministically (fixed seed).

The model is a small logistic-regression classifier stored as JSON; the data is ten CSV files of
synthetic patient measurements. Run from this folder: python3 generate.py
"""
import csv
import json
import math
import os
import random

FEATURES = ["age", "resting_bp", "cholesterol", "max_heart_rate"]
MEANS = [54.0, 131.0, 246.0, 149.0]
SCALES = [9.0, 17.0, 51.0, 23.0]


def main():
    rng = random.Random(20261126)
    weights = [0.9, 0.6, 0.5, -1.1]
    model = {
        "kind": "logistic_regression",
        "features": FEATURES,
        "means": MEANS,
        "scales": SCALES,
        "weights": weights,
        "bias": -0.2,
    }
    os.makedirs("model", exist_ok=True)
    with open(os.path.join("model", "model.json"), "w") as f:
        json.dump(model, f, indent=1)
        f.write("\n")
    os.makedirs("data", exist_ok=True)
    patient = 0
    for part in range(10):
        with open(os.path.join("data", f"patients-{part:03d}.csv"), "w", newline="") as f:
            w = csv.writer(f, lineterminator="\n")
            w.writerow(["id"] + FEATURES)
            for _ in range(20):
                patient += 1
                row = [round(rng.gauss(m, s), 1) for m, s in zip(MEANS, SCALES)]
                w.writerow([f"p{patient:04d}"] + row)


if __name__ == "__main__":
    main()
