"""One command-line shape for every method: `python -m methods.<m> <command> [hydra overrides]`.

The dispatcher picks the command, composes conf/<method>.yaml with Hydra (so sweeps, launchers and run dirs behave as
Hydra users expect), validates the result against the method's schema, seeds, runs the command and writes
results.json + summary.md into the run dir. Bad input ends as one line on stderr and exit code 2.
"""

from __future__ import annotations

import importlib
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException

from common.config import CONF_DIR, as_dict, compose_raw, field_docs, validate
from common.dist import export_slurm_distributed_env, hold_run_dir, is_main_process
from common.errors import UserError
from common.io import WRITE_ERRNOS, write_error
from common.items import ItemsFailed
from common.loggers import quiet_library_bars
from common.results import write_results
from common.stages import running

RUNS_DIR, SWEEPS_DIR = "outputs", "multirun"


@dataclass(frozen=True)
class Lazy:
    """A function named "module:function", imported when first called. A method's __main__ names its commands and its
    table this way, so `--help` and a config error import none of the libraries the commands need (torch, ...)."""

    ref: str

    def resolve(self) -> Callable[..., Any]:
        module, _, function = self.ref.partition(":")
        return getattr(importlib.import_module(module), function)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.resolve()(*args, **kwargs)


@dataclass(frozen=True)
class Command:
    fn: Callable[[Any, Path], dict[str, float] | None]  # Lazy("methods.<m>.commands:<function>")
    help: str  # one line: what the command does
    reads: str = ""  # what it reads
    writes: str = ""  # what it leaves in the run dir (and the cache)
    keys: tuple[str, ...] = ()  # config sections / keys it uses, listed by `<command> --help`
    # Reads and checks the command's own inputs (files, folders, classes, labels) and raises a UserError naming the
    # bad one; the CLI runs it before `fn`, so a bad input is reported before any model is loaded or trained.
    inputs: Callable[[Any], None] | None = None


@dataclass(frozen=True)
class Method:
    name: str
    schema: type
    commands: dict[str, Command]
    table: Callable[[dict[str, float]], str] | None = None  # the paper-shaped table of a main-job run's metrics (Lazy)
    main_job: str = "train"


def run_root(method: str, command: str) -> Path:
    """Where single runs of a command go: outputs/<method>/<command>/<launch time>/."""
    return Path(RUNS_DIR) / method / command


def latest_run(method: str, command: str, marker: str = "results.json") -> Path:
    """The newest run dir of a command that holds `marker` (run dirs are named by launch time, so they sort)."""
    candidates = sorted(run_root(method, command).glob(f"*/{marker}"))
    if not candidates:
        raise UserError(f"no finished `{command}` run under {run_root(method, command)}; name one with its run_dir key")
    return candidates[-1].parent


def _usage(method: Method) -> str:
    width = max(len(name) for name in method.commands)
    lines = [f"usage: python -m methods.{method.name} <command> [hydra overrides]", "", "commands:"]
    lines += [f"  {name:<{width}}  {cmd.help}" for name, cmd in method.commands.items()]
    lines += [
        "",
        f"`<command> --help`: what a command reads, writes and which keys it uses; config: conf/{method.name}.yaml",
        "overrides: key=value, +experiment=<preset>, -m for a sweep; Hydra's own help: --hydra-help",
    ]
    return "\n".join(lines)


def _value(node: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        node = node[part]
    return node


def _show(value: Any) -> str:
    """A value as it is typed in an override (null, true, [a,b], {k: v})."""
    if value is None or isinstance(value, bool):
        return {None: "null", True: "true", False: "false"}[value]
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_show(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_show(v)}" for k, v in value.items()) + "}"
    return str(value)


def command_help(method: Method, name: str, overrides: list[str], conf_dir: str = CONF_DIR) -> str:
    """What a command does, reads and writes, and its keys with their composed values and one-line docs."""
    cmd = method.commands[name]
    lines = [f"usage: python -m methods.{method.name} {name} [key=value ...]", "", cmd.help]
    lines += [f"reads:  {cmd.reads}"] * bool(cmd.reads) + [f"writes: {cmd.writes}"] * bool(cmd.writes)
    # Composed without `command=`: requirements of a run of the command (e.g. an input it needs) do not stop its help.
    cfg = validate(compose_raw(method.name, method.schema, overrides, conf_dir), method.schema)
    docs = field_docs(method.schema)
    values = {k: _show(_value(as_dict(cfg), k)) for k in docs}
    keys = [k for k in docs if any(k == p or k.startswith(p + ".") for p in cmd.keys)]
    if keys:
        width = min(max(len(f"{k}={values[k]}") for k in keys), 48)
        lines += ["", "keys (value as composed now; set with key=value):"]
        lines += [f"  {f'{k}={values[k]}':<{width}}  {docs[k]}" for k in keys]
    return "\n".join(lines)


def fail(message: str) -> NoReturn:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def _precheck(method: Method, overrides: list[str], conf_dir: str) -> None:
    """Compose and validate once before Hydra starts, so a bad setting fails in one line before anything (.hydra/
    included) is written."""
    from hydra.errors import HydraException

    plain = [o for o in overrides if not o.startswith(("hydra.", "hydra/"))]
    try:
        validate(compose_raw(method.name, method.schema, plain, conf_dir), method.schema)
    except (HydraException, OmegaConfBaseException) as e:
        fail(f"config: {str(e).splitlines()[0]}")
    except UserError as e:
        fail(str(e))


def _check_writable(directory: str) -> None:
    """The run dir must be creatable: a read-only or forbidden place is one line before Hydra writes anything."""
    if "${" in directory:  # interpolated by Hydra (a sweep's ${now:}): its fixed part is checked
        directory = directory.split("${")[0]
    existing = Path(directory).absolute()
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not os.access(existing, os.W_OK):
        fail(f"cannot write the run dir {directory}: {existing} is read-only or not writable")


def _split_flags(args: list[str]) -> tuple[list[str], list[str]]:
    """Hydra's flags (with their values) and the overrides: argparse needs every flag before the first override."""
    flags, overrides = [], []
    i = 0
    while i < len(args):
        if args[i].startswith("-"):
            flags.append(args[i])
            takes_value = i + 1 < len(args) and not args[i + 1].startswith(("-", "~")) and "=" not in args[i + 1]
            if takes_value:
                flags.append(args[i + 1])
                i += 1
        else:
            overrides.append(args[i])
        i += 1
    return flags, overrides


def launch_stamp() -> str:
    """The run dir's timestamp, equal on every rank of one torchrun / accelerate launch.

    Ranks compose their configs independently, so `${now:}` could differ by a second between them. A multi-node
    launch has a rendezvous id shared by all nodes; on one node all ranks are children of the same launcher process,
    whose start time (from /proc) is the stamp.
    """
    run_id = os.environ.get("TORCHELASTIC_RUN_ID", "none")
    if "LOCAL_RANK" in os.environ and run_id != "none":
        return run_id
    started = time.time()
    if "LOCAL_RANK" in os.environ and Path(f"/proc/{os.getppid()}/stat").is_file():
        ticks = int(Path(f"/proc/{os.getppid()}/stat").read_text().rsplit(")", 1)[1].split()[19])
        boot = next(
            int(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines() if line.startswith("btime")
        )
        started = boot + ticks / os.sysconf("SC_CLK_TCK")
    return time.strftime("%Y-%m-%d_%H-%M-%S", time.localtime(started))


def main(method: Method, argv: list[str] | None = None, conf_dir: str = CONF_DIR) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage(method))
        sys.exit(0 if argv else 2)
    name, rest = argv[0], argv[1:]
    if name not in method.commands:
        fail(f"unknown command '{name}' for methods.{method.name}; valid commands: {', '.join(method.commands)}")
    flags, overrides = _split_flags(rest)
    if "-h" in flags or "--help" in flags:
        try:
            print(command_help(method, name, overrides, conf_dir))
        except UserError as e:
            fail(str(e))
        sys.exit(0)
    flags = ["--help" if f == "--hydra-help" else f for f in flags]
    overrides.append(f"command={name}")
    quiet_library_bars()
    if not flags:  # a sweep (-m) or --cfg/--info run is not one job: its jobs validate themselves
        _precheck(method, overrides, conf_dir)
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name=f"{method.name}_schema", node=method.schema)
    if not any(o.startswith("hydra.run.dir=") for o in overrides):
        overrides.append(f"hydra.run.dir={run_root(method.name, name)}/{launch_stamp()}")
    if not any(o.startswith("hydra.sweep.dir=") for o in overrides):
        overrides.append(f"hydra.sweep.dir={SWEEPS_DIR}/{method.name}/{name}/${{now:%Y-%m-%d_%H-%M-%S}}")
    sweep = "-m" in flags or "--multirun" in flags
    out_dir = next(o for o in overrides if o.startswith(f"hydra.{'sweep' if sweep else 'run'}.dir=")).split("=", 1)[1]
    _check_writable(out_dir)
    # One writer per run dir, taken before Hydra writes .hydra/ there; a sweep's jobs and a run dir Hydra
    # interpolates are held by the job once its dir is known, and --cfg/--info run nothing.
    if not flags and "${" not in out_dir:
        try:
            hold_run_dir(out_dir)
        except UserError as e:
            fail(str(e))

    import hydra
    from hydra.core.hydra_config import HydraConfig

    def job(raw: DictConfig) -> dict | None:
        metrics: dict[str, float] = {}
        error: UserError | None = None
        try:
            cfg = validate(raw, method.schema)
            export_slurm_distributed_env()
            run_dir = Path(HydraConfig.get().runtime.output_dir)
            hold_run_dir(run_dir)  # a sweep's job (its dir is known only now); a no-op where main() holds it
            from accelerate.utils import set_seed

            set_seed(cfg.seed)
            if method.commands[name].inputs is not None:
                method.commands[name].inputs(cfg)
            with running(cfg):
                metrics = method.commands[name].fn(cfg, run_dir) or {}
        except ItemsFailed as e:  # the other items finished: record what they gave, then fail
            metrics, error = e.metrics, e
        except UserError as e:
            fail(str(e))
        except OSError as e:  # a full disk or a read-only place met by a write that is not ours
            if e.errno not in WRITE_ERRNOS:
                raise
            fail(str(write_error(e.filename or ".", e)))
        if is_main_process():
            write_results(run_dir, f"{method.name} {name}", metrics, as_dict(cfg))
            if method.table is not None and name == method.main_job:
                print("\n" + method.table(metrics))
            print(f"\nrun dir: {run_dir} (all metrics: summary.md, results.json)")
        if error is not None:
            fail(str(error))
        return metrics

    sys.argv = [f"methods.{method.name}", *flags, *overrides]
    hydra.main(config_path=conf_dir, config_name=method.name, version_base=None)(job)()
