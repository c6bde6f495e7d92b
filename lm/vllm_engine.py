"""Candidate sampling through vLLM (`[generate] engine = "vllm"`), where it is installed.

vLLM is an optional extra (`pip install 'rankloop[vllm]'`, on a CUDA machine): rankloop never
needs it, and HF `generate` (lm.sampling) stays the default. This module keeps the contract of
`lm.sampling.sample_many`: the same length-sorted batches, one seed per batch from
`seed_for(indices)`, each finished batch handed to `on_batch(indices, samples, seed)` so the
caller stores it at once. A LoRA policy (an adapter folder, as `rankloop ppo` saves it) is served
with vLLM's LoRA support on its base model, so nothing is merged or copied.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

from .loading import ModelLoadError, adapter_base, resolve
from .sampling import Sample, encode_chats, plan_batches


def vllm_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("vllm") is not None


class VLLMSampler:
    """One vLLM engine for a policy; `sample_many` mirrors `lm.sampling.sample_many`."""

    def __init__(self, policy: str, *, bf16: bool, seed: int = 0, **engine_kwargs):
        if not vllm_available():
            raise ModelLoadError(
                "[generate] engine = 'vllm' needs vLLM: pip install "
                "'rankloop[vllm]' on a machine with a GPU, or set "
                "engine = 'hf'"
            )
        from vllm import LLM

        base = adapter_base(policy)
        self.lora = None
        kwargs = dict(dtype="bfloat16" if bf16 else "auto", seed=seed, **engine_kwargs)
        if base:
            from vllm.lora.request import LoRARequest

            rank = json.loads((Path(policy) / "adapter_config.json").read_text())["r"]
            kwargs.update(enable_lora=True, max_lora_rank=max(8, int(rank)))
            self.lora = LoRARequest("policy", 1, str(Path(policy).resolve()))
        self.llm = LLM(model=resolve(base or policy), **kwargs)

    @staticmethod
    def _sample(out, eos: int) -> Sample:
        """As `lm.sampling.sample_batch` records it: text stripped, EOS not among the tokens,
        finished when the model stopped on its own (not at max_tokens)."""
        tokens = [t for t in out.token_ids if t != eos]
        return Sample(
            text=out.text.strip(), token_ids=tuple(tokens), finished=out.finish_reason == "stop"
        )

    def sample_many(
        self,
        tokenizer,
        chats: Sequence[list[dict]],
        *,
        temperature: float,
        top_p: float,
        max_new_tokens: int,
        batch_size: int,
        seed_for: Callable,
        on_batch: Callable | None = None,
    ) -> None:
        from vllm import SamplingParams

        prompt_ids = encode_chats(tokenizer, chats)
        for batch in plan_batches([len(p) for p in prompt_ids], batch_size):
            seed = seed_for(batch)
            # one seed per request (seed + row): rows of a batch draw independently, and a
            # rerun of the batch draws the same samples
            params = [
                SamplingParams(
                    temperature=temperature, top_p=top_p, max_tokens=max_new_tokens, seed=seed + j
                )
                for j in range(len(batch))
            ]
            outs = self.llm.generate(
                [{"prompt_token_ids": prompt_ids[i]} for i in batch],
                params,
                lora_request=self.lora,
                use_tqdm=False,
            )
            samples = [self._sample(o.outputs[0], tokenizer.eos_token_id) for o in outs]
            if on_batch:
                on_batch(batch, samples, seed)
