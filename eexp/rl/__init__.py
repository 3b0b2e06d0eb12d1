"""`eexp rl`: GRPO-style reinforcement learning from an eexp checkpoint, on one workstation (paper §5.3, Fig. 3).

A recipe next to the supervised one (eexp/training/), not a second framework: `RL` is the same trainer
(eexp.training.trainer.Trainer) with its own loop and objective, and reuses its model loading (full, LoRA,
continuing a LoRA adapter, a GGUF imported once), its checkpoints (weights as safetensors, optimizer/scheduler/RNG
state, written to a temporary name and renamed), `--resume`, metrics.jsonl, final save and `--export-gguf`. What
differs is where the examples come from:

    for step in 1..--max-steps:                     (one step = one rollout batch and its updates)
        tasks  = a seeded permutation of the split, --tasks-per-step of them (a pure function of seed and step)
        groups = --group-size episodes per task, sampled from the current weights by eval's own episode loop
                 (eexp.stages.evaluate.Evaluator) over the transformers policy on the in-memory model
        reward = the environment's success (1/0), score, or both summed, at the end of the episode
        A      = group-relative advantage: (r - mean of the group) / (std of the group), every step of the episode
        update = --ppo-epochs passes over the steps of groups whose rewards differ, in --minibatches seeded chunks,
                 each one optimizer update of a clipped policy-gradient loss (+ --kl-coef x KL to the start)

Episodes are seeded by (seed, step, task, k) through `derive_seed`, the generation calls fork torch's RNG with their
own seed, and the model stays in eval mode (no dropout: the old and new log-probabilities are computed by the same
deterministic function), so a run killed and `--resume`d from its last checkpoint gives the weights and metrics of
an uninterrupted run.

Where the time goes (bench/bench_rl.py): the episodes of a group start in the same state and often pass through
the same later ones (with `--history 0`, as the CPU recipes train, a state is its page), so the live policy scores a
state once per weights (`scores_for`, forgotten at each update) and tokenizes a prompt once; the update computes the
samples with the same inputs once (`same_inputs`: one forward and backward, each sample its own decision,
advantage and ratio), and packs the distinct ones into a few forward passes (`packed_logprobs`: each prompt once,
its candidate replies or sampled reply beside it under a 4D mask, at most PACK_TOKENS tokens a pass; part by part
with the prompt's KV cache where the model's attention takes no custom mask). The old log-probabilities of a single
on-policy update are the update's own (no extra pass), and the policy is built once over the weights being trained.

Before the first update the first rollout batch is the probe: when none of its sampled episodes succeeds, every
group has one reward, there is no signal to learn from, and the run stops with advice (start from an IL, IWM or SR
checkpoint; verl-agent issue #41) unless `--allow-zero-start`.

`--reward expert-step` (expert_step.py) replaces the episodes by the expert's states: each step takes
--tasks-per-step states of expert trajectories (the recorded state rendered with the start's serializer, as IL
renders it), samples --group-size actions at each, and rewards each by its match with the expert's action (exact
after canonicalize, or token F1); groups, advantages and the update are the ones above. It needs no success, so it
has no refusing probe: the way out of a 0% start, after which outcome RL continues from its checkpoint.

`--reward next-state` (next_state.py, RWML: arXiv 2602.05842) trains the world model the same way: each step takes
--tasks-per-step transitions of --outcomes (rollout's records: the expert's action and every executed alternative),
asks each as world-model-data renders its IWM example, generates --group-size predictions of the next observation,
and rewards each by its token F1 with the recorded one (world-model-eval's read_observation and token_f1); the
predictions' tokens are trained as `--act generate` trains a reply. RWML's combination with the task reward is in
sequence: outcome RL continues from its checkpoint.

What "the tokens the policy produced" and the PPO ratio mean in each action mode
--------------------------------------------------------------------------------
`--act generate` (open action spaces): the reply's sampled tokens. Per token t, logp_t = log softmax(logits / T) of
the sampled token, ratio_t = exp(logp_t(new) - logp_t(old)), the clipped surrogate is averaged over every trained
token of the minibatch (token-level mean), and the KL term is the k3 estimator exp(q - p) - (q - p) - 1 per token
(q: the reference model's log-prob). A reply that does not parse is still trained on (usually with a negative
advantage).

`--act score` (closed action spaces: the admissible actions are every valid action): the policy that acted is
pi(a|s) = softmax over the admissible a' of l(a')/T, where l(a) is the summed log-likelihood of the reply
`Action: a` (end of turn included) after the prompt: eval's `--act score` at temperature T. The tokens trained are
the chosen reply's, and its log-likelihood l(a) enters the loss, but the ratio is taken of the probability the
action was actually drawn with:

    ratio = pi_new(a|s) / pi_old(a|s) = exp((l_new(a) - l_old(a)) / T - (logZ_new - logZ_old)),
    logZ = logsumexp over the admissible a' of l(a')/T

not exp(l_new(a) - l_old(a)). The reply's raw likelihood ratio is not the probability of the decision: an update can
raise l of every candidate together (say, of the shared "Action: click[" prefix) and leave the choice unchanged, and
that ratio would still move and be clipped; or it can leave l(a) alone and lower every rival, changing the choice a
lot with a ratio of 1, unclipped. It is also not a valid importance weight for the later minibatches of a step,
which are off-policy. Normalizing over the admissible set makes the clip bound the change of the decision itself,
and the gradient is (grad l(a) - sum_a' pi(a') grad l(a')) / T: the chosen reply up, its rivals down in proportion
to how likely they were. The cost is a forward pass over every admissible reply at each trained state (the prompt
computed once and shared, as eval's scoring does), and the KL term is exact: KL(pi_new || pi_ref) over the set.

`--act think` (a model that reasons before it acts, as eval's think mode): the sampled thought tokens (those before
the reply's `Action:` line, or all of them when it never got there) are trained per token as in generate; then, in a
closed action space, the decision over the admissible replies after prompt + thought, as in score (its context is
the template's own tokenization of the thought, as the policy chose it); in an open one, every sampled token of the
reply and of the action generated after it. Every unit (thought token, decision) has its own ratio and enters the
token-level mean.

`--act constrained` is not offered: the exact probability of a trie-constrained sample needs each token's
renormalization over the allowed tokens; use score for closed action spaces.

One module per concept, as eexp/training/ is split:

    config.py      RLConfig (every option, its default and help: the trainer's, eexp.training.config.TrainerConfig,
                   and RL's own), the constants of the loss and the probe
    rollouts.py    the policy over the live weights (LivePolicy, on TransformersPolicy.from_model), the tasks of a
                   step, rewards and advantages; `Episodes`, the objective of outcome RL (GRPO over episodes)
    expert_step.py the expert states and the match reward of --reward expert-step; `ExpertStep`, its objective
    next_state.py  the transitions of outcome records and the F1 reward of --reward next-state; `NextState`, its
                   objective
    loss.py        log-probabilities of what the policy produced (packed or one part at a time), the clipped loss
    recipe.py      the recipe itself: RL.setup / train / save / resume / finish, on eexp.training.trainer.Trainer
                   (device, precision, model, optimizer, checkpoints, --resume, the final save) with an objective

Each name is imported from its module (`from eexp.rl.recipe import run_rl`): this file imports nothing, so `eexp rl
--help` and the other commands' start-up, which read config.py and so run this file first, import no torch.
"""
