"""Creates the virtualenv that the baselines and the data generator run in.

The suite's orchestrator runs on the system python with the standard library only;
everything that needs third-party packages (numpy, onnxruntime, Ray, ...) runs in
this venv, so the system python stays untouched. A stamp holding the hash of
requirements.txt makes a second call skip installing.
"""

import hashlib
import os
import subprocess
import sys

SUITE_DIR = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(os.path.dirname(SUITE_DIR))
REQUIREMENTS = os.path.join(SUITE_DIR, "requirements.txt")
DEFAULT_VENV = os.path.join(REPO_ROOT, "target", "bench-venv")
STAMP_NAME = ".requirements.sha256"


def venv_python(venv_dir: str = DEFAULT_VENV) -> str:
    """Path of the venv's interpreter."""
    return os.path.join(venv_dir, "bin", "python")


def requirements_hash() -> str:
    """Hash of requirements.txt plus the interpreter version: either changing means reinstalling."""
    h = hashlib.sha256()
    with open(REQUIREMENTS, "rb") as f:
        h.update(f.read())
    h.update(sys.version.encode())
    return h.hexdigest()


def ensure_venv(venv_dir: str = DEFAULT_VENV, quiet: bool = False) -> str:
    """Makes the venv and installs the pinned requirements unless the stamp says it is done.

    Returns the venv's python. The stamp is written only after pip succeeded, so an
    interrupted install is redone on the next call.
    """
    stamp = os.path.join(venv_dir, STAMP_NAME)
    want = requirements_hash()
    py = venv_python(venv_dir)
    if os.path.exists(py) and os.path.exists(stamp):
        with open(stamp) as f:
            if f.read().strip() == want:
                return py
    log = (lambda *_: None) if quiet else (lambda msg: print(msg, file=sys.stderr, flush=True))
    if not os.path.exists(py):
        log(f"creating venv {venv_dir}")
        # -I: never pick up this file (named venv.py) instead of the standard module.
        subprocess.run([sys.executable, "-I", "-m", "venv", venv_dir], check=True)
    log(f"installing {REQUIREMENTS} into {venv_dir}")
    subprocess.run(
        [py, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "-r", REQUIREMENTS],
        check=True,
    )
    with open(stamp, "w") as f:
        f.write(want + "\n")
    return py


if __name__ == "__main__":
    print(ensure_venv())
