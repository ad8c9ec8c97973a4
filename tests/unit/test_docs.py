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


ROOT = Path(__file__).parents[2]
PACKAGES = [
    "plugin",
    "driver",
    "driver/core",
    "driver/overlay",
    "driver/servicelb",
    "driver/secure",
    "driver/kernel",
    "ipam",
    "cluster",
    "core",
    "cli",
    "lab",
    "testing",
]


def test_every_package_docstring_lists_its_modules_and_nothing_else() -> None:
    """A newcomer reads a package's docstring for its map: every module is in it, one line
    each, and no module it names is gone; a folder's subpackages are named too."""
    import ast

    problems = []
    for pkg in PACKAGES:
        folder = ROOT / pkg
        doc = ast.get_docstring(ast.parse((folder / "__init__.py").read_text())) or ""
        modules = {p.name for p in folder.glob("*.py") if p.name != "__init__.py"}
        subpackages = {p.parent.name + "/" for p in folder.glob("*/__init__.py")}
        listed = {w for w in doc.split() if w.endswith(".py") and "/" not in w}
        named = {w for w in doc.split() if w.endswith("/")}
        problems += [f"{pkg}: {m} is not in its docstring" for m in sorted(modules - listed)]
        problems += [f"{pkg}: {m} is listed but does not exist" for m in sorted(listed - modules)]
        problems += [f"{pkg}: {s} is not in its docstring" for s in sorted(subpackages - named)]
    assert not problems, "\n".join(problems)


def test_no_doc_points_outside_the_repository() -> None:
    """The project stands alone: nothing it ships or documents refers to ../shared."""
    texts = [*ROOT.glob("*.md"), *ROOT.glob("docs/*.md")]
    texts += [p for pkg in PACKAGES for p in (ROOT / pkg).glob("*.py")]
    bad = [str(p.relative_to(ROOT)) for p in texts if "shared/" in p.read_text()]
    assert not bad, bad
