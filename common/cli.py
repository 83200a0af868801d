"""One command-line shape for every method: `python -m methods.<m> <command> [hydra overrides]`.

The dispatcher picks the command, composes conf/<method>.yaml with Hydra (so sweeps, launchers and run dirs behave as
Hydra users expect), validates the result against the method's schema, seeds, runs the command and writes
results.json + summary.md into the run dir. Bad input ends as one line on stderr and exit code 2.
"""
from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from common.config import validate
from common.dist import export_slurm_distributed_env, is_main_process
from common.errors import UserError
from common.results import write_results

CONF_DIR = str(Path(__file__).resolve().parent.parent / "conf")


@dataclass(frozen=True)
class Command:
    fn: Callable[[DictConfig, Path], dict[str, float] | None]
    help: str


def _usage(method: str, commands: dict[str, Command]) -> str:
    width = max(len(name) for name in commands)
    lines = [f"usage: python -m methods.{method} <command> [hydra overrides]", "", "commands:"]
    lines += [f"  {name:<{width}}  {cmd.help}" for name, cmd in commands.items()]
    lines += ["", f"overrides: key=value, +model=<name>, -m for a sweep; config: conf/{method}.yaml"]
    return "\n".join(lines)


def fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def register_schema(method: str, schema: type) -> None:
    """Make the schema the base of conf/<method>.yaml (its defaults list starts with `<method>_schema`), so every schema
    key can be overridden from the command line and a wrong type fails while composing."""
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name=f"{method}_schema", node=schema)


def _check_composes(method: str, overrides: list[str], conf_dir: str) -> None:
    """Compose once up front so that a mistyped override key fails in one line, before Hydra's multi-line report."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    plain = [o for o in overrides if not o.startswith("-") and not o.startswith("hydra")]
    try:
        with initialize_config_dir(config_dir=conf_dir, version_base=None):
            compose(config_name=method, overrides=plain)
    except (HydraException, OmegaConfBaseException) as e:
        fail(f"config: {str(e).splitlines()[0]}")


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
        boot = next(int(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines() if line.startswith("btime"))
        started = boot + ticks / os.sysconf("SC_CLK_TCK")
    return time.strftime("%Y-%m-%d_%H-%M-%S", time.localtime(started))


def main(method: str, commands: dict[str, Command], schema: type, argv: list[str] | None = None, conf_dir: str = CONF_DIR) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage(method, commands))
        sys.exit(0 if argv else 2)
    name, overrides = argv[0], argv[1:]
    if name not in commands:
        fail(f"unknown command '{name}' for methods.{method}; valid commands: {', '.join(commands)}")
    register_schema(method, schema)
    flags, overrides = _split_flags(overrides)
    overrides.append(f"command={name}")
    if not flags:  # a sweep or --cfg/--info run cannot be composed as a single job here
        _check_composes(method, overrides, conf_dir)
    if not any(o.startswith("hydra.run.dir=") for o in overrides):
        overrides.append(f"hydra.run.dir=outputs/{method}/{name}/{launch_stamp()}")
    if not any(o.startswith("hydra.sweep.dir=") for o in overrides):
        overrides.append(f"hydra.sweep.dir=multirun/{method}/{name}/${{now:%Y-%m-%d_%H-%M-%S}}")

    import hydra
    from hydra.core.hydra_config import HydraConfig

    def job(cfg: DictConfig) -> dict | None:
        try:
            cfg = validate(cfg, schema)
            export_slurm_distributed_env()
            run_dir = Path(HydraConfig.get().runtime.output_dir)
            from accelerate.utils import set_seed

            set_seed(cfg.seed)
            metrics = commands[name].fn(cfg, run_dir) or {}
        except UserError as e:
            fail(str(e))
        if is_main_process():
            summary = write_results(run_dir, f"{method} {name}", metrics, OmegaConf.to_container(cfg, resolve=True))
            print(summary)
            print(f"\nrun dir: {run_dir}")
        return metrics

    sys.argv = [f"methods.{method}", *flags, *overrides]
    hydra.main(config_path=conf_dir, config_name=method, version_base=None)(job)()
