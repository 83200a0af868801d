"""The BSCD-FSL datasets read as published: tiny fixtures written in each dataset's documented layout and field names
(ISIC 2018 task 3's ground-truth CSV, ChestX-ray8's Data_Entry_2017.csv, EuroSAT's class folders, miniImageNet's
split CSV), never with our own writer; and the presets that point at them."""

from __future__ import annotations

import re

import numpy as np
import pytest
from PIL import Image

from common.config import compose
from common.errors import UserError
from methods.medmfg.bscd import CHESTX_CLASSES, detect, read

ISIC_HEADER = "image,MEL,NV,BCC,AKIEC,BKL,DF,VASC"
# Data_Entry_2017.csv's header as NIH publishes it (the bracketed fields hold unquoted commas; a trailing comma).
CHESTX_HEADER = (
    "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
    "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y],"
)


def write_image(path, size: int = 12) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(len(str(path))).integers(0, 255, (size, size, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)


def isic_root(root, rows: list[str]):
    truth = root / "ISIC2018_Task3_Training_GroundTruth" / "ISIC2018_Task3_Training_GroundTruth.csv"
    truth.parent.mkdir(parents=True)
    truth.write_text("\n".join([ISIC_HEADER, *rows]) + "\n")
    for row in rows:
        write_image(root / "ISIC2018_Task3_Training_Input" / f"{row.split(',')[0]}.jpg")
    return root


def test_isic2018_ground_truth_columns_are_the_classes(tmp_path):
    root = isic_root(
        tmp_path / "ISIC",
        [
            "ISIC_0024306,0.0,1.0,0.0,0.0,0.0,0.0,0.0",
            "ISIC_0024307,1.0,0.0,0.0,0.0,0.0,0.0,0.0",
            "ISIC_0024308,0.0,0.0,0.0,0.0,0.0,0.0,1.0",
            "ISIC_0024309,0.0,1.0,0.0,0.0,0.0,0.0,0.0",
        ],
    )
    assert detect(str(root)) == "isic2018"
    domain = read(str(root))
    assert domain.classes == ["MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC"]
    assert domain.counts() == {"MEL": 1, "NV": 2, "BCC": 0, "AKIEC": 0, "BKL": 0, "DF": 0, "VASC": 1}
    by_image = {p.split("/")[-1]: domain.classes[c] for p, c in zip(domain.ids, domain.labels, strict=True)}
    assert by_image == {"ISIC_0024306.jpg": "NV", "ISIC_0024307.jpg": "MEL", "ISIC_0024308.jpg": "VASC"} | {
        "ISIC_0024309.jpg": "NV"
    }
    assert domain.image(0).shape == (12, 12, 3)


def test_isic2018_bad_rows_name_the_line(tmp_path):
    root = isic_root(tmp_path / "a", ["ISIC_1,0.0,1.0,0.0,0.0,0.0,0.0,0.0", "ISIC_2,1.0,1.0,0.0,0.0,0.0,0.0,0.0"])
    with pytest.raises(UserError, match="GroundTruth.csv: line 3: 2 diagnoses set for ISIC_2"):
        read(str(root))
    root = isic_root(tmp_path / "b", ["ISIC_1,0.0,1.0,0.0,0.0,0.0,0.0,0.0"])
    (root / "ISIC2018_Task3_Training_Input" / "ISIC_1.jpg").unlink()
    with pytest.raises(UserError, match=r"line 2: image .*ISIC_1\.jpg not found"):
        read(str(root), "isic2018")


def test_chestx_keeps_single_findings_of_the_seven_classes(tmp_path):
    root = tmp_path / "chestX"
    entries = [
        ("00000001_000.png", "Cardiomegaly"),
        ("00000001_001.png", "Cardiomegaly|Emphysema"),  # two findings: left out
        ("00000002_000.png", "No Finding"),  # left out
        ("00000003_000.png", "Hernia"),  # not one of the seven
        ("00000004_000.png", "Pneumonia"),  # BSCD-FSL drops it
        ("00000005_000.png", "Effusion"),
        ("00000006_000.png", "Pneumothorax"),
        ("00000007_000.png", "Effusion"),
    ]
    lines = [f"{name},{labels},0,{i},58,M,PA,2682,2749,0.143,0.143," for i, (name, labels) in enumerate(entries)]
    root.mkdir()
    (root / "Data_Entry_2017.csv").write_text("\n".join([CHESTX_HEADER, *lines]) + "\n")
    for i, (name, _) in enumerate(entries):  # Kaggle's layout: images_001/images/, images_002/images/, ...
        write_image(root / f"images_00{1 + i % 2}" / "images" / name)
    assert detect(str(root)) == "chestx"
    domain = read(str(root))
    assert domain.classes == list(CHESTX_CLASSES) and len(CHESTX_CLASSES) == 7
    assert {k: v for k, v in domain.counts().items() if v} == {"Cardiomegaly": 1, "Effusion": 2, "Pneumothorax": 1}
    assert sorted(p.split("/")[-1] for p in domain.ids) == sorted(
        ["00000001_000.png", "00000005_000.png", "00000006_000.png", "00000007_000.png"]
    )

    (root / "Data_Entry_2017.csv").write_text("Image,Labels\nx.png,Mass\n")
    with pytest.raises(UserError, match="Data_Entry_2017.csv: line 1: no field 'Image Index'"):
        read(str(root))


def test_eurosat_class_folders_and_miniimagenet_split_csv(tmp_path):
    for name in ("AnnualCrop", "Forest", "River"):
        for i in range(1, 3):
            write_image(tmp_path / "EuroSAT" / "2750" / name / f"{name}_{i}.jpg")
    eurosat = read(str(tmp_path / "EuroSAT" / "2750"))
    assert detect(str(tmp_path / "EuroSAT" / "2750")) == "folder"
    assert eurosat.counts() == {"AnnualCrop": 2, "Forest": 2, "River": 2}

    mini = tmp_path / "miniImagenet"
    rows = ["n0153282900000005.jpg,n01532829", "n0153282900000006.jpg,n01532829", "n0155801300000001.jpg,n01558013"]
    for row in rows:
        write_image(mini / "images" / row.split(",")[0])
    (mini / "train.csv").write_text("\n".join(["filename,label", *rows]) + "\n")
    assert detect(str(mini / "train.csv")) == "split_csv"
    domain = read(str(mini / "train.csv"))
    assert domain.counts() == {"n01532829": 2, "n01558013": 1}
    (mini / "images" / "n0155801300000001.jpg").unlink()
    with pytest.raises(UserError, match=re.escape("train.csv: line 4: image")):
        read(str(mini / "train.csv"))


@pytest.mark.parametrize("target, layout", [("isic", "isic2018"), ("chestx", "chestx"), ("eurosat", "folder")])
def test_presets_follow_the_protocol(target, layout):
    cfg = compose("medmfg", f"+experiment=medmfg/bscd_{target}", paths=False)
    assert (cfg.eval.ways, cfg.eval.shots, cfg.eval.queries, cfg.eval.episodes) == (5, [1, 5, 20, 50], 15, 600)
    assert (cfg.backbone.name, cfg.data.image_size, cfg.data.target_layout) == ("resnet10t", 224, layout)
    assert cfg.data.source == "data/miniImagenet/train"
    crop = compose("medmfg", "+experiment=medmfg/bscd_cropdisease", "backbone.name=resnet18", paths=False)
    assert crop.data.target == "data/CropDiseases/dataset/train" and crop.backbone.name == "resnet18"


def test_a_preset_reads_an_isic_download_at_compose_time(tmp_path):
    """The config check counts ISIC's classes from its CSV: with 2 images per class, 1-shot + 15 queries cannot fit."""
    rows = [f"ISIC_{i},{','.join('1.0' if j == i % 7 else '0.0' for j in range(7))}" for i in range(14)]
    isic_root(tmp_path / "ISIC", rows)
    with pytest.raises(UserError, match="class 'MEL' has 2 images, fewer than K\\+Q=65"):
        compose("medmfg", "+experiment=medmfg/bscd_isic", f"data.target={tmp_path / 'ISIC'}", "data.source=offline")
