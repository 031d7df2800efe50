#!/usr/bin/env python3
"""Checks the layering of the library's sources.

  (a) includes: no file includes a header of a layer above its own
        include/   -> include/
        common/    -> include/, common/
        backends/  -> include/, common/, backends/ (the CPU reference included)
        opencl/, vulkan/, hip/ -> include/, common/, backends/, their own folder
        core/      -> include/, common/, backends/dispatch.h, backends/device.h, core/
  (b) loops: in one folder, the graph of files (foo.c and foo.h are one node) whose edges are
      includes of the folder's headers and uses, in a .c file, of functions another .c file of
      the folder defines (calls, callbacks, ops tables) must have no cycle;
  (c) length: every function of core/ is under --max-lines lines (150).

Failures in core/, common/ and the include rules make it exit 1. Loops in the backend folders
(backends/, backends/cpu/, opencl/, vulkan/, hip/) and backend headers other than
backends/dispatch.h included by bench/ and eval/ are reported as warnings, and fail only with
--strict.

  tools/check-layers.py [--strict] [--max-lines N] [--list-long N] [root]

--list-long N lists every function of core/ longer than N lines. The parser is a small
tokenizer, not a compiler: it knows comments, strings, preprocessor lines and braces, which
is all the library's C needs.
"""
import argparse
import os
import re
import sys

STRICT_FOLDERS = ("core", "common")
BACKEND_FOLDERS = ("backends", "backends/cpu", "opencl", "vulkan", "hip")
GPU_BACKENDS = ("opencl", "vulkan", "hip")
# core/ calls every op through the dispatch layer; device.h is the public handles' inside
CORE_BACKEND_HEADERS = ("backends/dispatch.h", "backends/device.h")
KEYWORDS = {"if", "for", "while", "switch", "return", "sizeof", "do", "else", "case",
            "_Alignof", "_Static_assert", "defined"}


def strip_c(text):
    """Comments, string and char literals and preprocessor lines become spaces (newlines
    kept), so positions and line numbers stay those of the file."""
    out = []
    i, n = 0, len(text)
    line_start = True
    while i < n:
        c = text[i]
        if line_start and c in " \t":
            out.append(c)
            i += 1
            continue
        if line_start and c == "#":
            # a preprocessor line, with its continuations
            while i < n and text[i] != "\n":
                if text[i] == "\\" and i + 1 < n and text[i + 1] == "\n":
                    out.append(" \n")
                    i += 2
                    continue
                out.append(" ")
                i += 1
            continue
        line_start = False
        if text.startswith("/*", i):
            j = text.find("*/", i + 2)
            j = n if j < 0 else j + 2
            out.append(re.sub(r"[^\n]", " ", text[i:j]))
            i = j
        elif text.startswith("//", i):
            j = text.find("\n", i)
            j = n if j < 0 else j
            out.append(" " * (j - i))
            i = j
        elif c in "\"'":
            j = i + 1
            while j < n and text[j] != c:
                j += 2 if text[j] == "\\" else 1
            j = min(j + 1, n)
            out.append(c + re.sub(r"[^\n]", " ", text[i + 1:j - 1]) + c)
            i = j
        else:
            out.append(c)
            if c == "\n":
                line_start = True
            i += 1
    return "".join(out)


class Function:
    def __init__(self, name, static, first_line, last_line, body):
        self.name, self.static = name, static
        self.first_line, self.last_line, self.body = first_line, last_line, body

    @property
    def lines(self):
        return self.last_line - self.first_line + 1


def functions(code):
    """Function definitions at file scope: name, static or not, lines, body text."""
    found = []
    depth = 0
    head_start = 0  # where the current file-scope declaration began
    i = 0
    while i < len(code):
        c = code[i]
        if c == "{":
            if depth == 0:
                head = code[head_start:i]
                m = re.search(r"\b([A-Za-z_]\w*)\s*\(", head)
                if m and "=" not in head and m.group(1) not in KEYWORDS and \
                        not re.match(r"\s*(typedef|struct|union|enum)\b", head):
                    body_start = i
                    d, j = 0, i
                    while j < len(code):
                        if code[j] == "{":
                            d += 1
                        elif code[j] == "}":
                            d -= 1
                            if d == 0:
                                break
                        j += 1
                    found.append(Function(
                        m.group(1), bool(re.search(r"\bstatic\b", head)),
                        code.count("\n", 0, head_start + m.start(1)) + 1,
                        code.count("\n", 0, j) + 1, code[body_start:j + 1]))
                    i = j + 1
                    head_start = i
                    continue
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                head_start = i + 1
        elif c == ";" and depth == 0:
            head_start = i + 1
        i += 1
    return found


INCLUDE = re.compile(r'^\s*#\s*include\s*"([^"]+)"', re.M)


def resolve(root, src, name):
    for base in (os.path.dirname(src), root, os.path.join(root, "include")):
        path = os.path.normpath(os.path.join(base, name))
        if os.path.isfile(path):
            return os.path.relpath(path, root)
    return None  # generated (embedded kernels) or system: not a layer question


def allowed(src, dst):
    """Whether file src (relative path) may include header dst."""
    top, top_dst = src.split("/")[0], dst.split("/")[0]
    if top_dst == "include":
        return True
    if top == "include":
        return False
    if top == "common":
        return top_dst == "common"
    if top == "backends":
        return top_dst in ("common", "backends")
    if top in GPU_BACKENDS:
        return top_dst in ("common", "backends", top)
    if top == "core":
        return top_dst in ("common", "core") or dst in CORE_BACKEND_HEADERS
    return True


def sources(root, folder, recursive=False):
    base = os.path.join(root, folder)
    if not os.path.isdir(base):
        return []
    if recursive:
        return sorted(os.path.relpath(os.path.join(d, f), root)
                      for d, _, fs in os.walk(base) for f in fs if f.endswith((".c", ".h")))
    return sorted(os.path.join(folder, f) for f in os.listdir(base) if f.endswith((".c", ".h")))


def node(path):
    return os.path.splitext(path)[0]


def cycles(edges):
    """Strongly connected components of more than one node (Tarjan), each a loop."""
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(edges.get(v, ())):
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
                out.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def folder_graph(root, folder, texts):
    """Edges between the folder's files: {node: {node: [why, ...]}}."""
    files = sources(root, folder)
    defined = {}  # non-static function -> node that defines it
    funcs = {}
    for f in files:
        funcs[f] = functions(texts[f]["code"])
        if f.endswith(".c"):
            for fn in funcs[f]:
                if not fn.static:
                    defined[fn.name] = node(f)
    edges = {node(f): {} for f in files}
    for f in files:
        a = node(f)
        for inc in texts[f]["includes"]:
            if os.path.dirname(inc) == folder and node(inc) != a:
                edges[a].setdefault(node(inc), []).append(f"{f} includes {inc}")
        if not f.endswith(".c"):
            continue  # a header's declarations are not uses
        # uses anywhere in the file: calls, callbacks, and ops tables at file scope
        code = texts[f]["code"]
        for m in re.finditer(r"\b[A-Za-z_]\w*\b", code):
            b = defined.get(m.group(0))
            if b and b != a:
                line = code.count("\n", 0, m.start()) + 1
                user = next((fn.name for fn in funcs[f]
                             if fn.first_line <= line <= fn.last_line), "file scope")
                edges[a].setdefault(b, []).append(f"{user} -> {m.group(0)}")
    return edges, funcs


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("root", nargs="?", default=os.path.join(os.path.dirname(__file__), ".."))
    ap.add_argument("--strict", action="store_true",
                    help="backend loops and backend headers in bench/ and eval/ fail too")
    ap.add_argument("--max-lines", type=int, default=150)
    ap.add_argument("--list-long", type=int, metavar="N")
    args = ap.parse_args()
    root = os.path.abspath(args.root)

    checked = ["include", "common", "core", "backends", "opencl", "vulkan", "hip", "bench", "eval"]
    texts = {}
    for folder in checked:
        for f in sources(root, folder, recursive=True):
            raw = open(os.path.join(root, f), encoding="utf-8", errors="replace").read()
            incs = [r for r in (resolve(root, os.path.join(root, f), m)
                                for m in INCLUDE.findall(raw)) if r]
            texts[f] = {"code": strip_c(raw), "includes": incs}

    errors, warnings = [], []
    for f, t in sorted(texts.items()):
        top = f.split("/")[0]
        for inc in t["includes"]:
            if top in ("bench", "eval"):
                if inc.split("/")[0] in ("backends",) + GPU_BACKENDS and \
                        inc != "backends/dispatch.h":
                    warnings.append(f"include: {f} includes backend header {inc}")
            elif not allowed(f, inc):
                errors.append(f"include: {f} includes {inc}, a header of a layer above")

    for folder in STRICT_FOLDERS + BACKEND_FOLDERS:
        if not os.path.isdir(os.path.join(root, folder)):
            continue
        edges, funcs = folder_graph(root, folder, texts)
        for loop in cycles({a: set(b) for a, b in edges.items()}):
            why = []
            for a in loop:
                for b in loop:
                    if b in edges[a]:
                        why.append(f"{os.path.basename(a)} -> {os.path.basename(b)} "
                                   f"({', '.join(sorted(set(edges[a][b]))[:3])})")
            msg = f"loop in {folder}/: " + " | ".join(why)
            (errors if folder in STRICT_FOLDERS else warnings).append(msg)
        if folder == "core":
            for f, fs in sorted(funcs.items()):
                for fn in fs:
                    if fn.lines >= args.max_lines:
                        errors.append(f"length: {f}:{fn.first_line} {fn.name} has {fn.lines} "
                                      f"lines (at most {args.max_lines - 1})")
                    if args.list_long is not None and fn.lines > args.list_long:
                        print(f"{fn.lines:4d} lines  {f}:{fn.first_line} {fn.name}")

    for w in warnings:
        print(("error: " if args.strict else "warning: ") + w)
    for e in errors:
        print("error: " + e)
    failed = bool(errors) or (args.strict and bool(warnings))
    n_files = len(texts)
    print(f"check-layers: {n_files} files, {len(errors)} errors, {len(warnings)} warnings"
          f"{' (strict)' if args.strict else ''}: {'FAIL' if failed else 'ok'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
