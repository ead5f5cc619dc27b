"""Slides page (AppTest): pick the real CMU slide under the data roots, see its metadata, a path outside the
roots and a bad file refused; with a finished analysis, the class map, legend, downloads and the tile panel
(probabilities and Grad-CAM)."""

from __future__ import annotations

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from histo_core.model_cache import load_model
from histo_core.slides import analyse_slide, open_slide

PAGE = str(Path(__file__).resolve().parent.parent / "pages" / "8_Slides.py")


@pytest.fixture
def cmu(shared_data) -> Path:
    p = shared_data / "slides" / "CMU-1-Small-Region.svs"
    if not p.exists():
        pytest.skip(f"{p} is absent")
    return p


def page(path: str, model: Path | None = None) -> AppTest:
    at = AppTest.from_file(PAGE, default_timeout=120)
    at.session_state["slides_path"] = path
    if model is not None:
        at.session_state["slides_model"] = str(model)
    return at.run()


def test_outside_roots_and_bad_files_are_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("HISTO_DATA_ROOTS", str(tmp_path / "roots"))
    (tmp_path / "roots").mkdir()
    at = page("/etc/passwd")
    assert at.error and "outside the allowed folders" in at.error[0].value
    bad = tmp_path / "roots" / "notes.svs"
    bad.write_text("<b>not</b> a slide")
    at = page(str(bad))
    assert at.error and "notes.svs: not a slide OpenSlide can read" in at.error[0].value
    assert not at.exception


def test_slide_metadata_class_map_and_tile(cmu, shipped_model):
    loaded = load_model("pathmnist-resnet9")
    with open_slide(cmu) as s:
        summary = analyse_slide(loaded, s)  # the folder the page finds for this slide and model
    at = page(str(cmu), shipped_model)
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]
    meta = at.dataframe[0].value
    assert "0.499 (metadata)" in meta["value"].tolist() and "20x" in meta["value"].tolist()
    assert any("Tiles of 112 µm = 224 px at level 0" in c.value for c in at.caption)
    assert any(b.label == "Analyse again" for b in at.button), [b.label for b in at.button]
    legend = at.dataframe[1].value
    shown = {r["class"]: r["area mm²"] for _, r in legend.iterrows()}
    for c in summary["classes"]:
        if c["tiles"]:
            assert shown[c["class"]] == pytest.approx(c["area_mm2"])
    assert "(unlike the training tiles)" in shown
    # a tile with tissue: its prediction, probabilities and Grad-CAM
    import csv

    first = next(csv.DictReader(open(summary["outputs"]["tiles.csv"])))
    at.number_input(key="slides_row").set_value(int(first["row"]))
    at.number_input(key="slides_col").set_value(int(first["col"]))
    at.run()
    assert not at.exception, at.exception
    assert any(first["class"] in m.value for m in at.markdown)
    captions = [c for el in at.get("image") for c in el.captions]
    assert any(c.startswith(f"GradCAM for '{first['class']}'") for c in captions), captions
    assert any(c.startswith("the tile, 224 px") for c in captions), captions
    # its "unlike the training tiles" score, as in the CSV (flagged: a warning; else a caption)
    said = [w.value for w in at.warning] + [c.value for c in at.caption]
    assert any(f"score {float(first['ood_score']):.2f}" in t for t in said), said
    assert any(w.value.startswith("This tile looks unlike") for w in at.warning) == (first["ood"] == "1")


def test_uploads_are_kept_by_content_in_the_data_dir():
    from histo_core import paths
    from histo_core.errors import HistoError
    from pages.ui.slides import save_upload

    a = save_upload("My slide (1).svs", b"abc")
    assert a.parent == paths.data_dir() / "slide-uploads" and a.suffix == ".svs" and a.read_bytes() == b"abc"
    assert save_upload("other name.svs", b"abc").name != a.name and save_upload("My slide (1).svs", b"abc") == a
    assert paths.inside_roots(a, paths.data_roots())  # opened like any slide in the data roots
    with pytest.raises(HistoError, match="not a single-file slide"):
        save_upload("slide.mrxs", b"abc")


def test_an_upload_over_the_limit_is_refused_with_what_to_do():
    import tomllib

    from pages.ui.slides import UPLOAD_LIMIT_MB, upload_refusal

    config = tomllib.loads((Path(PAGE).parent.parent / ".streamlit" / "config.toml").read_text())
    assert config["server"]["maxUploadSize"] == UPLOAD_LIMIT_MB  # the browser's limit is the page's
    assert upload_refusal("s.svs", UPLOAD_LIMIT_MB * 2**20) is None
    said = upload_refusal("s.svs", 300 * 2**20)
    assert (
        said == "s.svs: 300 MB, over the 200 MB upload limit; put the slide in a data folder and pick it from the list"
    )


def test_a_running_analysis_shows_progress_its_map_so_far_and_cancel(cmu, shipped_model):
    from tests.taskfiles import make_task

    loaded = load_model("pathmnist-resnet9")

    def stop(progress):
        raise KeyboardInterrupt

    with open_slide(cmu) as s, pytest.raises(KeyboardInterrupt):
        analyse_slide(loaded, s, batch_size=8, progress=stop)  # partial results, as a running task leaves them
    params = {"model": str(shipped_model), "slide": str(cmu), "mpp": None, "tissue_threshold": 0.5, "tta": False}
    params["force"] = False  # as the page's Analyse button submits it
    task = make_task("slide", params, state="running")
    task.update_status(phase="8/44 tiles · 20 tiles/s · ETA 2 s", step=180, steps_per_epoch=1000)
    at = page(str(cmu), shipped_model)
    assert not at.exception, at.exception
    assert any(b.label == "Cancel" for b in at.button)
    captions = [c for el in at.get("image") for c in el.captions]
    assert any(c.startswith("class map so far: ") and int(c.split(": ")[1].split()[0]) >= 8 for c in captions), captions
    assert "Class map (so far:" in at.subheader[0].value


def test_slides_are_listed_from_the_roots_without_small_tiffs(tmp_path):
    from pages.ui.slides import find_slides

    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "big.tif").write_bytes(b"\0" * (2 << 20))
    (tmp_path / "a" / "tile.tif").write_bytes(b"\0" * 1000)
    (tmp_path / "a" / "s.svs").write_bytes(b"\0")
    (tmp_path / "a" / "notes.txt").write_bytes(b"\0")
    assert [p.name for p in find_slides([tmp_path])] == ["big.tif", "s.svs"]


def test_a_click_on_the_overview_selects_its_tile():
    """The event a click on a tile marker gives in the browser (tests/test_browser_slides.py clicks for real):
    customdata comes back as an index-keyed object, so the tile is found from the point's index."""
    from pages.ui.slides import clicked_tile

    point = {"curve_number": 1, "point_number": 13, "point_index": 13, "customdata": {"0": 1, "1": 4}}
    assert clicked_tile({"selection": {"points": [point]}}, cols=9) == (1, 4)
    assert clicked_tile({"selection": {"points": [{**point, "curve_number": 0}]}}, cols=9) is None  # the image
    assert clicked_tile({"selection": {"points": []}}, cols=9) is None
    assert clicked_tile(None, cols=9) is None


def test_each_bad_slide_gets_its_message_on_the_page(shipped_model, tmp_path, monkeypatch):
    """The refusals of the CLI (tests/test_slides.py), as st.error on the page; no tissue is found by the
    analysis task, whose failure the page shows."""
    from histo_core import tasks
    from histo_core.slides import reader
    from pages.ui.common import plain
    from tests.slidefiles import bad_slides
    from tests.taskfiles import make_task

    monkeypatch.setattr(reader, "MAX_SIDE_PX", 1100)
    monkeypatch.setattr(tasks.signal, "signal", lambda *args: None)  # run_task's SIGTERM hook: not in pytest
    for what, (path, message) in bad_slides(tmp_path / "bad").items():  # tmp_path is inside the data roots
        if what == "no tissue":
            params = {"model": str(shipped_model), "slide": str(path), "mpp": None, "tissue_threshold": 0.5}
            task = make_task("slide", {**params, "tta": False, "force": False}, state="queued")
            assert tasks.run_task(task) != 0 and task.status().state == "failed"
        at = page(str(path), shipped_model)
        assert not at.exception, (what, at.exception)
        errors = [e.value for e in at.error]
        assert len(errors) == 1 and plain(message) in errors[0], (what, errors)  # file names shown as text
