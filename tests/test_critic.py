"""The critic: critic-data's examples, the Critic's scores (P(Yes) from the verdicts' log-likelihoods, checked by hand),
a tiny model trained by `eexp finetune` on critic-data that ranks the expert's action first more often than chance,
critic-eval and its accuracies."""

from __future__ import annotations

import copy
import json
import math

import orjson
import pytest
from by_hand import OUTCOMES, TRAJ, answer_logp, lines, outcomes, untimed, write

from eexp.cli import cli
from eexp.prompts import CRITIC_SYSTEM, Serializer
from eexp.records import EXAMPLE_META
from eexp.stages.critic import critic_accuracy

# --- critic-data ----------------------------------------------------------------------------------------------


def test_an_example_per_candidate_with_the_imitation_state(runner, tmp_path):
    stats = tmp_path / "s.json"
    result = runner.invoke(cli, ["critic-data", OUTCOMES, "--stats", str(stats)])
    assert result.exit_code == 0, result.output
    examples = lines(result.stdout)
    # step 0: the expert and 2 alternatives; step 1: the expert and the 2 executed alternatives (the third failed)
    assert [e["id"] for e in examples] == [
        "critic:shop:train-00001#0:expert",
        "critic:shop:train-00001#0:0",
        "critic:shop:train-00001#0:1",
        "critic:shop:train-00001#1:expert",
        "critic:shop:train-00001#1:0",
        "critic:shop:train-00001#1:1",
    ]
    assert all(e["source_id"] == e["id"].rsplit(":", 1)[0][len("critic:") :] for e in examples)
    # the user turn is the imitation prompt's state, then the proposed action; the answer one word
    il = {e["id"]: e for e in lines(runner.invoke(cli, ["imitation-data", TRAJ]).stdout)}
    for e in examples:
        state = il[f"il:shop:train-00001#{e['meta']['step']}"]["messages"][1]["content"]
        assert e["messages"][0] == {"role": "system", "content": CRITIC_SYSTEM}
        assert e["messages"][1] == {"role": "user", "content": f"{state}\n\nProposed action: {e['meta']['action']}"}
        assert list(e["meta"]) == list(EXAMPLE_META) and e["meta"]["kind"] == "critic"
    # balanced: the expert's Yes weighs as much as its state's Nos together
    assert [e["messages"][2] for e in examples[:3]] == [
        {"role": "assistant", "content": "Yes", "weight": 2},
        {"role": "assistant", "content": "No"},
        {"role": "assistant", "content": "No"},
    ]
    invalid = examples[5]
    assert (invalid["meta"]["action"], invalid["meta"]["action_source"], invalid["meta"]["seed"]) == (
        "click[green t-shirt]",
        "policy",
        99,
    )
    assert json.loads(invalid["meta"]["extra"]) == {
        "verdict": "No",
        "alternative": 1,
        "reason": "invalid",
        "rejected_filter": "all",
        "balance": True,
        "weight": 1,
    }
    assert json.loads(examples[3]["meta"]["extra"])["alternative"] == -1
    assert examples[3]["meta"]["action"] == "click[red cotton t-shirt]" and examples[3]["meta"]["seed"] == 0
    counts = orjson.loads(stats.read_bytes())
    assert (counts["records_out"], counts["states"], counts["yes"], counts["no"], counts["not_executed"]) == (
        6,
        2,
        2,
        4,
        1,
    )
    path = tmp_path / "critic.jsonl"
    path.write_text(result.stdout)
    checked = runner.invoke(cli, ["validate", "--kind", "example", str(path)])
    assert checked.exit_code == 0 and "6 example" in checked.stdout
    # the same input gives the same records
    assert untimed(lines(runner.invoke(cli, ["critic-data", OUTCOMES]).stdout)) == untimed(examples)


def test_rejected_and_no_balance(runner, tmp_path):
    stats = tmp_path / "s.json"
    result = runner.invoke(
        cli, ["critic-data", OUTCOMES, "--rejected", "invalid", "--no-balance", "--stats", str(stats)]
    )
    assert result.exit_code == 0, result.output
    examples = lines(result.stdout)
    # only step 1 has an invalid alternative; step 0's valid ones leave it without a No, so without examples
    assert [e["id"] for e in examples] == ["critic:shop:train-00001#1:expert", "critic:shop:train-00001#1:1"]
    assert [e["messages"][2] for e in examples] == [
        {"role": "assistant", "content": "Yes"},
        {"role": "assistant", "content": "No"},
    ]
    counts = orjson.loads(stats.read_bytes())
    assert counts["states_without_alternatives"] == 1 and counts["not_rejected"] == 3
    none = runner.invoke(cli, ["critic-data", write(tmp_path / "o.jsonl", [outcomes()[0]]), "--rejected", "invalid"])
    assert none.exit_code == 0 and none.stdout == ""
    assert (
        "no critic examples: none of the 1 states has an executed alternative that --rejected invalid takes"
        in none.stderr
    )


def test_bad_input_names_file_and_line(runner, tmp_path):
    branch = copy.deepcopy(outcomes()[1])  # a branch record that was never rolled out
    del branch["expert"]["next_observation"]
    branch["meta"] = {"stage": "branch"}
    for a in branch["alternatives"]:
        for key in ("next_observation", "reward", "done", "valid", "error"):
            a.pop(key, None)
    path = write(tmp_path / "in.jsonl", [outcomes()[0], branch])
    result = runner.invoke(cli, ["critic-data", path])
    assert result.exit_code == 1
    assert f"{path}:2: expected an outcome record, got a branch record" in result.stderr
    assert len(lines(result.stdout)) == 3  # the first state's examples were written
    evaluated = runner.invoke(cli, ["critic-eval", "--critic", "random", path])
    assert evaluated.exit_code == 1 and "random: a critic must be a local model" in evaluated.stderr


def test_a_bad_critic_arg_is_named_as_given(runner, tiny_checkpoint, tmp_path):
    """--critic-arg bogus=1 was said to be a bad --policy-arg, an option critic-eval does not have."""
    path = write(tmp_path / "in.jsonl", outcomes()[:1])
    result = runner.invoke(cli, ["critic-eval", "--critic", str(tiny_checkpoint), "--critic-arg", "bogus=1", path])
    assert result.exit_code == 1
    assert result.stderr.startswith("Error: --critic-arg 'bogus' is not an option of the transformers backend")


def test_accuracies_worked_by_hand():
    scored = [
        (0.9, [0.2, 0.4]),  # expert first; both pairs right; all three right at 0.5
        (0.3, [0.6, 0.3]),  # expert below one and tied with the other: a miss; pairs 0 + 1/2
        (0.5, []),  # no alternative: not counted
        (0.7, [0.1]),
    ]  # expert first
    summary = critic_accuracy(scored)
    assert (summary["states"], summary["examples"]) == (3, 8)
    assert summary["top1"] == round(2 / 3, 4) and summary["chance_top1"] == round((1 / 3 + 1 / 3 + 1 / 2) / 3, 4)
    assert summary["pair_accuracy"] == round(3.5 / 5, 4)
    # at 0.5: experts 0.9, 0.7 right, 0.3 wrong; alternatives 0.2, 0.4, 0.3, 0.1 right, 0.6 wrong
    assert (summary["expert_accuracy"], summary["alternative_accuracy"], summary["accuracy"]) == (
        round(2 / 3, 4),
        0.8,
        0.75,
    )
    assert summary["balanced_accuracy"] == round((round(2 / 3, 4) + 0.8) / 2, 4)
    assert critic_accuracy([])["top1"] is None


# --- the Critic -----------------------------------------------------------------------------------------------


def verdict_logp(model, tok, messages: list[dict], answer: str) -> float:
    """By hand, not with eexp's code: log p(answer turn | prompt)."""
    return answer_logp(model, tok, messages, [{"role": "assistant", "content": answer}])


@pytest.mark.usefixtures("one_torch_thread")
def test_scores_are_the_verdicts_softmax_and_choose_takes_the_best(tiny_checkpoint):
    transformers = pytest.importorskip("transformers")
    from eexp.policies.critic import Critic

    critic = Critic(str(tiny_checkpoint))
    state = outcomes()[1]["state"]
    candidates = ["click[red cotton t-shirt]", "click[red silk t-shirt]", "click[next >]", "click[red silk t-shirt]"]
    scores = critic.score(state, candidates)
    model = transformers.AutoModelForCausalLM.from_pretrained(tiny_checkpoint).eval()
    tok = transformers.AutoTokenizer.from_pretrained(tiny_checkpoint)
    for action, score in zip(candidates, scores):
        messages = Serializer().critic_messages(state, action)
        yes, no = (verdict_logp(model, tok, messages, v) for v in ("Yes", "No"))
        assert score == pytest.approx(math.exp(yes) / (math.exp(yes) + math.exp(no)), abs=1e-5)
        p_yes, p_no = critic.verdicts(state, action)
        assert p_yes == pytest.approx(score) and p_yes + p_no == pytest.approx(1.0) and 0 < p_yes < 1
    assert scores[1] == scores[3]  # a candidate given twice is scored once
    best, again = critic.choose(state, candidates)
    assert again == scores and best == candidates[max(range(4), key=lambda i: (scores[i], -i))]
    assert critic.choose(state, ["click[next >]", "click[next >]"])[0] == "click[next >]"
    with pytest.raises(ValueError, match="no candidates"):
        critic.choose(state, [])
    critic.close()


@pytest.mark.usefixtures("one_torch_thread")
def test_a_critic_given_to_eval_as_an_object_reranks(tiny_checkpoint):
    # a library caller hands eval a Critic it loaded itself: it carries the lock eval's threads share it by
    from eexp.envs.base import make_env
    from eexp.policies.baselines import RandomPolicy
    from eexp.policies.critic import Critic
    from eexp.stages.evaluate.episode import Evaluator
    from eexp.stages.evaluate.settings import EvalSettings

    env = make_env("shop")
    settings = EvalSettings(
        env_name="shop", policy_spec="random", critic=str(tiny_checkpoint), critic_k=3, temperature=1.0, max_steps=3
    )
    evaluator = Evaluator(settings, env=env, policy=RandomPolicy(), critic=Critic(str(tiny_checkpoint)))
    episode, _ = evaluator.run(env.tasks("test")[0], "ep")
    judged = [step for step in episode["meta"]["critic_steps"] if step["scores"]]
    assert judged and all(len(step["scores"]) == len(step["candidates"]) >= 2 for step in judged)


@pytest.mark.usefixtures("one_torch_thread")
def test_critic_eval_names_a_bad_line_and_skips_it_on_request(tiny_checkpoint, runner, tmp_path):
    branch = copy.deepcopy(outcomes()[1])
    del branch["expert"]["next_observation"]
    branch["meta"] = {"stage": "branch"}
    path = write(tmp_path / "in.jsonl", [outcomes()[0], branch])
    result = runner.invoke(cli, ["critic-eval", "--critic", str(tiny_checkpoint), path])
    assert result.exit_code == 1 and f"{path}:2: expected an outcome record, got a branch record" in result.stderr
    skipped = runner.invoke(cli, ["critic-eval", "--critic", str(tiny_checkpoint), path, "--on-error", "skip"])
    assert skipped.exit_code == 0, skipped.output
    summary = json.loads(skipped.stdout)
    assert (summary["states"], summary["examples"], summary["counts"]["skipped"]) == (1, 3, 1)


# --- a critic trained with eexp finetune ----------------------------------------------------------------------

SHORT = ["--history", "0", "--no-admissible", "--max-observation-chars", "120"]


@pytest.fixture(scope="module")
def trained(tiny_checkpoint, tmp_path_factory):
    """A small shop rollout (8 expert trajectories, 2 admissible alternatives per state: 37 states), its critic-data
    with short states (no history, no admissible list, 120 characters of observation: a 0.1M-parameter model learns
    from the action in a few seconds where it does not from whole states), and the session's tiny init-model
    checkpoint fine-tuned on it for 120 updates of 16 examples (17 epochs)."""
    from click.testing import CliRunner

    d = tmp_path_factory.mktemp("critic")
    runner = CliRunner()
    for args in (
        ["expert", "--env", "shop", "-n", "8", "-o", str(d / "expert.jsonl")],
        ["branch", "-k", "2", str(d / "expert.jsonl"), "-o", str(d / "branches.jsonl")],
        ["rollout", str(d / "branches.jsonl"), "-o", str(d / "outcomes.jsonl")],
        ["critic-data", str(d / "outcomes.jsonl"), "-o", str(d / "critic.jsonl"), *SHORT],
        [
            "finetune",
            str(d / "critic.jsonl"),
            "--model",
            str(tiny_checkpoint),
            "-o",
            str(d / "critic"),
            "--max-steps",
            "120",
            "--batch-size",
            "16",
            "--lr",
            "3e-3",
            "--seed",
            "0",
            "-q",
        ],
    ):
        result = runner.invoke(cli, [*args, "-q"] if args[0] != "finetune" else args)
        assert result.exit_code == 0, result.output
    return d


@pytest.mark.usefixtures("one_torch_thread")
def test_a_trained_critic_ranks_the_expert_first_more_often_than_chance(trained, runner):
    from eexp.io import read_records
    from eexp.policies.critic import Critic
    from eexp.stages.critic import score_states

    critic = Critic(str(trained / "critic"))
    # it renders states as it was trained on them: the serializer settings finetune wrote into its card
    assert critic.serializer == Serializer(history=0, show_admissible=False, max_observation_chars=120)
    summary = critic_accuracy(score_states(critic, read_records([str(trained / "outcomes.jsonl")])))
    critic.close()
    assert summary["states"] == 37 and summary["chance_top1"] == pytest.approx(1 / 3, abs=1e-3)
    # measured: top1 0.68, pairs 0.78, mean scores 0.59 against 0.42 (the untrained model: 0.19, 0.42, 0.52 and 0.52)
    assert summary["top1"] > summary["chance_top1"] + 0.15
    assert summary["pair_accuracy"] > 0.65
    assert summary["mean_expert_score"] > summary["mean_alternative_score"] + 0.05
    # critic-eval prints the same numbers
    result = runner.invoke(cli, ["critic-eval", "--critic", str(trained / "critic"), str(trained / "outcomes.jsonl")])
    assert result.exit_code == 0, result.output
    printed = json.loads(result.stdout)
    assert {k: printed[k] for k in summary} == summary
    assert printed["counts"]["records_in"] == 37 and printed["rejected_filter"] == "all"
    assert f"on 37 states: expert scored first at {summary['top1']:.1%}" in result.stderr


@pytest.mark.usefixtures("one_torch_thread")
def test_the_critic_exported_to_gguf_scores_as_its_checkpoint(trained, runner):
    """What eval loads on CPU: `eexp export` of the critic (f32, so the weights are the same), read by llama.cpp with
    the serializer settings the GGUF's card carries."""
    pytest.importorskip("llama_cpp")
    from eexp.io import read_records
    from eexp.policies.critic import Critic

    gguf = trained / "critic.gguf"
    result = runner.invoke(cli, ["export", str(trained / "critic"), "-o", str(gguf), "--quant", "f32"])
    assert result.exit_code == 0, result.output
    checkpoint, exported = Critic(str(trained / "critic")), Critic(str(gguf))
    assert exported.serializer == checkpoint.serializer and exported.describe()["backend"] == "llama.cpp"
    for outcome in list(read_records([str(trained / "outcomes.jsonl")]))[:6]:
        actions = [outcome["expert"]["action"]] + [a["action"] for a in outcome["alternatives"]]
        # the same weights through other kernels: measured within 1.4e-4
        assert exported.score(outcome["state"], actions) == pytest.approx(
            checkpoint.score(outcome["state"], actions), abs=1e-3
        )
    checkpoint.close()
    exported.close()
