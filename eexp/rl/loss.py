"""The loss: log-probabilities of the units the policy produced (a score decision, generated tokens, a think
step's parts), packed into few forward passes where the model's attention takes a 4D mask, and PPO's clipped
surrogate. eexp/rl/__init__.py says what the ratio means in each action mode."""

from __future__ import annotations

import torch

from eexp.policies.hf import cache_argument


def candidate_logliks(model, ids: list[int], candidates: list[list[int]], device, pad_id: int):
    """l(a) for every candidate reply: the sum of log p(reply tokens | prompt), as a tensor that carries gradients
    when they are enabled. The prompt's KV is computed once and shared by the candidates (as eval's scoring does)."""
    prefix = torch.tensor([ids[:-1]], dtype=torch.long, device=device)
    name = cache_argument(model)  # `cache` in transformers 5.x, `past_key_values` before
    cache = getattr(model(input_ids=prefix, use_cache=True), name) if len(ids) > 1 else None
    if cache is not None:
        cache.batch_repeat_interleave(len(candidates))
    width = max(len(c) for c in candidates) + 1
    rows = [[ids[-1]] + c + [pad_id] * (width - 1 - len(c)) for c in candidates]
    mask = [[1] * (len(ids) - 1) + [1] * (len(c) + 1) + [0] * (width - 1 - len(c)) for c in candidates]
    logits = model(
        input_ids=torch.tensor(rows, device=device),
        attention_mask=torch.tensor(mask, device=device),
        **{name: cache},
        use_cache=cache is not None,
    ).logits.float()
    logp = torch.log_softmax(logits, dim=-1)
    out = []
    for i, cand in enumerate(candidates):
        positions = torch.arange(len(cand), device=device)
        out.append(logp[i, positions, torch.tensor(cand, device=device)].sum())
    return torch.stack(out)


def reply_logprobs(model, ids: list[int], reply: list[int], device, temperature: float):
    """log softmax(logits / T) of each sampled reply token after the prompt (per token, with gradients)."""
    row = torch.tensor([ids + reply], dtype=torch.long, device=device)
    logits = model(input_ids=row, use_cache=False).logits[0, len(ids) - 1 : len(ids) + len(reply) - 1].float()
    logp = torch.log_softmax(logits / max(temperature, 1e-6), dim=-1)
    return logp.gather(1, torch.tensor(reply, device=device)[:, None])[:, 0]


def sample_parts(sample: dict) -> list[dict]:
    """What one step produced, as parts the loss scores: a score decision, generated tokens, or for think the
    thought's tokens and then the decision (or the generated action)."""
    return sample["parts"] if sample["mode"] == "think" else [sample]


def part_logprobs(model, part: dict, device, pad_id: int, temperature: float) -> tuple:
    """(log-probabilities of the part's units, its distribution or None), one part at a time: the score part's
    decision (log pi(a|s), pi = softmax(l / T) over the admissible replies) and that distribution, or the generated
    tokens' log-probabilities."""
    if part["mode"] == "score":
        logits = candidate_logliks(model, part["ids"], part["candidates"], device, pad_id) / max(temperature, 1e-6)
        logpi = torch.log_softmax(logits, dim=-1)
        return logpi[part["chosen"]].reshape(1), logpi
    return reply_logprobs(model, part["ids"], part["reply"], device, temperature), None


def packable(model) -> bool:
    """Whether `packed_logprobs` can run the model: attention that takes a custom 4D mask (sdpa, eager)."""
    return getattr(getattr(model, "config", None), "_attn_implementation", None) in ("sdpa", "eager")


def packed_logprobs(model, parts: list[dict], device, temperature: float) -> list[tuple]:
    """What `part_logprobs` gives for each part, from one forward pass over all of them.

    Each part is one row: its prompt, then every continuation but its last token (a score part's candidate
    replies, a generated part's reply), each continuation seeing the prompt and itself only (a 4D mask) at the
    positions it has after the prompt. The first token of every continuation is predicted from the prompt's last
    position, as with the shared KV cache of `candidate_logliks`; the prompt is computed once per part. Rows are
    left-padded, so the logits kept (`logits_to_keep`) run from the last prompt token of the longest tail."""
    rows, tails = [], []
    for part in parts:
        ids = list(part["ids"])
        tokens, positions, segments, targets = list(ids), list(range(len(ids))), [0] * len(ids), []
        for k, cont in enumerate(part["candidates"] if part["mode"] == "score" else [part["reply"]], 1):
            first = len(tokens)
            tokens += cont[:-1]
            positions += range(len(ids), len(ids) + len(cont) - 1)
            segments += [k] * (len(cont) - 1)
            targets.append(([len(ids) - 1, *range(first, first + len(cont) - 1)], cont))
        rows.append((tokens, positions, segments, targets))
        tails.append(len(tokens) - len(ids) + 1)
    width, keep = max(len(r[0]) for r in rows), max(tails)
    pad = [width - len(r[0]) for r in rows]
    tokens = torch.tensor([[0] * n + r[0] for n, r in zip(pad, rows)], dtype=torch.long, device=device)
    positions = torch.tensor([[0] * n + list(r[1]) for n, r in zip(pad, rows)], dtype=torch.long, device=device)
    segments = torch.tensor([[-1] * n + r[2] for n, r in zip(pad, rows)], dtype=torch.long, device=device)
    index = torch.arange(width, device=device)
    real = segments >= 0
    allowed = (
        (index[None, None, :] <= index[None, :, None])
        & real[:, None, :]
        & real[:, :, None]
        & ((segments[:, None, :] == 0) | (segments[:, None, :] == segments[:, :, None]))
    )
    allowed |= torch.eye(width, dtype=torch.bool, device=device)  # a padding position sees itself (no empty row)
    mask = allowed[:, None]
    if model.config._attn_implementation == "eager":  # an additive mask
        dtype = next(model.parameters()).dtype
        mask = torch.zeros(mask.shape, dtype=dtype, device=device).masked_fill(~mask, torch.finfo(dtype).min)
    logits = model(
        input_ids=tokens, attention_mask=mask, position_ids=positions, use_cache=False, logits_to_keep=keep
    ).logits.float()
    out = []
    for b, (part, row) in enumerate(zip(parts, rows)):
        base = width - keep - pad[b]  # row position -> index into the kept logits
        score = part["mode"] == "score"
        logp = torch.log_softmax(logits[b] if score else logits[b] / max(temperature, 1e-6), dim=-1)
        per_cont = [
            logp[torch.tensor(at, device=device) - base, torch.tensor(cont, device=device)] for at, cont in row[3]
        ]
        if score:
            logpi = torch.log_softmax(torch.stack([t.sum() for t in per_cont]) / max(temperature, 1e-6), dim=-1)
            out.append((logpi[part["chosen"]].reshape(1), logpi))
        else:
            out.append((per_cont[0], None))
    return out


def batch_logprobs(model, samples: list[dict], device, pad_id: int, temperature: float) -> list[list[tuple]]:
    """For each sample, [(its part's unit log-probabilities, its distribution or None)] (see `part_logprobs`):
    one forward pass for all of them where the model can be packed, else one part at a time."""
    parts = [p for s in samples for p in sample_parts(s)]
    if packable(model):
        flat = packed_logprobs(model, parts, device, temperature)
    else:
        flat = [part_logprobs(model, p, device, pad_id, temperature) for p in parts]
    out, i = [], 0
    for s in samples:
        n = len(sample_parts(s))
        out.append(flat[i : i + n])
        i += n
    return out


def action_logprobs(model, sample: dict, device, pad_id: int, temperature: float):
    """(log-probabilities of every unit the step produced, [(its part's log-probabilities, its distribution or
    None)]).

    A score part is one unit, log pi(a|s) with pi = softmax(l / T) over the admissible replies, and carries that
    distribution's log-probabilities (for the exact KL); a generated part is one unit per reply token."""
    out = batch_logprobs(model, [sample], device, pad_id, temperature)[0]
    return torch.cat([logp for logp, _ in out]), out


def pack_tokens(sample: dict) -> int:
    """The length of a sample's longest packed row (`packed_logprobs`)."""
    return max(
        len(p["ids"]) + sum(len(c) - 1 for c in (p["candidates"] if p["mode"] == "score" else [p["reply"]]))
        for p in sample_parts(sample)
    )


def pack_chunks(groups: list[tuple[dict, list[dict]]], budget: int) -> list[list[tuple[dict, list[dict]]]]:
    """Consecutive groups of `same_inputs` in chunks whose packed pass holds at most `budget` tokens (rows x the
    longest row; a group alone may exceed it)."""
    chunks, rows, longest = [], 0, 0
    for g in groups:
        n, width = len(sample_parts(g[0])), pack_tokens(g[0])
        if chunks and chunks[-1] and (rows + n) * max(longest, width) > budget:
            chunks.append([])
            rows, longest = 0, 0
        if not chunks:
            chunks.append([])
        chunks[-1].append(g)
        rows, longest = rows + n, max(longest, width)
    return chunks


def sample_key(sample: dict) -> tuple:
    """What a step's log-probabilities are computed from (prompt ids, candidate replies or sampled tokens, per part),
    without the decision taken: samples with one key share one forward pass."""
    return tuple(
        (p["mode"], tuple(p["ids"]), tuple(map(tuple, p["candidates"])) if p["mode"] == "score" else tuple(p["reply"]))
        for p in sample_parts(sample)
    )


def same_inputs(samples: list[dict]) -> list[tuple[dict, list[dict]]]:
    """The samples grouped by `sample_key`, in order of first appearance: [(the first of a group, its members)]."""
    groups: dict[tuple, list[dict]] = {}
    for s in samples:
        groups.setdefault(sample_key(s), []).append(s)
    return [(members[0], members) for members in groups.values()]


def chosen_units(parts: list[tuple], sample: dict):
    """A sample's unit log-probabilities from the `parts` of `action_logprobs` over its inputs (perhaps computed for
    another sample with the same inputs): its own decision's log pi for a score part, the tokens for a generated
    one."""
    return torch.cat(
        [
            dist[part["chosen"]].reshape(1) if part["mode"] == "score" else logp
            for part, (logp, dist) in zip(sample_parts(sample), parts)
        ]
    )


def unit_count(sample: dict) -> int:
    return sum(1 if p["mode"] == "score" else len(p["reply"]) for p in sample_parts(sample))


def clipped_surrogate(logp_new, logp_old, advantage: float, clip: float):
    """PPO's clipped objective as a loss (per unit: action or token), and which units were clipped."""
    ratio = torch.exp(logp_new - logp_old)
    unclipped = ratio * advantage
    clipped = torch.clamp(ratio, 1 - clip, 1 + clip) * advantage
    loss = -torch.minimum(unclipped, clipped)
    return loss, (clipped < unclipped).float() if advantage else torch.zeros_like(loss)
