"""The README's configuration reference is the code's settings table, not a copy that drifts."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

from pyoverlay.cli.commands import cmd_options


def test_readme_lists_every_setting_exactly_as_pyoverlay_options_prints_it() -> None:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        cmd_options()
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    assert out.getvalue().strip() in readme, (
        "README options table is stale: paste `pyoverlay options`"
    )
