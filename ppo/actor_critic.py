"""The modules PPO trains: the actor (a LoRA policy, optionally with a value head) and the critic.

Memory plan (the reason rankloop fits PPO on a laptop):
* The policy is a peft LoRA adapter on frozen base weights; the reference policy is the same
  module with the adapter disabled (`with lm.disable_adapter():`), so no second copy is held.
* With bf16 on, the frozen base weights are stored in bfloat16 and only the adapters and heads
  stay fp32 (peft keeps adapter weights fp32): half the memory, and the CPU's bf16 units run the
  matmuls without re-casting the weights at every forward.
* The default critic is a separate LoRA value model initialised from the reward model (PPO-max):
  the reward model's score head applied at every token gives the initial values.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

from rankloop.lm.blocks import (
    CheckpointBlocks,
    SkipLowerBlocks,
    decoder_layers,
    first_adapted_block,
)
from rankloop.lm.kernels import use_training_attention
from rankloop.lm.loading import ModelLoadError, adapter_base, quiet_loading, resolve
from rankloop.lm.prefix import SharedPrefixCache, runs_share_prompt


def position_ids_for(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids that skip left padding, as `generate` numbers them. (B, L) -> (B, L)."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def decoder_backbone(model: nn.Module) -> nn.Module:
    """The transformer body of a causal LM (no LM head): where LoRA goes."""
    return model.get_decoder() if hasattr(model, "get_decoder") else model


def lora_config(
    r: int,
    alpha: int,
    dropout: float,
    task_type: str | None = "CAUSAL_LM",
    top_layers: int = 0,
    backbone: nn.Module | None = None,
):
    """LoRA on all linear layers of the backbone (never the LM head): more capacity per rank
    than q/v only. `top_layers` > 0 puts adapters only on the last `top_layers` of `n_layers`
    blocks: the backward pass then stops there instead of running through the whole model."""
    from peft import LoraConfig

    n_layers = backbone.config.num_hidden_layers if backbone is not None else 0
    if not 0 < top_layers < n_layers:
        return LoraConfig(
            r=r,
            lora_alpha=alpha,
            lora_dropout=dropout,
            target_modules="all-linear",
            task_type=task_type,
        )
    # peft takes a layer range only with explicit module names: the backbone's linear layers
    names = sorted(
        {n.rsplit(".", 1)[-1] for n, m in backbone.named_modules() if isinstance(m, nn.Linear)}
    )
    return LoraConfig(
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=names,
        task_type=task_type,
        layers_pattern="layers",
        layers_to_transform=list(range(n_layers - top_layers, n_layers)),
    )


def load_policy(
    path: str, *, r: int, alpha: int, dropout: float, dtype: torch.dtype, top_layers: int = 0
):
    """The policy as a trainable peft model.

    A plain checkpoint gets a fresh LoRA adapter. An adapter folder (a previous round's policy)
    is loaded onto its base and trained further, so the reference (adapter disabled) stays the
    original base policy in every round, as InstructGPT keeps the SFT model as reference.
    """
    from peft import PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM

    base_path = adapter_base(path)
    try:
        base = AutoModelForCausalLM.from_pretrained(resolve(base_path or path), dtype=dtype)
    except Exception as e:
        raise ModelLoadError(
            f"cannot load policy '{path}': {type(e).__name__}: {str(e).splitlines()[0]}"
        ) from e
    base.config.use_cache = True
    use_training_attention(base)
    contiguous_lm_head_input(base)
    with quiet_loading():
        if base_path:
            lm = PeftModel.from_pretrained(base, path, is_trainable=True)
        else:
            lm = get_peft_model(
                base,
                lora_config(r, alpha, dropout, "CAUSAL_LM", top_layers, decoder_backbone(base)),
            )
    lm.base_model_name = resolve(base_path or path)  # written into the saved adapter_config
    return lm.eval()  # no dropout anywhere: rollout and update log-probs must agree


class Actor(nn.Module):
    """The LoRA policy, plus a value head on its last hidden state when critic = 'policy'.
    `checkpoint` True: a forward with gradients recomputes the adapted blocks' activations in
    the backward (`[ppo] gradient_checkpointing`)."""

    checkpoint = False

    def __init__(self, lm, value_head: bool):
        super().__init__()
        self.lm = lm
        hidden = lm.get_base_model().config.hidden_size
        self.value_head = nn.Linear(hidden, 1) if value_head else None
        if self.value_head is not None:
            nn.init.zeros_(self.value_head.weight)  # start at V = 0, not at noise
            nn.init.zeros_(self.value_head.bias)

    def forward(
        self,
        input_ids,
        attention_mask,
        n_last: int | None = None,
        lower: torch.Tensor | None = None,
        keep_lower: bool = False,
        runs: int = 1,
    ):
        """Logits (B, n, V) and values (B, n) or None for the last `n_last` positions.

        `keep_lower`: also return the output of the frozen, adapter-free lower blocks (when
        LoRA sits on the top blocks only); `lower`: start from that output (see `Critic`).
        `runs` > 1: the rows come in runs of `runs` with the same prompt (the tokens before
        the last `n_last` - 1): each prompt runs once (`lm.prefix`), the same numbers up to
        the rounding of differently shaped matmuls. Without a value head only; rows laid out
        otherwise take the whole-row forward.
        """
        T = (n_last or 0) - 1
        Q = input_ids.shape[1] - T
        if (
            runs > 1
            and T > 0
            and self.value_head is None
            and runs_share_prompt(input_ids, attention_mask, Q, runs)
        ):
            return self._shared_prompt_forward(
                input_ids, attention_mask, Q, runs, lower, keep_lower
            )
        out, kept = self._run(
            lower,
            keep_lower,
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids_for(attention_mask),
            use_cache=False,
            logits_to_keep=n_last or 0,
            output_hidden_states=self.value_head is not None,
        )
        values = None
        if self.value_head is not None:
            h = out.hidden_states[-1]  # (B, L, H)
            if n_last:
                h = h[:, -n_last:]
            values = self.value_head(h.float()).squeeze(-1)  # (B, n)
        if keep_lower:
            return out.logits, values, kept
        return out.logits, values

    def _run(self, lower, keep_lower: bool, **inputs):
        """One call of the language model with the lower blocks skipped or recorded and the
        adapted ones checkpointed as configured: (its output, the recorded lower output)."""
        layers = decoder_layers(self.lm)
        split = first_adapted_block(layers)
        with (
            SkipLowerBlocks(layers, split, lower, keep_lower) as skip,
            CheckpointBlocks(layers, split, self.checkpoint),
        ):
            out = self.lm(**inputs)
        return out, skip.kept

    def _shared_prompt_forward(self, input_ids, attention_mask, Q: int, r: int, lower, keep):
        """`forward` for rows in runs of r sharing their first Q tokens: the P = B / r
        prompts, then the B responses on their prompt's keys and values. The lower blocks'
        output, kept or given, has the whole rows' layout (B, L, H)."""
        cache = SharedPrefixCache()
        prompt_mask = attention_mask[::r, :Q]  # (P, Q)
        prompt_lower = lower[::r, :Q] if lower is not None else None
        out, kept_prompt = self._run(
            prompt_lower,
            keep,
            input_ids=input_ids[::r, :Q],
            attention_mask=prompt_mask,
            position_ids=position_ids_for(prompt_mask),
            cache=cache,
            use_cache=True,
            logits_to_keep=1,
        )
        first = out.logits.repeat_interleave(r, 0)  # (B, 1, V) predicts the first response token
        cache.extend(Q, r)
        out, kept_response = self._run(
            lower[:, Q:] if lower is not None else None,
            keep,
            input_ids=input_ids[:, Q:],
            attention_mask=attention_mask,
            position_ids=position_ids_for(attention_mask)[:, Q:],
            cache=cache,
            use_cache=True,
            logits_to_keep=input_ids.shape[1] - Q,
        )
        logits = torch.cat([first, out.logits], 1)  # (B, T + 1, V)
        if not keep:
            return logits, None
        kept = None
        if kept_prompt is not None:
            kept = torch.cat([kept_prompt.repeat_interleave(r, 0), kept_response], 1)
        return logits, None, kept


class Critic(nn.Module):
    """A value model: a LoRA backbone and a linear head applied at every position.

    With LoRA on the top blocks only (`critic_lora_layers`), the blocks below are frozen and
    adapter-free, so their output for a rollout batch never changes during the PPO epochs:
    `forward(..., keep_lower=True)` returns it once, and `forward(..., lower=...)` runs only
    the top blocks on it. The update then costs a few blocks instead of the whole model.
    `checkpoint`: as `Actor`'s.
    """

    checkpoint = False

    def __init__(self, backbone, head: nn.Linear, origin: str):
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.origin = origin  # 'reward model' or 'policy backbone (fresh head)'

    def forward(
        self,
        input_ids,
        attention_mask,
        n_last: int,
        lower: torch.Tensor | None = None,
        keep_lower: bool = False,
    ):
        """Values (B, n_last); with `keep_lower`, also the input of the first adapted block."""
        layers = decoder_layers(self.backbone)
        split = first_adapted_block(layers)
        with (
            SkipLowerBlocks(layers, split, lower, keep_lower) as skip,
            CheckpointBlocks(layers, split, self.checkpoint),
        ):
            out = self.backbone(
                input_ids=input_ids,
                attention_mask=attention_mask,
                position_ids=position_ids_for(attention_mask),
                use_cache=False,
            )
        h = out.last_hidden_state[:, -n_last:]  # (B, n, H)
        values = self.head(h.float()).squeeze(-1)  # (B, n)
        if keep_lower:
            return values, skip.kept
        return values


class ActorCritic(nn.Module):
    """The policy and its critic (None: the value head on the policy) as one module.

    accelerate prepares one model per `prepare` under DeepSpeed and FSDP2, and DeepSpeed
    backpropagates through one engine, so PPO hands it this module and one optimizer.
    """

    def __init__(self, actor: Actor, critic: Critic | None):
        super().__init__()
        self.actor = actor
        self.critic = critic

    def forward(
        self,
        input_ids,
        attention_mask,
        n_last: int | None = None,
        *,
        policy: bool = True,
        value: bool = True,
        policy_lower=None,
        critic_lower=None,
        runs: int = 1,
    ):
        """(logits or None, values or None) of the last `n_last` positions; `policy` / `value`
        say which of the two forwards to run (the value head on the policy comes with its
        logits); `runs`: as `Actor`'s."""
        logits = values = None
        if policy or (value and self.critic is None):
            logits, values = self.actor(
                input_ids, attention_mask, n_last=n_last, lower=policy_lower, runs=runs
            )
        if value and self.critic is not None:
            values = self.critic(input_ids, attention_mask, n_last=n_last, lower=critic_lower)
        return logits, values


def same_tokenizer(a, b) -> bool:
    return a.get_vocab() == b.get_vocab() and a.eos_token_id == b.eos_token_id


def build_critic(
    *,
    reward_model: str | None,
    policy_path: str,
    policy_tokenizer,
    r: int,
    alpha: int,
    dropout: float,
    dtype: torch.dtype,
    top_layers: int = 0,
) -> Critic:
    """Critic initialised from the reward model (PPO-max) when it shares the policy's tokenizer;
    otherwise from the policy's backbone with a fresh, zero head (the reason is in `.origin`).
    `top_layers` > 0: LoRA only on the critic's last `top_layers` blocks."""
    from peft import get_peft_model
    from transformers import AutoModel, AutoModelForSequenceClassification, AutoTokenizer

    reason = "no reward model (a Python reward function)"
    if reward_model:
        rm_tok = AutoTokenizer.from_pretrained(reward_model)
        if same_tokenizer(rm_tok, policy_tokenizer):
            rm = AutoModelForSequenceClassification.from_pretrained(reward_model, dtype=dtype)
            backbone = getattr(rm, rm.base_model_prefix)
            use_training_attention(backbone)
            old_head = getattr(rm, "score", None) or getattr(rm, "classifier", None)
            if not isinstance(old_head, nn.Linear) or old_head.out_features != 1:
                raise ModelLoadError(
                    f"reward model {reward_model}: expected a linear score head "
                    f"with one output to initialise the critic"
                )
            head = nn.Linear(old_head.in_features, 1, bias=old_head.bias is not None)
            head.load_state_dict({k: v.float() for k, v in old_head.state_dict().items()})
            if head.bias is None:  # the critic needs a bias to learn the value's offset
                head = _with_bias(head)
            with quiet_loading():
                lora = get_peft_model(
                    backbone,
                    lora_config(r, alpha, dropout, "FEATURE_EXTRACTION", top_layers, backbone),
                )
            critic = Critic(lora.eval(), head, "reward model")
            # the reward model itself, sharing the critic's frozen weights (its LoRA layers are
            # injected into them): scoring runs it with the adapter disabled, no second copy
            critic.__dict__["reward_model"] = rm.eval()  # not a submodule: not trained/saved
            critic.reward_model_path = reward_model
            return critic
        reason = "the reward model's tokenizer differs from the policy's"
    base = adapter_base(policy_path) or policy_path
    with quiet_loading():  # the causal LM's lm_head is left out on purpose
        backbone = AutoModel.from_pretrained(resolve(base), dtype=dtype)
    use_training_attention(backbone)
    head = nn.Linear(backbone.config.hidden_size, 1)
    nn.init.zeros_(head.weight)
    nn.init.zeros_(head.bias)
    with quiet_loading():
        lora = get_peft_model(
            backbone, lora_config(r, alpha, dropout, "FEATURE_EXTRACTION", top_layers, backbone)
        )
    return Critic(lora.eval(), head, f"policy backbone with a fresh head ({reason})")


@contextmanager
def merged_adapter(lm):
    """Sample with the active LoRA adapter merged into the base weights, then restore them
    bit for bit.

    Unmerged, every adapted layer adds four small ops per decoding step (A, B, scale, add):
    ~27,000 extra ops for a 32-token rollout of SmolLM2 with LoRA on all 210 projections.
    peft's `unmerge_adapter` subtracts the update again, which in bf16 does not give back the
    same weights, and the reference policy (adapter disabled) must not drift: the adapted
    weights are copied first and copied back after (a transient copy of those weights). The
    rollout samples from the merged weights; the log-probs PPO uses are computed unmerged
    afterwards, so the sampler differs from them only by the rounding of the merge.
    """
    from peft.tuners.lora import LoraLayer

    layers = [m for m in lm.modules() if isinstance(m, LoraLayer) and not m.merged]
    saved = [m.get_base_layer().weight.detach().clone() for m in layers]
    lm.merge_adapter()
    try:
        yield lm
    finally:
        lm.unmerge_adapter()
        with torch.no_grad():
            for m, w in zip(layers, saved):
                m.get_base_layer().weight.copy_(w)


def contiguous_lm_head_input(model) -> None:
    """Make the LM head's input contiguous before its matmul.

    With `logits_to_keep = n` transformers feeds the head `hidden[:, -n:]`, a non-contiguous
    slice. When that input needs a gradient and the (tied, frozen) head weight does not,
    `torch.matmul` does not fold it into one matrix product: it expands the weight to
    (B, H, V), copies it and runs a batched product. For SmolLM2 (V = 49152), 4 rows of 33
    positions took 580 ms instead of 10 ms on this project's CPU, for each PPO mini-batch.
    """
    head = model.get_output_embeddings()
    if head is not None:
        head.register_forward_pre_hook(lambda _m, args: (args[0].contiguous(), *args[1:]))


def _with_bias(head: nn.Linear) -> nn.Linear:
    new = nn.Linear(head.in_features, 1)
    with torch.no_grad():
        new.weight.copy_(head.weight)
        new.bias.zero_()
    return new


def trainable_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """Only the trained tensors (adapters, heads): a checkpoint of kilobytes, not the model."""
    return {n: p.detach().cpu().clone() for n, p in module.named_parameters() if p.requires_grad}


def load_trainable_state(module: nn.Module, state: dict[str, torch.Tensor]) -> None:
    params = dict(module.named_parameters())
    missing = [n for n in state if n not in params]
    if missing:
        raise ValueError(f"checkpoint does not match the model: unknown tensors {missing[:3]}")
    with torch.no_grad():
        for n, t in state.items():
            params[n].copy_(t)


def save_policy(actor: Actor, tokenizer, out: Path, *, merge: bool) -> Path:
    """Write the policy to `out`: a LoRA adapter (default) or merged full weights.

    The adapter folder holds `adapter_config.json` (base path recorded), the adapter weights and
    the tokenizer, so `AutoModelForCausalLM.from_pretrained(out)` (peft integration),
    `PeftModel.from_pretrained` and `rankloop generate` all load it.
    """
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    lm = actor.lm
    base_path = lm.base_model_name
    lm.peft_config["default"].base_model_name_or_path = base_path
    if not merge:
        lm.save_pretrained(out)
        tokenizer.save_pretrained(out)
        return out
    # Merge in fp32 on a fresh copy of the base: merging into bf16 weights would round the
    # adapter's small update away.
    tmp = out / "_adapter"
    lm.save_pretrained(tmp)
    base = AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float32)
    merged = PeftModel.from_pretrained(base, tmp).merge_and_unload()
    merged.save_pretrained(out)
    tokenizer.save_pretrained(out)
    for f in tmp.iterdir():
        f.unlink()
    tmp.rmdir()
    return out


def save_critic(critic: Critic | None, actor: Actor, out: Path) -> None:
    """The critic's trained tensors next to the policy (`critic.pt`), to resume or inspect."""
    state = {
        "actor_value_head": actor.value_head.state_dict() if actor.value_head else None,
        "critic": trainable_state(critic) if critic is not None else None,
        "origin": critic.origin if critic is not None else "value head on the policy",
    }
    torch.save(state, Path(out) / "critic.pt")
    (Path(out) / "critic.json").write_text(json.dumps({"origin": state["origin"]}) + "\n")
