"""README.md's results table, made from this folder's README.md: one table, two places, never two versions.

    python docs/results/readme_table.py          # rewrite README.md's table from docs/results/README.md
    python docs/results/readme_table.py --check  # exit 1 when they differ (tests/test_results_index.py)

The rows are copied as they are; only their links change, from this folder's point of view to the repository
root's (`demo.md` -> `docs/results/demo.md`, `../guide/x.md` -> `docs/guide/x.md`).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
INDEX = ROOT / "docs" / "results" / "README.md"
README = ROOT / "README.md"
LINK = re.compile(r"\]\((?!https?://|#)([^)]+)\)")


def table(lines: list[str]) -> tuple[int, int]:
    """[start, end) of the first Markdown table (consecutive lines starting with '|') in `lines`."""
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    end = start
    while end < len(lines) and lines[end].startswith("|"):
        end += 1
    return start, end


def from_root(row: str) -> str:
    """A row of docs/results/README.md with its relative links made relative to the repository root."""

    def fix(m: re.Match) -> str:
        path, _, anchor = m.group(1).partition("#")
        rel = (INDEX.parent / path).resolve().relative_to(ROOT).as_posix() if path else ""
        return f"]({rel}{'#' + anchor if anchor else ''})"

    return LINK.sub(fix, row)


def expected_readme() -> str:
    """README.md with its results table replaced by docs/results/README.md's rows."""
    index = INDEX.read_text().splitlines()
    readme = README.read_text().splitlines()
    i0, i1 = table(index)
    heading = readme.index("## What eexp has measured")
    r0, r1 = table(readme[heading:])
    rows = [from_root(row) for row in index[i0:i1]]
    out = readme[: heading + r0] + rows + readme[heading + r1 :]
    return "\n".join(out) + "\n"


def main(argv: list[str]) -> int:
    want = expected_readme()
    if "--check" in argv:
        if README.read_text() != want:
            print(
                "README.md's results table differs from docs/results/README.md's: "
                "run `python docs/results/readme_table.py`",
                file=sys.stderr,
            )
            return 1
        return 0
    README.write_text(want)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
