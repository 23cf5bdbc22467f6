#!/usr/bin/env python3
"""Import graph between the top-level modules of a crate's src/: every `crate::X`
(and `super::X` from a top-level file) counts as a dependency of the module the file
belongs to on X. Prints each strongly connected component with more than one module
(an import cycle) and exits 1 if there is one.

With `--layers FILE`, the lines `layer N: a b c` of FILE (docs/architecture.md) name
the layers of the controller's modules: every module must be in one, and may use only
modules of lower layers; each use that does not is printed, and the exit code is 1.
The table of the controller library's modules must say what each uses, as the code
has it (`env` aside). A line `sealed: X used only by a b` says that no other module may use X (a backend
only its seam names).

    scripts/module-cycles.py [--layers docs/architecture.md] controller/src agent/src core/src
"""
import os
import re
import sys


def modules(src):
    # A library's modules are those its lib.rs declares (a binary's own modules,
    # such as the controller's cli/, sit above the library).
    lib = os.path.join(src, "lib.rs")
    if os.path.exists(lib):
        return set(re.findall(r"^\s*(?:pub\s+)?mod\s+(\w+)\s*;", open(lib, encoding="utf-8").read(), re.M))
    mods = set()
    for name in os.listdir(src):
        if name.endswith(".rs") and name not in ("lib.rs", "main.rs"):
            mods.add(name[:-3])
        elif os.path.isdir(os.path.join(src, name)):
            mods.add(name)
    return mods


def owner(src, path):
    rel = os.path.relpath(path, src).split(os.sep)
    top = rel[0][:-3] if rel[0].endswith(".rs") else rel[0]
    return top


def strip_tests(text):
    # Code under #[cfg(test)] is not part of the layering.
    at = text.find("#[cfg(test)]")
    return text if at < 0 else text[:at]


def graph(src):
    mods = modules(src)
    edges = {m: set() for m in mods}
    for root, _, files in os.walk(src):
        for f in files:
            if not f.endswith(".rs"):
                continue
            path = os.path.join(root, f)
            me = owner(src, path)
            if me not in mods:
                continue
            text = strip_tests(open(path, encoding="utf-8").read())
            # Comments (doc links included) are not imports.
            text = re.sub(r"//[^\n]*", "", text)
            names = set(re.findall(r"\bcrate::(\w+)", text))
            # `use crate::{a, b::c}` groups
            for group in re.findall(r"\bcrate::\{([^}]*)\}", text):
                names |= set(re.findall(r"(?:^|,)\s*(\w+)", group))
            if os.path.dirname(path) == src:
                names |= set(re.findall(r"\bsuper::(\w+)", text))
            for n in names:
                if n in mods and n != me:
                    edges[me].add(n)
    return edges


def sccs(edges):
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(edges[v]):
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
            out.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in sorted(edges):
        if v not in index:
            visit(v)
    return [c for c in out if len(c) > 1]


def layers(path):
    found, sealed = {}, {}
    for line in open(path, encoding="utf-8"):
        m = re.match(r"^layer (\d+): (.*)$", line.strip())
        if m:
            for name in m.group(2).split():
                found[name] = int(m.group(1))
        m = re.match(r"^sealed: (\S+) used only by (.*)$", line.strip())
        if m:
            sealed[m.group(1)] = set(m.group(2).split())
    return found, sealed


def documented_uses(path):
    """The `uses` column of the controller library's table: {module: set(modules)}."""
    uses, inside = {}, False
    for line in open(path, encoding="utf-8"):
        if line.startswith("## "):
            inside = line.startswith("## controller library")
        if not inside or not line.startswith("| `"):
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        names = re.findall(r"`([a-z_]+)`", cells[0])
        used = {u.split("::")[0] for u in re.findall(r"`([a-z_:]+)`", cells[-1])}
        for n in names:
            uses[n] = used
    return uses


def check_uses(src, edges, documented):
    # `env` is every module's (the one place the environment is read): not listed.
    problems = []
    for m in sorted(edges):
        if m not in documented:
            problems.append(f"{m} has no row in the table")
            continue
        code = set(edges[m]) - {"env"}
        doc = documented[m] & set(edges)
        if code != doc:
            extra = ", ".join(sorted(code - doc)) or "-"
            gone = ", ".join(sorted(doc - code)) or "-"
            problems.append(f"{m}: the code uses, the table does not say: {extra}; the table says, the code does not: {gone}")
    print(f"{src}: {len(problems)} difference(s) between the table of uses and the code")
    for p in problems:
        print("  " + p)
    return bool(problems)


def check_layers(src, edges, layer_of, sealed):
    problems = []
    for m in sorted(edges):
        for n in sorted(edges[m]):
            if n in sealed and m != n and m not in sealed[n]:
                problems.append(
                    f"{m} uses {n}, which only {', '.join(sorted(sealed[n]))} may use")
    for m in sorted(edges):
        if m not in layer_of:
            problems.append(f"{m} is in no layer")
            continue
        for n in sorted(edges[m]):
            if n in layer_of and layer_of[n] >= layer_of[m]:
                problems.append(
                    f"{m} (layer {layer_of[m]}) uses {n} (layer {layer_of[n]})")
    print(f"{src}: {len(problems)} layer violation(s)")
    for p in problems:
        print("  " + p)
    return bool(problems)


def main():
    args = sys.argv[1:]
    layer_of, sealed, documented = None, {}, None
    if args[:1] == ["--layers"]:
        layer_of, sealed = layers(args[1])
        documented = documented_uses(args[1])
        args = args[2:]
    bad = False
    for src in args:
        edges = graph(src)
        cycles = sccs(edges)
        print(f"{src}: {len(edges)} modules, {sum(len(e) for e in edges.values())} edges, {len(cycles)} cycle(s)")
        for c in cycles:
            bad = True
            print("  cycle: " + " <-> ".join(c))
            for m in c:
                inner = sorted(n for n in edges[m] if n in c)
                print(f"    {m} -> {', '.join(inner)}")
        if layer_of is not None and src.rstrip("/").endswith("controller/src"):
            bad |= check_layers(src, edges, layer_of, sealed)
            bad |= check_uses(src, edges, documented)
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
