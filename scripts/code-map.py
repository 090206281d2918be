#!/usr/bin/env python3
"""Print a Markdown (or JSON) map of driftwatch's Rust sources: line counts per module group and the longest functions.

Usage:
    scripts/code-map.py                      # working tree
    scripts/code-map.py --rev REV            # a git revision (read with git show, no checkout)
    scripts/code-map.py --top 20             # the 20 longest functions (default 10)
    scripts/code-map.py --json               # machine-readable output
    scripts/code-map.py --compare OLD        # OLD against the working tree (or --rev), with deltas

Files covered: every .rs file under daemon/src, sdk/src, tests/src, tests/tests,
daemon/tests and plugins/*/src, never anything under a target/ directory.

Groups: the first path component below the root, so daemon/src/store/mod.rs
belongs to daemon/src/store/, and daemon/src/cli.rs is a group of its own. A
module that is both a file and a directory (daemon/src/config.rs with
daemon/src/config/tests.rs) is one group, "daemon/src/config.rs + config/".

Function lengths run from the line holding the `fn` keyword to the line of the
matching closing brace, inclusive. The scanner skips string literals (plain,
byte, C, raw with any number of #), char and byte-char literals (telling them
apart from lifetimes and labels such as 'a), and line and nested block
comments. A `fn` without a body (a trait method ending in `;`) is not counted,
and neither is a function-pointer type (`fn(u8) -> u8`). Names are qualified by
what encloses them: the impl's or trait's type, a mod, or an outer fn
(Store::open, tests::round_trip, run::helper).

Only the Python 3 standard library is used.
"""

import argparse
import bisect
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

FIXED_ROOTS = ["daemon/src", "sdk/src", "tests/src", "tests/tests", "daemon/tests"]


# --------------------------------------------------------------------------
# Finding and reading files
# --------------------------------------------------------------------------

def source_root(path):
    """The root (from FIXED_ROOTS or plugins/NAME/src) that path lies under, or None."""
    parts = path.split("/")
    if "target" in parts or not path.endswith(".rs"):
        return None
    for root in FIXED_ROOTS:
        if path.startswith(root + "/"):
            return root
    if len(parts) >= 4 and parts[0] == "plugins" and parts[2] == "src":
        return "/".join(parts[:3])
    return None


def git(*args):
    return subprocess.run(
        ["git", "-C", ROOT] + list(args),
        check=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    ).stdout


def list_files(rev):
    """Sorted repository-relative paths of the covered .rs files."""
    if rev is None:
        found = []
        for top, dirs, files in os.walk(ROOT):
            dirs[:] = sorted(d for d in dirs if d not in ("target", ".git"))
            for name in files:
                rel = os.path.relpath(os.path.join(top, name), ROOT).replace(os.sep, "/")
                if source_root(rel):
                    found.append(rel)
        return sorted(found)
    out = git("ls-tree", "-r", "--name-only", rev).decode("utf-8", "replace")
    return sorted(p for p in out.splitlines() if source_root(p))


def read_file(rev, path):
    if rev is None:
        with open(os.path.join(ROOT, path), "rb") as f:
            data = f.read()
    else:
        data = git("show", "%s:%s" % (rev, path))
    return data.decode("utf-8", "replace")


def count_lines(text):
    """Like wc -l, plus one for a last line without a newline."""
    if not text:
        return 0
    return text.count("\n") + (0 if text.endswith("\n") else 1)


def group_of(path, all_paths):
    """(group key, display name) for path."""
    root = source_root(path)
    rest = path[len(root) + 1:]
    first = rest.split("/")[0]
    stem = first[:-3] if first.endswith(".rs") else first
    as_file = "%s/%s.rs" % (root, stem)
    dir_prefix = "%s/%s/" % (root, stem)
    has_file = as_file in all_paths
    has_dir = any(p.startswith(dir_prefix) for p in all_paths)
    if has_file and has_dir:
        name = "%s + %s/" % (as_file, stem)
    elif has_dir:
        name = dir_prefix
    else:
        name = as_file
    return name


# --------------------------------------------------------------------------
# Lexing Rust, just enough to match braces
# --------------------------------------------------------------------------

PUNCT = set("{}()[];<>,:&=#!")


def is_ident_start(c):
    return c == "_" or c.isalpha()


def is_ident_char(c):
    return c == "_" or c.isalnum()


def tokenize(src):
    """Yield (kind, value, offset). kind: 'id', 'p' (punctuation), 'lt' (lifetime/label).

    Strings, chars, numbers and comments are consumed and produce no token
    (a string yields one 'str' token so that `extern "C" fn` still reads right).
    """
    i = 0
    n = len(src)
    while i < n:
        c = src[i]
        if c in " \t\r\n":
            i += 1
            continue
        # comments
        if c == "/" and i + 1 < n and src[i + 1] == "/":
            j = src.find("\n", i)
            i = n if j < 0 else j
            continue
        if c == "/" and i + 1 < n and src[i + 1] == "*":
            depth = 1
            i += 2
            while i < n and depth:
                if src.startswith("/*", i):
                    depth += 1
                    i += 2
                elif src.startswith("*/", i):
                    depth -= 1
                    i += 2
                else:
                    i += 1
            continue
        # plain (and, via the 'b'/'c' prefix lexed as an identifier, byte/C) strings
        if c == '"':
            start = i
            i += 1
            while i < n and src[i] != '"':
                i += 2 if src[i] == "\\" else 1
            i += 1
            yield ("str", None, start)
            continue
        # char literal, or a lifetime / loop label
        if c == "'":
            start = i
            if i + 1 < n and src[i + 1] == "\\":
                j = src.find("'", i + 3)  # skip the backslash and the escaped char
                i = n if j < 0 else j + 1
                yield ("char", None, start)
                continue
            if i + 2 < n and src[i + 2] == "'":
                i += 3
                yield ("char", None, start)
                continue
            i += 1
            while i < n and is_ident_char(src[i]):
                i += 1
            yield ("lt", src[start:i], start)
            continue
        if is_ident_start(c):
            start = i
            while i < n and is_ident_char(src[i]):
                i += 1
            word = src[start:i]
            if word in ("r", "br", "cr") and i < n and src[i] in '#"':
                j = i
                while j < n and src[j] == "#":
                    j += 1
                hashes = j - i
                if j < n and src[j] == '"':
                    close = '"' + "#" * hashes
                    k = src.find(close, j + 1)
                    i = n if k < 0 else k + len(close)
                    yield ("str", None, start)
                    continue
                if word == "r" and hashes == 1 and j < n and is_ident_start(src[j]):
                    k = j
                    while k < n and is_ident_char(src[k]):
                        k += 1
                    yield ("id", "r#" + src[j:k], start)  # raw identifier, never a keyword
                    i = k
                    continue
            if word == "b" and i < n and src[i] == "'":
                continue  # byte char: the quote is lexed next as a char literal
            yield ("id", word, start)
            continue
        if c.isdigit():
            while i < n and (is_ident_char(src[i])):
                i += 1
            continue
        if src.startswith("->", i):
            yield ("p", "->", i)
            i += 2
            continue
        if src.startswith("::", i):
            yield ("p", "::", i)
            i += 2
            continue
        if c in PUNCT:
            yield ("p", c, i)
        i += 1


# Tokens after which `impl` starts an item rather than an `impl Trait` type.
ITEM_PREDECESSORS = {None, ";", "{", "}", "]", "unsafe", "default"}


def impl_name(toks, start, end):
    """Type name of an impl header toks[start:end] (start is just past `impl`)."""
    i = start
    # skip impl<...> generics
    if i < end and toks[i][1] == "<":
        depth = 0
        while i < end:
            v = toks[i][1]
            if toks[i][0] == "p" and v == "<":
                depth += 1
            elif toks[i][0] == "p" and v == ">":
                depth -= 1
                if depth == 0:
                    i += 1
                    break
            i += 1
    header = toks[i:end]
    # cut a where clause
    for k, t in enumerate(header):
        if t[0] == "id" and t[1] == "where":
            header = header[:k]
            break
    # `impl Trait for Type`: the part after `for` at angle depth 0
    depth = 0
    for k, t in enumerate(header):
        if t[0] == "p" and t[1] == "<":
            depth += 1
        elif t[0] == "p" and t[1] == ">":
            depth -= 1
        elif depth == 0 and t[0] == "id" and t[1] == "for":
            header = header[k + 1:]
            break
    # the last path segment before any generics: `crate::store::Store<T>` -> Store
    name = None
    for t in header:
        if t[0] == "p" and t[1] == "<":
            break
        if t[0] == "id" and t[1] not in ("dyn", "mut", "const", "unsafe"):
            name = t[1]
    return name or "impl"


def find_functions(src, warn=None):
    """List of dicts {name, qualname, line, end_line, length} for every fn with a body."""
    toks = list(tokenize(src))
    newlines = [k for k, ch in enumerate(src) if ch == "\n"]

    def line_of(offset):
        return bisect.bisect_right(newlines, offset - 1) + 1 if newlines else 1

    def body_open(j):
        """Index of the `{` opening the item whose header starts at j, or None if `;` comes first."""
        depth = 0
        while j < len(toks):
            kind, v, _ = toks[j]
            if kind == "p":
                if v in "([":
                    depth += 1
                elif v in ")]":
                    depth -= 1
                elif depth <= 0 and v == "{":
                    return j
                elif depth <= 0 and v == ";":
                    return None
            j += 1
        return None

    pending = {}  # token index of a `{` -> (kind, name, start offset)
    for i, (kind, v, off) in enumerate(toks):
        if kind != "id":
            continue
        nxt = toks[i + 1] if i + 1 < len(toks) else None
        if v == "fn":
            if nxt is None or nxt[0] != "id":
                continue  # fn-pointer type, or `fn $name` inside a macro
            j = body_open(i + 2)
            if j is not None and j not in pending:
                pending[j] = ("fn", nxt[1], off)
        elif v in ("mod", "trait"):
            if nxt is None or nxt[0] != "id":
                continue
            j = body_open(i + 2)
            if j is not None and j not in pending:
                pending[j] = (v, nxt[1], off)
        elif v == "impl":
            prev = toks[i - 1][1] if i > 0 else None
            if prev not in ITEM_PREDECESSORS:
                continue  # `impl Trait` in a type position
            j = body_open(i + 1)
            if j is not None and j not in pending:
                pending[j] = ("impl", impl_name(toks, i + 1, j), off)

    functions = []
    stack = []  # (kind, name, start offset, depth at which it opened)
    depth = 0
    for i, (kind, v, off) in enumerate(toks):
        if kind != "p":
            continue
        if v == "{":
            depth += 1
            if i in pending:
                k, name, start = pending[i]
                stack.append((k, name, start, depth))
        elif v == "}":
            if stack and stack[-1][3] == depth:
                k, name, start, _ = stack.pop()
                if k == "fn":
                    qual = "::".join([s[1] for s in stack] + [name])
                    line = line_of(start)
                    end_line = line_of(off)
                    functions.append({
                        "name": name,
                        "qualname": qual,
                        "line": line,
                        "end_line": end_line,
                        "length": end_line - line + 1,
                    })
            depth -= 1
    if warn is not None and (depth != 0 or stack):
        warn("braces do not balance (depth %d at the end); lengths may be off" % depth)
    functions.sort(key=lambda f: f["line"])
    return functions


# --------------------------------------------------------------------------
# Collecting a snapshot
# --------------------------------------------------------------------------

def snapshot(rev, top):
    paths = list_files(rev)
    path_set = set(paths)
    groups = {}
    functions = []
    for path in paths:
        text = read_file(rev, path)
        lines = count_lines(text)
        g = group_of(path, path_set)
        entry = groups.setdefault(g, {"group": g, "lines": 0, "files": []})
        entry["lines"] += lines
        entry["files"].append({"path": path, "lines": lines})
        def warn(msg, path=path):
            sys.stderr.write("code-map: %s: %s\n" % (path, msg))
        for f in find_functions(text, warn):
            f = dict(f, file=path)
            functions.append(f)
    functions.sort(key=lambda f: (-f["length"], f["file"], f["line"]))
    return {
        "rev": rev or "working tree",
        "commit": resolve(rev),
        "total_files": len(paths),
        "total_lines": sum(g["lines"] for g in groups.values()),
        "functions_counted": len(functions),
        "groups": [groups[k] for k in sorted(groups)],
        "longest_functions": [
            {k: f[k] for k in ("file", "qualname", "name", "line", "end_line", "length")}
            for f in functions[:top]
        ],
        "_all_functions": functions,
    }


def resolve(rev):
    try:
        if rev is None:
            head = git("rev-parse", "--short", "HEAD").decode().strip()
            dirty = git("status", "--porcelain", "--untracked-files=no").strip()
            return head + ("+changes" if dirty else "")
        return git("rev-parse", "--short", rev + "^{commit}").decode().strip()
    except subprocess.CalledProcessError:
        return None


def public(snap):
    return {k: v for k, v in snap.items() if not k.startswith("_")}


# --------------------------------------------------------------------------
# Markdown
# --------------------------------------------------------------------------

def label(snap):
    if snap["rev"] == "working tree":
        return "working tree (%s)" % snap["commit"]
    return "%s (%s)" % (snap["rev"], snap["commit"])


def short_name(group, path):
    """path relative to its source root: daemon/src/store/mod.rs -> store/mod.rs."""
    return path[len(source_root(path)) + 1:]


def fmt_delta(d):
    return "0" if d == 0 else "%+d" % d


def md_map(snap):
    out = ["## Module map: %s" % label(snap), "",
           "| Group / file | Files | Lines |", "|---|---:|---:|"]
    for g in snap["groups"]:
        out.append("| **%s** | %d | **%d** |" % (g["group"], len(g["files"]), g["lines"]))
        if len(g["files"]) > 1 or g["files"][0]["path"] != g["group"]:
            for f in g["files"]:
                out.append("| &nbsp;&nbsp;↳ %s | | %d |" % (short_name(g["group"], f["path"]), f["lines"]))
    out.append("| **Total** | %d | **%d** |" % (snap["total_files"], snap["total_lines"]))
    return out


def md_top(snap, baseline=None):
    n = len(snap["longest_functions"])
    out = ["## The %d longest functions: %s" % (n, label(snap)), "",
           "(%d functions with a body counted)" % snap["functions_counted"], ""]
    old = {}
    if baseline is not None:
        for f in baseline["_all_functions"]:
            old.setdefault((f["file"], f["qualname"]), f["length"])
        out += ["| # | Function | File | Line | Lines | Δ vs %s |" % baseline["rev"],
                "|---:|---|---|---:|---:|---:|"]
    else:
        out += ["| # | Function | File | Line | Lines |", "|---:|---|---|---:|---:|"]
    for k, f in enumerate(snap["longest_functions"], 1):
        row = "| %d | `%s` | %s | %d | %d |" % (k, f["qualname"], f["file"], f["line"], f["length"])
        if baseline is not None:
            was = old.get((f["file"], f["qualname"]))
            row += " %s |" % ("new here" if was is None else fmt_delta(f["length"] - was))
        out.append(row)
    return out


def md_compare(old, new):
    out = ["## Module map: %s → %s" % (label(old), label(new)), "",
           "| Group / file | Lines before | Lines after | Δ |", "|---|---:|---:|---:|"]
    og = {g["group"]: g for g in old["groups"]}
    ng = {g["group"]: g for g in new["groups"]}
    for name in sorted(set(og) | set(ng)):
        a, b = og.get(name), ng.get(name)
        la = a["lines"] if a else 0
        lb = b["lines"] if b else 0
        out.append("| **%s** | %s | %s | **%s** |" % (
            name, la if a else "—", lb if b else "—", fmt_delta(lb - la)))
        fa = {f["path"]: f["lines"] for f in (a["files"] if a else [])}
        fb = {f["path"]: f["lines"] for f in (b["files"] if b else [])}
        paths = sorted(set(fa) | set(fb))
        if len(paths) > 1 or (paths and paths[0] != name):
            for p in paths:
                out.append("| &nbsp;&nbsp;↳ %s | %s | %s | %s |" % (
                    short_name(name, p),
                    fa.get(p, "—"), fb.get(p, "—"),
                    fmt_delta(fb.get(p, 0) - fa.get(p, 0))))
    out.append("| **Total** (%d → %d files) | %d | %d | **%s** |" % (
        old["total_files"], new["total_files"], old["total_lines"], new["total_lines"],
        fmt_delta(new["total_lines"] - old["total_lines"])))
    out.append("")
    out += md_top(old)
    out.append("")
    out += md_top(new, baseline=old)
    return out


# --------------------------------------------------------------------------

def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rev", help="git revision to read instead of the working tree")
    ap.add_argument("--top", type=int, default=10, help="how many of the longest functions (default 10)")
    ap.add_argument("--json", action="store_true", help="machine-readable output")
    ap.add_argument("--compare", metavar="OLD", help="compare revision OLD against the working tree (or --rev)")
    ap.add_argument("positional_rev", nargs="?", metavar="REV", help="same as --rev")
    args = ap.parse_args()
    rev = args.rev or args.positional_rev
    if args.rev and args.positional_rev and args.rev != args.positional_rev:
        ap.error("two different revisions given")
    for r in (rev, args.compare):
        if r is not None and resolve(r) is None:
            ap.error("not a revision: %s" % r)

    new = snapshot(rev, args.top)
    if args.compare is None:
        if args.json:
            json.dump(public(new), sys.stdout, indent=2, ensure_ascii=False)
            print()
        else:
            print("\n".join(md_map(new) + [""] + md_top(new)))
        return

    old = snapshot(args.compare, args.top)
    if args.json:
        og = {g["group"]: g["lines"] for g in old["groups"]}
        ng = {g["group"]: g["lines"] for g in new["groups"]}
        delta = {name: ng.get(name, 0) - og.get(name, 0) for name in sorted(set(og) | set(ng))}
        json.dump({
            "old": public(old),
            "new": public(new),
            "delta": {"groups": delta, "total_lines": new["total_lines"] - old["total_lines"]},
        }, sys.stdout, indent=2, ensure_ascii=False)
        print()
    else:
        print("\n".join(md_compare(old, new)))


if __name__ == "__main__":
    main()
