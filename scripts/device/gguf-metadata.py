#!/usr/bin/env python3
"""Writes a GGUF file holding SOURCE's metadata (its tokenizer among it) and no tensors:
`--tokenizer` takes it in place of the whole model, so the GPU check's pack carries the
test model's 49152-token tokenizer in about 2 MB instead of the 94 MB model.

Usage: gguf-metadata.py SOURCE.gguf OUT.gguf
"""
import struct
import sys

# Byte sizes of GGUF's fixed-size value types (gguf.md: GGUF_TYPE_*).
FIXED = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
STRING, ARRAY = 8, 9


def skip_value(data, at, kind):
    """The offset just past a value of type `kind` starting at `at`."""
    if kind in FIXED:
        return at + FIXED[kind]
    if kind == STRING:
        (length,) = struct.unpack_from("<Q", data, at)
        return at + 8 + length
    if kind == ARRAY:
        item, count = struct.unpack_from("<IQ", data, at)
        at += 12
        if item in FIXED:
            return at + count * FIXED[item]
        for _ in range(count):
            at = skip_value(data, at, item)
        return at
    sys.exit(f"unknown GGUF value type {kind}")


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__.strip().splitlines()[-1])
    data = open(sys.argv[1], "rb").read()
    magic, version, _tensors, kvs = struct.unpack_from("<4sIQQ", data, 0)
    if magic != b"GGUF" or version < 2:
        sys.exit(f"{sys.argv[1]}: not a GGUF file of version 2 or later")
    at = 24
    for _ in range(kvs):
        (length,) = struct.unpack_from("<Q", data, at)
        at += 8 + length
        (kind,) = struct.unpack_from("<I", data, at)
        at = skip_value(data, at + 4, kind)
    with open(sys.argv[2], "wb") as out:
        out.write(struct.pack("<4sIQQ", b"GGUF", version, 0, kvs))
        out.write(data[24:at])


if __name__ == "__main__":
    main()
