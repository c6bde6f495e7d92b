"""Tiny random-weight models built from a config, so unit tests run in seconds and offline.

The tokenizer is a small byte-level BPE trained here on a few sentences, with ChatML special
tokens and chat template like SmolLM2's, so code paths (chat template, EOS, padding) are the real
ones.
"""

from __future__ import annotations

from pathlib import Path

CHAT_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + "
    "message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Explain how a bicycle gear works in simple words.",
    "Write a short poem about the sea and the wind.",
    "def add(a, b):\n    return a + b\n",
    "<script>alert(1)</script> <b>bold</b> & ampersands",
    "Bonjour le monde. 日本語のテキスト. Emoji 🙂 ✨",
    "user assistant system hello thanks yes no maybe good bad better worse",
] * 20


def build_tokenizer(vocab_size: int = 400):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    special = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=special,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(CORPUS, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token="<|endoftext|>",
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def build_causal_lm(tokenizer, seed: int = 0, hidden: int = 32, layers: int = 2):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    return LlamaForCausalLM(config).eval()


def save_tiny_lm(folder: Path, seed: int = 0) -> Path:
    """A tiny causal LM checkpoint (model + tokenizer) loadable with from_pretrained."""
    tok = build_tokenizer()
    model = build_causal_lm(tok, seed=seed)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder
