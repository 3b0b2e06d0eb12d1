"""The filters every reflection goes through, in a fixed order (`judge`): a cut-off reply, one holding a control or
other unprintable character (a small model's garbage), an empty, short or over-long one, label leakage, a copy of the
template's own words, page text pasted in, one off the topic or going round in circles, the chosen action's outcome
narrated as already seen, a number or a place no observation shows (`claims`), a different concluding action. A
monologue repeated twice is repaired (first copy kept), not rejected."""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

from eexp.prompts import clip
from eexp.stages.reflect.claims import Evidence
from eexp.stages.reflect.claims import check as check_claims
from eexp.stages.reflect.template import COPY_RUN, Template
from eexp.stages.reflect.text import WORD, content_words
from eexp.text import normalize_space

FILTERS = (
    "truncated",
    "model_error",
    "unprintable",
    "empty",
    "too_short",
    "too_long",
    "label_leakage",
    "template_copy",
    "pasted_page",
    "off_topic",
    "repetitive",
    "outcome_narration",
    "unsupported_claim",
    "different_action",
)
# What --stats reports: why states gave no example, each filter, repairs, fallbacks, and what was kept.
COUNTS = (
    "kept",
    *FILTERS,
    "repeated",
    "fallback_grounded",
    "no_alternatives",
    "all_alternatives_failed",
    "unreachable",
    "expert_not_executed",
)
MAX_REPEATED_RUNS = 0.4  # a monologue whose three-word runs repeat more than this is going round in circles
# Words in a row, the same and in the same order as in an observation the reflector was shown, that make a
# reflection a paste of page text (pasted_page). Twelve is past anything a monologue says in its own words that
# happens to match a page ("there is a locked gate to the east" is 8; a shop item's name is at most 6), and well
# under what a copied page line gives ("results for 'glass mug' (page 1 of 3) [nova glass travel mug] $23" is 13).
PASTE_RUN = 12

# Labels a generator copies from its prompt (~16% of one batch in the paper's code base): who demonstrated the
# action, list positions, template headings, meta talk. Plain words like "alternative" or "option" alone are fine
# English.
_LEAKAGE = re.compile(
    r"\bexperts?\b|\bdemonstrat(?:or|ion)s?\b"
    r"|\b(?:alternative|option|action|move|choice|candidate)\s*(?:#\s*)?\d+\b"
    r"|\b(?:first|second|third|fourth|fifth|sixth|last)\s+(?:alternative|option|candidate)s?\b"
    r"|\b(?:listed|given|provided|shown)\s+(?:above|below)\b"
    r"|\bthe move (?:i|you) will make\b|\bother moves you could make\b|\bwhat followed\b"
    r"|\bas an ai\b|\bai (?:assistant|model)\b|\blanguage model\b",
    re.IGNORECASE,
)

# Words that make a sentence anticipatory rather than a report of what happened.
_ANTICIPATION = re.compile(
    r"\b(?:will|should|would|could|might|may|can't|cannot|expect\w*|likely|probably|hope\w*|if|once|going to|"
    r"want to|plan|intend|aim)\b|'ll\b",
    re.IGNORECASE,
)

# Ways of reporting a result as seen ("now I see cup 1": ~25% of ALFWorld navigation reflections in the paper's code
# base).
_NARRATION = re.compile(
    r"\b(?:now|already)\s+(?:i\s+)?(?:can\s+)?(?:see|saw|notice|have|found|got)\b"
    r"|\bi\s+(?:can\s+)?(?:now|already)\s+(?:see|saw|notice|have|found|got|know)\b"
    r"|\b(?:after|having)\s+(?:\w+ing|done|taken|made)\b[^.]*?\b(?:i\s+(?:see|saw|found|got|noticed|have)|"
    r"it\s+(?:shows?|showed|worked|led|resulted|returned|gave))\b"
    r"|\b(?:it|this|that|my (?:move|action|choice))\s+(?:worked|succeeded|led to|resulted in|showed|gave me)\b"
    r"|\b(?:led to|resulted in|showed|returned|gave me|revealed)\b",
    re.IGNORECASE,
)
_ACTION_LINE = re.compile(r"^[ \t*_#>-]*Action\s*:\s*(.*?)\s*$", re.IGNORECASE | re.MULTILINE)
_BOUNDARY = re.compile(r"[.!?]+(?=\s)|\n")


@dataclass
class Verdict:
    text: str  # the cleaned monologue (Action lines and a leading "Thought:" removed)
    reason: str | None = None  # the first filter it failed, or None when kept
    detail: str = ""
    repeated: bool = False  # the monologue came twice and the first copy was kept
    concluded: str | None = None


def sentences(text: str) -> list[tuple[int, int]]:
    """(start, end) spans of sentences and lines, whitespace-only spans left out."""
    cuts = [0] + [m.end() for m in _BOUNDARY.finditer(text)] + [len(text)]
    spans = []
    for a, b in zip(cuts, cuts[1:]):
        start = a + (len(text[a:b]) - len(text[a:b].lstrip()))
        if text[start:b].strip():
            spans.append((start, b))
    return spans


def _norm(sentence: str) -> str:
    sentence = re.sub(r"^\s*thought\s*:\s*", "", sentence, flags=re.IGNORECASE)
    return normalize_space(sentence.lower())


def trim_repeat(text: str) -> tuple[str, bool]:
    """Cut a monologue that starts over (~3% of long generations say it all twice, in the paper's code base).

    A restart is a sentence equal to the first one, followed by copies of the next ones, to the end of the text or
    for at least two sentences; the copy may stop mid-sentence (a reply cut by max tokens). The first copy is kept.
    """
    spans = sentences(text)
    norms = [_norm(text[a:b]) for a, b in spans]
    for p in range(1, len(norms)):
        if norms[p] != norms[0]:
            continue
        m = min(len(norms) - p, p)
        matched = 0
        for i in range(m):
            cut_copy = p + i == len(norms) - 1 and len(norms[p + i].split()) >= 3 and norms[i].startswith(norms[p + i])
            if norms[p + i] != norms[i] and not cut_copy:
                break
            matched += 1
        if matched >= 2 or (p + matched == len(norms) and len(norms[0].split()) >= 8):
            return text[: spans[p][0]].rstrip(), True
    return text, False


def _canon(action: str) -> str:
    return normalize_space(action.strip().strip("`'\"")).casefold()


def _concluding_action(prose: str, expert: str, alternatives: list[str]) -> str | None:
    """Without an `Action:` line, the action the last sentence settles on, when it names exactly one option."""
    spans = sentences(prose)
    if not spans:
        return None
    last = prose[spans[-1][0] : spans[-1][1]].casefold()
    named = [a for a in [expert, *alternatives] if _canon(a) and _canon(a) in normalize_space(last)]
    return named[0] if len(named) == 1 else None


def fresh_words(outcome: dict, shown: list[dict], situation: str) -> set[str]:
    """Words of the chosen action's outcome that appear nowhere else the reflector could have read them: if the
    monologue reports them as seen, it is narrating a result it cannot know at inference."""
    known = set(w.lower() for w in WORD.findall(situation))
    for alt in shown:
        known.update(w.lower() for w in WORD.findall(alt.get("next_observation") or alt.get("error") or ""))
    known.update(w.lower() for w in WORD.findall(outcome["expert"]["action"]))
    fresh = {w.lower() for w in WORD.findall(outcome["expert"]["next_observation"])} - known
    return {w for w in fresh if len(w) >= 3 or w.isdigit()}


def judge(
    reply: str,
    finish_reason: str,
    *,
    expert: str,
    alternatives: list[str],
    new_words: set[str],
    max_words: int,
    min_words: int = 1,
    template: Template | None = None,
    topic: set[str] | None = None,
    pages: frozenset[tuple[str, ...]] = frozenset(),
    evidence: Evidence | None = None,
) -> Verdict:
    """Clean a reply and run the filters in a fixed order; the first that fails is the reason. With `evidence`
    (what the record shows), a reflection that names a number or a place it does not show is rejected."""
    text, repeated = trim_repeat(reply.strip())
    if finish_reason.startswith("error"):
        return Verdict("", "model_error", finish_reason, repeated)
    if finish_reason == "length" and not repeated:
        # A repeated monologue usually runs into the token limit in its second copy; with that copy cut off the
        # first is whole. Anything else cut by max tokens ends mid-thought.
        return Verdict(text, "truncated", "the reply was cut off by --max-tokens", repeated)
    odd = unprintable(text)
    if odd is not None:
        return Verdict(text, "unprintable", odd, repeated)
    action_lines = _ACTION_LINE.findall(text)
    prose = _ACTION_LINE.sub("", text)
    prose = _ANSWER_CUE.sub("", prose.strip()).strip()
    prose = re.sub(r"\n{3,}", "\n\n", prose)
    concluded = next((a for a in reversed(action_lines) if a.strip()), None)
    verdict = Verdict(prose, None, "", repeated, concluded)
    words = len(prose.split())
    if words == 0:
        verdict.reason, verdict.detail = "empty", "no monologue"
        return verdict
    if words < min_words:
        verdict.reason, verdict.detail = "too_short", f"{words} words (--min-words {min_words})"
        return verdict
    if words > max_words:
        verdict.reason, verdict.detail = "too_long", f"{words} words (--max-words {max_words})"
        return verdict
    leak = _LEAKAGE.search(prose)
    if leak:
        verdict.reason, verdict.detail = "label_leakage", f"mentions {leak.group(0)!r}"
        return verdict
    copied = _copied_phrase(prose, template) if template is not None else None
    if copied:
        verdict.reason, verdict.detail = "template_copy", f"repeats the template's words {copied!r}"
        return verdict
    pasted = pasted_span(prose, pages)
    if pasted:
        verdict.reason, verdict.detail = (
            "pasted_page",
            f"pastes {len(pasted)} words of a page in a row: {clip(' '.join(pasted), 120)!r}",
        )
        return verdict
    content = set(content_words(prose))
    if topic and not content & topic:
        verdict.reason, verdict.detail = "off_topic", "names nothing from the task or the moves"
        return verdict
    repeated_runs = _repeated_run_share(prose)
    if repeated_runs > MAX_REPEATED_RUNS:
        verdict.reason, verdict.detail = "repetitive", f"{repeated_runs:.0%} of its three-word runs are repeats"
        return verdict
    narration = _narrated_sentence(prose, expert, new_words)
    if narration:
        verdict.reason, verdict.detail = (
            "outcome_narration",
            f"reports the chosen action's result as seen: {clip(narration, 160)!r}",
        )
        return verdict
    unsupported = check_claims(prose, evidence) if evidence is not None else []
    if unsupported:
        verdict.reason = "unsupported_claim"
        verdict.detail = "names what no observation shows: " + "; ".join(repr(c.what) for c in unsupported[:3])
        return verdict
    if concluded is None:
        concluded = _concluding_action(prose, expert, alternatives)
        verdict.concluded = concluded
    if concluded is not None and _canon(concluded) != _canon(expert):
        verdict.reason, verdict.detail = "different_action", f"concludes {concluded!r}, not {expert!r}"
        return verdict
    closing = _closing_move(prose, expert, alternatives)
    if closing is not None and _canon(closing) != _canon(expert):
        # "So my move is click[white]." then `Action: click[pink]`: a thought that argues for another move
        verdict.reason, verdict.detail = "different_action", f"closes on {closing!r}, not {expert!r}"
    return verdict


# Characters no written sentence holds: control characters but the line break and the tab (a small model's garbage:
# "Thought: :\x02 rippedH nova..."), surrogates (half a character; no JSON writer can encode one), private-use code
# points and those unassigned in this Python's Unicode tables. Format characters (Cf: a zero-width joiner inside an
# emoji, a soft hyphen) are text.
_UNPRINTABLE = {"Cc": "a control character", "Cs": "a surrogate", "Co": "a private-use character", "Cn": "no character"}
_ALLOWED = {"\n", "\t"}


def unprintable(text: str) -> str | None:
    """Why `text` cannot be a reflection because of a character in it (the first such one, as U+XXXX and where it
    is), or None. A CR is allowed only in a CRLF line break; U+FFFD, what a decoder puts for bytes that were not
    UTF-8 (a token cut mid-character), is refused too."""
    for i, ch in enumerate(text):
        if ch in _ALLOWED or (ch == "\r" and text[i + 1 : i + 2] == "\n"):
            continue
        what = "the replacement character (bytes that were not text)" if ch == "\ufffd" else None
        what = what or _UNPRINTABLE.get(unicodedata.category(ch))
        if what:
            return f"holds U+{ord(ch):04X}, {what}, at character {i + 1}: {clip(text[max(0, i - 20) : i + 20], 60)!r}"
    return None


_CLOSING = re.compile(r"\bso my move is\b", re.IGNORECASE)


def _closing_move(prose: str, expert: str, alternatives: list[str]) -> str | None:
    """The move the closing the templates ask for (`So my move is <move>.`, its last occurrence) names, when it
    names the chosen one or an alternative word for word (the longest that fits); None otherwise."""
    found = list(_CLOSING.finditer(prose))
    if not found:
        return None
    after = normalize_space(prose[found[-1].end() :]).strip().lstrip("`'\"*:").casefold()
    named = [a for a in [expert, *alternatives] if _canon(a) and after.startswith(_canon(a))]
    return max(named, key=lambda a: len(_canon(a))) if named else None


# What a reply may open with before the monologue: the template's answer cue ("Why:") or a "Thought:" label.
_ANSWER_CUE = re.compile(r"^\s*(?:(?:thought|why|reasoning|reflection)\s*:\s*)+", re.IGNORECASE)


def _copied_phrase(prose: str, template: Template) -> str | None:
    words = [w.lower() for w in WORD.findall(prose)]
    for i in range(len(words) - COPY_RUN + 1):
        if tuple(words[i : i + COPY_RUN]) in template.phrases:
            return " ".join(words[i : i + COPY_RUN])
    return None


def page_runs(outcome: dict, shown: list[dict]) -> frozenset[tuple[str, ...]]:
    """Every run of PASTE_RUN words of the observations the reflector was shown (the current one, those of the
    recent steps, what the chosen action and each alternative shown led to), less the runs that are also in the
    task or in an action's text: restating the task or naming a move in full is not pasting a page."""
    state = outcome["state"]
    pages = [state.get("observation") or "", outcome["expert"].get("next_observation") or ""]
    pages += [step.get("observation") or "" for step in state.get("history") or []]
    pages += [alt.get("next_observation") or "" for alt in shown]
    own = [state.get("goal") or "", outcome["expert"]["action"], *(alt["action"] for alt in shown)]
    return frozenset(_runs(pages, PASTE_RUN) - _runs(own, PASTE_RUN))


def _runs(texts: list[str], n: int) -> set[tuple[str, ...]]:
    runs = set()
    for text in texts:
        words = [w.lower() for w in WORD.findall(text)]
        runs.update(tuple(words[i : i + n]) for i in range(len(words) - n + 1))
    return runs


def pasted_span(prose: str, pages: frozenset[tuple[str, ...]]) -> list[str]:
    """The first stretch of the prose whose every PASTE_RUN-word run is one of `pages` (page_runs), as long as it
    goes on: the pasted words, or [] when there are none."""
    if not pages:
        return []
    words = [w.lower() for w in WORD.findall(prose)]
    for i in range(len(words) - PASTE_RUN + 1):
        if tuple(words[i : i + PASTE_RUN]) in pages:
            end = i + PASTE_RUN
            while end < len(words) and tuple(words[end - PASTE_RUN + 1 : end + 1]) in pages:
                end += 1
            return words[i:end]
    return []


def _repeated_run_share(prose: str) -> float:
    """The share of three-word runs that already occurred earlier in the text (0 for short texts)."""
    words = [w.lower() for w in WORD.findall(prose)]
    runs = [tuple(words[i : i + 3]) for i in range(len(words) - 2)]
    return 1 - len(set(runs)) / len(runs) if len(runs) >= 15 else 0.0


def topic_words(outcome: dict, alternatives: list[str]) -> set[str]:
    """What a reflection on this state should name at least one of: the goal's content words and those of the
    moves' arguments (`red mug` of click[red mug]; a whole action when it has no brackets)."""

    def argument(action: str) -> str:
        inner = re.search(r"\[(.*)\]", action)
        return inner.group(1) if inner else action

    words = content_words(
        " ".join([outcome["state"]["goal"], argument(outcome["expert"]["action"]), *map(argument, alternatives)])
    )
    return set(words)


def _narrated_sentence(prose: str, expert: str, new_words: set[str]) -> str | None:
    """A sentence that reports the chosen action's result as already seen. With no anticipatory word, either it
    quotes two or more words only that result contains ("You bought kiko jeans. Thank you for shopping.", copied
    from the outcome by SmolLM2-135M), or it has a narration phrase and is about the chosen action (it names it, or
    quotes one such word)."""
    chosen = _canon(expert)
    for a, b in sentences(prose):
        sentence = prose[a:b]
        if _ANTICIPATION.search(sentence):
            continue
        words = {w.lower() for w in WORD.findall(sentence)}
        if len(words & new_words) >= 2:
            return sentence.strip()
        if not _NARRATION.search(sentence):
            continue
        if (chosen and chosen in normalize_space(sentence.casefold())) or words & new_words:
            return sentence.strip()
    return None
