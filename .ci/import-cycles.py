#!/usr/bin/env python3
"""Fails when the files of src/ import each other in a cycle.

An edge A -> B is any path in A (a `use`, an expression, a doc link, a
path in an attribute's string) that starts with
`crate::`, `super::` or `self::` and names an item of file B; the path is
followed as far as files exist (`crate::a::b::C` is src/a/b.rs, else
src/a/b/mod.rs, else src/a.rs ...). A folder's mod.rs re-exporting its own
children with relative paths (`pub use child::X;`) is its facade, not a
dependency, and is not an edge. Prints every cycle found (by strongly
connected component) and exits 1 when there is one.
"""
import os
import re
import sys

ROOT = sys.argv[1] if len(sys.argv) > 1 else "src"


def module_of(path):
    rel = os.path.relpath(path, ROOT)[:-3].split(os.sep)
    if rel[-1] in ("mod", "lib"):
        rel = rel[:-1]
    return rel


def file_of(parts):
    base = os.path.join(ROOT, *parts)
    if not parts:
        return os.path.join(ROOT, "lib.rs")
    for cand in (base + ".rs", os.path.join(base, "mod.rs")):
        if os.path.isfile(cand):
            return cand
    return None


def resolve(mod, segs):
    """The file that path `segs` (from module `mod`) lands in, or None."""
    if segs[0] == "crate":
        cur, segs = [], segs[1:]
    elif segs[0] in ("super", "self"):
        cur = list(mod)
        while segs and segs[0] in ("super", "self"):
            if segs[0] == "super":
                cur = cur[:-1]
            segs = segs[1:]
    else:
        return None
    found = file_of(cur)
    for s in segs:
        nxt = file_of(cur + [s])
        if nxt is None:
            break
        cur, found = cur + [s], nxt
    return found


def expand(tree):
    """`a::{b, c::{d, e}}` -> [[a, b], [a, c, d], [a, c, e]]."""
    tree = tree.replace(" ", "").replace("\n", "")
    out = []

    def go(prefix, s):
        i = s.find("{")
        if i < 0:
            for piece in s.split(","):
                if piece:
                    out.append(prefix + [p for p in piece.split("::") if p])
            return
        head = [p for p in s[:i].split("::") if p]
        body = s[i + 1 : s.rfind("}")]
        depth, start = 0, 0
        for j, ch in enumerate(body + ","):
            if ch == "{":
                depth += 1
            elif ch == "}":
                depth -= 1
            elif ch == "," and depth == 0:
                go(prefix + head, body[start:j])
                start = j + 1

    go([], tree)
    return out


edges = {}
for dirpath, _, files in os.walk(ROOT):
    for name in files:
        if not name.endswith(".rs"):
            continue
        path = os.path.join(dirpath, name)
        mod = module_of(path)
        # Doc links and paths in attributes' strings (`serialize_with =
        # "crate::…"`) count too: a reader follows them as dependencies.
        text = open(path, encoding="utf-8").read()
        targets = set()
        for m in re.finditer(r"\b(pub(\([^)]*\))?\s+)?use\s+([^;]+);", text):
            for segs in expand(m.group(3)):
                segs = [s.split(" as ")[0] for s in segs]
                if segs and segs[0] in ("crate", "super", "self"):
                    targets.add(resolve(mod, segs))
        for m in re.finditer(r"\b((?:crate|super|self)(?:::[A-Za-z_][A-Za-z0-9_]*)+)", text):
            targets.add(resolve(mod, m.group(1).split("::")))
        targets.discard(None)
        targets.discard(path)
        # lib.rs is the facade: it declares and re-exports, and depends on
        # nothing the others could depend on in turn.
        if mod == []:
            targets = set()
        edges[path] = targets

# Tarjan's strongly connected components.
index, low, stack, on, sccs, counter = {}, {}, [], set(), [], [0]


def visit(v):
    index[v] = low[v] = counter[0]
    counter[0] += 1
    stack.append(v)
    on.add(v)
    for w in edges.get(v, ()):
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
            sccs.append(sorted(comp))


sys.setrecursionlimit(10000)
for v in sorted(edges):
    if v not in index:
        visit(v)

if sccs:
    for comp in sccs:
        print("import cycle among:", file=sys.stderr)
        for f in comp:
            inside = sorted(set(edges[f]) & set(comp))
            print(f"  {f} -> {', '.join(inside)}", file=sys.stderr)
    sys.exit(1)
print(f"no import cycle among the {len(edges)} files of {ROOT}/")
