"""The backend loads what the first /search needs at start (backend.warm): the first search
after a start does not load the index or the text encoder again; a project that cannot warm (no
index yet, a broken workspace) never keeps the backend from starting."""

from __future__ import annotations

import numpy as np
from test_backend_api import FakeTextEncoder, build_index

from xmodal.index.store import IndexStore, clear_cache


class WarmableText(FakeTextEncoder):
    def transform(self, texts):
        return np.stack([self.Y[int(t.split()[-1]) if t.split()[-1].isdigit() else 0] for t in texts])


def counting(monkeypatch):
    loads = {"index": 0, "encoder": 0}
    real_load = IndexStore.load

    def load(self, version):
        loads["index"] += 1
        return real_load(self, version)

    def loader(ws):
        loads["encoder"] += 1
        return WarmableText()

    monkeypatch.setattr(IndexStore, "load", load)
    return loads, loader


def test_first_search_after_start_loads_nothing(xenv, ws, r, monkeypatch):
    from backend.app import create_app

    build_index(r)
    clear_cache()   # a fresh process: nothing loaded yet
    loads, loader = counting(monkeypatch)
    app = create_app({"TEXT_ENCODER_LOADER": loader, "WARM_START": True})
    app.extensions["xmodal_warm"].join(60)
    assert loads == {"index": 1, "encoder": 1}
    hits = app.test_client().get("/search?text=caption%2025&k=5").get_json()
    assert hits["model_version"] == "v1" and len(hits["results"]) == 5
    assert loads == {"index": 1, "encoder": 1}   # the search found both loaded


def test_cold_start_still_loads_on_the_first_search(xenv, ws, r, monkeypatch):
    """The same without the warm-up: the counts above are what the warm-up saved."""
    from backend.app import create_app

    build_index(r)
    clear_cache()   # a fresh process: nothing loaded yet
    loads, loader = counting(monkeypatch)
    app = create_app({"TEXT_ENCODER_LOADER": loader, "WARM_START": False})
    assert "xmodal_warm" not in app.extensions and loads == {"index": 0, "encoder": 0}
    assert app.test_client().get("/search?text=caption%2025&k=5").status_code == 200
    assert loads == {"index": 1, "encoder": 1}


def test_projects_without_index_or_broken_do_not_stop_the_start(xenv, ws, make_workspace):
    from backend import warm
    from backend.app import create_app

    make_workspace("fresh", n=20, n_medoids=4, ls_project_id=8)
    broken = xenv.models / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    app = create_app({"TEXT_ENCODER_LOADER": lambda w: WarmableText(), "WARM_START": True})
    app.extensions["xmodal_warm"].join(60)
    got = warm.warm_all(app.extensions["xmodal"])
    assert got["proj"]["index"] is None and got["fresh"]["index"] is None   # no index yet: nothing to embed
    assert "text_encoder" not in got["proj"]
    assert "error" in got["broken"]
    assert app.test_client().get("/health").status_code == 200
