"""Labels in the official M4 layout and patient-level splits.

The labels CSV has `case_id, slide_id, <gene columns of 0/1>`; every slide is one bag of patch features. Splits are
made over patients, so all slides of a patient fall on the same side:

* official: a fixed held-out test set of 20% of patients (`train_test_split(..., test_size=0.2, random_state=42)`),
  then repeated random 80/20 train/validation splits of the rest with random_state=i (Monte-Carlo CV, which the
  official code calls "5-fold");
* kfold: stratified patient-level k-fold, each fold in turn the test set, validation drawn from the rest.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from common.errors import UserError
from methods.m4.config import TrainConfig


@dataclass
class Labels:
    case_ids: list[str]
    slide_ids: list[str]
    genes: list[str]
    y: np.ndarray  # [n_slides, n_genes] float32 in {0, 1}


@dataclass
class Split:
    name: str
    train: list[int]  # row indices into Labels
    val: list[int]
    test: list[int]


def read_labels(path: str | Path, genes: Sequence[str] = ()) -> Labels:
    """Read and check a labels CSV; `genes` picks columns (default: every column after case_id and slide_id)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: labels file not found")
    df = pd.read_csv(path, dtype={"case_id": str, "slide_id": str})
    for col in ("case_id", "slide_id"):
        if col not in df.columns:
            raise UserError(f"{path}: column '{col}' missing (expected case_id, slide_id, <genes>)")
    genes = list(genes) or [c for c in df.columns if c not in ("case_id", "slide_id")]
    missing = [g for g in genes if g not in df.columns]
    if missing:
        raise UserError(f"{path}: gene columns missing: {', '.join(missing)}")
    if not genes:
        raise UserError(f"{path}: no gene columns after case_id, slide_id")
    if df.empty:
        raise UserError(f"{path}: no rows")
    dup = df.slide_id[df.slide_id.duplicated()].tolist()
    if dup:
        raise UserError(f"{path}: slide_id repeated: {', '.join(dup[:5])}")
    y = np.zeros((len(df), len(genes)), np.float32)
    for k, gene in enumerate(genes):
        col = df[gene]
        if col.isna().any():
            raise UserError(f"{path}: column '{gene}' must be 0/1 (line {int(col.isna().idxmax()) + 2}: empty)")
        # Only 0/1 (true/false read as such): {1, 2}, {0, 2} or {no, yes} have no safe meaning for "mutated".
        values = set(col.tolist())
        if not values <= {0, 1}:
            found = ", ".join(sorted(map(str, values))[:6])
            raise UserError(f"{path}: column '{gene}' must be 0/1 (1 = mutated); found {found}")
        y[:, k] = col.astype(np.float32).to_numpy()
    return Labels(df.case_id.tolist(), df.slide_id.tolist(), genes, y)


def without_slides(labels: Labels, slide_ids: set[str]) -> Labels:
    keep = [i for i, s in enumerate(labels.slide_ids) if s not in slide_ids]
    return Labels([labels.case_ids[i] for i in keep], [labels.slide_ids[i] for i in keep], labels.genes, labels.y[keep])


def check_features(labels: Labels, features_dir: Path) -> None:
    """One error naming every labelled slide without features."""
    from methods.m4.extract import output_paths

    missing = [s for s in labels.slide_ids if not any(p.is_file() for p in output_paths(features_dir, s))]
    if missing:
        shown = ", ".join(missing[:20]) + (f" ... ({len(missing)} in all)" if len(missing) > 20 else "")
        raise UserError(f"{len(missing)} labelled slides have no features in {features_dir}: {shown}")


def _rows(labels: Labels, patients: set[str]) -> list[int]:
    return [i for i, c in enumerate(labels.case_ids) if c in patients]


def _patients(labels: Labels) -> list[str]:
    return list(dict.fromkeys(labels.case_ids))  # first-appearance order, as pandas unique() in the official code


def official_splits(
    labels: Labels, n_splits: int = 5, test_size: float = 0.2, val_size: float = 0.2, seed: int = 42
) -> list[Split]:
    from sklearn.model_selection import train_test_split

    patients = _patients(labels)
    if len(patients) < 5:
        raise UserError(f"{len(patients)} patients are too few for a train/val/test split")
    train_val, test = train_test_split(patients, test_size=test_size, random_state=seed)
    splits = []
    for i in range(n_splits):
        train, val = train_test_split(train_val, test_size=val_size, random_state=i)
        splits.append(Split(f"split{i}", _rows(labels, set(train)), _rows(labels, set(val)), _rows(labels, set(test))))
    return splits


def kfold_splits(
    labels: Labels, k: int = 5, val_size: float = 0.2, seed: int = 42, stratify_gene: str | None = None
) -> list[Split]:
    """Stratified patient-level k-fold. Patients are stratified on one gene (default: the rarest, the one most at risk
    of a one-class fold); a patient's label is the max over their slides."""
    from sklearn.model_selection import StratifiedKFold, train_test_split

    patients = _patients(labels)
    minority = np.minimum(labels.y.mean(0), 1 - labels.y.mean(0))
    gene = stratify_gene or labels.genes[int(np.argmin(minority))]
    if gene not in labels.genes:
        raise UserError(f"train.stratify_gene: '{gene}' is not one of {', '.join(labels.genes)}")
    col = labels.genes.index(gene)
    by_patient = {p: 0 for p in patients}
    for c, v in zip(labels.case_ids, labels.y[:, col], strict=True):
        by_patient[c] = max(by_patient[c], int(v))
    strata = np.array([by_patient[p] for p in patients])
    n_min = int(np.bincount(strata, minlength=2).min())
    if n_min < k:
        raise UserError(f"stratified {k}-fold needs at least {k} patients of each class of {gene}; found {n_min}")
    skf = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
    splits = []
    arr = np.array(patients, dtype=object)
    for i, (rest_idx, test_idx) in enumerate(skf.split(arr, strata)):
        rest = strata[rest_idx]
        # A small cohort may leave too few patients to stratify the validation part too; split it plainly then.
        can_stratify = np.ceil(val_size * len(rest)) >= 2 and np.bincount(rest, minlength=2).min() >= 2
        train, val = train_test_split(
            list(arr[rest_idx]), test_size=val_size, random_state=i, stratify=rest if can_stratify else None
        )
        splits.append(
            Split(f"fold{i}", _rows(labels, set(train)), _rows(labels, set(val)), _rows(labels, set(arr[test_idx])))
        )
    return splits


def make_splits(labels: Labels, cfg: TrainConfig) -> list[Split]:
    if cfg.protocol == "kfold":
        return kfold_splits(labels, cfg.n_splits, cfg.val_size, cfg.split_seed, cfg.stratify_gene)
    return official_splits(labels, cfg.n_splits, cfg.test_size, cfg.val_size, cfg.split_seed)


def split_records(labels: Labels, splits: list[Split]) -> list[dict]:
    """Splits by slide id, for splits.json."""
    return [
        {"name": s.name, **{part: [labels.slide_ids[r] for r in getattr(s, part)] for part in ("train", "val", "test")}}
        for s in splits
    ]


class BagDataset(torch.utils.data.Dataset):
    """Slides as (features [N, F], labels [T]); features are read on access so a 1,000-slide cohort fits in memory."""

    def __init__(
        self,
        labels: Labels,
        rows: Sequence[int],
        features_dir: Path,
        gene_cols: Sequence[int] | None = None,
        cache: bool = False,
    ):
        self.labels, self.rows, self.features_dir = labels, list(rows), features_dir
        self.cols = list(gene_cols) if gene_cols is not None else list(range(len(labels.genes)))
        self._cache: dict[int, torch.Tensor] | None = {} if cache else None

    def __len__(self) -> int:
        return len(self.rows)

    def features(self, i: int) -> torch.Tensor:
        from methods.m4.extract import load_features

        row = self.rows[i]
        if self._cache is not None and row in self._cache:
            return self._cache[row]
        x = load_features(self.features_dir, self.labels.slide_ids[row])
        if self._cache is not None:
            self._cache[row] = x
        return x

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.features(i), torch.from_numpy(self.labels.y[self.rows[i], self.cols])


def collate_bag(items: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Batch size is one slide, as in the official code (bags differ in length)."""
    if len(items) != 1:
        raise UserError(f"M4 trains on one slide per step; set trainer.batch_size=1 (got {len(items)})")
    return items[0]
