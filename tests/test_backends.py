"""A Keras backend that is unknown, or selected but not installed, is a usage error (exit 2) that says
how to install it; never an internal error."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import pytest
from conftest import SAMPLES


def _profile_with_backend(backend: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "KERAS_BACKEND": backend}
    return subprocess.run(
        [sys.executable, "-m", "kmemopt", "profile", str(SAMPLES / "digits_mlp.keras")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_a_backend_that_is_not_installed_is_exit_2_with_the_install_command(backend):
    if importlib.util.find_spec(backend) is not None:
        pytest.skip(f"{backend} is installed here")
    r = _profile_with_backend(backend)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr
    assert f'pip install "kmemopt[{backend}]"' in lines[0] and f"KERAS_BACKEND={backend}" in lines[0]


def test_an_unknown_backend_is_exit_2():
    r = _profile_with_backend("nosuchbackend")
    assert r.returncode == 2, r.stderr
    assert "'nosuchbackend' is not a Keras backend" in r.stderr and "Traceback" not in r.stderr
