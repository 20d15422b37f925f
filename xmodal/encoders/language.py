"""The text encoder chosen from the project's own texts (``--text-encoder auto``, the default).

English texts get ``minilm`` (all-MiniLM-L6-v2), texts in any other language ``e5``
(multilingual-e5-small): measured in ``docs/results.md`` ("Text encoders"), MiniLM is the best
offline English encoder on COCO-mini, and it cannot read scripts it was not trained on, where the
multilingual model can. The language is detected with ``py3langid`` (langid.py's model, bundled,
BSD) on a sample of the texts: the English encoder when at least 80% of them are English (a few
short texts misread as another language do not flip it), else the multilingual one.

    name, why = choose_text_encoder(texts)    # ("e5", "texts in zh (92% of 300 sampled)")
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Sequence

AUTO = "auto"
ENGLISH_ENCODER = "minilm"
MULTILINGUAL_ENCODER = "e5"
SAMPLE = 300             # texts looked at: detection costs ~0.05 ms per text, the sample is plenty
# the English encoder only when nearly all texts are English: COCO-mini, Pascal Sentences and the
# synthetic captions are 99-100% "en"; a corpus mixing languages goes to the multilingual encoder,
# which reads English nearly as well (docs/results.md) and the other languages at all
ENGLISH_SHARE = 0.8


def detect_language(texts: Sequence[str], sample: int = SAMPLE, seed: int = 0) -> tuple[str, float, int]:
    """The majority language of ``texts``: (ISO 639-1 code, its share, texts sampled).
    ``("", 0.0, 0)`` when no text has any content."""
    import py3langid

    nonempty = [t for t in texts if isinstance(t, str) and t.strip()]
    if not nonempty:
        return "", 0.0, 0
    if len(nonempty) > sample:
        nonempty = random.Random(seed).sample(nonempty, sample)
    counts = Counter(py3langid.classify(t[:1000])[0] for t in nonempty)
    lang, n = counts.most_common(1)[0]
    return lang, n / len(nonempty), len(nonempty)


def choose_text_encoder(texts: Sequence[str]) -> tuple[str, str]:
    """(encoder name, the reason in words) for these texts; see the module doc."""
    lang, share, n = detect_language(texts)
    if not n:
        return ENGLISH_ENCODER, "no text to detect a language from"
    found = f"texts in {lang} ({share:.0%} of {n} sampled)"
    if lang == "en" and share >= ENGLISH_SHARE:
        return ENGLISH_ENCODER, f"{found}: the English encoder"
    if lang == "en":   # mostly English, but not enough for an English-only encoder
        return MULTILINGUAL_ENCODER, (f"{found}, under the {ENGLISH_SHARE:.0%} an English-only encoder "
                                      "needs: the multilingual encoder")
    return MULTILINGUAL_ENCODER, f"{found}: the multilingual encoder"


def resolve_text_encoder(name: str | None, texts: Sequence[str]) -> tuple[str, str]:
    """``name`` itself, or for ``auto`` / None the choice for ``texts``: (name, reason)."""
    if name and name != AUTO:
        return name, "chosen by name"
    return choose_text_encoder(texts)
