#!/usr/bin/env python3
"""Module graph of crates/core/src, and a gate against import cycles.

    python3 scripts/check-core-cycles.py [--src crates/core/src] [--quiet]

A node is a top-level module of the crate (`model`, `backend`, `engine`, ...:
a file `src/<name>.rs` or a folder `src/<name>/`); `backend::cpu` and the
other submodules count as their top-level module. An edge A -> B means that
code in A names B through `crate::B...` (in `use` lines and in paths inside
code), `super::...` resolving to B, a crate-root re-export (`pub use
error::Result` in lib.rs makes `crate::Result` an edge to `error`) or an
exported macro (`crate::err` -> `error`). Comments and string literals are
ignored; `$crate` (inside macros) is not followed.

Prints every node with its dependencies (edges only seen inside
`#[cfg(test)]` modules are marked), then each cycle with the file:line of
every arrow on it. Exit status: 0 acyclic, 1 a cycle, 2 usage/IO error.
Standard library only.
"""

import argparse
import os
import re
import sys
from collections import defaultdict

IDENT = r"[A-Za-z_][A-Za-z0-9_]*"


def strip_comments_and_strings(text):
    """The source with comments, string and char literals blanked (newlines
    kept, so line numbers stay right)."""
    out = []
    i, n = 0, len(text)
    char_lit = re.compile(r"'(?:\\u\{[0-9a-fA-F]{1,6}\}|\\x[0-9a-fA-F]{2}|\\.|[^\\'\n])'")
    raw_start = re.compile(r'b?r(#*)"')

    def blank(s):
        return "".join(c if c == "\n" else " " for c in s)

    while i < n:
        c = text[i]
        if text.startswith("//", i):
            j = text.find("\n", i)
            j = n if j < 0 else j
            out.append(blank(text[i:j]))
            i = j
        elif text.startswith("/*", i):
            depth, j = 1, i + 2
            while j < n and depth:
                if text.startswith("/*", j):
                    depth, j = depth + 1, j + 2
                elif text.startswith("*/", j):
                    depth, j = depth - 1, j + 2
                else:
                    j += 1
            out.append(blank(text[i:j]))
            i = j
        elif (c in "rb") and (m := raw_start.match(text, i)) and (i == 0 or not (text[i - 1].isalnum() or text[i - 1] == "_")):
            end = '"' + m.group(1)
            j = text.find(end, m.end())
            j = n if j < 0 else j + len(end)
            out.append(blank(text[i:j]))
            i = j
        elif c == '"':
            j = i + 1
            while j < n and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            j = min(j + 1, n)
            out.append(blank(text[i:j]))
            i = j
        elif c == "'":
            m = char_lit.match(text, i)
            if m:  # a char literal; otherwise a lifetime or label
                out.append(blank(m.group(0)))
                i = m.end()
            else:
                out.append(c)
                i += 1
        else:
            out.append(c)
            i += 1
    return "".join(out)


def module_path_of(rel):
    """`backend/cuda/exec.rs` -> ['backend', 'cuda', 'exec']; `model/mod.rs` -> ['model']; `lib.rs` -> []."""
    parts = rel[:-3].split(os.sep)
    if parts[-1] in ("mod", "lib") and (parts[-1] == "mod" or len(parts) == 1):
        parts = parts[:-1]
    return parts


def line_of(text, pos):
    return text.count("\n", 0, pos) + 1


def use_trees(code):
    """Yield (pos, path_string) for every path a `use` item imports,
    expanding groups: `use crate::{a::{self, X}, b};` -> crate::a::self,
    crate::a::X, crate::b."""
    for m in re.finditer(r"\buse\s+([^;]*);", code):
        body = re.sub(r"\s+", "", m.group(1))
        for path in expand_use(body):
            yield m.start(), path


def expand_use(s):
    # split a use tree: prefix::{a, b::{c, d}} -> prefix::a, prefix::b::c, ...
    brace = s.find("{")
    if brace < 0:
        return [re.sub(r"\bas\b.*$", "", s)] if s else []
    prefix = s[:brace]
    depth, j = 0, brace
    for j in range(brace, len(s)):
        if s[j] == "{":
            depth += 1
        elif s[j] == "}":
            depth -= 1
            if depth == 0:
                break
    inner = s[brace + 1 : j]
    items, depth, start = [], 0, 0
    for k, ch in enumerate(inner):
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
        elif ch == "," and depth == 0:
            items.append(inner[start:k])
            start = k + 1
    items.append(inner[start:])
    out = []
    for it in items:
        if it:
            out.extend(prefix + p for p in expand_use(it))
    return out


def inline_modules(code):
    """[(start, end, name, is_test)] of `mod name { ... }` blocks."""
    mods = []
    for m in re.finditer(r"\bmod\s+(" + IDENT + r")\s*\{", code):
        depth, j = 0, m.end() - 1
        while j < len(code):
            if code[j] == "{":
                depth += 1
            elif code[j] == "}":
                depth -= 1
                if depth == 0:
                    break
            j += 1
        before = code[max(0, m.start() - 200) : m.start()]
        is_test = bool(re.search(r"#\[cfg\(test\)\]\s*(?:#\[[^\]]*\]\s*)*(?:pub(?:\([^)]*\))?\s+)?$", before))
        mods.append((m.start(), j, m.group(1), is_test))
    return mods


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    root = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
    ap.add_argument("--src", default=os.path.join(root, "crates", "core", "src"))
    ap.add_argument("--quiet", action="store_true", help="print only cycles")
    args = ap.parse_args()
    src = args.src
    if not os.path.isdir(src):
        print(f"check-core-cycles: no such directory: {src}", file=sys.stderr)
        return 2

    files = {}
    for dirpath, _, names in os.walk(src):
        for name in names:
            if name.endswith(".rs"):
                full = os.path.join(dirpath, name)
                rel = os.path.relpath(full, src)
                with open(full, encoding="utf-8") as f:
                    files[rel] = strip_comments_and_strings(f.read())

    nodes = set()
    for rel in files:
        parts = module_path_of(rel)
        if parts:
            nodes.add(parts[0])

    # Crate-root names that point into a module: `pub use error::{CoreError, Result}`
    # in lib.rs, and `#[macro_export]` macros (they live at the crate root).
    root_alias = {}
    lib = files.get("lib.rs", "")
    for _, path in use_trees(lib):
        segs = [p for p in path.split("::") if p]
        if segs and segs[0] == "crate":
            segs = segs[1:]
        if len(segs) >= 2 and segs[0] in nodes:
            root_alias[segs[-1]] = segs[0]
    for rel, code in files.items():
        parts = module_path_of(rel)
        for m in re.finditer(r"#\[macro_export\]\s*(?:#\[[^\]]*\]\s*)*macro_rules!\s*(" + IDENT + ")", code):
            if parts:
                root_alias.setdefault(m.group(1), parts[0])

    # edges[a][b] = list of (file, line, test_only)
    edges = defaultdict(lambda: defaultdict(list))

    def target_of(abs_segs):
        """Top-level node named by an absolute path (segments after `crate`)."""
        if not abs_segs:
            return None
        head = abs_segs[0]
        if head in nodes:
            return head
        return root_alias.get(head)

    for rel, code in sorted(files.items()):
        file_mod = module_path_of(rel)
        if not file_mod:
            continue  # lib.rs: the root declares modules, it is not a node
        me = file_mod[0]
        mods = inline_modules(code)

        def scope_at(pos):
            inner = [(s, name, t) for (s, e, name, t) in mods if s < pos <= e]
            inner.sort()
            return file_mod + [name for _, name, _ in inner], any(t for _, _, t in inner)

        def resolve(segs, pos):
            """Absolute segments (after `crate`) of a path as written at pos, or None."""
            if not segs:
                return None
            if segs[0] == "crate":
                return segs[1:]
            if segs[0] in ("super", "self"):
                scope, _ = scope_at(pos)
                cur = list(scope)
                k = 0
                while k < len(segs) and segs[k] in ("super", "self"):
                    if segs[k] == "super":
                        if not cur:
                            return None
                        cur.pop()
                    k += 1
                return cur + segs[k:]
            return None

        refs = []
        for pos, path in use_trees(code):
            refs.append((pos, [p for p in path.split("::") if p]))
        # paths in code: crate::a::b, super::super::x (not preceded by `$`, `::` or an identifier)
        for m in re.finditer(r"(?<![\w$:])((?:crate|super|self)(?:\s*::\s*(?:" + IDENT + r"|\*))+)", code):
            refs.append((m.start(), [p.strip() for p in m.group(1).split("::")]))
        for pos, segs in refs:
            if not segs or segs[0] not in ("crate", "super", "self"):
                continue
            abs_segs = resolve(segs, pos)
            tgt = target_of(abs_segs) if abs_segs is not None else None
            if tgt and tgt != me:
                _, test = scope_at(pos)
                loc = (rel, line_of(code, pos), test)
                if loc not in edges[me][tgt]:
                    edges[me][tgt].append(loc)

    def only_tests(a, b):
        return all(t for _, _, t in edges[a][b])

    if not args.quiet:
        print(f"module graph of {os.path.relpath(src, root)} ({len(nodes)} modules; '*' = only from #[cfg(test)] code):")
        width = max(len(n) for n in nodes) if nodes else 0
        for a in sorted(nodes):
            deps = sorted(edges[a])
            shown = ", ".join(b + ("*" if only_tests(a, b) else "") for b in deps) or "(none)"
            print(f"  {a:<{width}} -> {shown}")

    # Strongly connected components (Tarjan); a component of more than one node holds a cycle.
    index, low, on, stack, sccs = {}, {}, set(), [], []
    counter = [0]

    def strong(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(edges[v]):
            if w not in index:
                strong(w)
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
            sccs.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in sorted(nodes):
        if v not in index:
            strong(v)

    def cycles_in(comp):
        """For each node of a component, a shortest cycle through it ([a, b, ..., a]), without repeats."""
        inside = set(comp)
        out, seen_keys = [], set()
        for start in comp:
            prev, frontier, seen = {}, [start], {start}
            found = None
            while frontier and not found:
                nxt = []
                for u in frontier:
                    for w in sorted(edges[u]):
                        if w not in inside:
                            continue
                        if w == start:
                            found = u
                            break
                        if w not in seen:
                            seen.add(w)
                            prev[w] = u
                            nxt.append(w)
                    if found:
                        break
                frontier = nxt
            if found:
                path = [found]
                while path[-1] != start:
                    path.append(prev[path[-1]])
                cyc = list(reversed(path)) + [start]
                k = min(tuple(cyc[i:-1] + cyc[:i]) for i in range(len(cyc) - 1))
                if k not in seen_keys:
                    seen_keys.add(k)
                    out.append(cyc)
        return sorted(out, key=len)

    cyclic = [c for c in sccs if len(c) > 1]
    if not cyclic:
        print("check-core-cycles: ok, no import cycle")
        return 0
    for comp in sorted(cyclic):
        print(f"check-core-cycles: modules in a cycle: {', '.join(comp)}")
        for cyc in cycles_in(comp):
            print(f"  CYCLE: {' -> '.join(cyc)}")
            for a, b in zip(cyc, cyc[1:]):
                locs = edges[a][b]
                where = ", ".join(f"{f}:{ln}" + (" (test)" if t else "") for f, ln, t in locs[:4])
                more = f" and {len(locs) - 4} more" if len(locs) > 4 else ""
                print(f"    {a} -> {b}: {where}{more}")
    return 1


if __name__ == "__main__":
    sys.exit(main())
