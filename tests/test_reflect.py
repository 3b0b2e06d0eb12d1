"""eexp reflect: the prompt template, the filters on hand-written bad reflections, the grounded reflector on shop,
TextWorld- and ScienceWorld-like outcomes, the training example's shape (state alone in, reflection + expert action
out), resume, shards, and a model reflector end to end."""

from __future__ import annotations

import copy
import json
import re

import orjson
import pytest
from by_hand import untimed
from scripted import use_scripted_reflector

from eexp.cli import cli
from eexp.cli.reflect import NO_REFLECTOR
from eexp.policies.base import derive_seed
from eexp.prompts import Serializer, parse_reply
from eexp.records import expect, validate
from eexp.stages.reflect import (
    COUNTS,
    FILTERS,
    GROUNDED_VERSION,
    PASTE_RUN,
    Reflector,
    Settings,
    Template,
    describe_action,
    grounded_reflection,
    judge,
    page_runs,
    reflect_examples,
    reflection_prompt,
    shown_alternatives,
    topic_words,
    trim_repeat,
)


def outcome(
    goal,
    observation,
    expert,
    expected,
    alternatives,
    *,
    env="shop",
    expert_done=False,
    expert_reward=0.0,
    history=(),
    admissible=None,
    record_id="t1#2",
):
    state = {"goal": goal, "history": [{"observation": o, "action": a} for o, a in history], "observation": observation}
    if admissible is not None:
        state["admissible"] = admissible
    return {
        "id": record_id,
        "source_id": record_id.split("#")[0],
        "trajectory_id": record_id.split("#")[0],
        "step": len(history),
        "env": {"name": env, "version": "1"},
        "task": {"id": "task-1", "split": "train", "goal": goal},
        "prefix": [a for _, a in history],
        "state": state,
        "expert": {
            "action": expert,
            "next_observation": expected,
            "reward": expert_reward,
            "done": expert_done,
            "valid": True,
        },
        "alternatives": [
            dict({"source": "admissible", "reward": 0.0, "done": False, "valid": True}, **a) for a in alternatives
        ],
        "meta": {},
    }


SHOP = outcome(
    "find me a glass travel mug, pink, priced under 30 dollars",
    "brio glass travel mug\nprice: $23\ncolor: [blue] [white] [pink]\n[< prev] [back to search] [buy now]",
    "click[pink]",
    "brio glass travel mug\nprice: $23\ncolor: [blue] [white] [pink]\nselected: pink\n[< prev] [back to search] "
    "[buy now]",
    [
        {
            "action": "click[white]",
            "next_observation": "brio glass travel mug\nprice: $23\ncolor: [blue] [white] "
            "[pink]\nselected: white\n[< prev] [back to search] [buy now]",
        },
        {
            "action": "click[buy now]",
            "next_observation": "you bought brio glass travel mug. thank you for shopping.",
            "done": True,
            "reward": 0.5,
        },
        {"action": "click[back to search]", "next_observation": "search page. type a query with search[...]"},
    ],
    admissible=[
        "click[blue]",
        "click[white]",
        "click[pink]",
        "click[< prev]",
        "click[back to search]",
        "click[buy now]",
    ],
)

TEXTWORLD = outcome(
    "Take the shirt from the attic.",
    "-= Hallway =-\nYou are in a hallway. There is a locked gate to the east. A keycard lies in a box.",
    "take keycard from box",
    "You take the keycard from the box.",
    [
        {"action": "go east", "next_observation": "You can't go that way: the gate is locked."},
        {"action": "open gate", "next_observation": "The gate is locked."},
        {"action": "eat keycard", "next_observation": "That's not something you can eat.", "valid": False},
    ],
    env="textworld",
    history=[("-= Kitchen =-\nYou are in a kitchen.", "go north")],
)

SCIENCEWORLD = outcome(
    "Your task is to boil water. First, focus on the substance. Then, take actions that will cause it to change "
    "its state of matter.",
    "This room is called the kitchen. In it, you see: a stove, which is turned off. a metal pot containing water.",
    "activate stove",
    "The stove is now activated.",
    [
        {"action": "focus on stove", "next_observation": "You focus on the stove.", "done": True, "reward": -100},
        {
            "action": "look around",
            "next_observation": "This room is called the kitchen. In it, you see: a stove, "
            "which is turned off. a metal pot containing water.",
        },
        {"action": "open fridge", "error": "environment timed out after 10 s"},
    ],
    env="scienceworld",
    expert_reward=5.0,
)


# --- the template -------------------------------------------------------------------------------------------------


def test_default_template_has_every_slot_and_neutral_labels():
    template = Template.load()
    for slot in ("situation", "chosen_action", "chosen_outcome", "alternatives"):
        assert "{" + slot + "}" in template.text
    lowered = template.text.lower()
    assert "expert" not in lowered and "action 1" not in lowered and "alternative 1" not in lowered


def test_prompt_shows_situation_chosen_outcome_and_each_alternative_without_numbers():
    prompt = reflection_prompt(SHOP, shown_alternatives(SHOP, 3), Template.load(), Serializer(), Settings())
    text = prompt[-1]["content"]
    assert Serializer().render_state(SHOP["state"]) in text
    assert "selected: pink" in text and "Action: click[pink]" in text
    for alt in SHOP["alternatives"]:
        assert alt["action"] in text and alt["next_observation"].splitlines()[0] in text
    assert "expert" not in text.lower() and "Action 1" not in text and "Alternative 1" not in text


def test_template_missing_a_slot_is_an_error_naming_it(runner, tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_text("Situation: {situation}\nChosen: {chosen_action} -> {chosen_outcome}\n")
    data = tmp_path / "o.jsonl"
    data.write_bytes(orjson.dumps(SHOP) + b"\n")
    result = runner.invoke(cli, ["reflect", "--reflector", "grounded", "--template", str(bad), str(data)])
    assert result.exit_code == 1
    assert f"{bad}: the template has no {{alternatives}} slot" in result.output


def test_custom_template_keeps_other_braces(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text('{situation} | {chosen_action} | {chosen_outcome} | {alternatives} | {"json": 1} {unknown}')
    filled = Template.load(str(path)).fill(situation="S", chosen_action="A", chosen_outcome="O", alternatives="L")
    assert filled == 'S | A | O | L | {"json": 1} {unknown}'


# --- choosing the reflector ---------------------------------------------------------------------------------------


def test_without_policy_or_grounded_the_error_says_which_to_choose(runner):
    result = runner.invoke(cli, ["reflect"], input="")
    assert result.exit_code == 2
    assert NO_REFLECTOR == (
        "reflect needs a writer for the reflections: give --policy SPEC (the model being trained writes its own, "
        "the paper's setting; add --reflector teacher for a stronger model), set a default model with "
        "EEXP_POLICY=SPEC (it is not set), or give --reflector grounded for a deterministic rationale without a "
        "model (not the paper's method)"
    )
    assert "Error: " + NO_REFLECTOR in " ".join(result.output.split())


@pytest.mark.parametrize(
    "args, message",
    [
        (["--reflector", "grounded", "--policy", "m.gguf"], "--reflector grounded uses no model"),
        (["--reflector", "teacher"], "--reflector teacher needs the model that writes the reflections: give --policy"),
        (["--policy", "random"], "the random policy writes no text"),
    ],
)
def test_reflector_usage_errors(runner, args, message):
    result = runner.invoke(cli, ["reflect", *args], input="")
    assert result.exit_code == 2 and message in result.output


# --- the filters on hand-written bad reflections ------------------------------------------------------------------

EXPERT, ALTS = "click[pink]", ["click[white]", "click[buy now]", "click[back to search]"]
GOOD = (
    "The task wants a pink mug under 30 dollars, and this one costs $23, so the price is fine. Picking white "
    "would select the wrong colour, and buying now would end the task before the colour is set. Going back to "
    "search would throw away a mug that already fits. Clicking pink should select the colour the task asks for, "
    "and then I can buy it.\n\nAction: click[pink]"
)


def verdict(text, finish_reason="stop", max_words=500, new_words=frozenset({"selected", "stock"})):
    return judge(text, finish_reason, expert=EXPERT, alternatives=ALTS, new_words=set(new_words), max_words=max_words)


def test_a_good_reflection_is_kept_without_its_action_line():
    v = verdict(GOOD)
    assert v.reason is None and v.concluded == "click[pink]"
    assert not v.text.endswith("click[pink]") and v.text.startswith("The task wants")


@pytest.mark.parametrize(
    "text, reason",
    [
        ("Pink is what the task asks for, but white looks nicer to me.\n\nAction: click[white]", "different_action"),
        ("Pink is what the task wants. Still, I will settle on click[white].", "different_action"),
        # the closing argues for another move than the Action line takes
        (
            "White would be a fine colour too, and the task can wait. So my move is click[white].\n\nAction: "
            "click[pink]",
            "different_action",
        ),
        ("The expert chose pink because the task wants pink.\n\nAction: click[pink]", "label_leakage"),
        ("Alternative 2 would end the task too early, so pink is right.\n\nAction: click[pink]", "label_leakage"),
        (
            "Action 1 selects white, which is wrong; pink is what the task wants.\n\nAction: click[pink]",
            "label_leakage",
        ),
        ("The second option goes back to search. Pink fits the task.\n\nAction: click[pink]", "label_leakage"),
        (
            "I clicked pink and now I see selected: pink on the page, so the colour is set.\n\nAction: click[pink]",
            "outcome_narration",
        ),
        (
            "After clicking pink, the page showed selected: pink, exactly as needed.\n\nAction: click[pink]",
            "outcome_narration",
        ),
        (
            "Pink is selected and in stock.\n\nAction: click[pink]",
            "outcome_narration",
        ),  # two words only the outcome has
        ("", "empty"),
        ("Action: click[pink]", "empty"),
        ("word " * 40 + "\n\nAction: click[pink]", "too_long"),
    ],
)
def test_filters_reject_bad_reflections(text, reason):
    v = verdict(text, max_words=30)
    assert v.reason == reason, (v.reason, v.detail)
    assert v.detail


SHORT_COPY = (
    "I need a pink mug under 30 dollars. The blue mug is the wrong color, and searching for a lamp shows "
    "no mugs.\n\nAction: click[pink]"
)


@pytest.mark.parametrize(
    "text, reason, detail",
    [
        # the short template's worked example, copied onto another state (SmolLM2-135M did this in 9 of 46 states)
        (SHORT_COPY, "template_copy", "repeats the template's words 'dollars the blue mug is'"),
        (
            "Chosen move: click[pink]\n\nOther moves and what they led to: nothing good.\n\nAction: click[pink]",
            "template_copy",
            "repeats the template's words 'other moves and what they'",
        ),
        (
            "This is a classic example of a logical fallacy, a false dichotomy between two possibilities when in "
            "reality "
            "there are many.",
            "off_topic",
            "names nothing from the task or the moves",
        ),
        (
            "I'm looking for a pink mug, and I'm looking for a glass mug, and I'm looking for a pink mug, and I'm "
            "looking for a glass mug under 30 dollars.\n\nAction: click[pink]",
            "repetitive",
            "56% of its three-word runs are repeats",
        ),
        (
            "I am a helpful AI assistant, and pink is what the task wants here.\n\nAction: click[pink]",
            "label_leakage",
            "mentions 'AI assistant'",
        ),
    ],
)
def test_filters_for_small_models(text, reason, detail):
    v = judge(
        text,
        "stop",
        expert=EXPERT,
        alternatives=ALTS,
        new_words=set(),
        max_words=500,
        template=Template.load("short"),
        topic=topic_words(SHOP, ALTS),
    )
    assert (v.reason, v.detail) == (reason, detail)


def test_small_model_filters_keep_a_good_reflection_and_drop_the_answer_cue():
    v = judge(
        "Why: " + GOOD,
        "stop",
        expert=EXPERT,
        alternatives=ALTS,
        new_words=set(),
        max_words=500,
        template=Template.load("short"),
        topic=topic_words(SHOP, ALTS),
    )
    assert v.reason is None and v.text.startswith("The task wants")
    assert topic_words(SHOP, ALTS) >= {"glass", "travel", "mug", "pink", "white", "buy", "now"}
    assert "click" not in topic_words(SHOP, ALTS)  # the verb says nothing about this state


def test_builtin_templates_by_name_and_a_file_of_that_name_wins(tmp_path, monkeypatch):
    short = Template.load("short")
    assert short.source == "short" and short.text != Template.load().text
    assert all(
        "{" + slot + "}" in short.text for slot in ("situation", "chosen_action", "chosen_outcome", "alternatives")
    )
    monkeypatch.chdir(tmp_path)
    (tmp_path / "short").write_text("{situation} {chosen_action} {chosen_outcome} {alternatives}")
    assert Template.load("short").source == "short" and Template.load("short").text.startswith("{situation}")


def test_a_few_words_are_too_short():
    v = judge(
        "ta pink\n\nAction: click[pink]",
        "stop",
        expert=EXPERT,
        alternatives=ALTS,
        new_words=set(),
        max_words=500,
        min_words=10,
    )
    assert v.reason == "too_short" and v.detail == "2 words (--min-words 10)"


def test_anticipating_the_outcome_is_not_narration():
    text = "If I click pink, I expect the page to show selected: pink, which the task needs.\n\nAction: click[pink]"
    assert verdict(text).reason is None


def test_an_alternatives_observed_outcome_may_be_reported():
    text = (
        "Going back to search led to the empty search page, which loses this mug. Clicking pink should set the "
        "colour instead.\n\nAction: click[pink]"
    )
    assert verdict(text).reason is None


def test_a_reply_cut_by_max_tokens_is_rejected():
    v = verdict("The task wants a pink mug under 30 dollars, and this one costs", finish_reason="length")
    assert v.reason == "truncated"


def test_a_failed_model_call_is_rejected():
    assert verdict("", finish_reason="error: endpoint down").reason == "model_error"


def test_a_monologue_said_twice_keeps_the_first_copy():
    body = GOOD.replace("\n\nAction: click[pink]", "")
    text = f"{body}\n\nAction: click[pink]\n\nThought: {body}\n\nAction: click[pink]"
    v = verdict(text)
    assert v.reason is None and v.repeated and v.text == body
    # ... also when the second copy runs into the token limit: the first copy is whole.
    cut = f"{body}\n\n{body[: len(body) // 2]}"
    v = verdict(cut, finish_reason="length")
    assert v.reason is None and v.repeated and v.text == body


def test_repeat_detection_leaves_ordinary_text_alone():
    text = "I need pink. The mug costs $23. I need pink for this task to be done right, and this page has it."
    assert trim_repeat(text) == (text, False)


# --- the grounded reflector ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("record", [SHOP, TEXTWORLD, SCIENCEWORLD], ids=["shop", "textworld", "scienceworld"])
def test_grounded_reflection_describes_each_alternative_and_closes_on_the_chosen_move(record):
    shown = shown_alternatives(record, 3)
    text = grounded_reflection(record, shown)
    for alt in shown:
        assert describe_action(alt["action"])[:1].upper() + describe_action(alt["action"])[1:] in text
        assert alt["action"] not in text  # described, never written as the command it is
    assert text.endswith(f"So my move is {record['expert']['action']}.")
    assert text.count(record["expert"]["action"]) == 1  # in the closing only
    # It passes the same filters a model's reflection does, with either built-in template.
    for template in ("default", "short"):
        examples = list(
            reflect_examples(
                record,
                reflector=Reflector("grounded"),
                template=Template.load(template),
                serializer=Serializer(),
                settings=Settings(),
            )
        )
        assert len(examples) == 1


def test_grounded_reflection_says_why_each_alternative_falls_short_in_words():
    assert grounded_reflection(SHOP, shown_alternatives(SHOP, 3)) == (
        'Clicking pink should add "selected: pink", giving pink as the task asks. '
        'Clicking white would add "selected: white" instead of pink. '
        "Buying now would end the episode here, with only part of the task done. "
        "Going back to search would leave this page and lose the glass travel mug and pink found here. "
        "So my move is click[pink]."
    )
    tw = grounded_reflection(TEXTWORLD, shown_alternatives(TEXTWORLD, 3))
    assert "Eating keycard is not a move that works here." in tw
    assert tw.startswith("Taking keycard from box should move me toward the goal.")
    sw = grounded_reflection(SCIENCEWORLD, shown_alternatives(SCIENCEWORLD, 3))
    assert "Focusing on stove would end the episode at once, losing 100." in sw
    assert "Looking around would leave everything as it is." in sw
    assert "Opening fridge cannot be carried out from here." in sw
    assert sw.startswith("Activating stove should bring progress (a reward of 5).")


def test_grounded_reflection_names_over_budget_and_missing_options():
    goal = "i need canvas slip on sneakers in yellow, size 10, under 50 dollars"
    results = (
        'results for "canvas slip on sneakers" (page 1 of 2)\n[rio canvas slip on sneakers] $32\n'
        "[kiko canvas slip on sneakers] $71\n[back to search] [next >]"
    )
    record = outcome(
        goal,
        results,
        "click[rio canvas slip on sneakers]",
        "rio canvas slip on sneakers\nprice: $32\ncolor: [black] [yellow]\nsize: [9] [10]\n"
        "[< prev] [back to search] [buy now]",
        [
            {
                "action": "click[kiko canvas slip on sneakers]",
                "next_observation": "kiko canvas slip on sneakers\nprice: $71\ncolor: [yellow]\nsize: [10]"
                "\n[< prev] [back to search] [buy now]",
            },
            {
                "action": "click[next >]",
                "next_observation": 'results for "canvas slip on sneakers" (page 2 of 2)\n'
                "[zen canvas slip on sneakers] $40\n[back to search] [< prev]",
            },
            {"action": "click[back to search]", "next_observation": "search page. type a query with search[...]"},
        ],
    )
    assert grounded_reflection(record, shown_alternatives(record, 3)) == (
        "Clicking rio canvas slip on sneakers should bring yellow and size 10 into view, as the task asks. "
        "Clicking kiko canvas slip on sneakers would show a price of $71, over the budget of 50. "
        "Going on to the next page would not offer yellow and size 10. "
        "Going back to search would leave this page and lose the canvas slip on sneakers found here. "
        "So my move is click[rio canvas slip on sneakers]."
    )


@pytest.mark.parametrize(
    "action, said",
    [
        ("click[back to search]", "going back to search"),
        ("click[< prev]", "going back a page"),
        ("click[next >]", "going on to the next page"),
        ("click[buy now]", "buying now"),
        ("click[pink]", "clicking pink"),
        ("search[red mug]", "searching for red mug"),
        ("type[12][hello world]", "typing hello world into 12"),
        ("select[3][Blue]", "selecting Blue in 3"),
        ("take key from box", "taking key from box"),
        ("put apple in fridge", "putting apple in fridge"),
        ("go east", "going east"),
        ("n", "going north"),
        ("inventory", "checking the inventory"),
        ("open door to kitchen", "opening door to kitchen"),
        ("cd('docs')", "calling cd"),
        ("[ls(), cd(folder='a')]", "calling ls"),
    ],
)
def test_actions_are_described_in_words(action, said):
    assert describe_action(action) == said


def _words_runs(text, n):
    words = re.findall(r"[a-z0-9]+", text.lower())
    return {tuple(words[i : i + n]) for i in range(len(words) - n + 1)}


def test_grounded_reflections_on_shop_are_short_and_paste_no_page(shop_outcomes):
    """The grounded rationale of version 1 quoted the page and every outcome (median ~160 words, ~260 SmolLM2
    tokens, on shop) and wrote each rejected action as its command: a model trained on it copies both."""
    outcomes = _lines(shop_outcomes)
    lengths = []
    for record in outcomes:
        shown = shown_alternatives(record, 3)
        text = grounded_reflection(record, shown)
        lengths.append(len(text.split()))
        pages = [
            record["state"]["observation"],
            record["expert"]["next_observation"],
            *(a.get("next_observation") or "" for a in shown),
        ]
        own = _words_runs(
            " ".join([record["state"]["goal"], record["expert"]["action"], *(a["action"] for a in shown)]), 8
        )
        page_runs = set().union(*(_words_runs(p, 8) for p in pages)) - own
        assert not _words_runs(text, 8) & page_runs, text  # not even 8 words of a page in a row
        assert not any(a["action"] in text for a in shown), text
        assert text.endswith(f"So my move is {record['expert']['action']}.")
    assert max(lengths) <= 100 and sorted(lengths)[len(lengths) // 2] <= 70, lengths


# --- the filters against pasted pages -----------------------------------------------------------------------------

RESULTS = (
    'results for "glass travel mug" (page 1 of 2)\n[brio glass travel mug] $23\n[nova glass travel mug] $41\n'
    "[zen glass mug] $12\n[back to search] [next >]"
)
PASTE = outcome(
    "find me a glass travel mug, pink, priced under 30 dollars",
    "search page. type a query with search[...]",
    "search[glass travel mug]",
    RESULTS,
    [
        {"action": "search[glass mug]", "next_observation": RESULTS.replace('travel mug"', 'mug"')},
        {"action": "search[red lamp]", "next_observation": 'no results for "red lamp".\n[back to search]'},
    ],
)


def _judge_paste(text):
    shown = shown_alternatives(PASTE, 3)
    return judge(
        text,
        "stop",
        expert="search[glass travel mug]",
        alternatives=[a["action"] for a in shown],
        new_words=set(),
        max_words=500,
        pages=page_runs(PASTE, shown),
    )


def test_a_reflection_that_pastes_an_outcome_page_is_rejected():
    # 12 words in a row of what the chosen action led to (it is also in no task or action text)
    pasted = (
        "Searching for glass travel mug should give results for glass travel mug page 1 of 2 brio glass "
        "travel mug, which fits the task.\n\nAction: search[glass travel mug]"
    )
    v = _judge_paste(pasted)
    assert (v.reason, v.detail) == (
        "pasted_page",
        "pastes 13 words of a page in a row: 'results for glass travel mug page 1 of 2 brio glass travel mug'",
    )
    # ... and from an alternative's outcome too
    v = _judge_paste(
        "Searching for a red lamp gives no results for red lamp back to search at all, and for a glass "
        "mug it gives results for glass mug page 1 of 2 brio glass travel mug 23 nova glass travel mug. "
        "Searching for glass travel mug should fit.\n\nAction: search[glass travel mug]"
    )
    assert (v.reason, v.detail) == (
        "pasted_page",
        "pastes 17 words of a page in a row: 'results for glass mug "
        "page 1 of 2 brio glass travel mug 23 nova glass travel mug'",
    )


def test_the_paste_limit_is_twelve_words_and_the_task_and_moves_are_not_page_text():
    assert PASTE_RUN == 12
    words = "results for glass travel mug page 1 of 2 brio glass travel".split()  # 12 words of the outcome
    tail = ", which fits the task. Searching for glass travel mug should do it.\n\nAction: search[glass travel mug]"
    assert _judge_paste("I expect " + " ".join(words[:11]) + tail).reason is None
    assert _judge_paste("I expect " + " ".join(words) + tail).reason == "pasted_page"
    # restating the whole task, even where a page shows it, is not pasting a page
    record = copy.deepcopy(PASTE)
    goal = "find me a large glass travel mug in pink with a lid, priced under 30 dollars"
    record["state"].update(goal=goal, observation=f"Your task: {goal}. search page.")
    shown = shown_alternatives(record, 3)
    v = judge(
        f"The task is to {goal}, so searching for glass travel mug should help.\n\nAction: search[glass travel mug]",
        "stop",
        expert="search[glass travel mug]",
        alternatives=[a["action"] for a in shown],
        new_words=set(),
        max_words=500,
        pages=page_runs(record, shown),
    )
    assert v.reason is None, v.detail


def test_pasted_reflections_are_counted_in_the_stats():
    reply = (
        "Searching for glass travel mug should give results for glass travel mug page 1 of 2 brio glass "
        "travel mug 23.\n\nAction: search[glass travel mug]"
    )
    out, counts, rejected = _run(PASTE, lambda m, s: (reply, "stop"))
    assert out == [] and counts == {"pasted_page": 1} and rejected[0]["reason"] == "pasted_page"
    assert "pasted_page" in COUNTS and "pasted_page" in FILTERS


def test_version_one_grounded_rationale_is_rejected_as_pasted():
    """What the grounded writer wrote before (version 1): the page and the outcomes quoted."""
    old = (
        'My task: find me a glass travel mug, pink, priced under 30 dollars. What is in front of me: "search page. '
        'type a query with search[...]". Weighing the moves I have: "search[glass mug]" leads to "results for '
        "'glass mug' (page 1 of 2) [brio glass travel mug] $23 [nova glass travel mug] $41 [zen glass mug] $12 "
        '...", which is a detour from the task. So my move is "search[glass travel mug]": I expect it to lead to '
        "\"results for 'glass travel mug' (page 1 of 2) [brio glass travel mug] $23 [nova glass travel mug] "
        '$41 ...", which moves me toward the goal.'
    )
    assert _judge_paste(old).reason == "pasted_page"
    assert _judge_paste(grounded_reflection(PASTE, shown_alternatives(PASTE, 3))).reason is None


# --- the templates ask for the same style ----------------------------------------------------------------------


@pytest.mark.parametrize("name", ["default", "short"])
def test_templates_ask_for_a_short_described_rationale_with_the_closing(name):
    text = Template.load(name).text
    assert "So my move is" in text
    assert "copy" in text and "commands" in text  # describe the moves and their pages, do not paste them
    if name == "default":
        assert "40 to 120 words" in text and "{max_words}" in text


def test_the_closing_the_template_asks_for_is_not_a_template_copy():
    text = (
        "Clicking pink should select the colour the task asks for. Going back to search would lose this mug. "
        "So my move is click[pink]."
    )
    for name in ("default", "short"):
        v = judge(
            text,
            "stop",
            expert=EXPERT,
            alternatives=ALTS,
            new_words=set(),
            max_words=500,
            template=Template.load(name),
            topic=topic_words(SHOP, ALTS),
        )
        assert v.reason is None and v.concluded == "click[pink]", (name, v.detail)


# --- the training example ---------------------------------------------------------------------------------------


def _run(record, writer=None, settings=Settings(), kind="self"):
    counts, rejected = {}, []
    reflector = Reflector("grounded") if writer is None else Reflector(kind, writer, "m.gguf", "abc")
    out = list(
        reflect_examples(
            record,
            reflector=reflector,
            template=Template.load(),
            serializer=Serializer(),
            settings=settings,
            count=lambda n, k=1: counts.__setitem__(n, counts.get(n, 0) + k),
            reject=rejected.append,
        )
    )
    return out, counts, rejected


def test_example_input_is_the_state_alone_and_target_is_thought_then_expert_action():
    prompts = []

    def writer(messages, seed):
        prompts.append((messages, seed))
        return GOOD, "stop"

    marked = copy.deepcopy(SHOP)
    for i, alt in enumerate(marked["alternatives"]):
        alt["next_observation"] += f" MARKER-{i}"
    marked["expert"]["next_observation"] += " MARKER-EXPERT"
    (example,), counts, _ = _run(marked, writer, Settings(seed=7))
    assert expect("example")(example) is None
    assert example["id"] == "sr:t1#2" and example["source_id"] == "t1#2"
    assert example["messages"][:-1] == Serializer().policy_messages(marked["state"])
    training_input = json.dumps(example["messages"][:-1])
    assert "MARKER" not in training_input  # no outcome enters the training input
    assert all(f"MARKER-{i}" in prompts[0][0][-1]["content"] for i in range(3))  # ... they were in the prompt
    target = example["messages"][-1]
    assert target["role"] == "assistant" and target["content"].startswith("Thought: The task wants")
    assert target["content"].endswith("\n\nAction: click[pink]")
    assert parse_reply(target["content"])[0] == "click[pink]"
    assert prompts[0][1] == derive_seed(7, "t1#2", 0) == example["meta"]["seed"]
    meta = example["meta"]
    assert (meta["stage"], meta["kind"], meta["reflector"], meta["model"]) == ("reflect", "sr", "self", "m.gguf")
    assert json.loads(meta["extra"])["alternatives"] == ALTS and counts["kept"] == 1


def test_teacher_and_grounded_are_labelled_in_meta():
    (teacher,), _, _ = _run(SHOP, lambda m, s: (GOOD, "stop"), kind="teacher")
    assert teacher["meta"]["reflector"] == "teacher" and json.loads(teacher["meta"]["extra"])["teacher_assisted"]
    (grounded,), _, _ = _run(SHOP)
    extra = json.loads(grounded["meta"]["extra"])
    assert grounded["meta"]["reflector"] == "grounded" and grounded["meta"]["model"] == ""
    assert extra["paper_method"] is False and "not the paper's method" in extra["note"]
    # which grounded writer made it: version 1 (no key) quoted pages, version 2 describes them, version 3 explains
    # paging and names only what the record shows
    assert extra["grounded_version"] == GROUNDED_VERSION == 3
    assert "grounded_version" not in json.loads(teacher["meta"]["extra"])


def test_a_rejected_reflection_is_counted_and_passed_on_with_its_reason():
    out, counts, rejected = _run(
        SHOP,
        lambda m, s: (
            "The expert picks pink here, since the task asks for a pink mug under 30 dollars.\n\nAction: click[pink]",
            "stop",
        ),
    )
    assert out == [] and counts["label_leakage"] == 1
    assert rejected[0]["reason"] == "label_leakage" and rejected[0]["source_id"] == "t1#2"
    assert "messages" not in rejected[0]  # a rejected record can never be trained on by mistake


def test_only_the_first_max_alternatives_executed_are_shown():
    record = copy.deepcopy(SHOP)
    record["alternatives"].insert(0, {"action": "click[blue]", "source": "policy"})  # never executed
    shown = shown_alternatives(record, 2)
    assert [a["action"] for a in shown] == ["click[white]", "click[buy now]"]


@pytest.mark.parametrize(
    "change, count",
    [
        (lambda r: r.update(alternatives=[]), "no_alternatives"),
        (lambda r: r.update(alternatives=[{"action": "x", "source": "policy"}]), "no_alternatives"),
        (
            lambda r: [a.update(error="state mismatch", next_observation=None) for a in r["alternatives"]],
            "all_alternatives_failed",
        ),
        (lambda r: r.update(error="could not reach the state"), "unreachable"),
    ],
)
def test_records_that_cannot_give_a_reflection_are_skipped_and_counted(change, count):
    record = copy.deepcopy(SHOP)
    change(record)
    out, counts, _ = _run(record, lambda m, s: pytest.fail("no model call expected"))
    assert out == [] and counts == {count: 1}


# --- the command --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def shop_outcomes(tmp_path_factory):
    """Real outcome records: shop expert -> branch (admissible alternatives) -> rollout."""
    from click.testing import CliRunner

    d = tmp_path_factory.mktemp("reflect")
    run = CliRunner()
    for args in (
        ["expert", "--env", "shop", "-n", "4", "--seed", "3", "-o", str(d / "expert.jsonl")],
        ["branch", "-k", "3", str(d / "expert.jsonl"), "-o", str(d / "branches.jsonl")],
        ["rollout", str(d / "branches.jsonl"), "-o", str(d / "outcomes.jsonl")],
    ):
        result = run.invoke(cli, args)
        assert result.exit_code == 0, result.output
    return d / "outcomes.jsonl"


def test_fallback_replaces_a_rejected_reflection_with_the_grounded_one_and_says_so():
    counts, rejected = {}, []
    bad = lambda m, s: ("The expert picks pink here, since the task asks for pink.\n\nAction: click[pink]", "stop")
    (example,) = reflect_examples(
        SHOP,
        reflector=Reflector("self", bad, "m.gguf", "abc"),
        template=Template.load(),
        serializer=Serializer(),
        settings=Settings(),
        fallback="grounded",
        count=lambda n, k=1: counts.__setitem__(n, counts.get(n, 0) + k),
        reject=rejected.append,
    )
    grounded = grounded_reflection(SHOP, shown_alternatives(SHOP, 3))
    assert example["messages"][-1]["content"] == f"Thought: {grounded}\n\nAction: click[pink]"
    meta, extra = example["meta"], json.loads(example["meta"]["extra"])
    assert (meta["reflector"], meta["model"]) == ("grounded", "")
    assert (extra["fallback_for"], extra["rejected"], extra["paper_method"]) == ("self", "label_leakage", False)
    assert extra["grounded_version"] == GROUNDED_VERSION
    assert counts == {"label_leakage": 1, "fallback_grounded": 1}
    assert rejected[0]["reason"] == "label_leakage" and rejected[0]["meta"]["reflector"] == "self"


def test_a_model_run_prints_what_the_filters_did(runner, tmp_path, monkeypatch):
    import eexp.policies
    from eexp.policies.base import Policy, Reply

    class Scripted(Policy):
        replies = iter(
            [GOOD, "I need a pink mug. The blue mug is the wrong color, and searching for a lamp shows no mugs."]
        )

        def generate(self, messages, **kw):
            return Reply(text=next(self.replies), action=None, finish_reason="stop")

        def describe(self):
            return {"model": "scripted"}

        def close(self):
            pass

    monkeypatch.setattr(eexp.policies, "load_policy", lambda *a, **k: Scripted())
    data = tmp_path / "o.jsonl"
    data.write_bytes(orjson.dumps(SHOP) + b"\n" + orjson.dumps(dict(SHOP, id="t1#3")) + b"\n")
    result = runner.invoke(
        cli,
        [
            "reflect",
            "--policy",
            "m.gguf",
            "--template",
            "short",
            "--fallback",
            "grounded",
            str(data),
            "-o",
            str(tmp_path / "sr.jsonl"),
        ],
    )
    assert result.exit_code == 0, result.output
    assert (
        "reflect: 1 of 2 model reflections kept; rejected: template_copy 1; 1 replaced by grounded rationales "
        "(--fallback grounded)" in result.output
    )
    assert [r["meta"]["reflector"] for r in _lines(tmp_path / "sr.jsonl")] == ["self", "grounded"]


def _lines(path):
    return [orjson.loads(line) for line in open(path, "rb")]


def test_grounded_pipeline_on_shop(runner, shop_outcomes, tmp_path):
    out, stats = tmp_path / "sr.jsonl", tmp_path / "stats.json"
    result = runner.invoke(
        cli, ["reflect", "--reflector", "grounded", str(shop_outcomes), "-o", str(out), "--stats", str(stats)]
    )
    assert result.exit_code == 0, result.output
    outcomes, examples = _lines(shop_outcomes), _lines(out)
    assert len(examples) == len(outcomes) > 0
    by_id = {o["id"]: o for o in outcomes}
    for ex in examples:
        assert validate(ex, "example") is None
        source = by_id[ex["source_id"]]
        assert ex["messages"][:-1] == Serializer().policy_messages(source["state"])
        assert ex["messages"][-1]["content"].endswith(f"\n\nAction: {source['expert']['action']}")
    summary = json.loads(stats.read_text())
    assert set(COUNTS) <= set(summary) and summary["kept"] == len(examples) and summary["records_in"] == len(outcomes)
    again = runner.invoke(cli, ["reflect", "--reflector", "grounded", str(shop_outcomes)])
    assert untimed([orjson.loads(x) for x in again.output.splitlines()]) == untimed(examples)


def test_resume_and_shards(runner, shop_outcomes, tmp_path):
    full = runner.invoke(cli, ["reflect", "--reflector", "grounded", str(shop_outcomes)]).output.splitlines()
    out = tmp_path / "sr.jsonl"
    out.write_text("\n".join(full[:3]) + "\n" + full[3][:20])  # an interrupted run: a torn last line
    result = runner.invoke(cli, ["reflect", "--reflector", "grounded", str(shop_outcomes), "-o", str(out), "--resume"])
    assert result.exit_code == 0, result.output
    assert untimed(_lines(out)) == untimed([orjson.loads(x) for x in full])
    parts = []
    for i in (1, 2):
        shard = runner.invoke(cli, ["reflect", "--reflector", "grounded", "--shard", f"{i}/2", str(shop_outcomes)])
        parts += [orjson.loads(x) for x in shard.output.splitlines()]
    assert sorted(r["id"] for r in parts) == sorted(orjson.loads(x)["id"] for x in full)


def test_a_branch_record_is_not_an_outcome(runner, tmp_path):
    record = copy.deepcopy(SHOP)
    del record["expert"]["next_observation"]
    path = tmp_path / "b.jsonl"
    path.write_bytes(orjson.dumps(record) + b"\n")
    result = runner.invoke(cli, ["reflect", "--reflector", "grounded", str(path)])
    assert result.exit_code == 1 and f"{path}:1: expected an outcome record, got a branch record" in result.output


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["checkpoint", "gguf"])
def test_model_reflector_end_to_end(runner, shop_outcomes, backend, request, tmp_path):
    """A tiny random model writes the reflections: its text is noise, so this checks the plumbing (prompting,
    seeds, filters, --rejected, --stats, determinism), not quality. Cut at 8 tokens, a reply is truncated unless
    the model happens to stop first (then it is too short): either way it is rejected and counted."""
    model = request.getfixturevalue("tiny_checkpoint" if backend == "checkpoint" else "tiny_gguf")
    first = [json.dumps(o) for o in _lines(shop_outcomes)[:3]]
    data = tmp_path / "o.jsonl"
    data.write_text("\n".join(first) + "\n")
    args = ["reflect", "--policy", str(model), "--max-tokens", "8", "--seed", "1", str(data)]
    rejected, stats = tmp_path / "rejected.jsonl", tmp_path / "stats.json"
    result = runner.invoke(cli, [*args, "--rejected", str(rejected), "--stats", str(stats)])
    assert result.exit_code == 0, result.output
    summary = json.loads(stats.read_text())
    rows = _lines(rejected)
    assert summary["records_out"] == 0 and len(rows) == 3
    assert summary["truncated"] + summary["too_short"] == 3
    assert summary["truncated"] == sum(r["reason"] == "truncated" for r in rows)
    for row in rows:
        assert row["meta"]["reflector"] == "self" and row["meta"]["seed"] == derive_seed(1, row["source_id"], 0)
        assert json.loads(row["meta"]["extra"])["temperature"] == 0.7
    again = runner.invoke(cli, [*args, "--rejected", str(tmp_path / "r2.jsonl")])
    assert again.exit_code == 0
    assert [r["reply"] for r in _lines(tmp_path / "r2.jsonl")] == [r["reply"] for r in rows]


# --- the design's own pipeline, with the default policy ---------------------------------------------------------


@pytest.mark.slow  # five eexp processes in a shell pipeline (~15 s)
def test_the_designs_pipeline_runs_as_written_with_the_default_policy(tmp_path):
    """DESIGN.md's line, word for word; reflect's model is the one EEXP_POLICY names (here a stub server whose
    replies reuse words of the situation it is shown)."""
    import os
    import subprocess
    import sys

    from openai_stub import StubServer

    def reply(body):  # a monologue about the situation it is shown, ending on the move it is given
        prompt = body["messages"][-1]["content"]
        if "The situation:" not in prompt:  # eexp's first contact with the server
            return "Hello."
        situation = prompt.split("The situation:\n", 1)[1].split("\n\nThe move you will make: ", 1)[0]
        chosen = prompt.split("The move you will make: ", 1)[1].split("\n", 1)[0]
        return (
            f"Looking at this, {' '.join(situation.split()[:40])}. Doing {chosen} should get me nearer to "
            f"the goal here, and the other moves would not.\nAction: {chosen}"
        )

    line = "eexp expert --env shop -n 5 | eexp branch | eexp rollout | eexp reflect > sr.jsonl"
    env = {k: v for k, v in os.environ.items() if k != "EEXP_POLICY"}
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env["PATH"]
    unset = subprocess.run(
        ["bash", "-o", "pipefail", "-c", line], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert unset.returncode == 2 and "EEXP_POLICY=SPEC (it is not set)" in " ".join(unset.stderr.split())
    server = StubServer(free_text=reply)
    try:
        run = subprocess.run(
            ["bash", "-o", "pipefail", "-c", line],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            env={**env, "EEXP_POLICY": server.url},
        )
    finally:
        server.close()
    assert run.returncode == 0, run.stderr
    examples = [json.loads(x) for x in (tmp_path / "sr.jsonl").read_text().splitlines()]
    asked = int(re.search(r"reflect: \d+ of (\d+) model reflections kept", run.stderr).group(1))
    assert asked > 10 and examples  # a reflection asked of the default model for every state with outcomes
    assert {e["meta"]["model"] for e in examples} == {"stub-model"} and {e["meta"]["reflector"] for e in examples} == {
        "self"
    }


# --- unprintable characters: a small model's garbage is rejected and counted -------------------------------------

GARBLED = "Thought: :\x02 " + GOOD  # as `reflect --policy iwm.gguf` wrote one ("Thought: :\x02 rippedH nova...")


@pytest.mark.parametrize(
    "text, code",
    [
        (GARBLED, "U+0002"),
        (GOOD.replace("so the price", "\x1b[31mso the price"), "U+001B"),  # a terminal escape
        (GOOD.replace("fine.", "fine.\rPicking"), "U+000D"),  # a CR that is no line break overwrites the line
        (GOOD.replace("mug", "m\ufffdg", 1), "U+FFFD"),  # bytes that were not UTF-8 (a token cut mid-character)
        (GOOD.replace("mug", "m\ue000g", 1), "U+E000"),  # private use
        (GOOD.replace("mug", "m\ud800g", 1), "U+D800"),  # half a surrogate pair
        (GOOD.replace("mug", "m\U000e0080g", 1), "U+E0080"),  # unassigned
    ],
)
def test_a_reflection_with_an_unprintable_character_is_rejected(text, code):
    v = verdict(text)
    assert v.reason == "unprintable" and code in v.detail, (v.reason, v.detail)


def test_line_breaks_tabs_and_emoji_are_printable():
    crlf = GOOD.replace("\n", "\r\n")
    tab = GOOD.replace(" so the price", "\tso the price")
    emoji = GOOD.replace("fine.", "fine \U0001f469\u200d\U0001f4bb.")  # a zero-width joiner (Cf) inside
    for text in (crlf, tab, emoji):
        v = verdict(text)
        assert v.reason is None, (v.reason, v.detail)


def test_unprintable_reflections_are_counted_in_stats_and_written_to_rejected(runner, tmp_path, monkeypatch):
    use_scripted_reflector(monkeypatch, GARBLED)
    data, stats, rejected = tmp_path / "o.jsonl", tmp_path / "stats.json", tmp_path / "rejected.jsonl"
    data.write_bytes(orjson.dumps(SHOP) + b"\n")
    args = ["reflect", "--policy", "m.gguf", str(data), "-o", str(tmp_path / "sr.jsonl")]
    result = runner.invoke(cli, [*args, "--stats", str(stats), "--rejected", str(rejected)])
    assert result.exit_code == 0, result.output
    assert "reflect: 0 of 1 model reflections kept; rejected: unprintable 1" in result.output
    assert _lines(tmp_path / "sr.jsonl") == []
    assert json.loads(stats.read_text())["unprintable"] == 1 and "unprintable" in FILTERS
    (record,) = _lines(rejected)
    assert record["reason"] == "unprintable" and record["reply"] == GARBLED and "U+0002" in record["detail"]


def test_resume_compares_the_model_settings_when_a_grounded_fallback_comes_first(runner, tmp_path, monkeypatch):
    """A file whose first record is a grounded fallback (no model settings) is continued only at the model settings
    its model reflections were written with; and a run whose first record is a fallback is checked too, before it
    writes. (Compared on the first record alone, both were continued at any temperature.)"""
    data, out = tmp_path / "o.jsonl", tmp_path / "sr.jsonl"
    ids = [f"t{i}#2" for i in range(4)]
    data.write_bytes(
        b"".join(orjson.dumps({**SHOP, "id": i, "source_id": i[:2], "trajectory_id": i[:2]}) + b"\n" for i in ids)
    )
    replies = iter([GARBLED, GOOD, GOOD, GOOD])  # the first outcome falls back to a grounded reflection
    use_scripted_reflector(monkeypatch, "")
    import eexp.policies
    from eexp.policies.base import Reply

    scripted = eexp.policies.load_policy()
    monkeypatch.setattr(type(scripted), "generate", lambda self, messages, **kw: Reply(next(replies), None, "stop"))
    args = ["reflect", "--policy", "m.gguf", "--fallback", "grounded", str(data), "-o", str(out), "-q"]
    assert runner.invoke(cli, args).exit_code == 0
    assert [r["meta"]["reflector"] for r in _lines(out)] == ["grounded", "self", "self", "self"]
    kept = b"".join(out.read_bytes().splitlines(keepends=True)[:3])
    for first_reply in (GOOD, GARBLED):  # this run's first record a model reflection, then a grounded fallback
        out.write_bytes(kept)
        replies = iter([first_reply] * 4)
        result = runner.invoke(cli, [*args, "--resume", "--temperature", "0.2"])
        assert result.exit_code == 2, result.output
        assert f"Error: --resume: {out} was begun with other settings (temperature: 0.7 there, 0.2 here)" in (
            result.output
        )
        assert out.read_bytes() == kept[: len(out.read_bytes())] and len(_lines(out)) >= 2
    replies = iter([GOOD] * 4)
    assert runner.invoke(cli, [*args, "--resume"]).exit_code == 0
    assert [r["meta"]["reflector"] for r in _lines(out)] == ["grounded", "self", "self", "self"]


def test_side_files_are_refused_as_o_and_kept_or_emptied_as_o_is(runner, shop_outcomes, tmp_path):
    """--rejected naming -o's own file: two writers on one file (eval's --trajectories the same), refused. A resume
    refused for other settings leaves --rejected as it was (it was cut back first). A run that stops after its first
    record empties a --rejected file it had not written yet: what it held was another run's."""
    out, rejected = tmp_path / "sr.jsonl", tmp_path / "rejected.jsonl"
    grounded = ["reflect", "--reflector", "grounded", "-q"]
    result = runner.invoke(cli, [*grounded, str(shop_outcomes), "-o", str(out), "--rejected", str(out)])
    assert result.exit_code == 2 and result.output == (
        f"Error: {out}: is -o's file too; give the side output a file of its own\n"
    )
    assert runner.invoke(cli, [*grounded, str(shop_outcomes), "-o", str(out)]).exit_code == 0
    whole = out.read_bytes()
    rejected.write_text('{"source_id": "a"}\n{"source_id": "b"}\n')
    args = [*grounded, str(shop_outcomes), "-o", str(out), "--rejected", str(rejected), "--resume", "--history", "1"]
    result = runner.invoke(cli, args)
    assert result.exit_code == 2 and "was begun with other settings (serializer:" in result.output, result.output
    assert out.read_bytes() == whole and rejected.read_text() == '{"source_id": "a"}\n{"source_id": "b"}\n'
    # refused at its first line: both files as they were (the side file, closed twice, was cut: a ValueError)
    first_bad, new = tmp_path / "first_bad.jsonl", tmp_path / "new.jsonl"
    first_bad.write_text("{not json\n")
    result = runner.invoke(cli, [*grounded, str(first_bad), "-o", str(new), "--rejected", str(rejected)])
    assert result.exit_code == 1 and result.output.startswith(f"Error: {first_bad}:1: not valid JSON"), result.output
    assert rejected.read_text() == '{"source_id": "a"}\n{"source_id": "b"}\n' and not new.exists()
    broken = tmp_path / "broken.jsonl"
    broken.write_text(shop_outcomes.read_text().splitlines()[0] + "\n{not json\n")
    result = runner.invoke(cli, [*grounded, str(broken), "-o", str(out), "--rejected", str(rejected)])
    assert result.exit_code == 1 and len(_lines(out)) == 1 and rejected.read_text() == ""


def test_a_file_of_model_reflections_is_not_continued_by_the_grounded_reflector(runner, tmp_path, monkeypatch):
    """Its model settings named no grounded record, so `--reflector grounded --resume` mixed the two silently."""
    data, out = tmp_path / "o.jsonl", tmp_path / "sr.jsonl"
    ids = [f"t{i}#2" for i in range(3)]
    data.write_bytes(
        b"".join(orjson.dumps({**SHOP, "id": i, "source_id": i[:2], "trajectory_id": i[:2]}) + b"\n" for i in ids)
    )
    use_scripted_reflector(monkeypatch, GOOD)
    assert runner.invoke(cli, ["reflect", "--policy", "m.gguf", str(data), "-o", str(out), "-q"]).exit_code == 0
    kept = b"".join(out.read_bytes().splitlines(keepends=True)[:2])
    out.write_bytes(kept)
    result = runner.invoke(cli, ["reflect", "--reflector", "grounded", str(data), "-o", str(out), "-q", "--resume"])
    assert result.exit_code == 2 and 'was begun with other settings (model: "scripted" there, "" here' in result.output
    assert out.read_bytes() == kept


def test_a_file_of_grounded_reflections_is_not_continued_by_a_model_reflector(runner, tmp_path, monkeypatch):
    """A grounded record names no model settings, so `--policy M --resume` once appended a model's reflections to a
    grounded file without a word; a grounded fallback's record names the reflector it stands in for, so a model's file
    that begins with one is still continued by that model."""
    data, out = tmp_path / "o.jsonl", tmp_path / "sr.jsonl"
    ids = [f"t{i}#2" for i in range(3)]
    data.write_bytes(
        b"".join(orjson.dumps({**SHOP, "id": i, "source_id": i[:2], "trajectory_id": i[:2]}) + b"\n" for i in ids)
    )
    assert runner.invoke(cli, ["reflect", "--reflector", "grounded", str(data), "-o", str(out), "-q"]).exit_code == 0
    kept = b"".join(out.read_bytes().splitlines(keepends=True)[:2])
    out.write_bytes(kept)
    use_scripted_reflector(monkeypatch, GOOD)
    result = runner.invoke(cli, ["reflect", "--policy", "m.gguf", str(data), "-o", str(out), "-q", "--resume"])
    assert result.exit_code == 2, result.output
    assert f'Error: --resume: {out} was begun with other settings (reflector: "grounded" there, "self" here)' in (
        result.output
    )
    assert out.read_bytes() == kept
    # a model's file whose first record is a grounded fallback
    first = orjson.loads(kept.splitlines()[0])
    first["meta"]["extra"] = orjson.dumps({**orjson.loads(first["meta"]["extra"]), "fallback_for": "self"}).decode()
    out.write_bytes(orjson.dumps(first) + b"\n" + kept.splitlines(keepends=True)[1])
    result = runner.invoke(cli, ["reflect", "--policy", "m.gguf", str(data), "-o", str(out), "-q", "--resume"])
    assert result.exit_code == 0, result.output
    assert [r["meta"]["reflector"] for r in _lines(out)] == ["grounded", "self", "self"]
