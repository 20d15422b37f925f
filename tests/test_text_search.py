"""BM25 word search over a project's texts (the labelling page's search box)."""

from __future__ import annotations

import pytest

from xmodal.index.text_search import TextSearch, search_words, text_search

IDS = ["t0", "t1", "t2", "t3", "t4"]
TEXTS = ["Two men throwing a frisbee in a forest", "A dog sleeping on a couch",
         "两只狗在草地上玩耍", "Dogs playing with a frisbee on the beach", "A red bus on a city street"]


def test_the_texts_with_the_words_come_first():
    ts = TextSearch(IDS, TEXTS)
    found = [i for i, _ in ts.search("frisbee forest")]
    assert found == ["t0", "t3"]                       # both words first, one word next
    assert [i for i, _ in ts.search("dog")] == ["t1", "t3"]   # "dogs" is found by "dog"
    assert [i for i, _ in ts.search("DOGS  frisbee")][0] == "t3"
    assert [i for i, _ in ts.search("bus")] == ["t4"]
    assert [i for i, _ in ts.search("sleeps")] == ["t1"] and [i for i, _ in ts.search("plays")] == ["t3"]
    assert len(ts.search("frisbee dog", k=1)) == 1
    assert ts.search("kitty on a sofa") == [] and ts.search("the of in") == []   # stop words alone


def test_chinese_is_searched_by_its_words():
    ts = TextSearch(IDS, TEXTS)
    assert [i for i, _ in ts.search("狗")] == ["t2"]
    assert [i for i, _ in ts.search("草地")] == ["t2"]
    assert len(search_words("两只狗在草地上玩耍")) > 1


def test_japanese_katakana_words_are_searched_whole():
    """A katakana word is one search word: "マゼンタ" finds the magenta shape, not every text
    sharing one of its characters ("タ" of "タワー")."""
    ids = ["j0", "j1", "j2"]
    texts = ["左上にマゼンタの円がある", "京都タワーの写真", "赤い三角形が真ん中にある"]
    ts = TextSearch(ids, texts)
    assert [i for i, _ in ts.search("マゼンタ")] == ["j0"]
    assert [i for i, _ in ts.search("タワー")] == ["j1"]
    assert [i for i, _ in ts.search("三角形")] == ["j2"]


def test_indic_words_are_searched_whole():
    ts = TextSearch(["h0", "h1"], ["एक लाल बस सड़क पर", "सोफे पर सोता हुआ कुत्ता"])
    assert [i for i, _ in ts.search("कुत्ता")] == ["h1"] and [i for i, _ in ts.search("बस")] == ["h0"]


@pytest.mark.parametrize("query", ["", "   ", "zebra", "\x00", "\ud800", "a" * 10_000,
                                   "!!! ???", "1e309"])
def test_nothing_matched_is_an_empty_list(query):
    assert TextSearch(IDS, TEXTS).search(query) == []


def test_one_search_per_items_file(ws):
    first = text_search(ws)
    assert text_search(ws) is first
    assert [i for i, _ in first.search("caption 7")][0] == ws.ids("text")[7]
    ws.save_items(ws.ids("image"), [f"/data/{x}" for x in ws.ids("image")], ws.ids("text"),
                  [f"label {i}" for i in range(len(ws.ids("text")))])
    again = text_search(ws)
    assert again is not first and again.search("caption") == []


def test_warm_builds_it_in_the_background_once(ws):
    import time

    from xmodal.index import text_search as mod

    mod._cache.clear()
    mod.warm(ws)
    deadline = time.monotonic() + 10
    while mod._key(ws, "search") not in mod._cache and time.monotonic() < deadline:
        time.sleep(0.01)
    built = mod._cache[mod._key(ws, "search")]
    mod.warm(ws)
    assert text_search(ws) is built
