"""`python -m methods.m4 <command>`: the commands with what they read, write and which settings they use."""

from common.cli import Command, Lazy, Method, main
from methods.m4.config import M4Config

DATA = ("data", "synthetic")
COMMANDS = {
    "tile": Command(
        Lazy("methods.m4.commands:tile"),
        "tissue segmentation + patch grid at a target mpp/magnification (CLAM layout)",
        reads="data.slides_dir (or the synthetic cohort)",
        writes="<work>/patches/<key>/<slide>.h5, tile_summary.json",
        keys=(*DATA, "tile", "shard", "num_shards"),
    ),
    "extract": Command(
        Lazy("methods.m4.commands:extract"),
        "patch features with a pathology or timm encoder (resumable, shard=i num_shards=n)",
        reads="the slides and their patches/<key>/",
        writes="<work>/features/<backbone>-<key>/{h5_files,pt_files}/, extract_summary.json",
        keys=(*DATA, "tile", "extract", "shard", "num_shards", "trainer.progress"),
    ),
    "train": Command(
        Lazy("methods.m4.commands:train"),
        "M4 and the baselines (MMoE, single-task ABMIL per gene) on patient-level splits",
        reads="data.labels_csv + features (the synthetic cohort: made, tiled and extracted first)",
        writes="splits.json, <model>/<split>/model/, predictions_test.csv, roc/, metrics.csv",
        keys=(*DATA, "tile", "extract", "mil", "train", "trainer", "logger", "seed"),
    ),
    "eval": Command(
        Lazy("methods.m4.commands:eval"),
        "per-gene AUC/F1/acc/sens/spec (mean ± std over splits) and ROC PNGs of a train run",
        reads="eval.run_dir's saved models + the cohort's features",
        writes="<model>/predictions_test.csv, roc/",
        keys=("eval", *DATA, "tile", "extract", "train.threshold"),
    ),
    "heatmap": Command(
        Lazy("methods.m4.commands:heatmap"),
        "per-gene attention over slide thumbnails (PNG) from a trained M4/MMoE",
        reads="heatmap.run_dir's model + the slides and their features",
        writes="<slide>_<gene>.png",
        keys=("heatmap", *DATA, "tile", "extract"),
    ),
}
METHOD = Method("m4", M4Config, COMMANDS, table=Lazy("methods.m4.metrics:auc_table"))

if __name__ == "__main__":
    main(METHOD)
