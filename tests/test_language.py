"""The text encoder chosen from the texts (``auto``): English -> MiniLM, other languages -> e5."""

from __future__ import annotations

import pytest

from xmodal.datasets.synthetic import make_scenes
from xmodal.encoders import get_text_encoder
from xmodal.encoders.language import choose_text_encoder, detect_language, resolve_text_encoder
from xmodal.errors import ConfigError

ENGLISH = [c for s in make_scenes(60, captions_per_image=2) for c in s.captions]
CHINESE = [c for s in make_scenes(60, captions_per_image=2, lang="zh") for c in s.captions]
JAPANESE = [c for s in make_scenes(60, captions_per_image=2, lang="ja") for c in s.captions]


def test_english_captions_get_the_english_encoder():
    name, why = choose_text_encoder(ENGLISH)
    assert name == "minilm" and "en" in why


def test_chinese_texts_are_routed_to_the_multilingual_encoder():
    lang, share, n = detect_language(CHINESE)
    assert lang == "zh" and share > 0.9 and n == len(CHINESE)
    name, why = choose_text_encoder(CHINESE)
    assert name == "e5" and "zh" in why and "multilingual" in why


def test_japanese_texts_are_routed_to_the_multilingual_encoder():
    lang, share, _ = detect_language(JAPANESE)
    assert lang == "ja" and share > 0.9
    assert choose_text_encoder(JAPANESE)[0] == "e5"


def test_a_corpus_mixing_languages_goes_multilingual():
    mixed = ENGLISH[:50] + CHINESE[:50] + ["Un gato duerme en el sofá rojo."] * 20
    assert choose_text_encoder(mixed)[0] == "e5"


def test_a_few_short_texts_do_not_flip_english():
    # single words are often misread ("dog" -> cs): the majority of sentences decides
    assert choose_text_encoder(ENGLISH + ["dog", "ok", "Paris"])[0] == "minilm"


def test_a_name_is_kept_and_auto_needs_texts():
    assert resolve_text_encoder("sif", CHINESE) == ("sif", "chosen by name")
    assert resolve_text_encoder(None, CHINESE)[0] == "e5"
    assert choose_text_encoder(["", "   "])[0] == "minilm"  # nothing to detect: the default
    with pytest.raises(ConfigError, match="resolve_text_encoder"):
        get_text_encoder("auto")
