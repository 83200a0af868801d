"""The CLI: a bad setting is one `error:` line and exit 2 before anything is written; `<command> --help` for every
command explains it without doing any work."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from common.config import field_docs
from methods.meow.__main__ import COMMANDS
from methods.meow.config import MeowConfig

REPO = Path(__file__).resolve().parents[2]


def meow(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "methods.meow", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


@pytest.mark.parametrize(
    "override",
    [
        "trainer.batch_size=-1",
        "finetune.trainer.batch_size=0",
        "finetune.target=/does/not/exist",
        "trainer.lr=-1",
        "method=nope",
        "compare=[ga,nope]",
        "invert.generator=nope",
        "+invert.api_key=sk-x",
        "memo.stride=0",
    ],
)
def test_bad_setting_is_one_line_exit_2_and_writes_nothing(tmp_path, override):
    proc = meow("train", override, f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: config:"), lines
    assert override.split("=")[0].lstrip("+").split(".")[-1] in lines[0]  # the message names the key
    assert "sk-x" not in proc.stdout + proc.stderr
    assert list(tmp_path.iterdir()) == []  # no run dir (.hydra/ included), no cache, no outputs/


@pytest.mark.parametrize("command", list(COMMANDS))
def test_command_help_lists_its_keys_and_does_no_work(tmp_path, command):
    proc = meow(command, "--help", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    cmd = COMMANDS[command]
    assert cmd.help in proc.stdout and f"reads:  {cmd.reads}" in proc.stdout
    docs = field_docs(MeowConfig)
    listed = [k for k in docs if any(k == p or k.startswith(p + ".") for p in cmd.keys)]
    assert listed and all(f"{k}=" in proc.stdout and docs[k] in proc.stdout for k in listed)
    assert list(tmp_path.iterdir()) == []
