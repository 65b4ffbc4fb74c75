#!/usr/bin/env python3
"""Which kernel entries of two PTX files are the same code.

Usage: ptx_same.py OLD.ptx NEW.ptx [NEW_NAME=OLD_NAME ...]
Compares entry bodies with register numbers, labels and comments normalized away, so a kernel
rebuilt from unchanged sources (or renamed in the registry) compares equal. Used to tie a
commit's kernels to the PTX that a GPU record tested (bundle/ptx/ of that run).
"""
import re
import sys


def entries(path):
    out = {}
    for chunk in open(path).read().split(".visible .entry ")[1:]:
        name = chunk.split("(")[0]
        body = chunk.split("// -- End function")[0].replace(name, "KERNEL")
        body = re.sub(r"%(r|rd|f|p|rs|fd)\d+", r"%\1", body)
        body = re.sub(r"\$?L__BB\d+_\d+|BB\d+_\d+", "L", body)
        body = re.sub(r"__local_depot\d+|anon_\$_[0-9a-f]+_\$_\d+", "X", body)
        out[name] = "\n".join(l.split("//")[0].rstrip() for l in body.split("\n") if l.split("//")[0].strip())
    return out


old, new = entries(sys.argv[1]), entries(sys.argv[2])
renamed = dict(arg.split("=", 1) for arg in sys.argv[3:])
for name in sorted(new):
    before = renamed.get(name, name)
    verdict = "new" if before not in old else ("same" if old[before] == new[name] else "CHANGED")
    print(f"{verdict:8} {name}" + (f" (was {before})" if before != name else ""))
