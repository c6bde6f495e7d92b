"""The language-model layer both trainers and candidate generation share.

- `loading`: the embedded default model, checkpoints, adapters, tokenizers (one clear error).
- `device`: where and in which dtype to run; the accelerator factory.
- `sampling`: batched sampling from a causal LM (candidates and PPO rollouts).
- `kernels`: the trainers' speed helpers (attention, autocast of adapters, compile, memory).

It imports `rankloop.data` (records) and `rankloop.settings` only (README.md's import table); `app`, `reward` and `ppo` import it.
"""

import warnings

# peft's PeftModel reads transformers' deprecated `is_gradient_checkpointing` each time it wraps
# a model (every LoRA policy, critic and reward model): a user cannot act on it, so it is
# silenced here, once, by its exact message. Drop this when peft reads the new name.
warnings.filterwarnings(
    "ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning
)
