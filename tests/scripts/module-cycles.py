#!/usr/bin/env python3
"""Import cycles between the top-level modules of each crate.

A module `a` depends on `b` when a file under `a` names `crate::b` (or `crate::{b, ...}`)
outside its unit tests (an inline `mod tests { ... }` or a `tests.rs` file) and comments.
Prints each strongly connected component of more than one module; exits 1 if there is any.
Usage: python3 tests/scripts/module-cycles.py  (from the repository root)
"""
import os
import re
import sys

CRATES = ["broker/src", "storage/src", "client/src", "controller/src"]


def graph(root):
    deps = {}
    for folder, _, files in os.walk(root):
        for name in files:
            # `tests.rs` holds a module's unit tests (declared `#[cfg(test)] mod tests;`).
            if not name.endswith(".rs") or name == "tests.rs":
                continue
            path = os.path.join(folder, name)
            top = os.path.relpath(path, root).split(os.sep)[0].removesuffix(".rs")
            if top in ("lib", "main", "bin"):
                continue
            # Inline unit tests are cut off; `#[cfg(test)] mod tests;` only declares a file.
            text = re.split(r"#\[cfg\(test\)\]\s*mod tests\s*\{", open(path).read())[0]
            text = re.sub(r"//[^\n]*", "", text)  # comments name modules without using them
            named = re.findall(r"crate::([a-z_]+)", text)
            for group in re.findall(r"crate::\{([^}]*)\}", text):  # use crate::{a, b::c}
                named += re.findall(r"(?:^|,)\s*([a-z_]+)", group)
            for module in named:
                if module != top:
                    deps.setdefault(top, set()).add(module)
    return deps


def components(deps):
    index, low, stack, on, found, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in deps.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in list(deps):
        if v not in index:
            visit(v)
    return found


bad = False
for crate in CRATES:
    for comp in components(graph(crate)):
        bad = True
        print(f"{crate}: {' <-> '.join(comp)}")
sys.exit(1 if bad else 0)
