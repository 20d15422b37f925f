"""The human-like simulated annotator answers from what a task's page shows (xmodal.simulation.annotator)."""

from __future__ import annotations

from xmodal.labelstudio.tasks import image_option, text_option
from xmodal.simulation.annotator import (
    Answer,
    HumanLikeAnnotator,
    Knowledge,
    OracleAnnotator,
    content_words,
    page_filter,
)

TEXTS = {"a": "a red bus at a bus stop near a tower", "b": "a man looking at himself in a mirror",
         "c": "two horses on a beach with waves", "d": "the red double decker bus drives past a church",
         "e": "a kitchen with a microwave oven"}


def page(order):
    return {"item_id": "img/bus.jpg", "options": [text_option(t, TEXTS[t]) for t in order]}


KNOW = Knowledge({"img/bus.jpg": {"a", "d"}}, {"img/bus.jpg": TEXTS["d"]})


def test_content_words_skip_stop_words_and_take_the_rarest_first():
    words = content_words("the red double decker bus drives past a church")
    assert len(words) == 3 and "the" not in words and "decker" in words


def test_in_a_language_without_spaces_it_types_words_not_the_sentence():
    """A person reading a Chinese or Japanese caption types a word of it ("三角形"), never the
    whole caption: that would be knowing the coupled text itself."""
    zh = content_words("浅色背景上在左上角画着一个很大的红色三角形")
    assert zh and all(2 <= len(w) < 6 for w in zh) and "三角形" in zh
    ja = content_words("この画像にはちょうど中心に中型のコバルトブルーの三角形が写っている")
    assert ja[0] == "コバルトブルー" and "三角形" in ja
    assert content_words("हिन्दी में एक वाक्य")[0] in ("हिन्दी", "वाक्य")


def test_the_filter_matches_a_substring_of_each_value_like_label_studio():
    options = page("abcde")["options"]
    assert [o["alias"] for o in page_filter(options, "BUS")] == ["a", "d"]
    assert [o["alias"] for o in page_filter(options, "#nothing")] == []


def test_takes_a_right_option_that_is_shown():
    ans = HumanLikeAnnotator(KNOW, "image", shown=3).answer(page("bae"))
    assert (ans.how, ans.choice) == ("shown", "a")


def test_searches_with_words_of_its_caption_when_nothing_shown_is_right():
    # the right texts are beyond the first screen; "decker" (rarest word of d) finds d
    ans = HumanLikeAnnotator(KNOW, "image", shown=2).answer(page("bcead"))
    assert ans.how == "filter" and ans.choice == "d" and ans.words[0] in TEXTS["d"]


def test_writes_its_caption_when_the_page_has_no_right_text():
    ans = HumanLikeAnnotator(KNOW, "image", shown=2).answer(page("bce"))
    assert ans.how == "written" and ans.text == TEXTS["d"] and ans.choice is None
    result = ans.result("image", "caption", "image")
    assert result[0]["value"] == {"choices": ["__none__"]}
    assert result[1] == {"from_name": "description", "to_name": "image", "type": "textarea",
                         "value": {"text": [TEXTS["d"]]}}


def test_searches_all_texts_when_the_filter_finds_nothing_and_picks_the_number():
    """The page carries b, c, e; its search box reaches every text: the person types the words
    it tried in the filter, reads the numbered lines and picks the right one's number."""
    from xmodal.index.text_search import TextSearch
    from xmodal.labelstudio.page_search import hit_line

    ts, queries = TextSearch(list(TEXTS), list(TEXTS.values())), []

    def search(query):
        queries.append(query)
        return [hit_line(n, t, TEXTS[t]) for n, (t, _) in enumerate(ts.search(query), 1)]

    ans = HumanLikeAnnotator(KNOW, "image", shown=2).answer(page("bce"), search=search)
    assert ans.how == "search" and queries == [" ".join(ans.words)] and ans.query == queries[0]
    assert next(x for x in ans.hits if x.startswith(f"{ans.hit}. ")).endswith(" · d")
    result = ans.result("image", "caption", "image")
    assert [(r["from_name"], r["type"]) for r in result] == [
        ("caption", "choices"), ("search", "textarea"), ("hits", "textarea"), ("hit", "choices")]
    assert result[3]["value"] == {"choices": [str(ans.hit)]} and result[2]["value"]["text"] == ans.hits
    # nothing right among the results: it writes its caption, the search kept with the answer
    ans = HumanLikeAnnotator(KNOW, "image", shown=2).answer(page("bce"), search=lambda q: ["1. no · b"])
    assert ans.how == "written" and ans.text == TEXTS["d"] and ans.hit is None
    assert ans.result("image", "caption", "image")[-1]["from_name"] == "description"


def test_text_tasks_pick_a_shown_thumbnail_or_skip():
    know = Knowledge({"t1": {"img/1.jpg"}})
    data = {"item_id": "t1", "options": [image_option(i, "/x") for i in ("img/2.jpg", "img/1.jpg")]}
    assert HumanLikeAnnotator(know, "text").answer(data).choice == "img/1.jpg"
    data["options"] = data["options"][:1]
    skip = HumanLikeAnnotator(know, "text").answer(data)
    assert skip.how == "skipped" and skip.result("text", "image", "text") == []


def test_text_tasks_narrow_the_grid_by_the_words_under_the_thumbnails():
    # the right image is beyond what it scans; "frisbee" (the rarest word of the text) is among
    # the words under its thumbnail, so the filter brings it up
    know = Knowledge({"t1": {"img/1.jpg"}})
    grid = [image_option(f"img/{k}.jpg", "/x", "dog puppy golden retriever") for k in range(2, 6)]
    grid.append(image_option("img/1.jpg", "/x", "frisbee dog puppy border collie"))
    data = {"item_id": "t1", "text": "a dog catches a frisbee in the park", "options": grid}
    ans = HumanLikeAnnotator(know, "text", scan_images=3, per_filter_images=2).answer(data)
    assert (ans.how, ans.choice, ans.words) == ("filter", "img/1.jpg", ["frisbee"])
    # the words of the text find nothing right among what it looks at: skip, never a guess
    data["text"] = "a dog on the grass"
    ans = HumanLikeAnnotator(know, "text", scan_images=3, per_filter_images=2).answer(data)
    assert ans.how == "skipped" and ans.words and ans.choice is None


def test_the_oracle_pastes_what_is_not_an_option():
    assert OracleAnnotator(KNOW, "image").answer(page("bce")).how == "pasted"
    assert OracleAnnotator(KNOW, "image").answer(page("bca")) == Answer("shown", choice="a")


def test_first_right_reads_only_the_first_lines():
    from xmodal.simulation.annotator import first_right

    options = page("bcead")["options"]
    assert first_right(options, {"a", "d"}, 3) is None and first_right(options, {"a", "d"}, 4) == "a"
    assert first_right(options, set(), 10) is None


def test_shown_top10_counts_per_block_of_labels():
    """Labels 1-25: a right option on the first screen for labels 3, 12, 13 and 21-25."""
    from xmodal.simulation.loop import Label, shown_top10

    on_top = {3, 12, 13, 21, 22, 23, 24, 25}
    done = [Label(number=i, item_id=str(i), task={}, answer=Answer("shown"), record={}, snap=None,
                  found=True, shown_top10=i in on_top) for i in range(1, 26)]
    assert shown_top10(done) == [
        {"labels": "1-10", "tasks": 10, "shown_top10": 1, "rate": 0.1},
        {"labels": "11-20", "tasks": 10, "shown_top10": 2, "rate": 0.2},
        {"labels": "21-25", "tasks": 5, "shown_top10": 5, "rate": 1.0}]
    assert shown_top10([]) == []
