"""Where a cohort's files are, and tiling and extraction over its slides.

With no data configured (data.slides_dir and data.features_dir null) the cohort is the synthetic one, generated once
under <cache_dir>/m4/synthetic/<key>/. Patches live under `<work>/patches/<key>/`, keyed by every tile setting,
data.slide_mpp and the contents of data.mpp_csv, and features under `<work>/features/<backbone>-<key>/`, keyed by the
tile key and the extract settings that change features, so changing a setting never reuses stale coordinates or
features. Within those dirs a slide is done when its files exist, so a killed run resumes where it stopped; a slide
whose tiling failed leaves the reason beside its would-be coordinates, for `extract` to report.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from common.errors import UserError
from common.items import Outcome, reason, run_each
from common.loggers import show_progress
from common.stages import run_stage, stage_path
from methods.m4 import data as m4data
from methods.m4.config import M4Config
from methods.m4.encoders import build_backbone
from methods.m4.extract import TILE_FAILED, extract, load_features, plan_jobs
from methods.m4.tiling import read_coords, read_mpp_csv, slide_id_of, tile_to_file

log = logging.getLogger(__name__)


@dataclass
class Paths:
    slides_dir: Path | None  # None when only features are given
    labels_csv: Path | None
    patches_dir: Path
    features_dir: Path

    def slides(self) -> Path:
        if self.slides_dir is None:
            raise UserError("data.slides_dir is not set")
        return self.slides_dir


def is_synthetic(cfg: M4Config) -> bool:
    return cfg.data.slides_dir is None and cfg.data.features_dir is None


def cohort_paths(cfg: M4Config, make_synthetic: bool = True) -> Paths:
    """The cohort's paths; the synthetic cohort is generated first when it is the cohort and `make_synthetic`."""
    d, s = cfg.data, cfg.synthetic
    if is_synthetic(cfg):
        root = stage_path(cfg.cache_dir, "m4/synthetic", s)
        if make_synthetic:
            from methods.m4.slides import make_cohort

            run_stage(
                "synthetic cohort",
                root,
                lambda tmp: make_cohort(tmp, s.n_patients, s.genes, s.height, s.width, seed=s.seed),
            )
        slides, labels, work = root / "slides", root / "labels.csv", Path(d.work_dir or root)
    else:
        slides = Path(d.slides_dir) if d.slides_dir else None
        labels = Path(d.labels_csv) if d.labels_csv else None
        work = Path(d.work_dir) if d.work_dir else Path(d.features_dir).parent
    patches = stage_path(work, "patches", cfg.tile, d.slide_mpp, slide_mpps(cfg))
    label = cfg.extract.backbone.replace("/", "_")  # hub ids such as hf-hub:org/name
    features = (
        Path(d.features_dir) if d.features_dir else stage_path(work, "features", patches.name, cfg.extract, label=label)
    )
    return Paths(slides, labels, patches, features)


def slide_mpps(cfg: M4Config) -> dict[str, float]:
    """data.mpp_csv as {slide id: level-0 mpp}; empty without one."""
    return read_mpp_csv(cfg.data.mpp_csv) if cfg.data.mpp_csv else {}


def tile_slides(cfg: M4Config, paths: Paths, slides: list[Path]) -> list[Outcome]:
    """Coordinates of every slide not yet tiled; a slide that cannot be read, or whose resolution is unknown or wrong,
    fails alone (its reason kept beside its would-be coordinates)."""
    mpps = slide_mpps(cfg)

    def coords_file(path: Path) -> Path:
        return paths.patches_dir / f"{slide_id_of(path)}.h5"

    def tile_one(path: Path) -> Outcome:
        failed = paths.patches_dir / f"{slide_id_of(path)}{TILE_FAILED}"
        try:
            result = tile_to_file(path, coords_file(path), cfg.tile, mpps.get(slide_id_of(path)), cfg.data.slide_mpp)
        except Exception as e:
            failed.parent.mkdir(parents=True, exist_ok=True)
            failed.write_text(reason(e) + "\n")
            raise
        failed.unlink(missing_ok=True)
        if len(result.coords) == 0:
            log.warning("%s: no tissue patches", result.slide_id)
            return Outcome(result.slide_id, "empty", 0, "no tissue found; zero patches")
        return Outcome(result.slide_id, "done", len(result.coords))

    return run_each(slides, slide_id_of, tile_one, done=lambda p: coords_file(p).is_file())


def extract_slides(cfg: M4Config, paths: Paths, slides: list[Path]) -> list[Outcome]:
    """Features of every tiled slide not yet done, in one loader over all of them."""
    jobs, outcomes = plan_jobs(slides, paths.patches_dir, paths.features_dir)
    if jobs:
        backbone = build_backbone(cfg.extract, allow_random=is_synthetic(cfg))
        print(
            f"extract: {len(jobs)} slides, {sum(len(j.coords) for j in jobs)} patches, {cfg.extract.backbone} "
            f"({backbone.dim}-d) -> {paths.features_dir}"
        )
        outcomes += extract(
            jobs, backbone, paths.features_dir, cfg.extract, progress=show_progress(cfg.trainer.progress)
        )
    return outcomes


def labels_with_features(cfg: M4Config, paths: Paths) -> tuple[m4data.Labels, int]:
    """The labels, less slides tiled here with no tissue (no features by design, left out with a warning), and the
    feature width; every remaining slide must have features."""
    if paths.labels_csv is None:
        raise UserError("data.labels_csv is not set")
    labels = m4data.read_labels(paths.labels_csv, cfg.data.genes)
    coords = {s: paths.patches_dir / f"{s}.h5" for s in labels.slide_ids}
    empty = {s for s, f in coords.items() if f.is_file() and len(read_coords(f).coords) == 0}
    if empty:
        log.warning(
            "%d labelled slides have no tissue patches and are left out: %s", len(empty), ", ".join(sorted(empty)[:10])
        )
        labels = m4data.without_slides(labels, empty)
    m4data.check_features(labels, paths.features_dir)
    return labels, load_features(paths.features_dir, labels.slide_ids[0]).shape[1]
