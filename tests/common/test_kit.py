"""The kit's pieces on their own: checks at composition, keys, stages, registry, module checkpoints."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import List, Optional

import pytest
import torch

from common.checkpoint import load_module, save_module
from common.config import MODEL, PATH, opt, section, validate
from common.errors import UserError
from common.registry import create, declare, names, register
from common.stages import key_of, run_stage, stage_path

REPO = Path(__file__).resolve().parents[2]


@dataclass
class Inner:
    size: int = opt(4, "a size", ge=1)
    workers: int = opt(2, "loader workers", ge=0, key=False)


@dataclass
class Demo:
    inner: Inner = section(Inner, "inner section")
    rate: float = opt(0.5, "a fraction", gt=0, le=1)
    kind: str = opt("a", "a choice", choices=("a", "b"))
    kinds: List[str] = opt(["a"], "choices in a list", choices=("a", "b"))
    weights: Optional[str] = opt(None, "a file", exists=PATH)
    checkpoint: str = opt("org/name", "hub id or local dir", exists=MODEL)
    net: str = opt("tiny", "a registered net", registry=declare("test.net", ("tiny",), module=__name__))


@register("test.net", "tiny")
def tiny_net(width: int = 3) -> torch.nn.Module:
    return torch.nn.Linear(width, 2)


@pytest.mark.parametrize(
    "override,message",
    [
        ({"inner": {"size": 0}}, "config: inner.size=0: must be >= 1 (a size)"),
        ({"rate": 1.5}, "config: rate=1.5: must be <= 1 (a fraction)"),
        ({"kind": "c"}, "config: kind='c': not one of a, b"),
        ({"kinds": ["a", "z"]}, "config: kinds='z': not one of a, b"),
        ({"weights": "/no/such/file.pt"}, "config: weights=/no/such/file.pt: path does not exist (a file)"),
        (
            {"checkpoint": "./no/such/dir"},
            "config: checkpoint=./no/such/dir: path does not exist (hub id or local dir)",
        ),
        ({"net": "huge"}, "config: net='huge': not one of tiny"),
        ({"inner": {"size": "big"}}, "config: inner.size=big: expected an integer"),
    ],
)
def test_bad_setting_is_one_line(override, message):
    with pytest.raises(UserError) as e:
        validate(override, Demo)
    assert str(e.value).startswith(message) and "\n" not in str(e.value)


def test_validate_returns_the_schema_object_and_paths_can_be_skipped():
    cfg = validate({"checkpoint": "meta-llama/Llama-2-7b-chat-hf", "inner": {"size": 8}}, Demo)
    assert isinstance(cfg, Demo) and cfg.inner.size == 8
    assert validate({"weights": "/not/here.pt"}, Demo, paths=False).weights == "/not/here.pt"


def test_key_changes_with_settings_that_matter_only():
    base = Demo()
    assert key_of(base) == key_of(Demo())
    assert key_of(base) != key_of(replace(base, inner=Inner(size=5)))
    assert key_of(base) == key_of(replace(base, inner=Inner(workers=7)))  # key=False
    assert stage_path("c", "m/s", base, label="x").parent.as_posix() == "c/m/s"


def test_stage_runs_once_and_is_complete_or_absent(tmp_path, capsys):
    calls = []
    path = tmp_path / "out.txt"

    def write(tmp):
        calls.append(1)
        tmp.write_text("result")

    assert run_stage("demo", path, write) == path and path.read_text() == "result"
    run_stage("demo", path, write)
    assert len(calls) == 1 and "[ cached ] demo" in capsys.readouterr().out

    def broken(tmp):
        tmp.mkdir()
        (tmp / "half").write_text("x")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        run_stage("broken", tmp_path / "dir", broken)
    left = sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock"))
    assert left == ["out.txt"]  # neither the output nor its temp remains


STAGE_JOB = """
import os, sys, time
from pathlib import Path
from common.stages import run_stage

def write(tmp):
    with open(sys.argv[2], "a") as log:
        log.write(f"{os.getpid()}\\n")
    time.sleep(1.5)  # long enough that the other job starts while this one builds
    tmp.write_text(f"made by {os.getpid()}")

print(run_stage("shared", Path(sys.argv[1]), write).read_text())
"""


def test_two_jobs_needing_one_stage_build_it_once(tmp_path):
    out, log = tmp_path / "cache" / "model.txt", tmp_path / "builds.log"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    jobs = [
        subprocess.Popen(
            [sys.executable, "-c", STAGE_JOB, str(out), str(log)], env=env, stdout=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    outputs = [job.communicate(timeout=120)[0] for job in jobs]
    assert all(job.returncode == 0 for job in jobs)
    builders = log.read_text().split()
    assert len(builders) == 1  # one job built it, the other waited and reused it
    assert [o.strip().splitlines()[-1] for o in outputs] == [f"made by {builders[0]}"] * 2
    assert sum("made by another job meanwhile" in o for o in outputs) == 1


KILLED_STAGE = """
import os, signal, sys
from pathlib import Path
from common.stages import run_stage

def write(tmp):
    tmp.mkdir()
    (tmp / "half").write_text("x")
    os.kill(os.getpid(), signal.SIGKILL)  # a real kill: no cleanup runs

run_stage("killed", Path(sys.argv[1]), write)
"""


def test_a_stage_killed_while_writing_leaves_nothing_after_the_next_run(tmp_path):
    """SIGKILL during a stage write used to leave `.<name>.tmp-<pid>` for ever (only the own pid's temp was removed):
    the next run removes a dead writer's temp, and keeps one whose writer is alive."""
    out = tmp_path / "cache" / "stage"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    killed = subprocess.run([sys.executable, "-c", KILLED_STAGE, str(out)], env=env, capture_output=True, timeout=120)
    assert killed.returncode == -9 and not out.exists()
    assert [p.name.split("-")[0] for p in out.parent.glob(".stage.tmp-*")] == [".stage.tmp"]
    live = out.parent / f".stage.tmp-1@{socket.gethostname()}"  # pid 1 is alive: a writer still at work
    live.mkdir()
    run_stage("again", out, lambda tmp: tmp.write_text("complete"))
    assert out.read_text() == "complete"
    assert [p.name for p in out.parent.glob(".stage.tmp-*")] == [live.name]


def test_stage_with_compute_writes_the_computed_value(tmp_path):
    out = run_stage("c", tmp_path / "v.txt", lambda tmp, v: tmp.write_text(str(v)), compute=lambda: 41 + 1)
    assert out.read_text() == "42"


def test_registry_lists_valid_names_in_the_error():
    assert "tiny" in names("test.net") and isinstance(create("test.net", "tiny", width=5), torch.nn.Linear)
    with pytest.raises(UserError, match=r"unknown test.net 'huge'; valid: tiny"):
        create("test.net", "huge")
    with pytest.raises(ValueError, match="registered twice"):
        register("test.net", "tiny")(lambda: None)


def test_module_checkpoint_round_trip(tmp_path):
    net = tiny_net(width=6)
    save_module(net, tmp_path / "m", "test.net", "tiny", {"width": 6}, genes=["TP53"])
    loaded, meta = load_module(tmp_path / "m")
    assert meta["genes"] == ["TP53"] and not loaded.training
    x = torch.randn(2, 6)
    assert torch.equal(loaded(x), net(x))
    with pytest.raises(UserError, match="no model.json"):
        load_module(tmp_path)


def test_common_has_no_import_circle():
    """Module-level and function-level imports alike: a function-level import only hides a circle."""
    import ast

    graph: dict[str, set[str]] = {}
    for path in sorted((REPO / "common").glob("*.py")):
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("common."):
                found.add(node.module.split(".")[1])
            elif isinstance(node, ast.Import):
                found |= {a.name.split(".")[1] for a in node.names if a.name.startswith("common.")}
        graph[path.stem] = found - {path.stem}

    def reaches(start: str, goal: str, seen: set[str]) -> bool:
        return any(n == goal or (n not in seen and reaches(n, goal, seen | {n})) for n in graph.get(start, ()))

    circles = sorted(m for m in graph if reaches(m, m, {m}))
    assert not circles, circles


def test_progress_bars_follow_the_terminal_unless_set(monkeypatch):
    """trainer.progress: null (the default) shows bars where a person watches stderr, never in a job's log file."""
    from common.config import TrainerConfig
    from common.loggers import show_progress

    assert TrainerConfig().progress is None
    for tty in (True, False):
        monkeypatch.setattr(sys.stderr, "isatty", lambda tty=tty: tty)
        assert show_progress(None) is tty and show_progress(True) and not show_progress(False)


def test_the_libraries_bars_are_off_in_a_jobs_log():
    """transformers' 'Loading weights' / 'Writing model shards' bars filled job logs although ours were off there."""
    probe = (
        "import sys\n"
        "if sys.argv[1] == 'quiet':\n"
        "    from common.loggers import quiet_library_bars; quiet_library_bars()\n"
        "from transformers.utils import logging\n"
        "print(logging.is_progress_bar_enabled())\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_DISABLE_PROGRESS_BARS"}
    for mode, expected in (("quiet", "False"), ("as-is", "True")):
        out = subprocess.run(
            [sys.executable, "-c", probe, mode], capture_output=True, text=True, env=env, timeout=120, check=True
        )
        assert out.stdout.strip() == expected
