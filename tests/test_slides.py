"""Whole slides (histo_core.slides): the real CMU slide, tissue detection, the grid at 112 µm, pyramid levels,
outputs, resume, each bad input, and the `slide` CLI."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from histo_core.cli import main
from histo_core.model_cache import load_model
from histo_core.model_meta import ModelMeta
from histo_core.slides import analyse_slide, open_slide
from histo_core.slides.grid import plan_slide_grid
from histo_core.slides.reader import SlideError
from histo_core.slides.tissue import tissue_mask
from tests.slidefiles import bad_slides, cmu_pixels, pink_tissue, write_slide

FIXTURES = Path(__file__).resolve().parent / "fixtures"


def meta(field_px: int | None = 224, mpp: float | None = 0.5, input_size: int = 28) -> ModelMeta:
    return ModelMeta(
        arch="resnet9",
        classes=("a", "b"),
        input_size=input_size,
        in_channels=3,
        mean=(0.5,) * 3,
        std=(0.2,) * 3,
        native_tile_px=field_px,
        source_mpp=mpp,
    )


@pytest.fixture
def cmu(shared_data) -> Path:
    p = shared_data / "slides" / "CMU-1-Small-Region.svs"
    if not p.exists():
        pytest.skip(f"{p} is absent")
    return p


@pytest.fixture(scope="module")
def cmu_rgb() -> np.ndarray:
    p = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "slides" / "CMU-1-Small-Region.svs"
    if not p.exists():
        pytest.skip(f"{p} is absent")
    return cmu_pixels(p)


def test_cmu_slide_metadata(cmu):
    with open_slide(cmu) as s:
        info = s.info()
    assert info["width"] == 2220 and info["height"] == 2967
    assert info["mpp"] == pytest.approx(0.499) and info["mpp_source"] == "metadata"
    assert info["objective"] == 20 and info["vendor"] == "aperio"
    assert info["identity"].startswith("quickhash-1:")


def test_tissue_mask_matches_the_fixture(cmu):
    """The fixture was made once from the thumbnail by another rule (grey level < 200, closed, filled)."""
    ref = np.asarray(Image.open(FIXTURES / "cmu_tissue_mask.png").convert("L")) > 127
    with open_slide(cmu) as s:
        thumb = s.thumbnail()
        mask = tissue_mask(thumb, um_per_px=s.mpp * s.dimensions[0] / thumb.shape[1])
    small = np.asarray(Image.fromarray(mask).resize(ref.shape[::-1], Image.Resampling.NEAREST))
    assert small[ref].mean() > 0.85  # covers the tissue
    assert small[~ref].mean() < 0.05  # and not the glass


def test_grid_at_112_um(cmu, tmp_path):
    with open_slide(cmu) as s:
        g = plan_slide_grid(s, meta())
    assert g.field_um == 112 and g.tile_l0 == round(112 / 0.499) == 224
    assert (g.cols, g.rows) == (2220 // 224, 2967 // 224) and g.level == 0 and g.read_px == 224
    assert g.x0 == (2220 - 9 * 224) // 2 and g.y0 == (2967 - 13 * 224) // 2
    assert g.tile_mm2 == pytest.approx((224 * 0.499 / 1000) ** 2)
    # a 0.25 µm/px pyramid: 448 px tiles, read from the 16x level (28 px, the model's input exactly)...
    p = write_slide(tmp_path / "s.tif", pink_tissue(1024, 1024), mpp=0.25, downsamples=(1, 4, 16))
    with open_slide(p) as s:
        g = plan_slide_grid(s, meta())
    assert g.tile_l0 == 448 and g.level == 2 and g.read_px == 28 and (g.rows, g.cols) == (2, 2)
    # ...and where the next level would be below the input (32x: 14 px), from the 4x one (112 px): never upsampled
    p = write_slide(tmp_path / "s32.tif", pink_tissue(1024, 1024), mpp=0.25, downsamples=(1, 4, 32))
    with open_slide(p) as s:
        g = plan_slide_grid(s, meta())
    assert g.level == 1 and g.read_px == 112


def test_two_levels_give_the_same_classes(cmu_rgb, shipped_model, tmp_path):
    # cropped to a multiple of 4 px, so the level's downsample is exactly 4 (as scanners write them)
    p = write_slide(tmp_path / "two.tif", cmu_rgb[:2964], mpp=0.499, downsamples=(1, 4))
    loaded = load_model("pathmnist-resnet9")
    with open_slide(p) as s:
        assert len(s.level_dimensions) == 2
        a = analyse_slide(loaded, s, out_dir=tmp_path / "l0", level=0)
        b = analyse_slide(loaded, s, out_dir=tmp_path / "l1", level=1)
    assert (a["level"], a["read_px"], b["level"], b["read_px"]) == (0, 224, 1, 56)
    ca, cb = (list(csv.DictReader(open(x / "tiles.csv"))) for x in (tmp_path / "l0", tmp_path / "l1"))
    assert len(ca) == len(cb) == a["tiles"]["tissue"] > 20
    same = np.mean([x["class"] == y["class"] for x, y in zip(ca, cb)])
    assert same >= 0.95, same


def test_outputs_geojson_and_csv(cmu, shipped_model, tmp_path):
    loaded = load_model("pathmnist-resnet9")
    with open_slide(cmu) as s:
        out = analyse_slide(loaded, s, out_dir=tmp_path / "a")
        w, h = s.dimensions
    rows = list(csv.DictReader(open(out["outputs"]["tiles.csv"])))
    assert len(rows) == out["tiles"]["tissue"]
    for r in rows:
        total = sum(float(r[f"prob_{c}"]) for c in loaded.meta.classes)
        assert total == pytest.approx(1.0, abs=1e-4)
        assert r["class"] == max(loaded.meta.classes, key=lambda c: float(r[f"prob_{c}"]))
        assert int(r["ood"]) == (float(r["ood_score"]) >= 1.0)  # the score, and the flag it gives
        assert 0 <= int(r["x"]) and int(r["x"]) + int(r["width"]) <= w and int(r["y"]) + int(r["height"]) <= h
    gj = json.loads(Path(out["outputs"]["tiles.geojson"]).read_text())
    assert gj["type"] == "FeatureCollection" and len(gj["features"]) == len(rows)
    for f, r in zip(gj["features"], rows):
        assert f["properties"]["objectType"] == "detection" and f["properties"]["classification"]["name"]
        assert f["properties"]["classification"]["name"] == r["class"]
        ring = f["geometry"]["coordinates"][0]
        assert f["geometry"]["type"] == "Polygon" and ring[0] == ring[-1] and len(ring) == 5
        assert all(0 <= x <= w and 0 <= y <= h for x, y in ring)
        xs, ys = {x for x, _ in ring}, {y for _, y in ring}
        assert xs == {int(r["x"]), int(r["x"]) + int(r["width"])} and ys == {
            int(r["y"]),
            int(r["y"]) + int(r["height"]),
        }
        m = f["properties"]["measurements"]
        assert sum(m[f"p({c})"] for c in loaded.meta.classes) == pytest.approx(1.0, abs=1e-4)
        assert m["unlike training score"] == float(r["ood_score"]) and m["unlike training"] == int(r["ood"])
    assert sum(c["tiles"] for c in out["classes"]) == len(rows)
    assert sum(c["share"] for c in out["classes"]) == pytest.approx(1.0, abs=1e-3)
    cmap = Image.open(out["outputs"]["classmap.png"])
    assert cmap.size == Image.open(out["outputs"]["thumbnail.png"]).size
    # the same slide and model again: a no-op; --force redoes it
    with open_slide(cmu) as s:
        assert analyse_slide(loaded, s, out_dir=tmp_path / "a")["skipped"] is True
        assert analyse_slide(loaded, s, out_dir=tmp_path / "a", force=True)["skipped"] is False


@pytest.mark.parametrize("name", ["pathmnist-resnet9", "pathmnist-resnet9-macenko"])
def test_the_ood_flag_fires_on_most_of_the_skin_slide(cmu, shipped_model, tmp_path, name):
    """A PathMNIST (colon) model on a skin slide: most tissue tiles are unlike its training tiles, and the
    feature check (run in the analysis's own forward pass; for the stain-normalised model, the input-feature
    check on the tiles as given, a pass of its own) is what finds them."""
    loaded = load_model(name)
    assert isinstance(loaded.meta.ood.get("input_feature" if loaded.meta.stain else "feature"), dict)
    with open_slide(cmu) as s:
        out = analyse_slide(loaded, s, out_dir=tmp_path / "a", batch_size=16, amp=False)  # several batches; fp32
    rows = list(csv.DictReader(open(out["outputs"]["tiles.csv"])))
    flags = np.array([int(r["ood"]) for r in rows])
    scores = np.array([float(r["ood_score"]) for r in rows])
    assert flags.mean() > 0.5, (flags.mean(), scores)  # most
    assert out["ood_share"] == pytest.approx(flags.mean(), abs=1e-3)
    # the scores are the ones a separate pass over the same tiles gives (ood.ood_check, the Classify path)
    from histo_core.ood import ood_check
    from histo_core.slides.analysis import SlideAnalysis
    from histo_core.slides.view import current_results, read_tile

    res = current_results(SlideAnalysis(tmp_path / "a"))
    assert res is not None and np.allclose(res["ood_score"][res["pred"] >= 0], scores, atol=1e-3)
    with open_slide(cmu) as s:
        tiles = np.stack([read_tile(s, res["grid"], int(r["row"]), int(r["col"]), loaded.meta)[1] for r in rows[:8]])
    from histo_core.predict import predict

    again = ood_check(loaded.meta, predict(loaded, tiles), tiles, loaded.model)
    assert again is not None
    np.testing.assert_allclose(again.scores, scores[:8], rtol=1e-3, atol=1e-3)


def test_bf16_autocast_where_native_gives_the_same_classes(cmu, shipped_model, tmp_path):
    """The default (`amp`): bf16 autocast and channels-last where the CPU computes bf16 natively, else fp32;
    --no-amp is full fp32. The classes agree, and the record says which ran."""
    from histo_core.training.device import cpu_has_native_bf16

    loaded = load_model("pathmnist-resnet9")
    with open_slide(cmu) as s:
        fast = analyse_slide(loaded, s, out_dir=tmp_path / "fast")
        exact = analyse_slide(loaded, s, out_dir=tmp_path / "exact", amp=False)
    assert fast["amp"] == ("bfloat16" if cpu_has_native_bf16() else None) and exact["amp"] is None
    ca, cb = (list(csv.DictReader(open(tmp_path / x / "tiles.csv"))) for x in ("fast", "exact"))
    assert len(ca) == len(cb) == 44
    assert np.mean([x["class"] == y["class"] for x, y in zip(ca, cb)]) >= 0.95
    pa, pb = (np.array([[float(r[f"prob_{c}"]) for c in loaded.meta.classes] for r in t]) for t in (ca, cb))
    assert np.abs(pa - pb).max() < 0.1


def test_an_interrupted_analysis_resumes(shipped_model, tmp_path):
    p = write_slide(tmp_path / "t.tif", pink_tissue(2048, 2048), mpp=0.5, downsamples=(1, 4))
    loaded = load_model("pathmnist-resnet9")

    def stop_after_first(progress):
        raise KeyboardInterrupt

    with open_slide(p) as s:
        with pytest.raises(KeyboardInterrupt):
            analyse_slide(loaded, s, out_dir=tmp_path / "a", batch_size=8, progress=stop_after_first)
        assert json.loads((tmp_path / "a" / "analysis.json").read_text())["state"] == "stopped"
        resumed = analyse_slide(loaded, s, out_dir=tmp_path / "a", batch_size=8)
        whole = analyse_slide(loaded, s, out_dir=tmp_path / "b", batch_size=8)
    assert 8 <= resumed["resumed_from"] < resumed["tiles"]["tissue"] and whole["resumed_from"] == 0
    assert resumed["tiles"] == whole["tiles"] and resumed["classes"] == whole["classes"]
    assert not (tmp_path / "a" / "partial.npz").exists()


# -- bad input ------------------------------------------------------------------------------------------


def test_not_a_slide(tmp_path):
    for name, data in (("notes.svs", b"hello\n" * 100), ("tile.png", b"\x89PNG\r\n\x1a\n" + b"0" * 100)):
        (tmp_path / name).write_bytes(data)
        with pytest.raises(SlideError, match=f"{name}: not a slide OpenSlide can read"):
            open_slide(tmp_path / name)
    with pytest.raises(SlideError, match="no such file"):
        open_slide(tmp_path / "missing.svs")


def test_truncated_slide(tmp_path):
    p = write_slide(tmp_path / "t.tif", pink_tissue(1024, 1024, seed=3), mpp=0.5, downsamples=(1, 4))
    data = p.read_bytes()
    for keep in (len(data) // 2, len(data) - 2000):  # the last level's header lost; or only its last tiles
        p.write_bytes(data[:keep])
        with pytest.raises(SlideError, match="t.tif: .*truncated"):
            open_slide(p)


def test_level0_size_limit(tmp_path):
    p = write_slide(tmp_path / "t.tif", pink_tissue(1024, 1024), mpp=0.5, downsamples=(1,))
    with pytest.raises(SlideError, match="larger than the 1,000 px per side"):
        open_slide(p, max_side_px=1000)
    open_slide(p).close()  # within the default limit


def test_missing_and_absurd_mpp(tmp_path):
    p = write_slide(tmp_path / "none.tif", pink_tissue(512, 512), mpp=None, downsamples=(1,))
    with pytest.raises(SlideError, match="records no µm per pixel; give it with --mpp"):
        open_slide(p)
    with open_slide(p, mpp=0.5) as s:
        assert s.mpp == 0.5 and s.mpp_source == "given"
    q = write_slide(tmp_path / "absurd.tif", pink_tissue(512, 512), mpp=500.0, downsamples=(1,))
    with pytest.raises(SlideError, match="records 500 µm per pixel"):
        open_slide(q)
    with pytest.raises(SlideError, match="--mpp must be between"):
        open_slide(p, mpp=1000)


def test_no_tissue_and_unfit_models(shipped_model, tmp_path):
    loaded = load_model("pathmnist-resnet9")
    blank = write_slide(tmp_path / "blank.tif", np.full((1024, 1024, 3), 240, np.uint8), mpp=0.5, downsamples=(1,))
    with open_slide(blank) as s, pytest.raises(SlideError, match="no tissue found.*50%.*--tissue-threshold"):
        analyse_slide(loaded, s, out_dir=tmp_path / "a")
    coarse = write_slide(tmp_path / "coarse.tif", pink_tissue(512, 512), mpp=8.0, downsamples=(1,))
    with open_slide(coarse) as s:
        with pytest.raises(SlideError, match="scanned too coarsely for this model"):
            plan_slide_grid(s, meta())
        with pytest.raises(SlideError, match="records no field of view"):
            plan_slide_grid(s, meta(field_px=None, mpp=None))


# -- CLI ------------------------------------------------------------------------------------------------


def test_cli_slide_json(shipped_model, tmp_path, capsys):
    good = write_slide(tmp_path / "good.tif", pink_tissue(1024, 1024), mpp=0.5, downsamples=(1, 4))
    assert main(["slide", "pathmnist-resnet9", str(good), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    s = out["slides"][0]
    assert out["analysed"] == 1 and s["tiles"]["tissue"] == 4 and s["skipped"] is False
    assert set(s["outputs"]) >= {"tiles.csv", "tiles.geojson", "classmap.png"}
    assert all(Path(v).is_file() for v in s["outputs"].values())
    assert Path(s["folder"]).parent.name == ".slides"
    assert s["tissue_mm2"] == pytest.approx(4 * 0.112**2, rel=1e-3)
    assert main(["slide", "pathmnist-resnet9", str(good), "--json"]) == 0  # a rerun: a no-op
    assert json.loads(capsys.readouterr().out)["slides"][0]["skipped"] is True
    bad = tmp_path / "bad.svs"
    bad.write_text("not a slide")
    assert main(["slide", "pathmnist-resnet9", str(bad), str(good), "--json"]) == 2
    captured = capsys.readouterr()
    assert captured.err.count("error: ") == 1 and "bad.svs: not a slide" in captured.err
    assert "Traceback" not in captured.err
    out = json.loads(captured.out)
    assert out["failed"] == 1 and out["analysed"] == 1
    assert main(["slide", "pathmnist-resnet9", str(good), "--tissue-threshold", "0"]) == 2
    assert "--tissue-threshold must be in (0, 1]" in capsys.readouterr().err


def test_cli_bad_model(tmp_path, capsys):
    assert main(["slide", "no-such-model", str(tmp_path / "x.svs")]) == 2
    err = capsys.readouterr().err
    assert "no-such-model" in err and "Traceback" not in err


# -- background task ------------------------------------------------------------------------------------


def test_slide_task_cancels_then_resumes(shipped_model, tmp_path, monkeypatch):
    from histo_core import tasks
    from histo_core.slides import analysis, list_analyses
    from tests.taskfiles import make_task

    monkeypatch.setattr(tasks.signal, "signal", lambda *args: None)  # run_task's SIGTERM hook: not in pytest
    p = write_slide(tmp_path / "t.tif", pink_tissue(2048, 2048), mpp=0.5, downsamples=(1, 4))
    params = {"model": "pathmnist-resnet9", "slide": str(p), "batch_size": 8}
    task = make_task("slide", params, state="queued")
    real_predict = analysis.predict

    def predict_then_cancel(*args, **kwargs):
        task.cancel_path.touch()  # as the page's Cancel does (the process also gets SIGTERM)
        return real_predict(*args, **kwargs)

    monkeypatch.setattr(analysis, "predict", predict_then_cancel)
    assert tasks.run_task(task) == 0
    assert task.status().state == "cancelled"
    [found] = list_analyses()
    assert found.state() == "stopped" and found.file("partial.npz").is_file()
    monkeypatch.setattr(analysis, "predict", real_predict)
    again = make_task("slide", params, state="queued")  # Resume: the same request again
    assert tasks.run_task(again) == 0 and again.status().state == "completed"
    result = again.result()
    assert 8 <= result["resumed_from"] < result["tiles"]["tissue"] == 25
    assert found.state() == "completed" and not found.file("partial.npz").exists()
    analysis.delete_analysis(found)
    assert list_analyses() == []


@pytest.mark.slow
def test_slide_task_runs_in_its_own_process(shipped_model, tmp_path):
    from histo_core import launch
    from tests.taskfiles import wait_for_task

    p = write_slide(tmp_path / "t.tif", pink_tissue(1024, 1024), mpp=0.5, downsamples=(1, 4))
    task = launch.submit_task("slide", {"model": "pathmnist-resnet9", "slide": str(p)})
    status = wait_for_task(task, 240)
    assert status.state == "completed", status
    assert task.result()["tiles"]["tissue"] == 4 and status.phase == "done"


# -- each bad input, in the CLI (one line, exit 2) and on the page (st.error) ---------------------------


def test_cli_refuses_each_bad_input_in_one_line(shipped_model, tmp_path, monkeypatch, capsys):
    from histo_core.slides import reader

    monkeypatch.setattr(reader, "MAX_SIDE_PX", 1100)
    good = write_slide(tmp_path / "good.tif", pink_tissue(1024, 1024), mpp=0.5, downsamples=(1,))
    for what, (path, message) in bad_slides(tmp_path / "bad").items():
        assert main(["slide", "pathmnist-resnet9", str(path), str(good), "--json"]) == 2, what
        captured = capsys.readouterr()
        lines = captured.err.strip().splitlines()
        errors = [line for line in lines if line.startswith("error: ")]
        assert len(errors) == 1 and message in errors[0], (what, captured.err)
        assert "Traceback" not in captured.err
        out = json.loads(captured.out)  # nothing else is disturbed: the good slide is analysed
        assert (out["failed"], out["analysed"]) == (1, 1), what
        assert message in out["slides"][0]["error"]
    assert main(["slide", "pathmnist-resnet9", str(good), "--mpp", "1000"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--mpp must be between 0.05 and 20 µm per pixel, got 1000" in err
