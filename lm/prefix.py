"""A forward pass over rows that share a prompt, the prompt run once per run of rows.

The critic-free optimisers (RLOO, best-of-n, online DPO) and the held-out evaluation sample
k responses to each prompt and lay them side by side. Their reference pass and RLOO's update
score prompt + response, and the prompt is most of a short rollout's tokens: run the whole
rows and a decoder computes every prompt k times. `SharedPrefixCache` lets a forward take two
calls instead: the distinct prompts once (the cache keeps each layer's keys and values), then
every row's response attending to its prompt's keys and values, copied to the run's k rows.
The gradient flows back through that copy into the prompt's pass, so an update with the
adapters training gets the same gradients as the whole rows' forward.

`rankloop.ppo.actor_critic.Actor` uses it; the numbers equal the whole rows' up to the rounding
of differently shaped matmuls (tests/test_ppo_train.py).
"""

from __future__ import annotations

import torch
from transformers import DynamicCache


class SharedPrefixCache(DynamicCache):
    """A transformers cache for the two calls of a shared-prefix forward.

    First call (the distinct prompts, (P, Q) tokens): `update` keeps each layer's keys and
    values and returns them unchanged, as a plain forward attends. Then `extend(Q, r)`; second
    call (the P * r responses, (P * r, T) tokens, rows in runs of r per prompt): `update`
    returns each prompt's keys and values repeated for its r rows, followed by the response's,
    and stores nothing. Neither call grows the cache, so a block that runs again in the
    backward (`torch.utils.checkpoint`) sees the same keys and values as in the forward: the
    first call keeps the states of its first forward and hands back the recomputed ones.
    `repeats` > 1, so a call's rows (P or P * r) say which of the two it is."""

    def __init__(self):
        super().__init__()
        self.prefix: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self.prefix_len = 0
        self.repeats = 0  # 0: the prompts' call

    def extend(self, prefix_len: int, repeats: int) -> None:
        """Switch to the responses' call: rows in runs of `repeats` after `prefix_len` tokens."""
        self.prefix_len, self.repeats = prefix_len, repeats

    def update(self, key_states, value_states, layer_idx: int, *args, **kwargs):
        keys, values = self.prefix.get(layer_idx, (None, None))  # (P, h, Q, d)
        if keys is None or key_states.shape[0] == keys.shape[0]:
            # the prompts' call, or a checkpointed block of it recomputed in the backward
            # (after `extend`: told apart by its P rows against the responses' P * r)
            self.prefix.setdefault(layer_idx, (key_states, value_states))
            return key_states, value_states
        r = self.repeats
        return (
            torch.cat([keys.repeat_interleave(r, 0), key_states], -2),  # (P * r, h, Q + T, d)
            torch.cat([values.repeat_interleave(r, 0), value_states], -2),
        )

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.prefix_len if self.repeats else 0

    def get_query_offset(self, layer_idx: int = 0) -> int:
        return self.get_seq_length(layer_idx)

    def get_mask_sizes(self, query_length: int, layer_idx: int = 0) -> tuple[int, int]:
        return self.get_seq_length(layer_idx) + query_length, 0


def runs_share_prompt(input_ids, attention_mask, prompt_len: int, runs: int) -> bool:
    """True when the rows come in runs of `runs` whose first `prompt_len` tokens (and mask)
    are the same: the layout a shared-prefix forward needs."""
    B = input_ids.shape[0]
    if runs < 2 or prompt_len < 1 or B % runs:
        return False
    ids = input_ids[:, :prompt_len].reshape(B // runs, runs, prompt_len)
    mask = attention_mask[:, :prompt_len].reshape(B // runs, runs, prompt_len)
    return bool((ids == ids[:, :1]).all()) and bool((mask == mask[:, :1]).all())
