"""``key=value`` log lines: every line of the backend and the workers names its project and job."""

from __future__ import annotations


def _fmt(value) -> str:
    if isinstance(value, float):
        value = f"{value:.4g}"
    text = str(value)
    if text == "" or any(c in text for c in ' "=\n'):
        text = '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    return text


def kv(event: str, **fields) -> str:
    """``kv("rebuild.done", project="p", job="j", ms=12.5)`` -> ``event=rebuild.done project=p ...``;
    None values are left out."""
    parts = [f"event={event}"]
    parts += [f"{k}={_fmt(v)}" for k, v in fields.items() if v is not None]
    return " ".join(parts)
