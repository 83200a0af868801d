"""`python -m methods.dqmq <command> [overrides]`; `<command> --help` lists what a command reads, writes and its keys."""

from common.cli import Command, Lazy, Method, main
from methods.dqmq.config import DQMQConfig

DATA = ("data", "net", "seed", "data_dir")
COMMANDS = {
    "train": Command(
        Lazy("methods.dqmq.commands:train"),
        "DQMQ and the baselines (method=..., compare=[...]) on mixed-quality data, evaluated per quality level",
        reads="data.* (digits offline; cifar / imagefolder from data.root); the cached full-precision network",
        writes="<method>/model/, levels.csv, levels.json, correct.npz, bits_<method>.png, pareto.png; cache_dir/dqmq/fp",
        keys=(
            *DATA,
            "method",
            "compare",
            "fixed_bits",
            "quant",
            "policy",
            "static",
            "pretrain",
            "trainer",
            "eval",
            "logger",
            "cache_dir",
            "cpu_threads",
        ),
        inputs=Lazy("methods.dqmq.commands:check_inputs"),
    ),
    "eval": Command(
        Lazy("methods.dqmq.commands:eval"),
        "accuracy, mean bits and BitOps per quality level and severity of a train run's models",
        reads="eval.run_dir's <method>/model/ (or the latest train run); eval.bits_json to run at exported bits; "
        "eval.corrupted: a CIFAR-10-C / CIFAR-100-C folder or an ImageNet-C root",
        writes="levels.csv, levels.json, correct.npz, bits_<method>.png, pareto.png; corruptions.csv (eval.corrupted)",
        keys=(*DATA, "eval", "cpu_threads"),
        inputs=Lazy("methods.dqmq.commands:check_inputs"),
    ),
    "export": Command(
        Lazy("methods.dqmq.commands:export"),
        "a trained model as ONNX (QDQ per layer at its bits; DQMQ: with its router) and its bits per level as JSON",
        reads="export.run_dir's <export.method>/model/, the test images (DQMQ: the training mixture too)",
        writes="onnx/ (deploy.json, config_<i>.onnx, router.onnx), bits.json",
        keys=(*DATA, "export", "eval.batch_size", "cpu_threads"),
        inputs=Lazy("methods.dqmq.commands:check_inputs"),
    ),
}
METHOD = Method("dqmq", DQMQConfig, COMMANDS, table=Lazy("methods.dqmq.train:table"))

if __name__ == "__main__":
    main(METHOD)
