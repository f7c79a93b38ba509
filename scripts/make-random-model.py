#!/usr/bin/env python3
"""Writes a Hugging Face directory of random bf16 weights shaped by a Llama-family
config.json: sharded model-0000N-of-0000M.safetensors with their index, the config, and the
tokenizer.json of a folder given (with its tokenizer_config.json), its vocabulary padded
with reserved tokens to the model's. Norm weights are 1;
every other value is a random sign times a magnitude in [2^-7, 2^-5), about the scale of
1/sqrt(hidden) for a 4096-wide model. Made for measuring memory and speed (the scores mean
nothing); needs only Python's standard library.

Usage: scripts/make-random-model.py CONFIG.json TOKENIZER_DIR OUT_DIR [--shard-gb N]
"""

import argparse
import json
import os
import shutil
import struct
import sys

# bf16's high byte: the sign from the random byte, the exponent's high seven bits 0x3C, so
# that with the low byte's top bit the exponent is 120 or 121: magnitudes in [2^-7, 2^-5).
HIGH_BYTE = bytes((b & 0x80) | 0x3C for b in range(256))
CHUNK = 64 << 20


def tensors(c):
    """(name, shape) of every tensor of a Llama-family model, in file order."""
    h, f, v = c["hidden_size"], c["intermediate_size"], c["vocab_size"]
    heads, kv = c["num_attention_heads"], c.get("num_key_value_heads", c["num_attention_heads"])
    d = c.get("head_dim", h // heads)
    yield "model.embed_tokens.weight", (v, h)
    for i in range(c["num_hidden_layers"]):
        p = f"model.layers.{i}."
        yield p + "input_layernorm.weight", (h,)
        yield p + "self_attn.q_proj.weight", (heads * d, h)
        yield p + "self_attn.k_proj.weight", (kv * d, h)
        yield p + "self_attn.v_proj.weight", (kv * d, h)
        yield p + "self_attn.o_proj.weight", (h, heads * d)
        yield p + "post_attention_layernorm.weight", (h,)
        yield p + "mlp.gate_proj.weight", (f, h)
        yield p + "mlp.up_proj.weight", (f, h)
        yield p + "mlp.down_proj.weight", (h, f)
    yield "model.norm.weight", (h,)
    if not c.get("tie_word_embeddings", False):
        yield "lm_head.weight", (v, h)


def size(shape):
    n = 1
    for s in shape:
        n *= s
    return 2 * n


def write_values(out, name, nbytes):
    if name.endswith("norm.weight"):
        out.write(b"\x80\x3f" * (nbytes // 2))  # bf16 1.0
        return
    left = nbytes
    while left:
        chunk = bytearray(os.urandom(min(CHUNK, left)))
        chunk[1::2] = chunk[1::2].translate(HIGH_BYTE)
        out.write(chunk)
        left -= len(chunk)


def write_tokenizer(source_dir, out_dir, vocab_size):
    """The tokenizer of `source_dir`, its vocabulary padded to the model's with reserved
    special tokens (as Llama 3's own), which no text contains."""
    with open(os.path.join(source_dir, "tokenizer.json")) as f:
        tokenizer = json.load(f)
    taken = set(tokenizer["model"]["vocab"].values()) | {t["id"] for t in tokenizer.get("added_tokens", [])}
    added = tokenizer.setdefault("added_tokens", [])
    for i in range(vocab_size):
        if i not in taken:
            added.append({"id": i, "content": f"<|reserved_special_token_{i}|>", "single_word": False,
                          "lstrip": False, "rstrip": False, "normalized": False, "special": True})
    with open(os.path.join(out_dir, "tokenizer.json"), "w") as f:
        json.dump(tokenizer, f)
    config = os.path.join(source_dir, "tokenizer_config.json")
    if os.path.exists(config):
        shutil.copyfile(config, os.path.join(out_dir, "tokenizer_config.json"))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("config")
    parser.add_argument("tokenizer_dir")
    parser.add_argument("out_dir")
    parser.add_argument("--shard-gb", type=float, default=4.0)
    args = parser.parse_args()
    with open(args.config) as f:
        config = json.load(f)
    all_tensors = list(tensors(config))
    shards, current, current_bytes = [], [], 0
    for name, shape in all_tensors:
        if current and current_bytes + size(shape) > args.shard_gb * 1e9:
            shards.append(current)
            current, current_bytes = [], 0
        current.append((name, shape))
        current_bytes += size(shape)
    shards.append(current)
    os.makedirs(args.out_dir, exist_ok=True)
    weight_map, total = {}, 0
    for i, shard in enumerate(shards):
        file_name = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        header, offset = {}, 0
        for name, shape in shard:
            header[name] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [offset, offset + size(shape)]}
            offset += size(shape)
            weight_map[name] = file_name
        encoded = json.dumps(header).encode()
        encoded += b" " * (-len(encoded) % 8)
        path = os.path.join(args.out_dir, file_name)
        with open(path + ".partial", "wb") as out:
            out.write(struct.pack("<Q", len(encoded)) + encoded)
            for name, shape in shard:
                write_values(out, name, size(shape))
        os.replace(path + ".partial", path)
        total += offset
        print(f"{file_name}: {offset / 1e9:.2f} GB", file=sys.stderr)
    with open(os.path.join(args.out_dir, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=1)
    shutil.copyfile(args.config, os.path.join(args.out_dir, "config.json"))
    write_tokenizer(args.tokenizer_dir, args.out_dir, config["vocab_size"])
    print(f"{args.out_dir}: {total / 1e9:.2f} GB of bf16 weights", file=sys.stderr)


if __name__ == "__main__":
    main()
