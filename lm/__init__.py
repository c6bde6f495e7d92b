"""The language-model layer both trainers and candidate generation share.

- `loading`: the embedded default model, checkpoints, adapters, tokenizers (one clear error).
- `device`: where and in which dtype to run; the accelerator factory.
- `sampling`: batched sampling from a causal LM (candidates and PPO rollouts).
- `kernels`: the trainers' speed helpers (attention, autocast of adapters, compile, memory).

It imports `rankloop.data` and `rankloop.settings` only; `app`, `reward` and `ppo` import it.
"""
