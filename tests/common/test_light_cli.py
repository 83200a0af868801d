"""The CLI answers at once: `--help`, `<command> --help` and a rejected setting import no heavy library (torch,
transformers, ...), for every method; what it names lazily (commands, tables, registry kinds) is really there.

Timings are bench/cli_latency.py's; these tests check only what makes them short.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest

from common import registry
from common.cli import Lazy
from common.config import SCHEDULERS, method_spec
from common.errors import UserError

REPO = Path(__file__).resolve().parents[2]
METHODS = ("meow", "m4", "dqmq", "medmfg", "esc_eval", "guardrank", "flames", "fine")
HEAVY = ("torch", "transformers", "peft", "accelerate", "nltk", "rouge_score", "scipy", "sklearn", "pandas", "timm")
HEAVY += ("skimage", "matplotlib", "openai", "h5py", "PIL")
# A registry-checked setting where the method has one, else a value out of range: both rejected with exit 2.
REJECTED = {
    "meow": ("method=nope", "not one of ga, gd"),
    "m4": ("train.models=[m4,nope]", "not one of m4, mmoe, amil"),
    "dqmq": ("net.arch=nope", "not one of digits_cnn, resnet20"),
    "medmfg": ("eval.methods=[nope]", "not one of protonet, logreg"),
    "fine": ("judge.name=nope", "not one of llm, guardrank, flames"),
}

# Runs in a fresh interpreter: the CLI on each argv, then which heavy modules got imported.
PROBE = """
import contextlib, io, json, sys
from common.cli import main
from common.config import method_spec

method, runs = method_spec(sys.argv[1]), []
for argv in json.loads(sys.argv[2]):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main(method, argv)
            code = None
        except SystemExit as e:
            code = e.code
    runs.append({"argv": argv, "code": code, "out": out.getvalue(), "err": err.getvalue()})
print(json.dumps({"runs": runs, "heavy": [m for m in json.loads(sys.argv[3]) if m in sys.modules]}))
"""


@pytest.mark.parametrize("name", METHODS)
def test_help_and_rejected_settings_import_no_heavy_library(name):
    job = method_spec(name).main_job
    bad, message = REJECTED.get(name, ("trainer.batch_size=-1", "trainer.batch_size=-1: must be >= 1"))
    argvs = [["--help"], [job, "--help"], [job, bad], [job, "trainer.batch_sise=4"], [job, "trainer.lr=fast"]]
    out = subprocess.run(
        [sys.executable, "-c", PROBE, name, json.dumps(argvs), json.dumps(HEAVY)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout)
    help_, command_help, rejected, mistyped, wrong_type = result["runs"]
    assert help_["code"] == 0 and f"python -m methods.{name} <command>" in help_["out"]
    assert command_help["code"] == 0 and "keys (value as composed now" in command_help["out"]
    assert rejected["code"] == 2 and message in rejected["err"], rejected
    assert mistyped["code"] == 2 and "batch_sise" in mistyped["err"], mistyped
    assert wrong_type["code"] == 2 and "fast" in wrong_type["err"], wrong_type
    assert result["heavy"] == []


def test_every_lazy_reference_resolves():
    """Each command, input check and table named by a method's __main__ is a function of the module it names."""
    for name in METHODS:
        method = method_spec(name)
        named = [method.table, *(getattr(c, f) for c in method.commands.values() for f in ("fn", "inputs"))]
        for ref in named:
            if isinstance(ref, Lazy):
                assert callable(ref.resolve()), f"{name}: {ref.ref}"
        assert all(isinstance(c.fn, Lazy) for c in method.commands.values()), name
        assert isinstance(method.table, Lazy), name


def _registry_fields(schema: type) -> list[str]:
    """The registry kinds named by a schema's fields, nested sections included."""
    kinds = []
    for f in dataclasses.fields(schema):
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default  # type: ignore[misc]
        if dataclasses.is_dataclass(default):
            kinds += _registry_fields(type(default))
        elif f.metadata.get("registry"):
            kinds.append(f.metadata["registry"])
    return kinds


def test_declared_names_are_the_registered_ones():
    """Every kind a setting names is declared in a config module, and its module registers exactly those names."""
    named = {kind for name in METHODS for kind in _registry_fields(method_spec(name).schema)}
    assert named <= set(registry.kinds()), named - set(registry.kinds())
    assert {"meow.loss", "meow.inverter", "m4.model", "dqmq.net", "medmfg.method", "fine.judge"} <= named
    for kind in registry.kinds():
        assert registry.unregistered(kind) == [], kind


def test_a_declared_kind_is_closed_and_built_on_demand(tmp_path, monkeypatch):
    monkeypatch.setattr(registry, "_ENTRIES", {})
    monkeypatch.setattr(registry, "_DECLARED", {})
    (tmp_path / "light_nets.py").write_text(
        "from common.registry import register\n\n@register('t.net', 'a')\ndef a():\n    return 'built a'\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    registry.declare("t.net", ("a", "b"), module="light_nets")
    assert registry.names("t.net") == ["a", "b"] and "light_nets" not in sys.modules
    assert registry.create("t.net", "a") == "built a"  # imports the module that registers it
    assert registry.unregistered("t.net") == ["b"]
    with pytest.raises(ValueError, match="'b' is declared but light_nets does not register it"):
        registry.get("t.net", "b")
    with pytest.raises(UserError, match="unknown t.net 'c'; valid: a, b"):
        registry.get("t.net", "c")
    with pytest.raises(ValueError, match="t.net 'c' is not declared"):
        registry.register("t.net", "c")
    registry.register("u.net", "x")(object())  # registered before its kind is declared without it
    with pytest.raises(ValueError, match="u.net 'x' is registered but not declared"):
        registry.declare("u.net", ("y",), module="light_nets")
    with pytest.raises(ValueError, match="declared twice"):
        registry.declare("t.net", ("a",), module="light_nets")
    with pytest.raises(ValueError, match="not declared"):
        registry.declared("v.net")


def test_scheduler_names_are_transformers_own():
    from transformers import SchedulerType

    assert SCHEDULERS == tuple(s.value for s in SchedulerType)
