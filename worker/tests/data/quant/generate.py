#!/usr/bin/env python3
"""Writes the reference fixtures for worker/src/weights/quant.rs.

For each GGML type: `<name>.bin` holds random whole blocks (raw GGUF bytes) and
`<name>.f32` the little-endian f32 values that gguf-py's `gguf.quants.dequantize`
widens them to. gguf-py is an implementation independent of evalmesh, so the Rust
test compares against it bit for bit.

The fixtures were written with gguf 0.19.0 and numpy 2.4.6:

    python3 -m venv /tmp/ggufenv && /tmp/ggufenv/bin/pip install gguf==0.19.0 numpy
    /tmp/ggufenv/bin/python worker/tests/data/quant/generate.py

Every byte of a block is drawn at random except its f16 scale fields, which get
f16(uniform(-1, 1) * 0.1): finite, mostly normal, sometimes subnormal.
"""

from importlib.metadata import version
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType as T
from gguf.constants import GGML_QUANT_SIZES
from gguf.quants import dequantize

SEED = 20240611
OUT = Path(__file__).resolve().parent

# type: (blocks to draw, byte offsets of the block's f16 scale fields)
QUANTISED = {
    T.Q4_0: (8, [0]),
    T.Q4_1: (8, [0, 2]),
    T.Q5_0: (8, [0]),
    T.Q5_1: (8, [0, 2]),
    T.Q8_0: (8, [0]),
    T.Q2_K: (4, [80, 82]),
    T.Q3_K: (4, [108]),
    T.Q4_K: (4, [0, 2]),
    T.Q5_K: (4, [0, 2]),
    T.Q6_K: (4, [208]),
    T.IQ4_NL: (8, [0]),
    T.IQ4_XS: (4, [0]),
}
PLAIN_ELEMENTS = 64


def sane_f16(rng: np.random.Generator, n: int) -> np.ndarray:
    return (rng.uniform(-1.0, 1.0, n) * 0.1).astype(np.float16)


def quantised_blocks(rng: np.random.Generator, qtype: T, blocks: int, scale_at: list[int]) -> np.ndarray:
    _, block_bytes = GGML_QUANT_SIZES[qtype]
    data = rng.integers(0, 256, size=(blocks, block_bytes), dtype=np.uint8)
    for at in scale_at:
        data[:, at : at + 2] = sane_f16(rng, blocks).view(np.uint8).reshape(blocks, 2)
    return data.reshape(-1)


def plain_values(rng: np.random.Generator, qtype: T) -> np.ndarray:
    x = rng.uniform(-4.0, 4.0, PLAIN_ELEMENTS).astype(np.float32)
    if qtype == T.F32:
        return x.view(np.uint8)
    if qtype == T.F16:
        return x.astype(np.float16).view(np.uint8)
    # BF16: the top half of an f32 (truncation keeps it finite).
    return (x.view(np.uint32) >> 16).astype(np.uint16).view(np.uint8)


def main() -> None:
    print(f"gguf {version('gguf')}, numpy {version('numpy')}")
    types = [(t, None) for t in (T.F32, T.F16, T.BF16)] + list(QUANTISED.items())
    for qtype, spec in types:
        rng = np.random.default_rng([SEED, int(qtype)])
        data = plain_values(rng, qtype) if spec is None else quantised_blocks(rng, qtype, *spec)
        values = np.asarray(dequantize(data, qtype), dtype=np.float32).reshape(-1)
        assert np.isfinite(values).all(), qtype.name
        name = qtype.name.lower()
        (OUT / f"{name}.bin").write_bytes(data.tobytes())
        (OUT / f"{name}.f32").write_bytes(values.astype("<f4").tobytes())
        print(f"{name}: {data.size} bytes -> {values.size} values")


if __name__ == "__main__":
    main()
