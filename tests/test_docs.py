"""The docs agree with the tree: docs/DESIGN.md §3's "As built" list names every module of the package and only
modules that exist (one list, checked, so it cannot drift), and the README's first "Use it" example runs as written."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "curvature_callback"


def _section(text: str, heading: str) -> str:
    """A markdown section's text: from the line that starts with ``heading`` to the next heading of its level or
    higher (lines inside fenced code are never headings)."""
    level, lines, inside, fenced = heading.index(" "), [], False, False
    for line in text.splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and line.startswith("#") and len(line) - len(line.lstrip("#")) <= level:
            if inside:
                break
            inside = line.startswith(heading)
            continue
        if inside:
            lines.append(line)
    assert lines, f"no section {heading!r}"
    return "\n".join(lines) + "\n"


def as_built() -> tuple[set[str], set[str]]:
    """The modules and folders DESIGN.md §3 names in its "As built" tree, as paths from the repository root."""
    section = _section((ROOT / "docs" / "DESIGN.md").read_text(), "## 3.")
    block = section.split("As built", 1)[1].split("```", 2)[1]
    modules, folders, stack = set(), set(), []
    for line in block.splitlines():
        if not line.strip():
            continue
        indent = len(line) - len(line.lstrip(" "))
        assert indent % 2 == 0 and indent // 2 <= len(stack), f"DESIGN.md §3: two spaces a level, got {line!r}"
        name = line.split()[0]
        stack[indent // 2:] = [name.rstrip("/")]
        path = "/".join(stack)
        if name.endswith(".py"):
            modules.add(path)
        elif name.endswith("/"):
            folders.add(path)
    return modules, folders


def test_design_names_every_module_of_the_package_and_no_other():
    named, folders = as_built()
    present = {p.relative_to(ROOT).as_posix() for p in PACKAGE.rglob("*.py") if p.name != "__init__.py"}
    assert "curvature_callback" in folders and named, "DESIGN.md §3: no 'As built' tree found"
    assert not present - named, f"modules missing from DESIGN.md §3's 'As built' list: {sorted(present - named)}"
    assert not named - present, f"DESIGN.md §3 names modules that do not exist: {sorted(named - present)}"
    missing = sorted(f for f in folders if not (ROOT / f).is_dir())
    assert not missing, f"DESIGN.md §3 names folders that do not exist: {missing}"


def test_the_readme_links_to_that_list_rather_than_keeping_its_own():
    readme = (ROOT / "README.md").read_text()
    assert "docs/DESIGN.md#3-layers" in readme
    assert not re.search(r"^\s+\w+\.py\s{2,}", readme, flags=re.MULTILINE), "a module list in the README"


def test_the_readmes_first_example_runs_as_written(tmp_path, monkeypatch):
    """The first code of "Use it" (the recommended configuration, ranked by the recommended score, the flagged set),
    with the model and data of examples/minimal.py as `model` and `datamodule`."""
    block = _section((ROOT / "README.md").read_text(), "## Use it").split("```python\n", 1)[1].split("```", 1)[0]
    monkeypatch.chdir(tmp_path)  # the Trainer's logs and the store go under the working directory
    monkeypatch.syspath_prepend(str(ROOT / "examples"))
    sys.modules.pop("minimal", None)
    from minimal import Blobs, Classifier

    namespace = {"model": Classifier(), "datamodule": Blobs()}
    exec(compile(block, "README.md (Use it)", "exec"), namespace)
    cb, datamodule = namespace["cb"], namespace["datamodule"]
    assert cb.store.pass_kind == "forward" and cb.store.epochs == [0, 4, 8, 12, 16]  # the recommended configuration
    flipped = set(datamodule.flipped.tolist())
    wrong_first = np.asarray(namespace["wrong_first"])
    assert sorted(wrong_first.tolist()) == list(range(400))
    assert len(flipped & set(wrong_first[:40].tolist())) >= 15, "the flipped labels should rank first"
    issues = namespace["issues"]
    assert len(flipped & set(np.asarray(issues.flagged).tolist())) >= 10, issues.method


def _slugs(text: str) -> set[str]:
    """GitHub's anchors of a markdown file's headings (lower case, punctuation dropped, spaces to hyphens, a repeated
    heading numbered); lines inside fenced code are never headings."""
    slugs, seen, fenced = set(), {}, False
    for line in text.splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and re.match(r"#{1,6} ", line):
            slug = re.sub(r"[^\w\- ]", "", line.lstrip("#").strip().lower()).replace(" ", "-")
            slugs.add(slug if slug not in seen else f"{slug}-{seen[slug]}")
            seen[slug] = seen.get(slug, 0) + 1
    return slugs


def test_every_link_of_the_readme_and_the_docs_leads_somewhere():
    """A relative link names a file that exists and, with ``#anchor``, a heading of that file."""
    broken = []
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
            if re.match(r"[a-z]+:", target):
                continue  # a web address
            path, _, anchor = target.partition("#")
            file = (page.parent / path).resolve() if path else page
            if not file.exists() or (anchor and anchor not in _slugs(file.read_text())):
                broken.append(f"{page.relative_to(ROOT)}: {target}")
    assert not broken, broken
