"""`xmodal project create/grow/list` without Label Studio: workspace, medoids, tasks.json, errors.

Most tests replace the encoders with a deterministic fake (features from the item itself), so they
take milliseconds; `test_real_encoders_on_a_small_folder` runs the real ones (marked slow). The Label
Studio half of the bootstrap is exercised against a real server in tests/test_e2e_loop.py.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from xmodal.errors import ConfigError, DataError
from xmodal.index.build import publish_initial_index
from xmodal.labelstudio.project import TASKS_FILE, ProjectSpec, create_project, grow_project, list_projects
from xmodal.project.medoids import CANDIDATES_FILE
from xmodal.project.workspace import Workspace

N = 30


def make_folder(root: Path, n: int = N) -> Path:
    """The generic format: images/ (tiny PNGs in two sub-folders) + texts.jsonl (one text each)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    (root / "images" / "a").mkdir(parents=True)
    (root / "images" / "b").mkdir()
    lines = []
    for i in range(n):
        rel = f"{'ab'[i % 2]}/img{i:03d}.png"
        Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(root / "images" / rel)
        lines.append(json.dumps({"id": f"t{i:03d}", "text": f"caption number {i} & <friends>", "image": rel}))
    (root / "texts.jsonl").write_text("\n".join(lines) + "\n")
    return root


class FakeEncoder:
    def __init__(self, modality, name):
        self.modality, self.name = modality, name
        self.encoder_id = f"fake-{modality}-{name}"

    def save(self, path):
        Path(path).write_bytes(b"fake text encoder state")


@pytest.fixture
def fake_embed(monkeypatch):
    """Replace the encoders: 8-d features derived from each item; records the calls."""
    calls = []

    def embed(modality, name, items, cache_root, fit, say):
        calls.append((modality, name, len(items)))
        # images by file name, not absolute path: the medoids must not depend on tmp_path
        keys = [Path(x).name if modality == "image" else str(x) for x in items]
        F = np.stack([np.frombuffer(hashlib.sha256(k.encode()).digest()[:32], dtype=np.uint8)[:8]
                      for k in keys]).astype(np.float32) + 1.0
        return FakeEncoder(modality, name), F

    monkeypatch.setattr("xmodal.project.features._embed", embed)
    return calls


@pytest.fixture
def data(tmp_path):
    return make_folder(tmp_path / "data")


@pytest.fixture
def models(tmp_path, monkeypatch):
    monkeypatch.setenv("MODEL_DIR", str(tmp_path / "models"))
    for var in ("LABEL_STUDIO_URL", "LABEL_STUDIO_API_KEY", "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT"):
        monkeypatch.delenv(var, raising=False)
    return tmp_path / "models"


def spec(data, **kw) -> ProjectSpec:
    kw.setdefault("k", 6)
    return ProjectSpec(name=kw.pop("name", "proj"), data=data, **kw)


def tasks_of(ws) -> list[dict]:
    return json.loads((ws.root / TASKS_FILE).read_text())


def test_create_writes_a_complete_workspace(data, models, fake_embed):
    notes = []
    res = create_project(spec(data, k=6, candidates=4, text_encoder="sif"), say=notes.append)
    ws = Workspace(models / "proj")
    assert res.ws.root == ws.root and ws.exists()
    cfg = ws.config
    assert cfg["select"] == "image" and cfg["measure"] == "pearson"
    assert cfg["encoders"] == {"image": "efficientnet-lite0", "text": "sif"}
    assert cfg["data"]["path"] == str(data.resolve()) and cfg["data"]["format"] == "folder"
    assert cfg["label_studio"]["project_id"] is None
    assert len(ws.ids("image")) == N and len(ws.ids("text")) == N
    assert ws.load_features("image").shape == (N, 8) and ws.load_features("text").shape == (N, 8)
    assert ws.features_info("text")["encoder_id"] == "fake-text-sif"
    assert ws.text_encoder_state_path.read_bytes() == b"fake text encoder state"
    # medoids are real images, distinct, in anytime order; every image has a cluster
    sel = ws.selection
    assert sel["modality"] == "image" and len(sel["medoid_ids"]) == 6 == res.k
    assert set(sel["medoid_ids"]) <= set(ws.ids("image")) and len(set(sel["medoid_ids"])) == 6
    assert len(sel["labels"]) == N and set(sel["labels"]) == set(range(6))
    rows = ws.row_of("image")
    assert [sel["labels"][rows[m]] for m in sel["medoid_ids"]] == list(range(6))
    # cold-start candidates: a diverse sample of texts, the same for every task
    pool = json.loads((ws.root / CANDIDATES_FILE).read_text())["pool"]
    assert len(pool) == 4 and set(pool) <= set(ws.ids("text")) and res.candidate_pool == pool
    # tasks.json: Label Studio's import format, one task per medoid in anytime order
    tasks = tasks_of(ws)
    assert [t["data"]["item_id"] for t in tasks] == sel["medoid_ids"]
    texts = dict(zip(ws.ids("text"), ws.contents("text")))
    for j, t in enumerate(tasks):
        d = t["data"]
        assert d["cluster"] == j and d["index_version"] == 0 and d["problem"] == ""
        # every text of this small project, the diverse pool first, each with its id shown
        assert [o["alias"] for o in d["options"]][:len(pool)] == pool
        assert sorted(o["alias"] for o in d["options"]) == sorted(ws.ids("text"))
        assert d["image"].startswith("/data/local-files/?d=") and d["image"].endswith(d["item_id"])
        first = d["options"][0]   # shown as it is: the text, then its id
        assert first["value"] == f"{texts[pool[0]]}  {pool[0]}" and first["hotkey"] == "1"
        assert "html" not in first
        assert d["model_note"].startswith("No labels yet")
    assert any("no Label Studio URL" in n for n in res.notes)


def test_rerun_is_idempotent_and_embeds_nothing(data, models, fake_embed):
    first = create_project(spec(data))
    ws = first.ws
    before = {p.name: p.read_bytes() for p in [ws.items_path, ws.selection_path, ws.root / "tasks.json",
                                               ws.features_path("image"), ws.root / "candidates.json"]}
    calls = len(fake_embed)
    again = create_project(spec(data))
    assert len(fake_embed) == calls                       # features reused, no encoder loaded
    assert again.reused_features and again.new_medoids == 0
    assert again.medoid_ids == first.medoid_ids
    after = {p.name: p.read_bytes() for p in [ws.items_path, ws.selection_path, ws.root / "tasks.json",
                                              ws.features_path("image"), ws.root / "candidates.json"]}
    assert after == before


def test_a_larger_k_extends_and_a_smaller_one_keeps(data, models, fake_embed):
    first = create_project(spec(data, k=5))
    more = create_project(spec(data, k=8))
    assert more.medoid_ids[:5] == first.medoid_ids and len(more.medoid_ids) == 8
    assert more.new_medoids == 3 and len(set(more.medoid_ids)) == 8
    notes = []
    fewer = create_project(spec(data, k=3), say=notes.append)
    assert fewer.medoid_ids == more.medoid_ids
    assert any("discards none" in n for n in notes)


def test_grow_without_label_studio(data, models, fake_embed):
    first = create_project(spec(data, k=4))
    grown = grow_project("proj", 7)
    assert grown.medoid_ids[:4] == first.medoid_ids and grown.k == 7
    assert [t["data"]["item_id"] for t in tasks_of(first.ws)] == grown.medoid_ids
    with pytest.raises(ConfigError, match="already has 7 medoids"):
        grow_project("proj", 7)
    with pytest.raises(ConfigError, match="no project 'nope'"):
        grow_project("nope", 9)


def test_a_new_project_takes_medoids_of_its_z_scored_features(data, models, fake_embed):
    """The default ("zscore-medoids" in enhance) clusters the z-scored features, and a grown
    project extends on them; `--enhance none` keeps the paper's k-medoids of the raw features."""
    from xmodal.core.medoids import KMedoidsSelector

    made = create_project(spec(data, k=6))
    X = made.ws.load_features("image")
    ids = made.ws.ids("image")
    assert made.medoid_ids == [ids[r] for r in KMedoidsSelector(6, standardize=True).fit(X).medoid_indices_]
    grown = grow_project("proj", 9)
    assert grown.medoid_ids == [ids[r] for r in KMedoidsSelector(6, standardize=True).fit(X)
                                .extend(X, 3).medoid_indices_]
    faithful = create_project(spec(data, k=6, name="faithful", enhance="none"))
    raw = [ids[r] for r in KMedoidsSelector(6).fit(X).medoid_indices_]
    assert faithful.medoid_ids == raw != made.medoid_ids


def test_a_relative_data_path_is_stored_absolute(data, models, fake_embed, monkeypatch):
    """`project create --data my_data` run in one folder, `xmodal serve` and the workers in
    another: the workspace's image paths must not depend on where the command ran."""
    monkeypatch.chdir(data.parent)
    made = create_project(spec(Path(data.name)))
    paths = made.ws.contents("image")
    assert all(Path(p).is_absolute() and Path(p).is_file() for p in paths), paths[:2]


def test_k_auto_uses_the_canopy_method(data, models, fake_embed):
    res = create_project(spec(data, k="auto"))
    assert 2 <= res.k <= N


def test_select_text_asks_for_images(data, models, fake_embed):
    res = create_project(spec(data, name="bytext", select="text", k=5, candidates=3, images="inline"))
    ws = res.ws
    assert ws.select == "text" and set(res.medoid_ids) <= set(ws.ids("text"))
    t = tasks_of(ws)[0]["data"]
    texts = dict(zip(ws.ids("text"), ws.contents("text")))
    assert t["text"] == texts[t["item_id"]]
    # a grid of thumbnails: every image of this small project (fewer than 30), the pool first
    assert len(t["options"]) == len(ws.ids("image")) and all(o["alias"] in ws.row_of("image") for o in t["options"])
    assert "<img src='data:image/jpeg;base64," in t["options"][0]["html"]


def test_image_url_modes(data, models, fake_embed):
    res = create_project(spec(data, name="prefix", images="https://cdn.example/imgs/"))
    assert tasks_of(res.ws)[0]["data"]["image"] == "https://cdn.example/imgs/" + res.medoid_ids[0]
    res = create_project(spec(data, name="root", images="local", document_root=str(data)))
    assert tasks_of(res.ws)[0]["data"]["image"] == "/data/local-files/?d=images/" + res.medoid_ids[0]
    assert any(m.startswith("b/") for m in res.medoid_ids)  # so some medoid lies outside images/a
    with pytest.raises(ConfigError, match="document root"):
        create_project(spec(data, name="elsewhere", images="local", document_root=str(data / "images" / "a")))


def test_bad_input_errors(data, models, fake_embed, tmp_path):
    with pytest.raises(DataError, match="no such folder"):
        create_project(spec(tmp_path / "missing"))
    (tmp_path / "file").write_text("x")
    with pytest.raises(DataError, match="not a folder"):
        create_project(spec(tmp_path / "file"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="images"):
        create_project(spec(tmp_path / "empty"))
    with pytest.raises(ConfigError, match="--name"):
        create_project(spec(data, name="../x"))
    with pytest.raises(ConfigError, match="more than the 30 items"):
        create_project(spec(data, k=31))
    with pytest.raises(ConfigError, match="at least 1"):
        create_project(spec(data, k=0))
    with pytest.raises(ConfigError, match="number or 'auto'"):
        create_project(spec(data, k="many"))
    with pytest.raises(ConfigError, match="title of 3 to 50 characters"):
        create_project(spec(data, name="t", label_studio_url="http://127.0.0.1:9", api_key="k" * 40))
    # each found before anything was embedded or written (a new user was left a workspace
    # with 0 medoids after --k 100 on 30 items)
    assert fake_embed == [] and not (models / "proj").exists() and not (models / "t").exists()
    with pytest.raises(ConfigError, match="API key"):
        create_project(spec(data, label_studio_url="http://127.0.0.1:9"))
    with pytest.raises(ConfigError, match="--label-studio-url"):
        create_project(spec(data, backend_url="http://127.0.0.1:9090"))
    create_project(spec(data, name="taken"))
    with pytest.raises(ConfigError, match="already exists .* select image"):
        create_project(spec(data, name="taken", select="text"))


def test_unreachable_label_studio_fails_before_embedding(data, models, fake_embed):
    from ls_server import free_port

    with pytest.raises(ConfigError, match="cannot reach Label Studio"):
        create_project(spec(data, label_studio_url=f"http://127.0.0.1:{free_port()}", api_key="k" * 40))
    assert fake_embed == [] and not (models / "proj").exists()


def test_cli_create_list_and_errors(data, models, fake_embed, capsys):
    from xmodal.cli.main import main

    assert main(["project", "create", "--data", str(data), "--name", "cli", "--k", "4"]) == 0
    out = capsys.readouterr().out
    assert "project 'cli' ready" in out and "4 medoids" in out
    assert main(["project", "create", "--data", str(data), "--name", "cli", "--k", "4", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["reused_features"] is True and summary["k"] == 4
    assert main(["project", "list"]) == 0
    listed = capsys.readouterr().out
    assert listed.startswith("cli ") and "medoids=4" in listed and "not linked to Label Studio" in listed
    rows = list_projects()
    assert [r["name"] for r in rows] == ["cli"] and rows[0]["medoids"] == 4
    # a user error: one line on stderr, no traceback, exit code 1
    assert main(["project", "create", "--data", str(data / "nope"), "--name", "x"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: --data") and "Traceback" not in err
    assert main(["project", "grow", "--name", "cli", "--k", "two"]) == 1


def test_cli_create_enhance_sets_and_validates_the_config(data, models, fake_embed, capsys):
    from xmodal.cli.main import main

    assert main(["project", "create", "--data", str(data), "--name", "enh", "--k", "4",
                 "--enhance", "csls,zscore"]) == 0
    assert Workspace(models / "enh").config["enhance"] == ["zscore", "csls"]
    assert main(["project", "create", "--data", str(data), "--name", "enh", "--k", "4"]) == 0
    assert Workspace(models / "enh").config["enhance"] == ["zscore", "csls"]   # kept on a rerun
    capsys.readouterr()
    assert main(["project", "create", "--data", str(data), "--name", "bad", "--k", "4",
                 "--enhance", "zscore,center"]) == 1
    err = capsys.readouterr().err
    assert "--enhance" in err and "'center'" in err and "valid: zscore-medoids, zscore, csls" in err
    assert not (models / "bad").exists()
    assert Workspace(models / "plain").save_config({})["enhance"] == [   # the default
        "zscore-medoids", "zscore", "csls", "bridge"]
    assert Workspace(models / "faithful").save_config({"enhance": "none"})["enhance"] == []


def test_cli_help_has_examples(capsys):
    from xmodal.cli.main import main

    with pytest.raises(SystemExit):
        main(["project", "create", "--help"])
    out = capsys.readouterr().out
    assert "examples:" in out and "--backend-url" in out and "xmodal project create --data" in out


def test_initial_index_is_published_once(data, models, fake_embed, xenv):
    from xmodal.index.store import IndexStore

    res = create_project(spec(data))
    snap, built = publish_initial_index(xenv.redis, res.ws)
    assert built and snap.version == 1 and not snap.has_signal and snap.n_pairs == 0
    again, built = publish_initial_index(xenv.redis, res.ws)
    assert not built and again.version == 1
    assert IndexStore(xenv.redis, res.ws).current_version() == 1


@pytest.mark.slow
def test_real_encoders_on_a_small_folder(tmp_path, models):
    folder = make_folder(tmp_path / "real", n=12)
    res = create_project(spec(folder, k=3, candidates=3, text_encoder="sif",
                              feature_cache=str(tmp_path / "cache")))
    ws = res.ws
    assert ws.load_features("image").shape == (12, 1280)
    assert ws.load_features("text").shape[0] == 12 and np.isfinite(ws.load_features("text")).all()
    from xmodal.encoders.sif import SIFEncoder

    enc = SIFEncoder.load(ws.text_encoder_state_path)
    assert enc.transform(["caption number 1"]).shape == (1, ws.load_features("text").shape[1])
    assert create_project(spec(folder, k=3, candidates=3, text_encoder="sif")).reused_features


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))
