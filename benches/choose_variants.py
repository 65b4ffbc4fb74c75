#!/usr/bin/env python3
"""Pick, per direction and head dim, the faster of the default kernels and a variant set.

Usage: choose_variants.py DEFAULT.txt VARIANT.txt NAMES
DEFAULT.txt and VARIANT.txt are `bench` outputs over the same grid (variant run with
`--kernel NAMES`). Prints the comma-separated kernel names (of NAMES, both dtypes) whose
direction and head dim ran faster on geometric mean over the grid, and explains on stderr.
"""
import math
import sys


def rates(path):
    out = {}
    for line in open(path):
        f = line.split()
        if len(f) < 11 or f[0] not in ("bf16", "f16") or f[5] != "|":
            continue
        key = (f[0], int(f[1]), f[2], int(f[3]))
        out[key] = {"fwd": float(f[7]), "bwd": float(f[10])}
    return out


def main():
    default, variant, names = rates(sys.argv[1]), rates(sys.argv[2]), sys.argv[3].split(",")
    chosen = []
    for direction in ("fwd", "bwd"):
        for d in sorted({k[1] for k in default}):
            ratios = [variant[k][direction] / default[k][direction] for k in default if k[1] == d and k in variant]
            if not ratios:
                continue
            gain = math.exp(sum(map(math.log, ratios)) / len(ratios))
            print(f"{direction} d{d}: variant/default geometric mean {gain:.3f} over {len(ratios)} points", file=sys.stderr)
            if gain > 1.0:
                chosen += [n for n in names if n.startswith(f"flash_{direction}_") and n.endswith(f"_hdim{d}_p")]
    print(",".join(chosen))


main()
