"""The reward model: a scalar head on a language model, the text format it reads, loading.

Any `AutoModelForSequenceClassification` with `num_labels=1` works; a causal LM checkpoint
(the default SmolLM2-135M) gets a fresh linear head `score` through the same class (transformers
builds `LlamaForSequenceClassification` from a `LlamaForCausalLM` checkpoint and initialises the
head). That class never computes the vocabulary-sized LM logits: it pools the hidden state of the
last non-padding token and applies the (hidden -> 1) head.

The reward model reads *decoded text* with its own tokenizer (so policy and reward model need
not share one): prompt + response are formatted as a user/assistant conversation with the
reward tokenizer's chat template. Training, `RewardScorer` and a plain
`pipeline("text-classification")` on `format_text(...)` all see the same tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from rankloop.data.records import Prompt
from rankloop.lm.loading import ModelLoadError, quiet_loading, resolve

PromptLike = Prompt | str | Sequence[dict]

# Module names of the scalar head in transformers' sequence-classification models; the one
# that exists is trained in full next to the LoRA adapters and saved with them.
HEAD_NAMES = ("score", "classifier")


def to_chat(prompt: PromptLike) -> list[dict[str, str]]:
    """A prompt as chat messages: a `Prompt`, a plain string (one user turn), or the messages."""
    if isinstance(prompt, Prompt):
        return prompt.as_chat()
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    return [{"role": m["role"], "content": m["content"]} for m in prompt]


def format_text(tokenizer, prompt: PromptLike, response: str) -> str:
    """The text the reward model scores: the conversation with the response as the reply.

    With a chat template: the template applied to prompt + {assistant: response}. Without one:
    the turns' contents joined by blank lines.
    """
    chat = to_chat(prompt) + [{"role": "assistant", "content": response}]
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(chat, tokenize=False)
    return "\n\n".join(m["content"] for m in chat)


def load_reward_tokenizer(name_or_path: str, max_length: int | None = None):
    """The tokenizer, set up as the reward model uses it: right padding, a pad token, and
    truncation from the left (a long prompt loses its start; the response end, where the
    reward is read, is always kept)."""
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(resolve(name_or_path))
    except Exception as e:
        raise ModelLoadError(
            f"cannot load the tokenizer of reward model '{name_or_path}': "
            f"{type(e).__name__}: {str(e).splitlines()[0]}"
        ) from e
    tok.padding_side = "right"
    tok.truncation_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    if max_length:
        tok.model_max_length = max_length
    return tok


def tokenize(tokenizer, texts: Sequence[str], max_length: int) -> list[list[int]]:
    """Token ids of each formatted text, truncated from the left to `max_length`."""
    return tokenizer(list(texts), truncation=True, max_length=max_length)["input_ids"]


def right_pad(seqs: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask), both (N, T) with T the longest sequence; padding on the right."""
    t = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), t), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), t), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.as_tensor(s, dtype=torch.long)
        mask[i, : len(s)] = 1
    return ids, mask


def rewards(model, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Scalar rewards (N,) from a sequence-classification model with one label."""
    out = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
    return out.logits[:, 0].float()  # (N,)


def load_backbone(name_or_path: str, tokenizer, dtype=None):
    """A sequence-classification model with one output (the reward), from any checkpoint."""
    from transformers import AutoModelForSequenceClassification

    path = resolve(name_or_path)
    try:
        with quiet_loading():  # the score head is new by design
            model = AutoModelForSequenceClassification.from_pretrained(
                path, num_labels=1, dtype=dtype
            )
    except Exception as e:
        raise ModelLoadError(
            f"cannot load '{name_or_path}' as a reward model: {type(e).__name__}: "
            f"{str(e).splitlines()[0]}. Give a sequence-classification model or a causal LM "
            f"checkpoint ([reward] base or [models] reward_model)"
        ) from e
    # The head pools at the last token that is not padding, so the model must know the pad id;
    # "regression" makes pipeline("text-classification") return the raw score, not a sigmoid.
    model.config.pad_token_id = tokenizer.pad_token_id
    model.config.problem_type = "regression"
    model.config.id2label, model.config.label2id = {0: "reward"}, {"reward": 0}
    return model


def head_name(model) -> str:
    for name in HEAD_NAMES:
        if isinstance(getattr(model, name, None), torch.nn.Module):
            return name
    raise ModelLoadError(f"{type(model).__name__} has no scalar head named one of {HEAD_NAMES}")


def top_blocks(model, top_layers: int) -> list[int]:
    """Indices of the top `top_layers` decoder blocks (`[reward] lora_layers`)."""
    n = model.config.num_hidden_layers
    if not 0 < top_layers < n:
        raise ModelLoadError(
            f"[reward] lora_layers = {top_layers}, but {type(model).__name__} has {n} "
            f"decoder blocks: set it between 1 and {n - 1} (0 = every block)"
        )
    return list(range(n - top_layers, n))


def add_lora(
    model, r: int, alpha: int, dropout: float, target_modules: list[str], top_layers: int = 0
):
    """Wrap the model with LoRA adapters on `target_modules` (of the top `top_layers` decoder
    blocks only, when > 0); the head is trained in full."""
    from peft import LoraConfig, TaskType, get_peft_model

    present = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()}
    targets = [m for m in target_modules if m in present]
    if not targets:
        raise ModelLoadError(
            f"none of the LoRA target modules {target_modules} exist in "
            f"{type(model).__name__}; set [reward] lora_target_modules to its projection names"
        )
    layers = {}
    if top_layers:
        layers = {"layers_pattern": "layers", "layers_to_transform": top_blocks(model, top_layers)}
    cfg = LoraConfig(
        task_type=TaskType.SEQ_CLS,
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=targets,
        modules_to_save=[head_name(model)],
        **layers,
    )
    with quiet_loading():
        return get_peft_model(model, cfg)


def is_adapter_dir(path: str | Path) -> bool:
    return (Path(path) / "adapter_config.json").exists()


def load_saved(path: str | Path, dtype=None):
    """A saved reward model: a plain checkpoint, or a LoRA adapter folder (merge_lora = false)."""
    from transformers import AutoModelForSequenceClassification

    try:
        if is_adapter_dir(path):
            from peft import AutoPeftModelForSequenceClassification

            model = AutoPeftModelForSequenceClassification.from_pretrained(
                str(path), num_labels=1
            )  # merged at the saved precision, then cast: a bf16 merge would round the update
            return model.merge_and_unload().to(dtype=dtype).eval()
        return AutoModelForSequenceClassification.from_pretrained(str(path), dtype=dtype).eval()
    except Exception as e:
        raise ModelLoadError(
            f"cannot load the reward model in {path}: {type(e).__name__}: {str(e).splitlines()[0]}"
        ) from e
