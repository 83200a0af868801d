"""Fixtures shared by the common/ tests."""

import subprocess

import pytest


@pytest.fixture
def small_disk(tmp_path):
    """A 64 KiB tmpfs (root only); skipped where mounting is not allowed."""
    mount = tmp_path / "disk"
    mount.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)], capture_output=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {proc.stderr.decode().strip()}")
    yield mount
    # Lazy: a failed write may leave a file open (held by the traceback) until the test is collected.
    subprocess.run(["umount", "--lazy", str(mount)])
