"""A real Chromium, driven by selenium, as a person on Label Studio's labelling page.

Only what the page shows is used: the note lines under the medoid (which index ranked the options,
how many labels it holds, the item's name), the option list as it is on screen (each text with its
id in grey), the filter box, the "None of these" choice and the description box, Submit and Skip.
Where the project hides ids (``show_ids``: COCO-mini's ``535506#0`` names ``000000535506.jpg``) the
page names neither the medoid nor the texts: the medoid is then known by the task Label Studio's
page holds (``window.Htx``: the person sees the picture, or reads the text) and a text by its
words, through the project's ids and texts given to :meth:`LabellingPage.know`.

Chromium and ChromeDriver are Debian packages (``apt-get install chromium chromium-driver``),
selenium is on PyPI; a test that needs them is skipped with that message when they are absent.
"""

from __future__ import annotations

import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

CHROMIUM = ("/usr/bin/chromium", "/usr/bin/chromium-browser")
FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage")
NOTE = re.compile(r"model v(\d+) \((\d+) labels?\)", re.IGNORECASE)  # "Model v2 (1 label) is too new"

# one round trip instead of one per option (a page carries ~800): what is displayed, in order
# an option reads "<text>  <id>" (a thumbnail: its id under it), Label Studio appends "[key]"
_SPLIT = """
function option(el) {
  const shown = el.querySelector('.xm-id');
  const text = el.textContent.replace(/\\[[^\\]]*\\]\\s*$/, '');
  if (shown) return [shown.textContent.trim(), text.slice(0, text.lastIndexOf(shown.textContent)).trim()];
  const cut = text.lastIndexOf('  ');
  // no id shown (show_ids): the text alone, which LabellingPage.know maps to its id
  return cut < 0 ? ['', text.trim()] : [text.slice(cut).trim(), text.slice(0, cut).trim()];
}"""
_VISIBLE = _SPLIT + """
const out = [];
for (const el of document.querySelectorAll('.lsf-choice')) {
  if (el.offsetParent === null) continue;
  const o = option(el);
  if (o && !o[1].startsWith('None of these')) out.push(o);
  if (out.length >= arguments[0]) break;
}
return out;"""
_OPTION = _SPLIT + """
for (const el of document.querySelectorAll('.lsf-choice')) {
  const o = option(el);
  if (o && el.offsetParent !== null && (o[0] === arguments[0]
      || (o[0] === '' && o[1].replace(/\\s+/g, ' ') === arguments[1]))) return el;
}
return null;"""

# the item of the task on the page, from Label Studio's own store (the image is a blob: URL)
_TASK_ITEM = """
const task = window.Htx && window.Htx.task;
const data = task && task.dataObj;
return data && data.item_id != null ? String(data.item_id) : null;"""

# Label Studio 1.23.2: "No More Tasks Left in Queue", "All tasks in the queue have been completed"
_LOWER = "translate(text(), 'ABCDEFGHIJKLMNOPQRSTUVWXYZ', 'abcdefghijklmnopqrstuvwxyz')"
_DONE = f"//*[contains({_LOWER}, 'no more tasks') or contains({_LOWER}, 'all tasks in the queue')]"
_ANSWERS = """return performance.getEntriesByType('resource').filter(
  x => x.name.includes('interactive-annotating') && x.responseEnd > 0).length;"""

# the search box's result lines, as shown under it ("<n>. <text>  <id>", or "No text ... has the words")
_HITS = """
const box = document.querySelector('.xm-results');   // .xm-hits itself has no box (display: contents)
if (!box || box.offsetParent === null) return [];
const out = [];
for (const el of box.querySelectorAll('.xm-hits *')) {
  if (el.children.length) continue;
  const t = el.textContent.trim();
  if (/^[0-9]+\\. /.test(t) || t.startsWith('No text ')
      || t.startsWith('Texts with the words')) out.push(el.textContent);
}
return out;"""
_HIT_CHOICE = """
for (const el of document.querySelectorAll('.xm-hit .lsf-choice')) {
  if (el.textContent.replace(/\\[[^\\]]*\\]\\s*$/, '').trim() === arguments[0]) return el;
}
return null;"""

# the result line numbered arguments[0] ("3. <text> · <id>"): the row Label Studio draws for it
_HIT_LINE = """
for (const el of document.querySelectorAll('.xm-hits .lsf-row')) {
  if (el.textContent.trim().startsWith(arguments[0] + '. ')) return el;
}
return null;"""

# where an element is on the first screen: every scroll box back at its top, as a task opens
_FIRST_SCREEN = """
for (const el of document.querySelectorAll('*')) { if (el.scrollTop) el.scrollTop = 0; }
window.scrollTo(0, 0);
const r = arguments[0].getBoundingClientRect();
return {top: r.top, bottom: r.bottom, height: r.height, inner: window.innerHeight};"""

_CHECKED = """
const el = arguments[0];
return Boolean(el.querySelector('input:checked') || el.querySelector('[class*="checked"]')
               || /checked/.test(el.className));"""


def chromium_driver(width: int = 1280, height: int = 900):
    """A headless Chromium (skips the test when Chromium, ChromeDriver or selenium is missing)."""
    try:
        from selenium import webdriver
    except ImportError:
        pytest.skip("selenium is not installed (pip install selenium)")
    binary = next((b for b in CHROMIUM if Path(b).exists()), shutil.which("chromium"))
    driver_bin = shutil.which("chromedriver") or "/usr/bin/chromedriver"
    if not binary or not Path(driver_bin).exists():
        pytest.skip("Chromium and ChromeDriver are not installed: apt-get install chromium chromium-driver")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in FLAGS + (f"--window-size={width},{height}",):
        options.add_argument(flag)
    return webdriver.Chrome(service=webdriver.ChromeService(driver_bin), options=options)


@dataclass
class ShownTask:
    item: str                 # the item the page is about (its note line)
    version: int | None       # the index that ranked its options (None: no labels yet)
    labels: int               # how many labels that index holds
    loaded_at: float          # time.time() when it appeared
    served_at: float          # when the page asked Label Studio for it (the next_task request)


def freshness_misses(served: list[ShownTask], label_times: list[float], older_than_s: float) -> list[tuple]:
    """``(item, version, labels, due)`` of each served task (the first excepted: no label yet) whose
    index lacked a label submitted more than ``older_than_s`` before Label Studio served it."""
    misses = []
    for task in served[1:]:
        due = sum(1 for t in label_times if t < task.served_at - older_than_s)
        if task.labels < due:
            misses.append((task.item, task.version, task.labels, due))
    return misses


class LabellingPage:
    """Label Studio's labelling stream of one project, seen and used as a person would."""

    def __init__(self, driver, url: str, shots: Path):
        self.d, self.url, self.shots = driver, url.rstrip("/"), Path(shots)
        self.shots.mkdir(parents=True, exist_ok=True)
        self.n_shots = 0
        self.texts: dict[str, str] = {}     # text id -> text
        self._by_text: dict[str, str] = {}  # a text as the page shows it -> its id

    def know(self, ws) -> None:
        """The project's ids and texts: how a text the page does not name is known."""
        self.texts = dict(zip(ws.ids("text"), ws.contents("text")))
        self._by_text = {}
        for tid, text in self.texts.items():
            self._by_text.setdefault(_shown(text), tid)

    # -- navigation ---------------------------------------------------------------------------
    def login(self, user: str, password: str) -> None:
        from selenium.webdriver.common.by import By
        from selenium.webdriver.common.keys import Keys

        self.d.get(f"{self.url}/user/login/")
        self.d.find_element(By.NAME, "email").send_keys(user)
        self.d.find_element(By.NAME, "password").send_keys(password + Keys.ENTER)
        self._until(lambda d: "/user/login" not in d.current_url, 30, "the login")

    def open_stream(self, project_id: int) -> None:
        """"Label All Tasks": Label Studio serves the next task after each submit (the Data
        Manager's ``next_task`` action, in the tab's order)."""
        self.d.get(f"{self.url}/projects/{project_id}/data?labeling=1")
        self.d.execute_script("performance.setResourceTimingBufferSize(100000);")

    def wait_task(self, previous: ShownTask | None = None, timeout: float = 90) -> ShownTask | None:
        """The next task once it is on screen (its note and options rendered); None when Label
        Studio says there is nothing left."""
        from selenium.webdriver.common.by import By

        def shown(d):
            if d.find_elements(By.XPATH, _DONE):
                return "done"
            notes = d.find_elements(By.CSS_SELECTOR, ".xm-note")
            if not notes or not d.find_elements(By.CSS_SELECTOR, ".lsf-choice"):
                return False
            text = notes[0].text
            item = self.item_on_page()
            if item is None or (previous is not None and item == previous.item):
                return False
            return text, item

        got = self._until(shown, timeout, "the next task")
        if got == "done":
            return None
        text, item = got
        m = NOTE.search(text)
        loaded = time.time()
        return ShownTask(item=item, version=int(m.group(1)) if m else None,
                         labels=int(m.group(2)) if m else 0, loaded_at=loaded,
                         served_at=self._last_request("next_task") or loaded)

    def _last_request(self, path: str) -> float | None:
        """Epoch seconds at which the page sent its latest request for ``path`` (its own resource
        timing): when Label Studio chose what to serve, from what its database held then."""
        ms = self.d.execute_script(
            "const e = performance.getEntriesByType('resource').filter(x => x.name.includes(arguments[0]));"
            "return e.length ? performance.timeOrigin + (e[e.length - 1].requestStart"
            " || e[e.length - 1].startTime) : null;", path)
        return None if ms is None else ms / 1000.0

    # -- reading ------------------------------------------------------------------------------
    def visible_options(self, limit: int) -> list[tuple[str, str]]:
        """(id, text) of the first ``limit`` options a person sees (the filter applied)."""
        return [(i or self._by_text.get(_shown(t), ""), t) for i, t in self.d.execute_script(_VISIBLE, limit)]

    # -- acting -------------------------------------------------------------------------------
    def filter(self, word: str) -> None:
        box = self._filter_box()
        self.clear_filter()
        box.send_keys(word)

    def clear_filter(self) -> None:
        from selenium.webdriver.common.keys import Keys

        box = self._filter_box()
        box.send_keys(Keys.CONTROL, "a")
        box.send_keys(Keys.DELETE)

    def choose(self, item_id: str) -> None:
        """Click the option, and again when the page did not take the click (seen in CI: a click
        on a thumbnail while the page re-rendered left nothing selected), as a person would who
        sees nothing ticked."""
        for _ in range(3):
            element = self.d.execute_script(_OPTION, item_id, _shown(self.texts.get(item_id, "")))
            if element is None:
                raise AssertionError(f"option {item_id} is not on the page; shots {self.shots}")
            self._click(element)
            if self._checked(element):
                return
        shot = self.screenshot(f"not-selected-{item_id}")
        raise AssertionError(f"three clicks on option {item_id} selected nothing; screenshot {shot}")

    def search_all(self, words: str, timeout: float = 30) -> list[str]:
        """"None of these", then ``words`` into the search box it reveals and Enter: the result
        lines the page then shows (Label Studio asks the backend; each search replaces them)."""
        from selenium.webdriver.common.by import By
        from selenium.webdriver.common.keys import Keys

        self.none_of_these()
        box = self._until(lambda d: next((b for b in d.find_elements(
            By.CSS_SELECTOR, "input[placeholder^='Search all texts']") if b.is_displayed()), False),
            10, "the search box")
        before, answered = self.d.execute_script(_HITS), self.d.execute_script(_ANSWERS)
        box.send_keys(words + Keys.ENTER)
        self._until(lambda d: d.execute_script(_ANSWERS) > answered, timeout,
                    f"Label Studio's answer to the search {words!r}")
        at = time.time()   # the same lines again (another search, the same texts) also count, a moment later
        return self._until(lambda d: (lines := d.execute_script(_HITS)) and
                           (lines != before or time.time() > at + 1) and lines,
                           timeout, f"the search results for {words!r}")

    def pick_hit(self, n: int) -> None:
        """Click result number ``n`` (the radio buttons under the result lines)."""
        element = self.d.execute_script(_HIT_CHOICE, str(n))
        if element is None:
            raise AssertionError(f"no result number {n} on the page; shots {self.shots}")
        for _ in range(3):
            self._click(element)
            if self._checked(element):
                return
        raise AssertionError(f"three clicks on result {n} selected nothing; shots {self.shots}")

    def click_hit_line(self, n: int) -> None:
        """Click the text of result line ``n`` (its middle, where a person's eye is, not its radio)."""
        from selenium.webdriver.common.action_chains import ActionChains

        line = self.d.execute_script(_HIT_LINE, str(n))
        if line is None:
            raise AssertionError(f"no result line {n} on the page; shots {self.shots}")
        self.d.execute_script("arguments[0].scrollIntoView({block: 'center'});", line)
        # a pointer click at the line's middle: selenium's element.click() would refuse, since the
        # number's radio lies over the line (that is the point) and would take the click
        ActionChains(self.d).move_to_element(line).click().perform()

    def first_screen(self, css: str) -> dict:
        """The rect of the first displayed element matching ``css`` with every scroll box at its
        top (``top``, ``bottom``, ``height``; ``inner``: the window's height)."""
        from selenium.webdriver.common.by import By

        element = next((e for e in self.d.find_elements(By.CSS_SELECTOR, css) if e.is_displayed()), None)
        if element is None:
            raise AssertionError(f"nothing displayed matches {css!r}; shots {self.shots}")
        return self.d.execute_script(_FIRST_SCREEN, element)

    def nomatch_hint(self) -> str:
        """The hint under the option list when the filter matches nothing ('' when not shown)."""
        from selenium.webdriver.common.by import By

        return " ".join(e.text for e in self.d.find_elements(By.CSS_SELECTOR, ".xm-nomatch") if e.is_displayed())

    def side_panel_width(self) -> int:
        """How many pixels wide Label Studio's side panels (Info/History, Regions) are shown (0: hidden)."""
        return int(self.d.execute_script(
            "return Array.from(document.querySelectorAll('.lsf-sidepanels__wrapper'))"
            ".filter(el => el.offsetParent).reduce((w, el) => w + el.getBoundingClientRect().width, 0);"))

    def refusal(self) -> str:
        """The text of the dialog Label Studio shows when it refuses a Submit ('' when none shows)."""
        return self.d.execute_script(
            "return Array.from(document.querySelectorAll('.ant-modal, [class*=\"modal\"]'))"
            ".filter(el => el.offsetParent && el.textContent.trim()).map(el => el.innerText)[0] || '';")

    def dismiss(self) -> None:
        """Close Label Studio's dialog with its OK button, as a person would after reading it."""
        from selenium.webdriver.common.by import By

        button = self._until(lambda d: next((b for b in d.find_elements(By.TAG_NAME, "button")
                                             if b.text.strip() == "OK" and b.is_displayed()), False),
                             10, "the dialog's OK button")
        button.click()
        self._until(lambda d: not self.refusal(), 10, "the dialog to close")

    def add_entry(self) -> None:
        """Shift+Enter in the description box: the typed text becomes its entry (what the page's
        "Add" button does), and Label Studio sends it to the backend to be checked."""
        from selenium.webdriver.common.by import By
        from selenium.webdriver.common.keys import Keys

        box = next(t for t in self.d.find_elements(By.TAG_NAME, "textarea") if t.is_displayed())
        box.send_keys(Keys.SHIFT, Keys.ENTER)

    def check_line(self) -> str:
        """The backend's line about the description's entry ('' when none shows)."""
        from selenium.webdriver.common.by import By

        return " ".join(e.text for e in self.d.find_elements(By.CSS_SELECTOR, ".xm-check") if e.is_displayed()).strip()

    def item_on_page(self) -> str | None:
        """The item named on the page's note line (the task still on screen)."""
        from selenium.webdriver.common.by import By

        notes = self.d.find_elements(By.CSS_SELECTOR, ".xm-note")
        text = notes[0].text if notes else ""
        named = next((ln.split(" ", 1)[1] for ln in text.splitlines() if ln.startswith(("image ", "text "))), None)
        if named is not None:
            return named
        return self.d.execute_script(_TASK_ITEM)   # the project hides ids: the task it is

    def names_the_image(self, image_id: str) -> list[str]:
        """The lines the page shows (as a person sees them) that hold the image's file name, stem or
        number (xmodal.labelstudio.tasks.ids_name_images): none where the project hides ids."""
        from xmodal.labelstudio.tasks import ids_name_images

        shown = self.d.execute_script("return document.body.innerText;")
        return [ln for ln in shown.splitlines() if ln.strip() and ids_name_images([image_id], [ln])]

    def numbered(self, lines: list[str]) -> dict[int, str]:
        """Result number -> the text id of its line (the id at its end, or the text of its ``ref``)."""
        from xmodal.labelstudio.page_search import picked_id

        known = self.texts or {ln.split()[-1]: 0 for ln in lines if ln[:1].isdigit()}
        out = {}
        for ln in lines:
            if ln[:1].isdigit():
                n = int(ln.split(".", 1)[0])
                out[n] = picked_id(lines, n, known) or ln.split()[-1]
        return out

    def picked_hit(self) -> int | None:
        """The result number ticked on the page, or None."""
        ticked = self.d.execute_script(
            "return Array.from(document.querySelectorAll('.xm-hit .lsf-choice'))"
            ".filter(el => el.querySelector('input:checked')).map(el => el.textContent);")
        return int(re.sub(r"\[[^\]]*\]\s*$", "", ticked[0]).strip()) if ticked else None

    def describe(self, text: str) -> None:
        """"None of these", then the description in the box it reveals."""
        from selenium.webdriver.common.by import By

        self.none_of_these()
        box = self._until(lambda d: next((t for t in d.find_elements(By.TAG_NAME, "textarea")
                                          if t.is_displayed()), False), 10, "the description box")
        box.send_keys(text)

    def none_of_these(self) -> None:
        from selenium.webdriver.common.by import By

        def none_of_these(d):   # textContent: the filter hides it, and .text is only what shows
            return next((el for el in d.find_elements(By.CSS_SELECTOR, ".lsf-choice")
                         if (el.get_attribute("textContent") or "").strip().startswith("None of these")),
                        False)

        none = self._until(none_of_these, 10, "the 'None of these' choice")
        if not none.is_displayed():
            self.clear_filter()
            none = self._until(none_of_these, 10, "the 'None of these' choice")
        for _ in range(3):
            if self._checked(none, timeout=0.1):
                return
            self._click(none)
            if self._checked(none):
                return

    def submit(self) -> float:
        """Press Submit; returns the time it was pressed."""
        return self._press("Submit")

    def skip(self) -> float:
        return self._press("Skip")

    def screenshot(self, name: str) -> Path:
        self.n_shots += 1
        path = self.shots / f"{self.n_shots:02d}-{re.sub(r'[^A-Za-z0-9_.-]+', '_', name)}.png"
        self.d.save_screenshot(str(path))
        return path

    # -- helpers ------------------------------------------------------------------------------
    def _filter_box(self):
        from selenium.webdriver.common.by import By

        return self.d.find_element(By.CSS_SELECTOR, "input[placeholder^='Filter the texts'], "
                                                    "input[placeholder^='Narrow the images']")

    def _press(self, label: str) -> float:
        from selenium.webdriver.common.by import By

        button = next(b for b in self.d.find_elements(By.TAG_NAME, "button") if b.text.strip() == label)
        t = time.time()
        self._click(button)
        return t

    def _checked(self, element, timeout: float = 2) -> bool:
        """Whether the choice shows as ticked within ``timeout`` (its checkbox or radio input)."""
        from selenium.common.exceptions import StaleElementReferenceException

        end = time.time() + timeout
        while time.time() < end:
            try:
                if self.d.execute_script(_CHECKED, element):
                    return True
            except StaleElementReferenceException:
                return False
            time.sleep(0.05)
        return False

    def _click(self, element, timeout: float = 10) -> None:
        """Scroll the element into the middle of its list, as a person would, then click it; when
        something covers it (Label Studio's "Annotation saved" toast over Skip), wait as a person
        would until it is gone."""
        from selenium.common.exceptions import ElementClickInterceptedException

        self.d.execute_script("arguments[0].scrollIntoView({block: 'center'});", element)
        end = time.time() + timeout
        while True:
            try:
                element.click()
                return
            except ElementClickInterceptedException:
                if time.time() > end:
                    raise
                time.sleep(0.2)

    def _until(self, condition, timeout: float, what: str):
        from selenium.common.exceptions import TimeoutException
        from selenium.webdriver.support.ui import WebDriverWait

        try:
            return WebDriverWait(self.d, timeout, poll_frequency=0.05).until(condition)
        except TimeoutException:
            shot = self.screenshot(f"timeout-{what}")
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}; screenshot {shot}") from None


def _shown(text: str) -> str:
    """A text as an option shows it (``$`` escaped, xmodal.labelstudio.tasks), whitespace collapsed."""
    return " ".join(str(text).replace("$", "\uff04").split())
