"""Size and repetition figures for the Contrail tree, to track a refactoring from one run to the next.

    python3 scripts/code_metrics.py [--root DIR] [--layout PATH] [--verbose]

It prints four things, read-only (it writes nothing and runs none of the files it reads):

1. Repetition: the first line of the external `duplicates` command over the whole tree at
   `--min-lines 6` and at `--min-lines 4` (pairs of places sharing that many lines, and files
   read), plus any `incomplete:` line; "duplicates: not available" where it is not on PATH.
2. Large functions: the 10 longest functions/methods (`end_lineno - lineno + 1` of the def node,
   decorators not counted) in the project source - tasks/, plugins/, dags/ - and, on its own
   line, the longest one in tests/.
3. Large files: every *.py file in tasks/, plugins/, dags/, tests/, benchmarks/, scripts/ over
   15,000 bytes (decimal: 15_000, not 15 * 1024).
4. Scattered artifact names: string literals in tasks/, plugins/, dags/ (not tests) that name an
   artifact file or folder, outside the layout module (`--layout`, excluded only if it exists).
   Counted over `ast` str constants, f-string parts included, docstrings excluded. A literal
   matches when it equals a name in ARTIFACT_NAMES, or contains one of CONTAINED (the names with
   a dot or slash, plus "runs/", "models/", "preprocess-parts", "ckpt-"). A literal with a space
   is taken for log/error prose and counts only if it contains a dotted or slashed name.

Files are those git lists (tracked, plus untracked ones it does not ignore), so that new modules
of a change in progress count; outside a git checkout, every file below the root.
"""

from __future__ import annotations

import argparse
import ast
import shutil
import subprocess
from pathlib import Path

SOURCE_DIRS = ("tasks", "plugins", "dags")
SIZE_DIRS = ("tasks", "plugins", "dags", "tests", "benchmarks", "scripts")
SIZE_LIMIT = 15_000
ARTIFACT_NAMES = frozenset(
    {
        "manifest.json", "production.json", "schema.json", "stats.json", "best.json", "blessing.json",
        "history.jsonl", "state.json", "running.json", "contrail.json", "report.html", "records.arrow",
        "partials.json", "file-hashes.json", "events", "checkpoints", "tensorboard", "preprocess-parts",
        "warm_start", "runs", "models", "cache",
    }
)  # fmt: skip
EXTRA_CONTAINED = ("runs/", "models/", "/production.json", "preprocess-parts", "ckpt-")
CONTAINED = tuple(sorted({n for n in ARTIFACT_NAMES if "." in n or "/" in n} | set(EXTRA_CONTAINED)))
PROSE_OK = tuple(n for n in CONTAINED if "." in n or "/" in n)


def python_files(root: Path, dirs: tuple[str, ...]) -> list[Path]:
    """The *.py files below root/<dir> for each dir, as git lists them (or all of them, outside git)."""
    try:
        out = subprocess.run(
            ["git", "-C", str(root), "ls-files", "--cached", "--others", "--exclude-standard", "-z", "--", *dirs],
            capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
        files = {root / p for p in out.split("\0") if p.endswith(".py")}
    except (OSError, subprocess.CalledProcessError):
        files = {p for d in dirs for p in (root / d).rglob("*.py")}
    return sorted(p for p in files if p.is_file())


def parse(path: Path) -> ast.Module | None:
    try:
        return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    except (OSError, SyntaxError, UnicodeDecodeError):
        return None


def report_duplicates(root: Path) -> None:
    print("== duplicates (whole tree)")
    if shutil.which("duplicates") is None:
        print("duplicates: not available")
        return
    for min_lines in (6, 4):
        cmd = ["duplicates", "--repo", str(root), "--seconds", "60", "--most", "1", "--min-lines", str(min_lines)]
        try:
            lines = subprocess.run(cmd, capture_output=True, text=True, timeout=120).stdout.splitlines()
        except (OSError, subprocess.TimeoutExpired) as exc:
            print(f"--min-lines {min_lines}: failed ({exc})")
            continue
        print(f"--min-lines {min_lines}: {lines[0] if lines else '(no output)'}")
        for line in lines[1:]:
            if line.startswith("incomplete:"):
                print(f"    {line}")


def functions(tree: ast.AST, prefix: str = ""):
    """Yield (lines, lineno, qualified_name) for every def, nested ones included."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            name = f"{prefix}{node.name}"
            if not isinstance(node, ast.ClassDef):
                yield node.end_lineno - node.lineno + 1, node.lineno, name
            yield from functions(node, f"{name}.")
        else:
            yield from functions(node, prefix)


def report_functions(root: Path) -> None:
    def collect(dirs: tuple[str, ...]) -> list[tuple[int, str, str]]:
        rows = []
        for path in python_files(root, dirs):
            if (tree := parse(path)) is not None:
                rel = path.relative_to(root)
                rows += [(n, f"{rel}:{line}", name) for n, line, name in functions(tree)]
        return sorted(rows, key=lambda r: (-r[0], r[1]))

    print(f"\n== 10 largest functions in {', '.join(SOURCE_DIRS)} (lines  path:line  qualified_name)")
    for n, where, name in collect(SOURCE_DIRS)[:10]:
        print(f"{n:5}  {where}  {name}")
    tests = collect(("tests",))
    if tests:
        n, where, name = tests[0]
        print(f"largest in tests: {n:5}  {where}  {name}")


def report_sizes(root: Path) -> None:
    print(f"\n== *.py files over {SIZE_LIMIT:,} bytes in {', '.join(SIZE_DIRS)}")
    big = [(p.stat().st_size, p.relative_to(root)) for p in python_files(root, SIZE_DIRS)]
    big = sorted((b for b in big if b[0] > SIZE_LIMIT), reverse=True)
    for size, rel in big:
        print(f"{size:8,}  {rel}")
    print(f"{len(big)} file(s)")


def is_artifact(text: str) -> bool:
    if " " in text:
        return any(n in text for n in PROSE_OK)
    return text in ARTIFACT_NAMES or any(n in text for n in CONTAINED)


def artifact_literals(tree: ast.Module) -> list[tuple[int, str]]:
    docstrings = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                docstrings.add(id(first.value))
    return sorted(
        (node.lineno, node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and id(node) not in docstrings
        and is_artifact(node.value)
    )


def report_literals(root: Path, layout: Path, verbose: bool) -> None:
    shown, layout = layout, (layout if layout.is_absolute() else root / layout).resolve()
    excluded = f"excluding {shown}" if layout.is_file() else f"no layout module at {shown}: nothing excluded"
    hits: dict[Path, list[tuple[int, str]]] = {}
    for path in python_files(root, SOURCE_DIRS):
        if path.resolve() != layout and (tree := parse(path)) is not None and (found := artifact_literals(tree)):
            hits[path.relative_to(root)] = found
    total = sum(len(v) for v in hits.values())
    print(f"\n== artifact-name string literals in {', '.join(SOURCE_DIRS)} ({excluded})")
    print(f"total: {total} in {len(hits)} file(s)")
    if verbose:
        for rel, found in hits.items():
            for line, text in found:
                print(f"{rel}:{line}  {text!r}")
        print("per file:")
    for rel, found in sorted(hits.items(), key=lambda kv: (-len(kv[1]), str(kv[0]))):
        print(f"{len(found):5}  {rel}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path(__file__).resolve().parent.parent, help="tree to measure")
    parser.add_argument("--layout", type=Path, default=Path("tasks/contrail/layout.py"), help="layout module")
    parser.add_argument("--verbose", action="store_true", help="list every artifact-name literal")
    args = parser.parse_args()
    root = args.root.resolve()
    report_duplicates(root)
    report_functions(root)
    report_sizes(root)
    report_literals(root, args.layout, args.verbose)


if __name__ == "__main__":
    main()
