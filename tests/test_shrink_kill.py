"""SIGKILL of `kmemopt shrink` itself, mid-write, leaves neither an output nor a temp file."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time

import psutil
import pytest
from conftest import SAMPLES


@pytest.mark.slow  # a shrink killed in its reload check (two TensorFlow imports); test_shrink_cli's fast tier kills a reload process too: `make test` runs it
def test_sigkill_during_the_reload_check_leaves_nothing(tmp_path):
    source = tmp_path / "mlp.keras"
    shutil.copy(SAMPLES / "digits_mlp.keras", source)
    before = source.read_bytes()
    out = tmp_path / "mlp.slim.keras"
    proc = subprocess.Popen(
        [sys.executable, "-m", "kmemopt", "shrink", str(source), "-o", str(out), "--quantize", "int8"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    parent = psutil.Process(proc.pid)
    deadline = time.time() + 240

    # The reload check is a fresh `python -c <load_model script>` started after the output was
    # written to its temp file (other children, such as the forked metadata reader, come earlier).
    def reloading() -> bool:
        for child in parent.children():
            try:
                if any("reload_in_child" in part for part in child.cmdline()):
                    return True
            except psutil.Error:
                pass
        return False

    while time.time() < deadline and proc.poll() is None and not reloading():
        time.sleep(0.05)
    assert proc.poll() is None, "shrink finished before the reload check could be interrupted"
    children = parent.children(recursive=True)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    for child in children:
        try:
            child.wait(timeout=60)  # the orphaned reload process finishes or dies on its own
        except psutil.NoSuchProcess:
            pass
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mlp.keras"]
    assert source.read_bytes() == before
