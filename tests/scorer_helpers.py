"""What the tests of the sequence-classification scorer methods (tests/guardrank, tests/flames) share: one shrunk
train run per session, record files written by hand, and the checks every scorer method's reader and CLI must pass."""

from __future__ import annotations

import contextlib
import io
import json
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from common.config import compose
from common.errors import UserError


def train_once(tmp_path_factory, name: str, small: Sequence[str]) -> tuple[Path, str, dict[str, float]]:
    """(run_dir, printed output, metrics) of a shrunk train run of `python -m methods.<name>`, in process: what the
    CLI runs after composing. The method's conf/<name>.yaml sets cpu_threads=1; torch's threads are restored after."""
    import importlib

    import torch
    from accelerate.utils import set_seed

    method = importlib.import_module(f"methods.{name}.__main__").METHOD
    root = tmp_path_factory.mktemp(name)
    cfg = compose(name, *small, f"cache_dir={root / 'cache'}", "command=train")
    set_seed(cfg.seed)
    buffer, threads = io.StringIO(), torch.get_num_threads()
    with contextlib.redirect_stdout(buffer):
        metrics = method.commands["train"].fn(cfg, root / "run")
    torch.set_num_threads(threads)
    return root / "run", buffer.getvalue() + method.table(metrics), metrics


def write(path: Path, *lines: str) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def read_one(read_file: Callable, path: Path, line: str, labelled: bool = True):
    """The one record of a file holding `line`."""
    (record,) = read_file(write(path, line), labelled=labelled)
    return record


def assert_bad_line(read_file: Callable, path: Path, good: dict, lines: Sequence[str], message: str) -> None:
    """A file of a good record then `lines`: reading it fails on its last line, naming file, line and `message`."""
    f = write(path, json.dumps(good), *lines)
    with pytest.raises(UserError) as err:
        read_file(f, labelled=True)
    assert str(err.value).startswith(f"{f}:{1 + len(lines)}: ") and message in str(err.value)


def assert_latest_scorer(tmp_path: Path, monkeypatch, name: str, scorer_dir: Callable[[str | None], Path]) -> None:
    """`scorer_dir(None)` is the latest train run's scorer under outputs/<name>/train/; an explicit one is kept."""
    for stamp in ("2026-01-01_00-00-00", "2026-02-01_00-00-00"):
        (tmp_path / "outputs" / name / "train" / stamp / "scorer").mkdir(parents=True)
        (tmp_path / "outputs" / name / "train" / stamp / "scorer" / "scorer.json").write_text("{}")
    monkeypatch.chdir(tmp_path)
    assert scorer_dir(None) == Path(f"outputs/{name}/train/2026-02-01_00-00-00/scorer")
    assert scorer_dir("/some/scorer") == Path("/some/scorer")


def assert_score_needs_inputs(name: str) -> None:
    with pytest.raises(UserError, match="score needs score.inputs"):
        compose(name, "command=score")


def assert_compose_fails(name: str, override: str, message: str) -> None:
    with pytest.raises(UserError, match=message):
        compose(name, override)


def assert_command_explains_itself(method, command: str) -> None:
    """`<command> --help` shows the command's help and its keys as composed now."""
    from common.cli import command_help

    text = command_help(method, command, [])
    assert method.commands[command].help in text and "keys (value as composed now" in text
