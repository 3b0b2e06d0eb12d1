"""IWM's model at the end of its world-model phase, as a LoRA adapter `eexp export` can merge (issue 53).

    python phase_adapter.py IWM_CHECKPOINT_STEP_DIR FINISHED_IWM_RUN OUT_DIR

A finished `eexp finetune --warmup-data` run keeps only its final weights; its resumable checkpoint at the last
update of the world-model phase (`--save-every` set to that phase's length, copied out before the run finished and
removed its checkpoints/) holds the adapter as it was then. This writes that adapter beside the finished run's
adapter config, tokenizer and card, the card saying it stops after the warm-up phase. Not part of eexp: a
measurement's helper, kept with the measurement.
"""

import json
import os
import shutil
import sys

import yaml
from safetensors.torch import load_file, save_file

if len(sys.argv) != 4:
    sys.exit(__doc__.strip().splitlines()[2].strip())
step_dir, run, out = sys.argv[1:4]
for need in (
    os.path.join(step_dir, "state.json"),
    os.path.join(step_dir, "weights.safetensors"),
    os.path.join(run, "adapter_model.safetensors"),
    os.path.join(run, "card.yaml"),
):
    if not os.path.isfile(need):
        sys.exit(f"{need}: no such file (STEP_DIR is a checkpoints/step-N folder, RUN a finished LoRA run)")
state = json.load(open(os.path.join(step_dir, "state.json")))
weights = load_file(os.path.join(step_dir, "weights.safetensors"))
# the trainer saves the live module names (`...q_proj.lora_A.default.weight`); PEFT's files drop the adapter's name
adapter = {k.replace(".default.", "."): v for k, v in weights.items()}
final = load_file(os.path.join(run, "adapter_model.safetensors"))
if set(adapter) != set(final):
    sys.exit(
        f"{step_dir}: its tensors are not those of {run}'s adapter ({len(set(adapter) ^ set(final))} names differ)"
    )
os.makedirs(out, exist_ok=True)
for name in os.listdir(run):
    if name.startswith(("tokenizer", "special_tokens", "chat_template")) or name == "adapter_config.json":
        shutil.copy(os.path.join(run, name), out)
save_file(adapter, os.path.join(out, "adapter_model.safetensors"))
card = yaml.safe_load(open(os.path.join(run, "card.yaml")))
card["phases"] = [p for p in card["phases"] if p["name"] == "warmup"]
card["updates"] = state["global_step"]
card["best_step"] = card["best_val_loss"] = None
yaml.safe_dump(card, open(os.path.join(out, "card.yaml"), "w"), sort_keys=False, allow_unicode=True)
print(f"{out}: adapter at update {state['global_step']} ({state['phase']}), {len(adapter)} tensors")
