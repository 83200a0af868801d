"""The BSCD-FSL datasets (Guo et al. 2020, github.com/IBM/cdfsl-benchmark) read as they are published, so that a
download is used as it unpacks:

* ISIC 2018 task 3: `ISIC2018_Task3_Training_GroundTruth/ISIC2018_Task3_Training_GroundTruth.csv` (columns `image`,
  then one column per diagnosis, MEL NV BCC AKIEC BKL DF VASC, holding 1.0 for the image's diagnosis and 0.0
  elsewhere) beside the image folder `ISIC2018_Task3_Training_Input/<image>.jpg`;
* ChestX-ray8 (NIH ChestX-ray14, Kaggle's version): `Data_Entry_2017.csv` (fields `Image Index` and `Finding Labels`,
  labels joined by `|`) beside `images/<Image Index>` (or Kaggle's `images_001/images/`, ...). BSCD-FSL keeps the
  images with a single finding among seven classes (`CHESTX_CLASSES`; "No Finding" and Pneumonia are left out);
* EuroSAT (`EuroSAT/2750/<class>/`), CropDisease (`CropDiseases/dataset/train/<class>/`) and miniImageNet as class
  folders: `data.image_folder`;
* miniImageNet as Ravi & Larochelle's split files: `<split>.csv` (fields `filename`, `label`) beside `images/`.

`read` takes a layout by name or, with `auto`, recognises it from what the path holds.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from common.errors import UserError
from methods.medmfg.data import Domain, image_folder

LAYOUTS = ("auto", "folder", "isic2018", "chestx", "split_csv")
ISIC_CSV = "ISIC2018_Task3_Training_GroundTruth/ISIC2018_Task3_Training_GroundTruth.csv"
ISIC_IMAGES = "ISIC2018_Task3_Training_Input"
CHESTX_CSV = "Data_Entry_2017.csv"
CHESTX_CLASSES = ("Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule", "Pneumothorax")


def detect(root: str) -> str:
    """The layout a path holds: a .csv file is a split file; a folder with ChestX's or ISIC's ground truth is that
    dataset; any other folder is class folders."""
    path = Path(root).expanduser()
    if path.suffix.lower() == ".csv":
        return "split_csv"
    if (path / CHESTX_CSV).is_file():
        return "chestx"
    if (path / ISIC_CSV).is_file() or (path / Path(ISIC_CSV).name).is_file():
        return "isic2018"
    return "folder"


def read(root: str, layout: str = "auto") -> Domain:
    """The domain at `root` in `layout` (one of LAYOUTS)."""
    layout = detect(root) if layout == "auto" else layout
    return {"folder": image_folder, "isic2018": isic2018, "chestx": chestx, "split_csv": split_csv}[layout](root)


def _rows(path: Path, fields: tuple[str, ...]) -> Iterator[tuple[int, dict[str, str]]]:
    """(line number, row) of a CSV file with a header; a missing field is an error naming the file."""
    if not path.is_file():
        raise UserError(f"{path}: file not found")
    with path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        missing = [k for k in fields if k not in (reader.fieldnames or [])]
        if missing:
            raise UserError(f"{path}: line 1: no field {missing[0]!r} (header: {', '.join(reader.fieldnames or [])})")
        for row in reader:
            yield reader.line_num, row


def _domain(name: str, classes: list[str], pairs: list[tuple[int, str]]) -> Domain:
    """Images grouped by class (in class order, then in listing order), so a class's images are contiguous."""
    pairs = sorted(pairs, key=lambda p: p[0])
    if not pairs:
        raise UserError(f"{name}: no images listed")
    return Domain(name, classes, np.asarray([c for c, _ in pairs], dtype=np.int64), [f for _, f in pairs])


def _missing(csv_path: Path, line: int, image: Path) -> UserError:
    return UserError(f"{csv_path}: line {line}: image {image} not found")


def isic2018(root: str) -> Domain:
    """ISIC 2018 task 3's ground truth: each row's one column holding 1 is its diagnosis (BSCD-FSL's labels)."""
    path = Path(root).expanduser()
    csv_path = path / ISIC_CSV if (path / ISIC_CSV).is_file() else path / Path(ISIC_CSV).name
    if not csv_path.is_file():
        raise UserError(f"{path / ISIC_CSV}: file not found (ISIC 2018 task 3's ground truth)")
    with csv_path.open(newline="", encoding="utf-8-sig") as f:
        header = next(csv.reader(f), [])
    classes = header[1:]
    if not header or header[0] != "image" or not classes:
        raise UserError(f"{csv_path}: line 1: expected the fields image, MEL, NV, ... (found {', '.join(header)})")
    pairs = []
    for line, row in _rows(csv_path, ("image",)):
        try:
            hot = [c for c in classes if float(row[c]) != 0]
        except (TypeError, ValueError):
            raise UserError(f"{csv_path}: line {line}: a diagnosis column is not a number ({row})") from None
        if len(hot) != 1:
            raise UserError(f"{csv_path}: line {line}: {len(hot)} diagnoses set for {row['image']} (expected one)")
        image = path / ISIC_IMAGES / f"{row['image']}.jpg"
        if not image.is_file():
            raise _missing(csv_path, line, image)
        pairs.append((classes.index(hot[0]), str(image)))
    return _domain(str(root), classes, pairs)


def _chestx_images(path: Path) -> dict[str, Path]:
    """File name -> path of ChestX's images: `images/` as NIH publishes them, `images_*/images/` as Kaggle does."""
    folders = [path / "images"] if (path / "images").is_dir() else sorted(path.glob("images_*/images"))
    return {f.name: f for d in folders for f in d.iterdir() if f.is_file()}


def chestx(root: str) -> Domain:
    """ChestX-ray8's entries with a single finding among BSCD-FSL's seven classes."""
    path = Path(root).expanduser()
    csv_path = path / CHESTX_CSV
    files = _chestx_images(path)
    pairs = []
    for line, row in _rows(csv_path, ("Image Index", "Finding Labels")):
        findings = row["Finding Labels"].split("|")
        if len(findings) != 1 or findings[0] not in CHESTX_CLASSES:
            continue
        if row["Image Index"] not in files:
            raise _missing(csv_path, line, path / "images" / row["Image Index"])
        pairs.append((CHESTX_CLASSES.index(findings[0]), str(files[row["Image Index"]])))
    return _domain(str(root), list(CHESTX_CLASSES), pairs)


def split_csv(root: str) -> Domain:
    """A Ravi & Larochelle split file (`filename`, `label`), its images in `images/` beside it; classes sorted."""
    csv_path = Path(root).expanduser()
    listed = [(line, row["filename"], row["label"]) for line, row in _rows(csv_path, ("filename", "label"))]
    classes = sorted({label for _, _, label in listed})
    pairs = []
    for line, name, label in listed:
        image = csv_path.parent / "images" / name
        if not image.is_file():
            raise _missing(csv_path, line, image)
        pairs.append((classes.index(label), str(image)))
    return _domain(str(root), classes, pairs)
