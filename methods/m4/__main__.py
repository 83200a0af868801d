from common.cli import Command, main
from methods.m4 import commands
from methods.m4.config import M4Config

COMMANDS = {
    "tile": Command(commands.tile, "tissue segmentation + patch grid at a target mpp/magnification -> patches/<slide>.h5 (CLAM layout)"),
    "extract": Command(commands.extract, "patch features with a timm backbone -> h5_files/ + pt_files/ (resumable, shard=i num_shards=n)"),
    "train": Command(commands.train, "M4 and the baselines (MMoE, single-task ABMIL per gene) on patient-level splits"),
    "eval": Command(commands.eval, "per-gene AUC/F1/acc/sens/spec (mean ± std over splits) and ROC PNGs of a train run"),
    "heatmap": Command(commands.heatmap, "per-gene attention over slide thumbnails (PNG) from a trained M4/MMoE"),
}

if __name__ == "__main__":
    main("m4", COMMANDS, M4Config)
