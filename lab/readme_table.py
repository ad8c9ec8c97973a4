"""README.md's benchmark table, written by `scripts/bench --readme` from the run itself.

Between the two markers each row is one benchmark's figures as `report` printed
them (every round's list left out: medians, IQRs and ratios stay), with the
commit and date of the run that measured it. A run replaces the rows of the
benchmarks it ran and keeps the others, so nothing in the table is copied by
hand and each figure says where it came from.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

START = "<!-- bench-table: written by scripts/bench --readme -->"
END = "<!-- /bench-table -->"
HEADER = ["| benchmark | figures | run |", "|---|---|---|"]


def figures(values: dict[str, object]) -> str:
    return ", ".join(f"{k}={v}".replace("|", "/") for k, v in values.items() if "_runs" not in k)


def provenance(root: Path) -> str:
    commit = subprocess.run(
        ["git", "-C", str(root), "describe", "--always", "--dirty"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    return f"{commit or 'unknown'} {time.strftime('%Y-%m-%d')}"


def rows_of(block: list[str]) -> dict[str, str]:
    """benchmark name -> its table line, from the lines between the markers."""
    out = {}
    for line in block:
        if line.startswith("| `"):
            out[line.split("`")[1]] = line
    return out


def update(readme: Path, results: dict[str, object], run: str = "") -> None:
    """Write `results`' rows (`run`: the commit and date that measured them; default:
    the checkout's HEAD today)."""
    lines = readme.read_text().splitlines()
    if START not in lines or END not in lines:
        raise SystemExit(f"{readme}: no benchmark table markers ({START} ... {END})")
    a, b = lines.index(START), lines.index(END)
    rows = rows_of(lines[a + 1 : b])
    run = run or provenance(readme.parent)
    for name, values in results.items():
        assert isinstance(values, dict)
        rows[name] = f"| `{name}` | {figures(values)} | {run} |"
    lines[a + 1 : b] = HEADER + list(rows.values())
    readme.write_text("\n".join(lines) + "\n")
