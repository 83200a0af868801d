"""Labels in the official CSV layout, patient-level splits, per-gene metrics."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from common.errors import UserError
from methods.m4 import data as m4data
from methods.m4.metrics import auc_table, binary_metrics, gene_table, summarize, tuned_threshold
from methods.m4.slides import cohort_specs, write_labels

GENES = ["TP53", "PIK3CA", "CDH1", "GATA3"]


@pytest.fixture(scope="module")
def labels40(tmp_path_factory):
    """40 synthetic patients (about a quarter with two slides) in the official labels layout."""
    path = tmp_path_factory.mktemp("labels") / "labels.csv"
    write_labels(path, cohort_specs(40, GENES, seed=11, prevalence=0.35), GENES)
    return m4data.read_labels(path)


def patients(labels: m4data.Labels, rows: list[int]) -> set[str]:
    return {labels.case_ids[i] for i in rows}


def check_disjoint(labels: m4data.Labels, split: m4data.Split) -> None:
    train, val, test = (patients(labels, r) for r in (split.train, split.val, split.test))
    assert not (train & val) and not (train & test) and not (val & test), split.name
    assert train and val and test
    # Every slide is in exactly one part, so all slides of a patient are on the same side.
    assert sorted(split.train + split.val + split.test) == list(range(len(labels.slide_ids)))


# ---------------------------------------------------------------------------------------------------------------------
# Splits


def test_official_splits_keep_patients_together_and_fix_the_test_set(labels40):
    assert len(set(labels40.case_ids)) < len(labels40.case_ids)  # some patients have two slides
    splits = m4data.official_splits(labels40, n_splits=5)
    assert [s.name for s in splits] == [f"split{i}" for i in range(5)]
    for s in splits:
        check_disjoint(labels40, s)
    assert len({tuple(s.test) for s in splits}) == 1  # one fixed held-out test set across the repeats
    assert len(patients(labels40, splits[0].test)) == 8  # 20% of 40 patients
    assert len({tuple(s.val) for s in splits}) == 5  # the repeats differ in train/validation
    # The test set does not depend on how many repeats are asked for, and splits are reproducible.
    assert m4data.official_splits(labels40, n_splits=2)[0].test == splits[0].test
    again = m4data.official_splits(labels40, n_splits=5)
    assert [(s.train, s.val, s.test) for s in again] == [(s.train, s.val, s.test) for s in splits]


def test_official_splits_follow_sklearn_as_the_official_code():
    """Same patients as `train_test_split(df.case_id.unique(), test_size=0.2, random_state=42)` then random_state=i."""
    from sklearn.model_selection import train_test_split

    case_ids = [f"P{i:02d}" for i in range(20) for _ in range(1 + i % 2)]
    labels = m4data.Labels(
        case_ids, [f"{c}-{k}" for k, c in enumerate(case_ids)], ["G"], np.zeros((len(case_ids), 1), np.float32)
    )
    unique = list(dict.fromkeys(case_ids))
    train_val, test = train_test_split(unique, test_size=0.2, random_state=42)
    for i, split in enumerate(m4data.official_splits(labels, n_splits=3)):
        train, val = train_test_split(train_val, test_size=0.2, random_state=i)
        assert patients(labels, split.test) == set(test)
        assert patients(labels, split.train) == set(train) and patients(labels, split.val) == set(val)


def test_kfold_splits_partition_patients_and_stratify(labels40):
    splits = m4data.kfold_splits(labels40, k=4)
    assert [s.name for s in splits] == [f"fold{i}" for i in range(4)]
    for s in splits:
        check_disjoint(labels40, s)
    tests = [patients(labels40, s.test) for s in splits]
    assert set().union(*tests) == set(labels40.case_ids)  # every patient is tested exactly once
    assert sum(len(t) for t in tests) == len(set(labels40.case_ids))
    # Stratified on the rarest gene: every test fold holds both of its classes.
    y = labels40.y
    rarest = int(np.argmin(np.minimum(y.mean(0), 1 - y.mean(0))))
    for s in splits:
        assert set(y[s.test, rarest].tolist()) == {0.0, 1.0}
    with pytest.raises(UserError, match="stratify_gene"):
        m4data.kfold_splits(labels40, k=4, stratify_gene="BRAF")


def test_too_few_patients_is_a_user_error():
    labels = m4data.Labels(["a", "b", "c"], ["1", "2", "3"], ["G"], np.array([[0], [1], [0]], np.float32))
    with pytest.raises(UserError, match="too few"):
        m4data.official_splits(labels)
    with pytest.raises(UserError, match="needs at least"):
        m4data.kfold_splits(labels, k=5)


# ---------------------------------------------------------------------------------------------------------------------
# Labels


def write(tmp_path, text: str):
    path = tmp_path / "labels.csv"
    path.write_text(text)
    return path


def test_read_labels_official_layout(tmp_path):
    path = write(tmp_path, "case_id,slide_id,TP53,KRAS\nP1,P1-A,1,0\nP1,P1-B,1,0\nP2,P2-A,0,1\n")
    labels = m4data.read_labels(path)
    assert labels.genes == ["TP53", "KRAS"] and labels.slide_ids == ["P1-A", "P1-B", "P2-A"]
    np.testing.assert_array_equal(labels.y, [[1, 0], [1, 0], [0, 1]])
    assert m4data.read_labels(path, ["KRAS"]).y[:, 0].tolist() == [0, 0, 1]


def test_gene_with_a_single_value_keeps_its_meaning(tmp_path):
    """A 0/1 column that happens to hold only 1s (every patient mutated) must stay 1, not be remapped to 0."""
    path = write(tmp_path, "case_id,slide_id,TP53,KRAS\nP1,s1,1,0\nP2,s2,1,1\nP3,s3,1,0\n")
    labels = m4data.read_labels(path)
    np.testing.assert_array_equal(labels.y[:, 0], [1, 1, 1])
    np.testing.assert_array_equal(labels.y[:, 1], [0, 1, 0])


@pytest.mark.parametrize(
    "text, match",
    [
        ("slide_id,TP53\ns1,1\n", "case_id"),
        ("case_id,slide_id\nP1,s1\n", "no gene columns"),
        ("case_id,slide_id,TP53\nP1,s1,1\nP2,s1,0\n", "repeated: s1"),
        ("case_id,slide_id,TP53\nP1,s1,1\nP2,s2,2\nP3,s3,0\n", "column 'TP53' must be 0/1 .*found 0, 1, 2"),
        ("case_id,slide_id,TP53\nP1,s1,1\nP2,s2,2\n", "found 1, 2"),  # once mapped to 0/1 silently
        ("case_id,slide_id,TP53\nP1,s1,0\nP2,s2,2\n", "found 0, 2"),
        ("case_id,slide_id,KRAS\nP1,s1,no\nP2,s2,yes\n", "labels.csv: column 'KRAS' must be 0/1 .*found no, yes"),
        ("case_id,slide_id,TP53\nP1,s1,1\nP2,s2,\n", "line 3: empty"),
        ("case_id,slide_id,TP53\n", "no rows"),
    ],
)
def test_bad_labels_are_one_user_error(tmp_path, text, match):
    with pytest.raises(UserError, match=match):
        m4data.read_labels(write(tmp_path, text))


def test_true_false_columns_read_as_1_and_0(tmp_path):
    path = write(tmp_path, "case_id,slide_id,TP53,KRAS\nP1,s1,true,0.0\nP2,s2,False,1.0\n")
    np.testing.assert_array_equal(m4data.read_labels(path).y, [[1, 0], [0, 1]])


def test_missing_gene_columns_and_file(tmp_path):
    path = write(tmp_path, "case_id,slide_id,TP53\nP1,s1,1\n")
    with pytest.raises(UserError, match="gene columns missing: KRAS, EGFR"):
        m4data.read_labels(path, ["TP53", "KRAS", "EGFR"])
    with pytest.raises(UserError, match="not found"):
        m4data.read_labels(tmp_path / "nope.csv")


def test_labels_naming_slides_without_features_give_one_error_listing_them(tmp_path):
    import torch

    ids = [f"S{i}" for i in range(6)]
    labels = m4data.Labels([f"P{i}" for i in range(6)], ids, ["G"], np.zeros((6, 1), np.float32))
    (tmp_path / "pt_files").mkdir()
    for sid in ids[:3]:
        torch.save(torch.zeros(2, 4), tmp_path / "pt_files" / f"{sid}.pt")
    with pytest.raises(UserError) as err:
        m4data.check_features(labels, tmp_path)
    message = str(err.value)
    assert message.startswith("3 labelled slides have no features")
    assert all(s in message for s in ids[3:]) and not any(f"{s}," in message or message.endswith(s) for s in ids[:3])
    m4data.check_features(m4data.without_slides(labels, set(ids[3:])), tmp_path)  # the others pass


def test_bag_dataset_and_collate(tmp_path):
    import torch

    (tmp_path / "pt_files").mkdir()
    for i, n in enumerate((3, 5)):
        torch.save(torch.full((n, 4), float(i)), tmp_path / "pt_files" / f"s{i}.pt")
    labels = m4data.Labels(["a", "b"], ["s0", "s1"], ["G1", "G2"], np.array([[0, 1], [1, 0]], np.float32))
    ds = m4data.BagDataset(labels, [1, 0], tmp_path, gene_cols=[1], cache=True)
    x, y = ds[0]
    assert x.shape == (5, 4) and y.tolist() == [0.0]
    assert ds.features(0) is ds.features(0)  # cached
    assert m4data.collate_bag([ds[1]])[0].shape == (3, 4)
    with pytest.raises(UserError, match="batch_size=1"):
        m4data.collate_bag([ds[0], ds[1]])


# ---------------------------------------------------------------------------------------------------------------------
# Metrics


def test_one_class_gene_gives_nan_auc_and_a_note():
    metrics, note = binary_metrics(np.zeros(6), np.linspace(0.1, 0.9, 6))
    assert math.isnan(metrics["auc"]) and "AUC undefined" in note and "only class 0" in note
    assert (
        metrics["spec"] == pytest.approx(3 / 6) and math.isnan(metrics["sens"]) and metrics["acc"] == pytest.approx(0.5)
    )
    metrics, note = binary_metrics(np.ones(4), np.array([0.9, 0.8, 0.2, 0.7]))
    assert math.isnan(metrics["auc"]) and "only class 1" in note and metrics["sens"] == pytest.approx(0.75)


def test_two_class_metrics_at_threshold_half():
    y = np.array([0, 0, 1, 1, 1])
    p = np.array([0.2, 0.6, 0.4, 0.7, 0.9])
    metrics, note = binary_metrics(y, p)
    assert note is None
    assert metrics["auc"] == pytest.approx(5 / 6)
    assert metrics["acc"] == pytest.approx(3 / 5)
    assert metrics["sens"] == pytest.approx(2 / 3) and metrics["spec"] == pytest.approx(1 / 2)
    assert metrics["f1"] == pytest.approx(2 / 3)


def test_threshold_tuned_on_validation_by_youden():
    y = np.array([0, 0, 0, 1, 1])
    p = np.array([0.05, 0.10, 0.20, 0.30, 0.40])  # every slide below 0.5, perfectly ranked
    assert tuned_threshold(y, p) == pytest.approx(0.30)
    assert tuned_threshold(np.zeros(4), p[:4]) == 0.5  # one class: the official threshold
    assert tuned_threshold(np.array([1, 0]), np.array([0.2, 0.8])) == 0.5  # nothing beats chance


def test_tuned_metrics_sit_beside_the_official_ones():
    """A model calling every slide negative at 0.5 (the demo's case) has F1 0 there; at the tuned threshold it has not."""
    y = np.array([0, 0, 1, 1, 0, 1])
    p = np.array([0.1, 0.2, 0.35, 0.4, 0.3, 0.45])
    metrics, _ = binary_metrics(y, p, tuned=0.33)
    assert metrics["f1"] == 0 and metrics["sens"] == 0 and metrics["spec"] == 1
    assert metrics["f1_tuned"] == 1 and metrics["sens_tuned"] == 1 and metrics["spec_tuned"] == 1
    assert metrics["acc_tuned"] == 1 and metrics["threshold_tuned"] == 0.33
    table, _ = gene_table(y[:, None], p[:, None], ["A"], tuned=[0.33])
    out = summarize([table, table], "m4/test")
    assert out["m4/test/A/f1_tuned_mean"] == 1 and out["m4/test/mean/sens_tuned_mean"] == 1
    assert out["m4/test/A/f1_mean"] == 0
    untuned, _ = gene_table(y[:, None], p[:, None], ["A"])
    assert "m4/test/A/f1_tuned_mean" not in summarize([untuned], "m4/test")  # runs saved before thresholds


def test_positive_class_weights():
    from methods.m4.train import bce_loss, pos_weights

    y = np.array([[1, 0, 0], [0, 0, 1], [0, 0, 1], [0, 0, 1]], np.float32)
    assert pos_weights(None, y) is None
    assert pos_weights("balanced", y).tolist() == pytest.approx([3.0, 1.0, 1 / 3])  # no positive: weight 1
    assert pos_weights("2.5", y).tolist() == [2.5] * 3

    class Fixed(torch.nn.Module):
        def forward(self, x, logits=False):
            z = torch.full((2,), math.log(0.25 / 0.75))  # probability 0.25 for both genes
            return z if logits else torch.sigmoid(z)

    loss, _ = bce_loss(torch.tensor([3.0, 1.0]))(Fixed(), (None, torch.tensor([1.0, 0.0])))
    assert float(loss) == pytest.approx(3 * -math.log(0.25) - math.log(0.75))
    loss, _ = bce_loss()(Fixed(), (None, torch.tensor([1.0, 0.0])))
    assert float(loss) == pytest.approx(-math.log(0.25) - math.log(0.75))


@pytest.mark.parametrize("name", ["m4", "mmoe", "amil"])
def test_loss_from_logits_lets_a_diverging_run_reach_the_nan_stop(name, tmp_path):
    """Computed on clamped probabilities, a diverged model's loss stayed finite (or raised an input-range error);
    from the logits it becomes non-finite and the trainer stops with its one-line error."""
    from common.registry import create
    from common.trainer import NonFiniteLoss, Task, TrainerConfig, fit
    from methods.m4.train import bce_loss

    g = torch.Generator().manual_seed(0)
    kwargs = {"feat_input": 8, "hidden": 64} | ({} if name == "amil" else {"tasks": 2, "num_expert": 2})
    tasks = 1 if name == "amil" else 2
    bags = [(torch.randn(20, 8, generator=g), torch.randint(0, 2, (tasks,), generator=g).float()) for _ in range(6)]
    model = create("m4.model", name, **kwargs)
    with torch.no_grad():
        z, p = model.eval()(bags[0][0], logits=True), model(bags[0][0])
    torch.testing.assert_close(torch.sigmoid(z), p)
    task = Task(model=model.train(), train_data=bags, collate=lambda items: items[0], loss=bce_loss())
    cfg = TrainerConfig(epochs=20, batch_size=1, lr=1e30, optimizer="adam", max_grad_norm=0, progress=False)
    with pytest.raises(NonFiniteLoss, match="non-finite"):
        fit(task, cfg, tmp_path)


def test_gene_table_notes_and_summary_skip_nan():
    y = np.array([[0, 1], [1, 1], [0, 1], [1, 1]], np.float32)
    p = np.array([[0.1, 0.9], [0.8, 0.4], [0.3, 0.7], [0.9, 0.6]], np.float32)
    table, notes = gene_table(y, p, ["A", "B"])
    assert table["A"]["auc"] == pytest.approx(1.0) and math.isnan(table["B"]["auc"])
    assert len(notes) == 1 and notes[0].startswith("B: only class 1")
    other, _ = gene_table(
        np.array([[0, 0], [1, 1]], np.float32), np.array([[0.6, 0.2], [0.4, 0.9]], np.float32), ["A", "B"]
    )
    out = summarize([table, other], "m4/test")
    assert out["m4/test/A/auc_mean"] == pytest.approx(0.5) and out["m4/test/A/auc_std"] == pytest.approx(0.5)
    assert out["m4/test/B/auc_mean"] == pytest.approx(1.0)  # the NaN split is skipped
    # Mean over genes within each split (NaN skipped), then over splits: (1.0 + (0 + 1) / 2) / 2.
    assert out["m4/test/mean/auc_mean"] == pytest.approx(0.75)


def test_auc_table_is_gene_by_model_with_a_mean_row():
    metrics = {
        "m4/train_seconds": 3.0,
        "m4/test/A/auc_mean": 0.75,
        "m4/test/A/auc_std": 0.05,
        "m4/test/A/f1_mean": 0.5,
        "m4/test/B/auc_mean": math.nan,
        "m4/test/B/auc_std": math.nan,
        "m4/test/mean/auc_mean": 0.75,
        "m4/test/mean/auc_std": 0.05,
        "amil/test/A/auc_mean": 0.6,
        "amil/test/A/auc_std": 0.1,
        "amil/test/mean/auc_mean": 0.6,
        "amil/test/mean/auc_std": 0.1,
    }
    lines = auc_table(metrics).splitlines()
    assert lines[0] == "per-gene test AUC, mean ± std over splits"
    assert lines[2:] == [
        "| gene | m4 | amil |",
        "|---|---|---|",
        "| A | 0.750 ± 0.050 | 0.600 ± 0.100 |",
        "| B |  |  |",
        "| mean | 0.750 ± 0.050 | 0.600 ± 0.100 |",
    ]
