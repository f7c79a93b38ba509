#!/usr/bin/env python3
"""Writes the reference values for worker/src/weights/quant.rs's `matches_gguf_py_bit_for_bit`.

For each GGML type, the test draws its input bytes itself from the rule below (no binary
fixture is kept in the repository); this script draws the same bytes and writes
`<name>.f32`: the little-endian f32 values that gguf-py's `gguf.quants.dequantize` widens
them to. gguf-py is an implementation independent of evalmesh, so the Rust test compares
against it bit for bit.

The rule, written the same way in the Rust test (`fixture_bytes`): a SplitMix64 stream
seeded with SEED + the type's GGUF code gives one byte per draw (its low 8 bits); the f16
scale fields of each quantised block are overwritten with finite f16 values built from one
draw each (`scale_bits`), and the plain types' values are finite floats built from one draw
each (`plain_bits`).

The values were written with gguf 0.19.0 and numpy 2.4.6:

    python3 -m venv /tmp/ggufenv && /tmp/ggufenv/bin/pip install gguf==0.19.0 numpy
    /tmp/ggufenv/bin/python worker/tests/data/quant/generate.py
"""

from importlib.metadata import version
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType as T
from gguf.constants import GGML_QUANT_SIZES
from gguf.quants import dequantize

SEED = 20240611
OUT = Path(__file__).resolve().parent
MASK = (1 << 64) - 1

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


class SplitMix64:
    def __init__(self, seed: int) -> None:
        self.state = seed & MASK

    def next(self) -> int:
        self.state = (self.state + 0x9E3779B97F4A7C15) & MASK
        z = self.state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
        return z ^ (z >> 31)


def scale_bits(r: int) -> int:
    """A finite f16 between 2^-7 and 2^-1 in magnitude."""
    return ((r & 1) << 15) | ((8 + (r >> 1) % 6) << 10) | ((r >> 8) & 0x3FF)


def plain_bits(qtype: T, r: int) -> bytes:
    sign = r & 1
    exponent = 120 + (r >> 1) % 11  # f32 and bf16: 2^-7 to 2^3
    if qtype == T.F32:
        return ((sign << 31) | (exponent << 23) | ((r >> 8) & 0x7FFFFF)).to_bytes(4, "little")
    if qtype == T.BF16:
        return ((sign << 15) | (exponent << 7) | ((r >> 8) & 0x7F)).to_bytes(2, "little")
    return scale_bits(r).to_bytes(2, "little")


def fixture_bytes(qtype: T) -> bytes:
    rng = SplitMix64(SEED + int(qtype))
    if qtype in (T.F32, T.F16, T.BF16):
        return b"".join(plain_bits(qtype, rng.next()) for _ in range(PLAIN_ELEMENTS))
    blocks, scale_at = QUANTISED[qtype]
    _, block_bytes = GGML_QUANT_SIZES[qtype]
    data = bytearray()
    for _ in range(blocks):
        block = bytearray(rng.next() & 0xFF for _ in range(block_bytes))
        for at in scale_at:
            block[at : at + 2] = scale_bits(rng.next()).to_bytes(2, "little")
        data += block
    return bytes(data)


def main() -> None:
    print(f"gguf {version('gguf')}, numpy {version('numpy')}")
    for qtype in [T.F32, T.F16, T.BF16, *QUANTISED]:
        data = np.frombuffer(fixture_bytes(qtype), dtype=np.uint8)
        values = np.asarray(dequantize(data, qtype), dtype=np.float32).reshape(-1)
        assert np.isfinite(values).all(), qtype.name
        name = qtype.name.lower()
        (OUT / f"{name}.f32").write_bytes(values.astype("<f4").tobytes())
        print(f"{name}: {data.size} bytes -> {values.size} values")


if __name__ == "__main__":
    main()
