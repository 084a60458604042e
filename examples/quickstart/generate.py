"""Generates the quickstart's sample data, deterministically (fixed seed): ten CSV files of synthetic
patient measurements. Run from this folder: python3 generate.py

The model, model/heart-risk.onnx, is written by `cargo run -p cove-onnx --example quickstart_model`
(from the repository root), with the same means and scales.
"""
import csv
import os
import random

FEATURES = ["age", "resting_bp", "cholesterol", "max_heart_rate"]
MEANS = [54.0, 131.0, 246.0, 149.0]
SCALES = [9.0, 17.0, 51.0, 23.0]


def main():
    rng = random.Random(20261126)
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
