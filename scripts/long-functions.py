#!/usr/bin/env python3
"""Functions of library and binary code (tests left out) longer than a limit, longest
first: `scripts/long-functions.py [LIMIT] DIR...` (default 80 lines)."""
import glob
import re
import sys


def functions(path):
    lines = open(path, encoding="utf-8").read().split("\n")
    i = 0
    while i < len(lines):
        line = lines[i]
        if "#[cfg(test)]" in line:
            return
        m = re.match(r"^(\s*)(pub(\([^)]*\))?\s+)?(async\s+)?fn\s+(\w+)", line)
        if m and not line.rstrip().endswith(";"):
            indent = len(m.group(1))
            j = i + 1
            while j < len(lines) and not (
                lines[j].startswith(" " * indent + "}")
                and len(lines[j]) - len(lines[j].lstrip()) == indent
            ):
                j += 1
            yield m.group(5), i + 1, j - i + 1
            i = j
        i += 1


def main():
    args = sys.argv[1:]
    limit = int(args.pop(0)) if args and args[0].isdigit() else 80
    found = []
    for d in args:
        for path in glob.glob(f"{d}/**/*.rs", recursive=True):
            if path.endswith("tests.rs") or "/tests/" in path:
                continue
            for name, line, n in functions(path):
                if n > limit:
                    found.append((n, f"{path}:{line}", name))
    for n, where, name in sorted(found, reverse=True):
        print(f"{n:4} {where} {name}")
    print(f"{len(found)} function(s) over {limit} lines")


if __name__ == "__main__":
    main()
