"""The dataset source registry: adding a dataset kind is one source class. A tiny kind registered here (a
registered name and a file type) is recognised, listed by the catalog, the CLI and the Datasets page, and opened
by open_dataset; the built-in kinds are all found through the same registry."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from histo_core.cli import main
from histo_core.datasets import (
    DatasetEntry,
    DatasetInfo,
    DatasetSource,
    Split,
    TileDataset,
    describe_spec,
    open_dataset,
    register_source,
    registered_names,
    source_for,
)
from histo_core.datasets.catalog import add_local_dataset, available_datasets
from histo_core.datasets.sources import unregister_source
from histo_core.errors import DatasetError
from tests.conftest import ROOT
from tests.test_datasets_sources import make_class_folders, write_medmnist_npz


def _tiny(name: str, size: int = 8) -> TileDataset:
    rng = np.random.default_rng(0)
    splits = {
        s: Split(s, rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8), np.arange(n) % 2)
        for s, n in (("train", 6), ("val", 2), ("test", 2))
    }
    info = DatasetInfo(name=name, title=f"Tiny ({name})", source="tiny", classes=["a", "b"], channels=3, size=size)
    return TileDataset(info, splits)


class TinySource(DatasetSource):
    kind = "tiny"
    label = "tiny tile file"

    def names(self) -> tuple[str, ...]:
        return ("tiny-demo",)

    def recognises(self, path: Path) -> bool:
        return path.suffix == ".tiny"

    def open(self, spec, options, *, size, as_rgb, data_dir, seed, progress) -> TileDataset:
        if spec != "tiny-demo" and not Path(spec).read_text().startswith("tiny"):
            raise DatasetError(f"{spec}: not a tiny file")
        return _tiny(spec, size or 8)

    def entries(self, data_dir=None) -> list[DatasetEntry]:
        return [DatasetEntry("tiny-demo", "Tiny demo", self.kind, sizes=(8, 16), channels=3, classes=("a", "b"))]


@pytest.fixture
def tiny():
    source = register_source(TinySource())
    yield source
    unregister_source(source)


def test_a_registered_kind_is_recognised_listed_and_opened(tiny, tmp_path):
    file = tmp_path / "set.tiny"
    file.write_text("tiny\n")
    assert source_for(str(file))[0] is tiny and describe_spec(str(file)) == "tiny tile file"
    assert "tiny-demo" in registered_names() and describe_spec("tiny-demo") == "registered dataset"
    assert open_dataset("tiny-demo", size=16).info.size == 16
    assert open_dataset(file, data_dir=tmp_path).split_sizes() == {"train": 6, "val": 2, "test": 2}
    with pytest.raises(DatasetError, match="only for CSV manifests; tiny tile files take none"):
        open_dataset(f"{file}?label=x", data_dir=tmp_path)

    listed = {d.spec: d for d in available_datasets(tmp_path)}
    assert listed["tiny-demo"].sizes == (8, 16)
    add_local_dataset(file, tmp_path)
    added = {d.spec: d for d in available_datasets(tmp_path)}[str(file)]
    assert added.user_added and added.source == "tiny" and added.tag == "tiny tile file"


def test_the_cli_lists_a_registered_kind(tiny, tmp_path, capsys):
    assert main(["datasets", "--json", "--data-dir", str(tmp_path)]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)["datasets"]}
    assert rows["tiny-demo"]["source"] == "tiny" and rows["tiny-demo"]["available"]
    assert main(["datasets", "--info", "tiny-demo", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["split_sizes"] == {"train": 6, "val": 2, "test": 2}


def test_the_datasets_page_offers_and_opens_a_registered_kind(tiny):
    at = AppTest.from_file(str(ROOT / "pages" / "1_Datasets.py"), default_timeout=60)
    at.query_params["dataset"] = "tiny-demo"
    at.run()
    assert not at.exception, at.exception
    assert "Tiny demo" in at.selectbox(key="datasets_page_choice").options  # listed by the catalog
    assert at.subheader[0].value == "Tiny (tiny-demo)"


def test_builtin_kinds_resolve_through_the_registry(tmp_path):
    write_medmnist_npz(tmp_path / "a.npz")
    make_class_folders(tmp_path / "folder", classes=("ADI", "TUM"), per_class=3)
    (tmp_path / "m.csv").write_text("path,label\n")
    kinds = {
        "synthetic": "synthetic",
        "pathmnist": "medmnist",
        "pcam": "pcam",
        str(tmp_path / "a.npz"): "npz",
        str(tmp_path / "folder"): "folder",
        str(tmp_path / "m.csv"): "csv",
        str(tmp_path / "x_split_train_x.h5"): "pcam",
    }
    assert {spec: source_for(spec)[0].kind for spec in kinds} == kinds
    assert source_for(str(tmp_path / "notes.txt"))[0] is None
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(DatasetError, match="unsupported dataset file"):
        open_dataset(tmp_path / "notes.txt")
