"""The labelling configs (``label_config/``) and the field names results carry.

A result names the ``<Choices>`` (or ``<TextArea>``) it came from (``from_name``) and the object
it is about (``to_name``): :func:`label_fields` says which, from the workspace, else from what the
backend learned of Label Studio's config at /setup, else the shipped configs' defaults.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import redis

from xmodal.errors import ConfigError
from xmodal.project.workspace import Workspace

LABEL_CONFIGS = {"image": "image_to_text.xml", "text": "text_to_image.xml"}


def label_config_dir() -> Path:
    return Path(__file__).resolve().parents[2] / "label_config"


# -- Label Studio -----------------------------------------------------------------------------

def read_label_config(select: str, path=None) -> tuple[str, str]:
    """(xml, template name) for the select modality, or the file given."""
    if path:
        p = Path(path).expanduser()
        if not p.is_file():
            raise ConfigError(f"--label-config {path}: no such file")
        return p.read_text(), p.name
    p = label_config_dir() / LABEL_CONFIGS[select]
    if not p.is_file():
        raise ConfigError(f"the labelling config {p} is missing (run from a source checkout, or pass "
                          "--label-config FILE)")
    return p.read_text(), p.name

DEFAULT_FIELDS = {"image": ("caption", "image"), "text": ("image", "text")}


# -- label config ---------------------------------------------------------------------------
def choices_fields(label_config: str | None) -> tuple[str, str] | None:
    """(name, toName) of the first ``<Choices>`` (or ``<TextArea>``) tag of a labelling config."""
    if not label_config or not isinstance(label_config, str):
        return None
    try:
        root = ET.fromstring(label_config)
    except ET.ParseError:
        return None
    for tag in ("Choices", "TextArea"):
        for el in root.iter(tag):
            if el.get("name") and el.get("toName"):
                return el.get("name"), el.get("toName").split(",")[0]
    return None


def data_fields(label_config: str | None) -> dict[str, list[str]]:
    """The task data fields a labelling config shows, by kind: ``{"image": [...], "text": [...]}``
    from its ``<Image value="$field">`` and ``<Text>`` / ``<HyperText>`` tags, in order (a value
    that is not one ``$field``, e.g. a literal header, is no field)."""
    out: dict[str, list[str]] = {"image": [], "text": []}
    if not label_config or not isinstance(label_config, str):
        return out
    try:
        root = ET.fromstring(label_config)
    except ET.ParseError:
        return out
    for el in root.iter():
        kind = {"Image": "image", "Text": "text", "HyperText": "text"}.get(el.tag)
        value = (el.get("value") or "").strip()
        if kind and value.startswith("$") and value[1:].isidentifier() and value[1:] not in out[kind]:
            out[kind].append(value[1:])
    return out


def label_fields(redis_client: redis.Redis | None, ws: Workspace) -> tuple[str, str]:
    """(from_name, to_name) for results: workspace config, else what the backend learned from
    Label Studio's labelling config, else the defaults of the select modality."""
    cfg = ws.config
    ls = cfg["label_studio"]
    if ls.get("from_name") and ls.get("to_name"):
        return ls["from_name"], ls["to_name"]
    if redis_client is not None:
        from xmodal.labelstudio.connection import ConnectionRecord

        learned = ConnectionRecord(redis_client, ws.name).fields()
        if learned:
            return learned
    return DEFAULT_FIELDS[cfg["select"]]
