"""Synthetic slides through OpenSlide, tissue segmentation and the patch grid at a target resolution (20x from 40x)."""

from __future__ import annotations

import csv
from types import SimpleNamespace

import h5py
import numpy as np
import openslide
import pytest
import tifffile

from common.errors import UserError
from methods.m4.config import TileConfig
from methods.m4.slides import DEFAULT_GENES, _halve, cohort_specs, render_slide, write_pyramid_tiff
from methods.m4.tiling import (
    ReadPlan,
    read_coords,
    read_mpp_csv,
    read_plan,
    slide_id_of,
    tile_slide,
    tissue_grid,
    write_coords,
)
from tests.m4.conftest import HEIGHT, WIDTH, write_plain_tiff

GLASS = np.array([241, 240, 238])


def tissue_fraction(rgb: np.ndarray) -> float:
    """Share of pixels clearly away from the glass colour (stained tissue)."""
    return float((np.abs(rgb.astype(np.int32) - GLASS).max(-1) > 20).mean())


# ---------------------------------------------------------------------------------------------------------------------
# Synthetic slides


def test_cohort_slide_opens_in_openslide_with_levels_and_mpp(cohort):
    slides_dir, labels_csv = cohort
    specs = cohort_specs(8, DEFAULT_GENES, seed=3)
    path = slides_dir / f"{specs[0].slide_id}.tiff"
    assert openslide.OpenSlide.detect_format(str(path)) == "generic-tiff"
    with openslide.OpenSlide(str(path)) as s:
        assert s.level_count == 3
        assert s.level_dimensions == ((WIDTH, HEIGHT), (WIDTH // 2, HEIGHT // 2), (WIDTH // 4, HEIGHT // 4))
        assert s.level_downsamples == pytest.approx((1.0, 2.0, 4.0))
        assert float(s.properties[openslide.PROPERTY_NAME_MPP_X]) == pytest.approx(0.5)
        assert float(s.properties[openslide.PROPERTY_NAME_MPP_Y]) == pytest.approx(0.5)
        level0 = np.asarray(s.read_region((0, 0), 0, (WIDTH, HEIGHT)).convert("RGB"))
    # Lossless (deflate): level 0 is exactly the rendered slide, which holds tissue and glass.
    expected = render_slide(specs[0].mutations, HEIGHT, WIDTH, specs[0].seed)
    np.testing.assert_array_equal(level0, expected)
    assert tissue_fraction(expected) > 0.05


def test_cohort_files_and_labels_in_the_official_layout(cohort):
    slides_dir, labels_csv = cohort
    rows = list(csv.DictReader(labels_csv.open()))
    assert list(rows[0]) == ["case_id", "slide_id", *DEFAULT_GENES]
    assert sorted(p.stem for p in slides_dir.glob("*.tiff")) == sorted(r["slide_id"] for r in rows)
    assert not list(slides_dir.glob(".*tmp*"))  # written under a temporary name, then renamed
    by_case: dict[str, list[dict]] = {}
    for r in rows:
        by_case.setdefault(r["case_id"], []).append(r)
        assert {r[g] for g in DEFAULT_GENES} <= {"0", "1"}
    assert len(by_case) == 8 and len(rows) > 8  # some patients have two slides ...
    for slides in by_case.values():  # ... with the same labels
        assert len({tuple(r[g] for g in DEFAULT_GENES) for r in slides}) == 1


def test_40x_slide_opens_with_mpp_025(slide40):
    path, rgb = slide40
    with openslide.OpenSlide(str(path)) as s:
        assert s.level_dimensions == ((1536, 1024), (768, 512), (384, 256))
        assert float(s.properties[openslide.PROPERTY_NAME_MPP_X]) == pytest.approx(0.25)
        np.testing.assert_array_equal(np.asarray(s.read_region((0, 0), 1, (768, 512)).convert("RGB")), _halve(rgb))


def test_odd_sized_slide_keeps_all_levels(tmp_path):
    path = tmp_path / "odd.tiff"
    write_pyramid_tiff(path, render_slide((0, 1, 0, 1), 515, 770, seed=4), mpp=0.5, n_levels=4)
    with openslide.OpenSlide(str(path)) as s:
        assert s.level_dimensions == ((770, 515), (385, 257), (192, 128), (96, 64))
        assert float(s.properties[openslide.PROPERTY_NAME_MPP_X]) == pytest.approx(0.5)
    assert [p.name for p in tmp_path.iterdir()] == ["odd.tiff"]


def test_render_without_tissue_is_blank_glass():
    rgb = render_slide((1, 1, 1, 1), 128, 128, seed=0, tissue=False)
    assert tissue_fraction(rgb) == 0.0


# ---------------------------------------------------------------------------------------------------------------------
# Reading plans: which level, how many level-0 pixels


def fake_slide(mpp: float | None, downsamples, power: str | None = None):
    props = {}
    if mpp is not None:
        props[openslide.PROPERTY_NAME_MPP_X] = str(mpp)
    if power is not None:
        props[openslide.PROPERTY_NAME_OBJECTIVE_POWER] = power
    return SimpleNamespace(properties=props, level_downsamples=tuple(downsamples))


@pytest.mark.parametrize(
    "mpp, downsamples, params, expected",
    [
        (0.5, (1, 2, 4), TileConfig(), ReadPlan(0, 256, 256, 256, 0.5, 0.5)),  # 20x slide at 20x
        (0.25, (1, 2, 4), TileConfig(), ReadPlan(1, 256, 512, 512, 0.25, 0.5)),  # 40x: read level 1
        (0.25, (1, 2.0004, 4.0015), TileConfig(), ReadPlan(1, 256, 512, 512, 0.25, 0.5)),  # rounded downsamples
        (0.25, (1, 4, 16), TileConfig(), ReadPlan(0, 512, 512, 512, 0.25, 0.5)),  # no 2x level: level 0, resize
        (0.25, (1, 2, 4), TileConfig(target_magnification=20), ReadPlan(1, 256, 512, 512, 0.25, 0.5)),
        (0.25, (1, 2, 4), TileConfig(target_mpp=1.0), ReadPlan(2, 256, 1024, 1024, 0.25, 1.0)),  # 10x
        (0.25, (1, 2, 4), TileConfig(overlap=64), ReadPlan(1, 256, 512, 384, 0.25, 0.5)),
    ],
)
def test_read_plan(mpp, downsamples, params, expected):
    assert read_plan(fake_slide(mpp, downsamples), params) == expected


def test_resolution_sources_in_order_of_precedence():
    """The per-slide CSV wins (it corrects wrong headers), then the slide's own mpp, then its objective power; only a
    slide with neither falls back to data.slide_mpp."""
    own, power_only, bare = fake_slide(0.25, (1, 2, 4)), fake_slide(None, (1, 2, 4), power="40"), fake_slide(None, (1,))
    assert read_plan(own, TileConfig(), mpp=0.5).level0_mpp == 0.5
    assert read_plan(own, TileConfig(), fallback_mpp=0.5).level0_mpp == 0.25  # a fallback never overrides
    assert read_plan(power_only, TileConfig(), fallback_mpp=0.5).level0_mpp == 0.25
    assert read_plan(bare, TileConfig(), fallback_mpp=0.25).size_level0 == 512
    with pytest.raises(UserError, match=r"neither mpp nor objective power: set data\.slide_mpp .* data\.mpp_csv"):
        read_plan(bare, TileConfig())


def test_a_level0_coarser_than_the_target_is_refused_with_the_true_reason():
    """A 72-dpi TIFF header read as the scan resolution (352.8 mpp) once gave 0-px patches and an overlap error."""
    with pytest.raises(UserError, match=r"level-0 mpp 352\.8 is coarser than the target 0\.5 mpp.*data\.mpp_csv"):
        read_plan(fake_slide(25400 / 72, (1,)), TileConfig())
    with pytest.raises(UserError, match="coarser than the target 0.25 mpp"):
        read_plan(fake_slide(0.5, (1,)), TileConfig(target_magnification=40))
    assert read_plan(fake_slide(0.504, (1,)), TileConfig()).size_level0 == 254  # a scanner's "20x": read as it is


@pytest.mark.parametrize(
    "name, slide_id",
    [
        (
            "TCGA-3C-AALI-01Z-00-DX2.CF4496E0-AB52-4F3E-BDF5-C34833B91B7C.svs",
            "TCGA-3C-AALI-01Z-00-DX2.CF4496E0-AB52-4F3E-BDF5-C34833B91B7C",
        ),
        ("case.1.ome.tiff", "case.1"),
        ("case.ome.tif", "case"),
        ("SLIDE.v2.SVS", "SLIDE.v2"),
        ("plain.tiff", "plain"),
        ("no_extension", "no_extension"),
    ],
)
def test_slide_ids_keep_the_whole_name_less_the_slide_extension(name, slide_id):
    assert slide_id_of(name) == slide_id


def test_per_slide_mpp_csv(tmp_path):
    path = tmp_path / "mpp.csv"
    path.write_text("wsi,mpp\nTCGA-A1.UUID-1.svs,0.2501\nb.ome.tiff,0.5\n")  # TRIDENT's: file names
    assert read_mpp_csv(path) == {"TCGA-A1.UUID-1": 0.2501, "b": 0.5}
    path.write_text("slide_id,mpp\na,0.25\n")
    assert read_mpp_csv(path) == {"a": 0.25}
    path.write_text("wsi,mpp\na,0.25\nb,\nc,-1\n")
    with pytest.raises(UserError, match="positive number .*b, c"):
        read_mpp_csv(path)
    path.write_text("name,resolution\na,0.25\n")
    with pytest.raises(UserError, match="expected columns wsi"):
        read_mpp_csv(path)


def test_padded_grid_covers_the_last_partial_row_and_column():
    """A 700 x 600 slide all tissue: 2 x 2 full patches of 256; padded, also the last column (188 of 256 px on the
    slide: 73% tissue) and, with a lower min_tissue, the last row (88 px: 34%) but not the corner (25%): tissue is
    counted over the whole patch."""
    plan = ReadPlan(0, 256, 256, 256, 0.5, 0.5)
    mask = np.ones((600, 700), bool)
    assert len(tissue_grid(mask, 1.0, (700, 600), plan, 0.5)) == 4
    padded = tissue_grid(mask, 1.0, (700, 600), plan, 0.5, pad=True)
    assert sorted(map(tuple, padded.tolist())) == [(x, y) for x in (0, 256, 512) for y in (0, 256)]
    assert len(tissue_grid(mask, 1.0, (700, 600), plan, 0.3, pad=True)) == 8


def test_tiff_resolutions_as_openslide_reads_them(tmp_path):
    """The fixtures of the bad-resolution tests: a 72-dpi TIFF (as image editors write) and one without resolution."""
    rgb = render_slide((1, 0, 0, 0), 512, 512, seed=1)
    write_plain_tiff(tmp_path / "dpi72.tiff", rgb, dpi=72)
    write_plain_tiff(tmp_path / "nompp.tiff", rgb)
    with openslide.OpenSlide(str(tmp_path / "dpi72.tiff")) as s:
        assert float(s.properties[openslide.PROPERTY_NAME_MPP_X]) == pytest.approx(352.78, abs=0.01)
    with openslide.OpenSlide(str(tmp_path / "nompp.tiff")) as s:
        assert openslide.PROPERTY_NAME_MPP_X not in s.properties
        assert openslide.PROPERTY_NAME_OBJECTIVE_POWER not in s.properties
    with pytest.raises(UserError, match="coarser"):
        tile_slide(tmp_path / "dpi72.tiff", TileConfig())
    assert len(tile_slide(tmp_path / "dpi72.tiff", TileConfig(), mpp=0.5).coords) > 0  # corrected per slide
    assert len(tile_slide(tmp_path / "nompp.tiff", TileConfig(), fallback_mpp=0.5).coords) > 0


# ---------------------------------------------------------------------------------------------------------------------
# Tiling a 40x slide at 20x


def test_tiling_at_20x_from_a_40x_level0(slide40):
    path, rgb = slide40
    result = tile_slide(path, TileConfig(patch_size=256, target_mpp=0.5))
    assert result.plan == ReadPlan(
        level=1, read_size=256, size_level0=512, step_level0=512, level0_mpp=0.25, target_mpp=0.5
    )
    coords = result.coords
    assert coords.dtype == np.int64 and coords.ndim == 2 and coords.shape[1] == 2 and len(coords) >= 2
    assert (coords % 512 == 0).all()  # a grid in level-0 pixels with a 512 px step
    assert (coords[:, 0] + 512 <= 1536).all() and (coords[:, 1] + 512 <= 1024).all()
    # Every patch is on tissue (x is the column, y the row), and every cell that is nearly all tissue is kept.
    kept = {tuple(c) for c in coords.tolist()}
    for y in range(0, 1024 - 511, 512):
        for x in range(0, 1536 - 511, 512):
            frac = tissue_fraction(rgb[y : y + 512, x : x + 512])
            if (x, y) in kept:
                assert frac > 0.3, (x, y, frac)
            elif frac > 0.9:
                pytest.fail(f"cell {(x, y)} is {frac:.0%} tissue but was not kept")
    # The same grid whether asked as 20x or as 0.5 mpp.
    np.testing.assert_array_equal(tile_slide(path, TileConfig(target_magnification=20)).coords, coords)


def test_40x_coords_are_level0_when_read_at_level_1(slide40):
    path, rgb = slide40
    result = tile_slide(path, TileConfig())
    half = _halve(rgb)
    with openslide.OpenSlide(str(path)) as s:
        for x, y in result.coords.tolist():
            patch = np.asarray(s.read_region((x, y), 1, (256, 256)).convert("RGB"))
            np.testing.assert_array_equal(patch, half[y // 2 : y // 2 + 256, x // 2 : x // 2 + 256])


def test_clam_compatible_coords_file(slide40, tmp_path):
    path, _ = slide40
    result = tile_slide(path, TileConfig())
    out = tmp_path / "patches" / "s40.h5"
    with openslide.OpenSlide(str(path)) as s:
        write_coords(out, result, s)
    assert [p.name for p in out.parent.iterdir()] == ["s40.h5"]  # no temporary file left
    with h5py.File(out, "r") as f:
        assert list(f) == ["coords"]
        ds = f["coords"]
        assert ds.dtype == np.int64 and ds.shape == result.coords.shape
        np.testing.assert_array_equal(ds[:], result.coords)
        a = dict(ds.attrs)
    # CLAM's attributes ...
    assert {
        "patch_size",
        "patch_level",
        "downsample",
        "downsampled_level_dim",
        "level_dim",
        "name",
        "save_path",
    } <= set(a)
    assert (a["patch_size"], a["patch_level"]) == (256, 1)
    np.testing.assert_allclose(a["downsample"], [2.0, 2.0])
    np.testing.assert_array_equal(a["level_dim"], [768, 512])
    assert a["name"] == "s40"
    # ... and TRIDENT-style ones.
    assert (a["patch_size_level0"], a["target_patch_size"]) == (512, 256)
    assert a["level0_magnification"] == pytest.approx(40) and a["target_magnification"] == pytest.approx(20)
    assert a["level0_mpp"] == pytest.approx(0.25) and a["target_mpp"] == pytest.approx(0.5)
    assert (a["level0_width"], a["level0_height"]) == (1536, 1024)
    plan = read_coords(out)
    assert (plan.level, plan.read_size, plan.out_size) == (1, 256, 256)
    np.testing.assert_array_equal(plan.coords, result.coords)


def test_read_coords_of_trident_and_bad_files(tmp_path):
    trident = tmp_path / "t.h5"
    with h5py.File(trident, "w") as f:
        ds = f.create_dataset("coords", data=np.array([[0, 0], [512, 0]], np.int64))
        ds.attrs.update(patch_size=256, patch_size_level0=512, level0_magnification=40, target_magnification=20)
    plan = read_coords(trident)
    assert (plan.level, plan.read_size, plan.out_size) == (0, 512, 256)
    bare = tmp_path / "bare.h5"
    with h5py.File(bare, "w") as f:
        f.create_dataset("coords", data=np.zeros((1, 2), np.int64))
    with pytest.raises(UserError, match="neither CLAM"):
        read_coords(bare)
    nocoords = tmp_path / "nocoords.h5"
    with h5py.File(nocoords, "w") as f:
        f.create_dataset("features", data=np.zeros((1, 2)))
    with pytest.raises(UserError, match="no 'coords'"):
        read_coords(nocoords)


def test_aperio_40x_with_objective_power_only(slide40, tmp_path):
    """An Aperio-like file with AppMag = 40 and no MPP: level 0 is taken as 0.25 mpp, 20x is read from level 1."""
    _, rgb = slide40
    path = tmp_path / "ap.svs"
    h, w = rgb.shape[:2]
    with tifffile.TiffWriter(path) as tif:
        level = rgb
        for i in range(3):
            desc = (
                f"Aperio Image Library v12.0.0\r\n{w}x{h} [0,0 {w}x{h}] (256x256) RAW|AppMag = 40" if i == 0 else None
            )
            tif.write(
                level,
                photometric="rgb",
                tile=(256, 256),
                compression="zlib",
                description=desc,
                metadata=None,
                subfiletype=0 if i == 0 else 1,
            )
            level = _halve(level)
    assert openslide.OpenSlide.detect_format(str(path)) == "aperio"
    result = tile_slide(path, TileConfig(target_magnification=20))
    assert (result.plan.level, result.plan.read_size, result.plan.size_level0) == (1, 256, 512)
    assert result.plan.level0_mpp == pytest.approx(0.25)
    assert len(result.coords) > 0 and (result.coords % 512 == 0).all()


def test_blank_slide_gives_zero_patches(tmp_path):
    path = tmp_path / "blank.tiff"
    write_pyramid_tiff(path, render_slide((0, 0, 0, 0), HEIGHT, WIDTH, seed=5, tissue=False))
    result = tile_slide(path, TileConfig())
    assert result.coords.shape == (0, 2) and result.tissue_fraction == 0.0
    with openslide.OpenSlide(str(path)) as s:
        write_coords(tmp_path / "blank.h5", result, s)
    assert read_coords(tmp_path / "blank.h5").coords.shape == (0, 2)


def test_segmentation_agrees_with_the_rendered_tissue_on_every_cohort_slide(cohort):
    """The thumbnail mask covers about as much of the slide as the tissue drawn there, whatever that share is."""
    slides_dir, _ = cohort
    for spec in cohort_specs(8, DEFAULT_GENES, seed=3):
        truth = tissue_fraction(render_slide(spec.mutations, HEIGHT, WIDTH, spec.seed))
        result = tile_slide(slides_dir / f"{spec.slide_id}.tiff", TileConfig())
        assert result.plan.level == 0 and result.plan.read_size == 256
        assert abs(result.tissue_fraction - truth) < 0.1, (spec.slide_id, truth, result.tissue_fraction)
        if truth > 0.5:
            assert len(result.coords) > 0, f"{spec.slide_id}: {truth:.0%} tissue but no patches"


def test_slide_covered_by_tissue_keeps_every_patch(tmp_path):
    """No glass at all (a tightly cropped region): Otsu must not split stroma from nuclei and call it all background."""
    rng = np.random.default_rng(0)
    rgb = np.empty((HEIGHT, WIDTH, 3), np.float32)
    rgb[:] = [232, 168, 198]  # eosin stroma everywhere
    nuclei = rng.random((HEIGHT, WIDTH)) < 0.01
    from scipy import ndimage

    nuclei = ndimage.binary_dilation(nuclei, iterations=3)
    rgb[nuclei] = [92, 52, 128]  # hematoxylin nuclei, about a third of the area
    rgb += rng.normal(0, 4, (HEIGHT, WIDTH, 1))
    path = tmp_path / "full.tiff"
    write_pyramid_tiff(path, np.clip(rgb, 0, 255).astype(np.uint8))
    result = tile_slide(path, TileConfig())
    assert result.tissue_fraction > 0.9
    assert len(result.coords) == (HEIGHT // 256) * (WIDTH // 256)
