# τ²-bench retail (the paper's tau-bench) at a reduced size for CPU: the official train split (74 conversations) as
# expert data, the official test split and airline's (ood) for eval, a model made from scratch, and a scripted
# customer as the user simulator. Open action space (tool calls or words to the customer): eval generates.
#   make -C recipes CONFIG=configs/tau2.mk compare
# The customer here is tests/openai_stub.py's scripted one (it states its reason for calling, then consents to
# everything), served on 127.0.0.1:$(USER_PORT) while make runs: it exercises the loop, it does not measure agents.
# A run that means something gives the user simulator a real instruct model, as τ²-bench does (gpt-4.1 there; a 7B+
# open model at least), on any OpenAI-compatible server (vLLM, SGLang, llama-server), and names it:
#   vllm serve Qwen/Qwen2.5-7B-Instruct --port 8000 &
#   make -C recipes CONFIG=configs/tau2.mk USER_URL=http://127.0.0.1:8000/v1 USER_MODEL=Qwen/Qwen2.5-7B-Instruct
# (SmolLM2-135M through llama-server, as configs/smollm2.mk gets it, runs here but is too weak a customer to mean
# much.) Every user reply is recorded under $EEXP_CACHE/tau2/users and replayed when branch and rollout return to an
# expert state; rollout elsewhere needs that folder too. Needs pip install 'eexp[tau2]'.
.DEFAULT_GOAL := compare
ENV        = tau2
OUT        = out/tau2
USER_PORT  = 8093
USER_URL   = http://127.0.0.1:$(USER_PORT)/v1
USER_MODEL = scripted-customer
# the domain's policy text (6.7 KB) is left out of the goal for a model this small; the tool list stays
ENV_ARGS   = --env-arg domain=retail --env-arg user=$(USER_URL) --env-arg user_model=$(USER_MODEL) \
             --env-arg policy=false
N_EXPERT   = 74
# every train task is an expert trajectory here, so none is left to hold out for validation (compare.mk's val.jsonl)
VAL_N     = 0
K_IWM      = 4
K_SR       = 2
STEPS      = 600
N_EVAL     = 20
ACT        = generate
EVAL_ARGS  = --max-steps 20
# the alternatives of IWM and SR are the IL model's own samples (as bfcl.mk); an invalid one is replaced from tau2's
# sample of plausible actions (lookups of the ids the conversation has shown, a question, done())
PROPOSER   = $(OUT)/IL

# The scripted customer: started before the first conversation (or found already answering), gone when make exits.
# A USER_URL of your own starts nothing.
.PHONY: tau2-user
tau2-user:
	$(if $(filter http://127.0.0.1:$(USER_PORT)/v1,$(USER_URL)),@mkdir -p $(OUT) && $(PYTHON) \
	  ../tests/openai_stub.py tau2-user --port $(USER_PORT) --parent $$PPID --log $(OUT)/tau2-user.log,@true)
$(OUT)/expert.jsonl $(OUT)/eval/random.jsonl: | tau2-user
