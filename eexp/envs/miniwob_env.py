"""`miniwob`: MiniWoB++ web tasks (Farama's `miniwob` package) in a real headless Chromium.

Every task's page (HTML and JavaScript) ships in the `miniwob` wheel and is opened from a `file://` URL; the browser
is managed by `eexp.envs.browser` (one per instance, started on first use, reused across episodes and task types,
killed on close, on exit and on kill -9 of its owner). The package's gymnasium wrapper is not used: it starts a
browser per task type. eexp drives the page through the same JavaScript hooks (`core.startEpisodeReal`,
`core.getDOMInfo`, `core.elementClick`, the reward globals) and parses instructions with the package's own field
extractors (`miniwob.fields`).

Tasks: `<task type>-<seed>`, the page's random generator seeded with `Math.seedrandom(seed)`.

- train: seeds 0 .. train_seeds-1 of every task type of `task_types` (default: the 23 of TASK_TYPES)
- test: seeds 100000 .. 100000+test_seeds-1 of the same task types
- ood: the test seeds of the held-out task types `ood_types` (default: the 4 of OOD_TYPES, from which no train or
  test task comes)

Listed round-robin over the task types, so any prefix of a split mixes them. A task's goal is MiniWoB's utterance
for its seed, read from the page once and cached in `$EEXP_CACHE/miniwob/`; `category` is the task type.

Observation: the utterance, then one line per element of the page that a person would act on or read:
`[ref] tag#id "text" value="..." checked focused`, where ref is MiniWoB's element ref (stable within an episode),
the text is the element's own text, an element without text shows its classes (`span.trash`), one with text its
state classes (`button "Odd" .selected`), a <select> lists its options, and containers without text of their own
are left out. After the episode ends the observation says how: `The episode is over: success (reward 1).`

Actions (`canonicalize` accepts spaces and any case in the verb): `click[ref]`, `type[ref][text]` (click the field,
select what it holds, type the text: it replaces the value), `select[ref][option]` (a <select>'s option by its
text). `admissible()` lists a `click[ref]` for every element shown, a `select[ref][option]` for every option, and for
every field that takes text a `type[ref][text]` for every quoted text of the instruction (`Enter "Myron" into ...`):
a sample, since typing is open (`closed_actions` is False); a text the page or a computation gives (read-table,
simple-arithmetic, enter-text-2's upper case) is not listed, and a policy that only ranks the list cannot type it.
An unknown ref, a malformed action, typing into something that takes no text or an option a list does not have is
an invalid action (`info["valid"]` False) that changes nothing; the observation says what was wrong and shows the
page again.

Reward and success: MiniWoB's raw reward (1 solved, -1 failed, partial in a few task types), given when the episode
ends. The time limit and MiniWoB's time discount are off (the episode clock is set to 2^31-1 ms), so a slow model is
not penalized; the discounted reward is still recorded in `info["env_reward"]`. success() is a raw reward of 1
(>= 0.999: odd-or-even's thirds add up to 1), not any positive one (a partly right odd-or-even is not solved);
score() is the raw reward clipped to [0, 1].

Expert: an oracle per task type (`ORACLES`, in eexp/envs/miniwob_oracles.py) that reads the parsed fields and the
page at every step. expert() plays it on this instance's browser and returns its actions (kept per instance); an
episode in progress is put back afterwards by replaying its actions (so expert() leaves it as it was). A task type
without an oracle raises EnvError from expert(); see `ORACLES` for those that have one.

What the agent sees: `screenshot()` gives the task's part of the page as PNG bytes, to set beside the observation
(the DOM text the model reads).

Reaching a state again: deterministic replay of the seed and the action prefix on a fresh page (every reset()
reloads the page: a reused one keeps state from the last episode, click-dialog-2's dialog moved in the DOM; the
page's randomness is seeded, jQuery animations are off, the clock plays no part). There is no exact restore of a
live page (`can_snapshot` False). Typing sends one key at a time and lets the page's timers run after each. Besides
the observation check of rollout, an instance keeps a digest of the whole DOM (every element's tag, ref, geometry,
colours, classes, text, value and focus) of every state it reaches, and replay() raises EnvError when a state it
passes has another digest than the one seen there before.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import time
from pathlib import Path
from typing import Any

from eexp.cache import cache_root
from eexp.envs.base import Env, package_version
from eexp.envs.browser import Browser, BrowserMissing
from eexp.envs.miniwob_oracles import ORACLES, OracleFailed, fields_of
from eexp.errors import EnvError
from eexp.io import write_atomic
from eexp.text import normalize_space

TASK_TYPES = (
    "click-button",
    "click-button-sequence",
    "click-link",
    "click-dialog",
    "click-dialog-2",
    "click-checkboxes",
    "click-option",
    "click-tab",
    "click-test",
    "click-test-2",
    "enter-text",
    "enter-text-2",
    "enter-password",
    "focus-text",
    "focus-text-2",
    "login-user",
    "choose-list",
    "click-collapsible-nodelay",
    "use-autocomplete-nodelay",
    "simple-arithmetic",
    "find-word",
    "read-table",
    "odd-or-even",
)
OOD_TYPES = ("click-checkboxes-transfer", "enter-text-dynamic", "unicode-test", "simple-algebra")
TEST_SEED_BASE = 100000
EPISODE_CLOCK_MS = 2**31 - 1  # the largest delay setTimeout takes: MiniWoB's time limit is effectively off
READY_TRIES = 40
PAGE_LOAD_SECONDS = 30
LOADED_JS = (
    "return !window.eexpLeaving && document.readyState === 'complete' && "
    "typeof genProblem === 'function' && typeof core === 'object' && core.cover_div !== null;"
)
MAX_OBS_CHARS = 4000
# classes that say an element's state, shown even on an element with text (`[7] button "Odd" .selected`)
STATE_CLASSES = (
    "selected",
    "active",
    "ui-state-active",
    "ui-tabs-active",
    "checked",
    "clicked",
    "open",
    "expanded",
    "highlighted",
    "disabled",
)
SOLVED = 0.999  # a raw reward this high solves the task (partial rewards add up to 1)
INTERACTIVE = ("input", "button", "a", "select", "textarea", "label", "option")
TYPEABLE = (
    "input_text",
    "input_password",
    "input_email",
    "input_search",
    "input_number",
    "input_tel",
    "input_url",
    "textarea",
)
QUOTED = re.compile(r'"([^"]*)"')
ACTION = re.compile(r"^\s*(click|type|select)\s*\[\s*(\d+)\s*\](?:\s*\[(.*)\])?\s*$", re.S | re.I)

# The observation, as a JavaScript function every script below ends with: the DOM from MiniWoB's own walker (refs
# stable within an episode), with the <select> options and the disabled flag added, and the episode's state.
OBSERVE_FN = r"""
function observe() {
  var tree = core.getDOMInfo(document.body);
  function enrich(n) {
    if (n.ref > 0) {
      var el = core.previousDOMInfo[n.ref];
      if (el && el.tagName === 'SELECT') {
        n.options = Array.from(el.options).map(function (o) { return o.text.trim(); });
        n.selected = el.selectedIndex >= 0 ? el.options[el.selectedIndex].text.trim() : null;
      }
      if (el && el.disabled) n.disabled = true;
    }
    (n.children || []).forEach(enrich);
    return n;
  }
  return {done: WOB_DONE_GLOBAL, raw: WOB_RAW_REWARD_GLOBAL, reward: WOB_REWARD_GLOBAL,
          reason: WOB_REWARD_REASON === null ? null : String(WOB_REWARD_REASON),
          utterance: core.getUtterance(), tree: enrich(tree)};
}
"""


def _then_observe(action: str) -> str:
    """An async script: `action` (arguments a0, a1), then the page's pending timers up to `settle` ms (a2), then the
    observation: one round trip for an action and what it led to."""
    return (
        "var done = arguments[arguments.length - 1], a0 = arguments[0], a1 = arguments[1], "
        "settle = arguments[2];\n" + OBSERVE_FN + action + "\nsetTimeout(function () { done(observe()); }, settle);"
    )


OBSERVE_JS = _then_observe("")
CLICK_JS = _then_observe("core.elementClick(a0);")
SETTLE_JS = "var done = arguments[arguments.length - 1]; setTimeout(done, arguments[0]);"
CHOOSE_JS = _then_observe("""
var el = core.previousDOMInfo[a0];
el.selectedIndex = Array.from(el.options).map(function (o) { return o.text.trim(); }).indexOf(a1);
el.dispatchEvent(new Event('input', {bubbles: true}));
el.dispatchEvent(new Event('change', {bubbles: true}));""")
FOCUS_FIELD_JS = """
core.elementClick(arguments[0]);
var el = core.previousDOMInfo[arguments[0]];
if (el && el.select !== undefined) { el.select(); }
"""
START_JS = (
    """
if (window.jQuery) { jQuery.fx.off = true; }
if (core.EP_TIMER !== null) { core.endEpisode(0); }
core.EPISODE_MAX_TIME = %d;
Math.seedrandom(arguments[0]);
core.setDataMode(arguments[1]);
core.startEpisodeReal();
return WOB_TASK_READY;
"""
    % EPISODE_CLOCK_MS
)


def html_dir() -> Path:
    """The folder of MiniWoB's task pages inside the installed package."""
    import miniwob

    return Path(miniwob.__file__).parent / "html" / "miniwob"


class Element:
    """One element of the page as the observation shows it (and the oracles read it)."""

    __slots__ = (
        "ref",
        "tag",
        "id",
        "classes",
        "text",
        "value",
        "focused",
        "options",
        "selected",
        "disabled",
        "parent",
        "children",
        "shown",
        "box",
    )

    def __init__(self, node: dict, parent: "Element | None"):
        kids = node.get("children") or []
        text = node.get("text")
        if text is None:  # mixed content: the element's own text is its text nodes' ("t" pseudo-elements)
            text = " ".join(c.get("text") or "" for c in kids if c.get("tag") == "t")
        self.ref = int(node["ref"])
        self.tag = str(node["tag"]).lower()
        self.id = node.get("id") or ""
        classes = node.get("classes")
        self.classes = classes.split() if isinstance(classes, str) else []
        self.text = normalize_space(text or "")
        self.value = node.get("value")
        self.focused = bool(node.get("focused"))
        self.options = node.get("options")
        self.selected = node.get("selected")
        self.disabled = bool(node.get("disabled"))
        self.parent = parent
        self.children: list[Element] = []
        self.box = (node.get("left"), node.get("top"), node.get("width"), node.get("height"))
        has_elements = any(c.get("tag") != "t" for c in kids)
        self.shown = bool(self.text) or self.tag.split("_")[0] in INTERACTIVE or not has_elements

    @property
    def checked(self) -> bool:
        return self.value is True

    def line(self) -> str:
        out = f"[{self.ref}] {self.tag}" + (f"#{self.id}" if self.id else "")
        if self.text:
            out += " " + json.dumps(self.text, ensure_ascii=False)
            state = [c for c in self.classes if c in STATE_CLASSES]
            if state:
                out += " ." + ".".join(state)
        elif self.classes and not self.tag.startswith(("input", "textarea", "select")):
            out += "." + ".".join(self.classes)
        if isinstance(self.value, bool):
            out += " checked" if self.value else ""
        elif self.value not in (None, ""):
            out += " value=" + json.dumps(str(self.value), ensure_ascii=False)
        if self.options is not None:
            out += " options=" + json.dumps(self.options, ensure_ascii=False)
            if self.selected is not None:
                out += " selected=" + json.dumps(self.selected, ensure_ascii=False)
        if self.disabled:
            out += " disabled"
        if self.focused:
            out += " focused"
        return out

    def descendants(self):
        for child in self.children:
            yield child
            yield from child.descendants()

    def __repr__(self) -> str:
        return f"Element({self.line()})"


class Page:
    """The page after an action: the utterance, the elements in document order, the episode's state."""

    def __init__(self, state: dict):
        self.utterance = normalize_space(state.get("utterance") or "")
        self.done = bool(state.get("done"))
        self.raw_reward = float(state.get("raw") or 0.0)
        self.env_reward = float(state.get("reward") or 0.0)
        self.reason = state.get("reason")
        self.elements: list[Element] = []
        self.digest = hashlib.sha256(
            json.dumps(_digestible(state.get("tree") or {}), sort_keys=True).encode()
        ).hexdigest()[:16]

        def walk(node: dict, parent: Element | None) -> None:
            if node.get("tag") == "t" or node.get("ref", 0) <= 0:
                return
            element = Element(node, parent)
            if parent is not None:
                parent.children.append(element)
            self.elements.append(element)
            for child in node.get("children") or []:
                walk(child, element)

        if state.get("tree"):
            walk(state["tree"], None)
        self.by_ref = {e.ref: e for e in self.elements}

    def shown(self) -> list[Element]:
        return [e for e in self.elements if e.shown and e.tag != "body"]

    def render(self, limit: int = MAX_OBS_CHARS) -> str:
        text = "\n".join([self.utterance] + [e.line() for e in self.shown()])
        return text if len(text) <= limit else text[:limit] + " …"

    def find(
        self,
        tag: str | None = None,
        text: str | None = None,
        id: str | None = None,
        cls: str | None = None,
        within: Element | None = None,
    ) -> list[Element]:
        pool = list(within.descendants()) if within is not None else self.elements
        return [
            e
            for e in pool
            if (tag is None or e.tag == tag)
            and (text is None or e.text == text)
            and (id is None or e.id == id)
            and (cls is None or cls in e.classes)
        ]


def _digestible(node: dict) -> dict:
    """The DOM tree without what changes on every read (text pseudo-elements get fresh negative refs)."""
    out = {k: v for k, v in node.items() if k != "children" and not (node.get("tag") == "t" and k == "ref")}
    out["children"] = [_digestible(c) for c in node.get("children") or []]
    return out


class MiniWobEnv(Env):
    name = "miniwob"
    version = package_version("miniwob")
    splits = ("train", "test", "ood")
    can_snapshot = False
    closed_actions = False
    max_steps = 12
    action_format = "click[REF] | type[REF][TEXT] | select[REF][OPTION] (REF: an element's number on the page)"
    options = {
        "task_types": ",".join(TASK_TYPES),
        "ood_types": ",".join(OOD_TYPES),
        "train_seeds": 50,
        "test_seeds": 10,
        "max_obs_chars": MAX_OBS_CHARS,
        "settle_ms": 0,
    }

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        opts = {**self.options, **kwargs}
        self.task_types = _names(opts["task_types"])
        self.ood_types = _names(opts["ood_types"])
        both = sorted(set(self.task_types) & set(self.ood_types))
        if both:
            raise EnvError(f"miniwob: task types both in task_types and ood_types: {', '.join(both)}")
        self.train_seeds = int(opts["train_seeds"])
        self.test_seeds = int(opts["test_seeds"])
        self.max_obs_chars = int(opts["max_obs_chars"])
        self.settle_ms = int(opts["settle_ms"])
        self.cache = cache_root() / "miniwob" / self.version
        self._browser = None
        self._page_type: str | None = None  # the task type whose page is loaded
        self._task: dict | None = None
        self._page: Page | None = None
        self._history: list[str] = []
        self._done = False
        self._raw = 0.0
        self._tasks: dict[str, list[dict]] = {}
        self._plans: dict[str, list[str]] = {}
        self._digests: dict[tuple, str] = {}  # (task id, actions) -> the DOM digest first seen there
        self._replaying = False

    # --- the browser --------------------------------------------------------------------------------------------
    def _driver(self):
        try:
            import miniwob  # noqa: F401 - the task pages
        except ImportError:
            raise EnvError("miniwob: the miniwob package is not installed: pip install 'eexp[miniwob]'") from None
        if self._browser is None:
            self._browser = Browser()
        if not self._browser.running:
            self._page_type = None
            try:
                self._browser.start()
            except BrowserMissing as e:
                raise EnvError(f"miniwob: {e}") from None
        return self._browser.driver

    def browser_folder(self) -> str | None:
        """The browser's temporary folder (every process of the browser names it), or None when not running."""
        return self._browser.folder if self._browser is not None else None

    def close(self) -> None:
        browser, self._browser = self._browser, None
        self._page_type, self._page, self._task = None, None, None
        if browser is not None:
            browser.close()

    def _open(self, task_type: str, fresh: bool = True) -> None:
        """Load the task type's page; `fresh`: even when it is loaded (an episode leaves state behind in some
        pages: click-dialog-2's dialog is rebuilt elsewhere in the DOM on the next episode)."""
        driver = self._driver()
        if fresh or self._page_type != task_type:
            path = html_dir() / f"{task_type}.html"
            if not path.exists():
                raise EnvError(f"miniwob: no task type {task_type!r} in the miniwob package")
            self._page_type = None
            # the page being left is marked: WebDriver's get() can return before a reload of the same URL has
            # replaced the document (seen under load: the next script ran where genProblem was not yet defined)
            driver.execute_script("window.eexpLeaving = true;")
            driver.get(path.as_uri())
            deadline = time.monotonic() + PAGE_LOAD_SECONDS
            while not driver.execute_script(LOADED_JS):
                if time.monotonic() > deadline:
                    raise EnvError(f"miniwob: the {task_type} page did not load in {PAGE_LOAD_SECONDS} s")
                time.sleep(0.02)
            self._page_type = task_type

    def _start_episode(self, task_type: str, seed: int, mode: str, fresh: bool = True) -> None:
        self._open(task_type, fresh)
        driver = self._browser.driver
        ready = driver.execute_script(START_JS, seed, mode)
        tries = 0
        while not ready and tries < READY_TRIES:
            time.sleep(0.05)
            ready = driver.execute_script("return WOB_TASK_READY;")
            tries += 1
        if not ready:
            raise EnvError(f"miniwob: {task_type} seed {seed} did not get ready")

    def _run(self, script: str, a0: Any = None, a1: Any = None) -> Page:
        """An action script made by _then_observe; the page it led to."""
        return Page(self._browser.driver.execute_async_script(script, a0, a1, self.settle_ms))

    # --- tasks --------------------------------------------------------------------------------------------------
    def tasks(self, split: str) -> list[dict]:
        if split not in self.splits:
            raise EnvError(f"miniwob has no split {split!r} (splits: {', '.join(self.splits)})")
        if split not in self._tasks:
            types = self.ood_types if split == "ood" else self.task_types
            count = self.train_seeds if split == "train" else self.test_seeds
            base = 0 if split == "train" else TEST_SEED_BASE
            keys = [(t, base + i) for i in range(count) for t in types]
            goals = self._goals(keys)
            self._tasks[split] = [
                {"id": f"{t}-{s}", "split": split, "goal": goals[f"{t}-{s}"], "category": t} for t, s in keys
            ]
        return self._tasks[split]

    def _goals(self, keys: list[tuple[str, int]]) -> dict[str, str]:
        """The utterances of (task type, seed) pairs, read from the pages once and cached in one JSON file."""
        path = self.cache / "goals.json"
        goals = json.loads(path.read_text()) if path.exists() else {}
        missing = [(t, s) for t, s in keys if f"{t}-{s}" not in goals]
        if missing:
            live = (self._task, list(self._history)) if self._task is not None else None
            for t, s in sorted(missing):  # the page is not reloaded between seeds here: reset() checks the goal
                self._start_episode(t, s, "train", fresh=False)
                goals[f"{t}-{s}"] = normalize_space(self._browser.driver.execute_script("return core.getUtterance();"))
            on_disk = json.loads(path.read_text()) if path.exists() else {}
            _write_json(path, {**on_disk, **goals})
            if live is not None:
                self._put_back(*live)
        return goals

    def _parse(self, task: dict) -> tuple[str, int]:
        task_type, _, seed = str(task.get("id", "")).rpartition("-")
        if not task_type or not seed.isdigit():
            raise EnvError(f"miniwob: not a task id: {task.get('id')!r} (e.g. click-button-3)")
        if task_type not in self.task_types and task_type not in self.ood_types:
            raise EnvError(f"miniwob: task type {task_type!r} is not in this environment's task_types or ood_types")
        return task_type, int(seed)

    # --- episode ------------------------------------------------------------------------------------------------
    def reset(self, task: dict) -> str:
        task_type, seed = self._parse(task)
        # no episode until this one has started (a failed reset leaves none to put back)
        self._task, self._history, self._done, self._raw, self._page = None, [], False, 0.0, None
        self._start_episode(task_type, seed, "train")
        page = self._run(OBSERVE_JS)
        if task.get("goal") is not None and normalize_space(task["goal"]) != page.utterance:
            raise EnvError(
                f"miniwob: {task['id']}: the page asks {page.utterance!r}, not the task's goal "
                f"{task['goal']!r} (a stale goal cache? remove {self.cache / 'goals.json'})"
            )
        self._task, self._page = task, page
        self._remember()
        return self._page.render(self.max_obs_chars)

    def step(self, action: str) -> tuple[str, float, bool, dict]:
        if self._page is None:
            raise EnvError("miniwob: step() before reset()")
        action = self.canonicalize(action)
        self._history.append(action)
        if self._done:
            return self._final(), 0.0, True, {"valid": False}
        page = self._act(action)
        if isinstance(page, str):
            self._remember()
            return f"Invalid action: {page}\n{self._page.render(self.max_obs_chars)}", 0.0, False, {"valid": False}
        self._page = page
        if page.done:
            self._done, self._raw = True, page.raw_reward
        self._remember()
        info = {"valid": True}
        if page.done:
            info.update(raw_reward=page.raw_reward, env_reward=page.env_reward, reason=page.reason)
            return self._final(), page.raw_reward, True, info
        return page.render(self.max_obs_chars), 0.0, False, info

    def _act(self, action: str) -> Page | str:
        """Do the action and return the page it led to, or say what was wrong with it (nothing was done then)."""
        m = ACTION.match(action)
        if not m:
            return f"{action!r} is not an action: use click[REF], type[REF][TEXT] or select[REF][OPTION]"
        verb, ref, arg = m[1], int(m[2]), m[3]
        element = self._page.by_ref.get(ref)
        if element is None:
            return f"there is no element [{ref}] on the page"
        driver = self._browser.driver
        if verb == "click":
            if arg is not None:
                return "click takes no text: click[REF]"
            return self._run(CLICK_JS, ref)
        elif verb == "type":
            if arg is None:
                return "type needs a text: type[REF][TEXT]"
            if element.tag not in TYPEABLE:
                return f"[{ref}] is a {element.tag}, which takes no text"
            from selenium.webdriver.common.action_chains import ActionChains

            driver.execute_script(FOCUS_FIELD_JS, ref)  # click, focus, select what it holds
            for key in arg:
                # one key at a time, and the timers it set run before the next: sent together, keys coalesce or
                # not by timing (use-autocomplete built its menu 1 to 3 times, its ids counting up each time)
                chain = ActionChains(driver, duration=0)
                chain.w3c_actions.key_action.key_down(key)
                chain.w3c_actions.key_action.key_up(key)
                chain.perform()
                driver.execute_async_script(SETTLE_JS, self.settle_ms)
            return self._run(OBSERVE_JS)
        else:
            if arg is None:
                return "select needs an option: select[REF][OPTION]"
            if element.options is None:
                return f"[{ref}] is a {element.tag}, not a list to select from"
            if arg not in element.options:
                return f"[{ref}] has no option {arg!r}"
            return self._run(CHOOSE_JS, ref, arg)

    def _final(self) -> str:
        how = "success" if self._raw >= SOLVED else "failure"
        return f"The episode is over: {how} (reward {self._raw:g})."

    def replay(self, task: dict, prefix: list[str]) -> str:
        """Reset and replay; every state passed is checked against the DOM digest this instance saw there before."""
        self._replaying = True
        try:
            return super().replay(task, prefix)
        finally:
            self._replaying = False

    def _remember(self) -> None:
        """Keep the DOM digest of the state reached (task, actions so far); a replay that reaches a state with
        another digest than the one seen before raises."""
        key = (self._task.get("id"), tuple(self._history))
        digest = self.dom_digest()
        seen = self._digests.setdefault(key, digest)
        if seen != digest and self._replaying:
            raise EnvError(
                f"miniwob: the page reached by replaying {len(self._history)} actions of "
                f"{self._task.get('id')} differs from the one seen before (DOM digest {digest} != {seen})"
            )

    def dom_digest(self) -> str:
        """A digest of the whole DOM of the current state (geometry, colours, classes, text, value, focus)."""
        if self._page is None:
            raise EnvError("miniwob: no page before reset()")
        return f"done, raw reward {self._raw:g}" if self._done else self._page.digest

    def screenshot(self) -> bytes:
        """The task's part of the page as it is now (the instruction and the task area, MiniWoB's #wrap), as PNG
        bytes: what a person compares with the observation's DOM text. After the episode's end the page shows
        MiniWoB's own between-episodes cover."""
        if self._page is None or self._browser is None or not self._browser.running:
            raise EnvError("miniwob: no page to take a screenshot of (reset() first)")
        from PIL import Image

        driver = self._browser.driver
        png = driver.get_screenshot_as_png()
        box = driver.execute_script(
            "var r = document.getElementById('wrap').getBoundingClientRect(); "
            "return [r.left, r.top, r.right, r.bottom, window.devicePixelRatio];"
        )
        scale = box[4] or 1
        image = Image.open(io.BytesIO(png))
        crop = tuple(int(round(v * scale)) for v in box[:4])
        out = io.BytesIO()
        image.crop(crop).save(out, format="PNG")
        return out.getvalue()

    def admissible(self) -> list[str]:
        if self._page is None or self._done:
            return []
        quoted = list(dict.fromkeys(q for q in QUOTED.findall(self._page.utterance) if q.strip()))
        out = []
        for e in self._page.shown():
            out.append(f"click[{e.ref}]")
            if e.options is not None:
                out.extend(f"select[{e.ref}][{o}]" for o in e.options)
            if e.tag in TYPEABLE:
                out.extend(f"type[{e.ref}][{q}]" for q in quoted)
        return out

    def success(self) -> bool:
        return self._done and self._raw >= SOLVED

    def score(self) -> float:
        return min(1.0, max(0.0, self._raw)) if self._done else 0.0

    def canonicalize(self, action: str) -> str:
        m = ACTION.match(str(action))
        if not m:
            return normalize_space(str(action))
        verb, ref, arg = m[1].lower(), int(m[2]), m[3]
        return f"{verb}[{ref}]" + (f"[{arg}]" if arg is not None else "")

    # --- expert -------------------------------------------------------------------------------------------------
    def expert(self, task: dict) -> list[str]:
        task_type, seed = self._parse(task)
        if task["id"] in self._plans:
            return list(self._plans[task["id"]])
        oracle = ORACLES.get(task_type)
        if oracle is None:
            raise EnvError(f"miniwob: no oracle for task type {task_type!r} (oracles: {', '.join(sorted(ORACLES))})")
        live = (self._task, list(self._history)) if self._task is not None else None
        try:
            self.reset(task)
            fields = fields_of(task_type, self._page.utterance)
            plan: list[str] = []
            while not self._done and len(plan) < 2 * self.max_steps:
                try:
                    action = oracle(fields, self._page)
                except OracleFailed as e:
                    raise EnvError(f"miniwob: the {task_type} oracle is stuck on {task['id']}: {e}") from None
                plan.append(action)
                _, _, _, info = self.step(action)
                if not info["valid"]:
                    raise EnvError(f"miniwob: the {task_type} oracle's action {action!r} was invalid on {task['id']}")
            if not self.success():
                raise EnvError(
                    f"miniwob: the {task_type} oracle did not solve {task['id']} (reward {self._raw:g}, actions {plan})"
                )
        finally:
            if live is not None:
                self._put_back(*live)
            else:
                self._task, self._page, self._history, self._done, self._raw = None, None, [], False, 0.0
        self._plans[task["id"]] = plan
        return list(plan)

    def _put_back(self, task: dict, history: list[str]) -> None:
        """Reset and replay the actions of the episode that was in progress."""
        self.reset(task)
        for action in history:
            self.step(action)


def _names(value: Any) -> tuple[str, ...]:
    return tuple(t.strip() for t in str(value or "").split(",") if t.strip())


def _write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(str(path), json.dumps(data, ensure_ascii=False).encode())
