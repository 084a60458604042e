"""Cove's contenders in the comparative benchmark suite (see run.py).

Each function runs one measured Cove job and returns its measurements; run.py calls
them interleaved with the baselines, round after round. `work` is an empty scratch
folder for that one run (run.py empties it before and removes it after).

A function that raises NotImplementedError is reported as "not run", and the targets
that depend on it as "not measured", so the rest of the suite works without it.
"""


def setup(repo_root: str, work: str) -> None:
    """Called once before all rounds: build or start what every Cove run shares."""


def teardown() -> None:
    """Called once after all rounds, even when a round failed."""


def tabular(data_dir: str, model: str, work: str) -> dict:
    """Scores DATA/tabular (CSV files) with `model`; returns {"wall_s": ...}."""
    raise NotImplementedError("cove contender")


def tiny(data_dir: str, model: str, work: str) -> dict:
    """Scores DATA/tiny (one-row CSV files) with `model`; returns {"wall_s": ...}."""
    raise NotImplementedError("cove contender")


def overhead(data_dir: str, work: str) -> dict:
    """Control-plane cost of a job over `data_dir`.

    Returns {"wall_s", "mini_batches_per_s", "invoke_to_first_batch_ms",
    "control_plane_cpu_ms_per_batch"}.
    """
    raise NotImplementedError("cove contender")


def scale(data_dir: str, work: str) -> dict:
    """A job over DATA/million (empty files); returns {"wall_s", "control_plane_peak_rss_mb"}."""
    raise NotImplementedError("cove contender")


def output(work: str) -> dict:
    """Output assembly speed; returns {"wall_s", "rows", "mb_per_s"}."""
    raise NotImplementedError("cove contender")
