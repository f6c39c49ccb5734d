"""A sweep folder is data from a stranger: curvature-collect reads only inside it and writes through no link; the
safe_paths helpers that curvature-report and curvature-collect share."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from curvature_callback.core import safe_paths
from curvature_callback.experiments.collect import collect, main, markdown


def _sweep(root: Path, runs: int = 2) -> Path:
    """A sweep folder as curvature-train -m writes it: runs 0..runs-1, each with metrics.json and overrides."""
    sweep = root / "sweep"
    for r in range(runs):
        run = sweep / str(r)
        (run / ".hydra").mkdir(parents=True)
        (run / ".hydra" / "overrides.yaml").write_text(f"- data.noise=0.{r + 1}\n- seed={r}\n")
        (run / "metrics.json").write_text(json.dumps({"auroc_curvature": 0.9 + r / 100, "n_flipped": 10 * r}))
    return sweep


@pytest.fixture
def outside(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious.txt").write_text("keep me")
    (outside / "metrics.json").write_text(json.dumps({"auroc_curvature": 0.123, "secret": 42}))
    (outside / "overrides.yaml").write_text("- secret=42\n")
    return outside


def test_collect_reads_no_file_that_links_out_of_the_sweep(tmp_path, outside, capsys):
    plants = {
        "metrics.json": lambda s: (s / "1" / "metrics.json", outside / "metrics.json"),
        "overrides.yaml": lambda s: (s / "1" / ".hydra" / "overrides.yaml", outside / "overrides.yaml"),
        ".hydra": lambda s: (s / "1" / ".hydra", outside),
    }
    for name, plant in plants.items():
        sweep = _sweep(tmp_path / name)
        link, target = plant(sweep)
        if link.is_dir():
            for f in link.iterdir():
                f.unlink()
            link.rmdir()
        else:
            link.unlink()
        link.symlink_to(target)
        with pytest.raises(ValueError, match=r"Refusing to read .*1/(metrics\.json|\.hydra/overrides\.yaml): "
                                             r"expected a path inside .*sweep, but a link takes it to .*outside"):
            collect(sweep)
        assert main([str(sweep)]) == 2
        captured = capsys.readouterr()
        assert captured.err.startswith("curvature-collect: Refusing to read") and "secret" not in captured.out
        assert not (sweep / "summary.md").exists() and not (sweep / "summary.csv").exists()


def test_collect_does_not_search_linked_run_folders(tmp_path, outside):
    sweep = _sweep(tmp_path)
    (sweep / "2").symlink_to(outside)  # a "run" whose metrics.json lies elsewhere
    assert [r["run"] for r in collect(sweep)] == ["0", "1"]


def test_collect_writes_through_no_link(tmp_path, outside, capsys):
    for name in ("summary.md", "summary.csv"):
        sweep = _sweep(tmp_path / name)
        (sweep / name).symlink_to(outside / "precious.txt")
        assert main([str(sweep)]) == 2
        assert re.search(rf"curvature-collect: Refusing to write .*{re.escape(name)}: expected a file or nothing "
                         r"there, but it is a link to .*precious\.txt.*Remove the link, or pass --out",
                         capsys.readouterr().err)
        assert (outside / "precious.txt").read_text() == "keep me"
        assert sorted(p.name for p in sweep.glob("summary.*")) == [name]  # neither file written: no half summary
    # a hard link is replaced, not written through
    sweep = _sweep(tmp_path / "hard")
    (sweep / "summary.md").hardlink_to(outside / "precious.txt")
    assert main([str(sweep)]) == 0
    assert (outside / "precious.txt").read_text() == "keep me"
    assert (sweep / "summary.md").read_text() == markdown(collect(sweep))


def test_collect_writes_to_a_named_out_folder_and_reads_overrides_as_plain_text(tmp_path, capsys, monkeypatch):
    sweep = _sweep(tmp_path)
    monkeypatch.setenv("CURVATURE_SECRET", "hunter2")
    (sweep / "0" / ".hydra" / "overrides.yaml").write_text("- data.root=${oc.env:CURVATURE_SECRET}\n- seed=0\n")
    assert main([str(sweep), "--out", str(tmp_path / "new" / "out")]) == 0
    page = (tmp_path / "new" / "out" / "summary.md").read_text()
    assert "${oc.env:CURVATURE_SECRET}" in page and "hunter2" not in page and "hunter2" not in capsys.readouterr().out
    assert collect(sweep)[0]["data.root"] == "${oc.env:CURVATURE_SECRET}"


def test_collect_refuses_unreadable_run_files_with_a_reason(tmp_path, capsys):
    sweep = _sweep(tmp_path)
    (sweep / "1" / "metrics.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match=r"Expected .*1/metrics.json to hold a JSON object, got a list"):
        collect(sweep)
    (sweep / "1" / "metrics.json").write_text("{not json")
    assert main([str(sweep)]) == 2
    assert "to hold curvature-train's JSON metrics, got unreadable" in capsys.readouterr().err
    (sweep / "1" / "metrics.json").write_text("{}")
    (sweep / "1" / ".hydra" / "overrides.yaml").write_text("!!python/object/apply:os.system ['true']\n")
    with pytest.raises(ValueError, match=r"Expected .*overrides.yaml to be Hydra's YAML list of overrides"):
        collect(sweep)
    (sweep / "1" / ".hydra" / "overrides.yaml").write_text("a: {b: 1}\n")
    with pytest.raises(ValueError, match=r"to be a YAML list of `key=value` strings .* got dict"):
        collect(sweep)


# ------------------------------------------------------------------------------------------ safe_paths
def test_inside_resolves_links_and_refuses_those_that_leave(tmp_path, outside):
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "f.txt").write_text("x")
    (root / "near").symlink_to(root / "sub" / "f.txt")  # a link that stays inside is fine
    assert safe_paths.inside(root / "near", root) == (root / "sub" / "f.txt").resolve()
    (root / "far").symlink_to(outside / "precious.txt")
    with pytest.raises(safe_paths.UnsafePathError, match=r"Refusing to read .*far: expected a path inside .*root"):
        safe_paths.inside(root / "far", root)
    with pytest.raises(safe_paths.UnsafePathError, match="Refusing to read"):
        safe_paths.inside(root / ".." / "outside" / "precious.txt", root)  # no link needed: ..


def test_check_tree_follows_inner_links_once_and_refuses_outer_ones(tmp_path, outside):
    root = tmp_path / "root"
    (root / "store" / "deep").mkdir(parents=True)
    (root / "store" / "loop").symlink_to(root / "store")  # a loop ends
    (root / "elsewhere").mkdir()
    (root / "store" / "alias").symlink_to(root / "elsewhere")  # followed: what it holds is checked too
    safe_paths.check_tree(root / "store", root)
    (root / "elsewhere" / "leak").symlink_to(outside / "precious.txt")
    with pytest.raises(safe_paths.UnsafePathError, match=r"Refusing to read .*leak"):
        safe_paths.check_tree(root / "store", root)


def test_output_dir_refuses_links_out_of_the_given_folder_unless_named(tmp_path, outside):
    root = tmp_path / "root"
    root.mkdir()
    (root / "report").symlink_to(outside)
    with pytest.raises(safe_paths.UnsafePathError, match=r"Refusing to write into .*report: expected a folder inside"):
        safe_paths.output_dir(root / "report", root=root)
    (root / "via").symlink_to(outside)
    with pytest.raises(safe_paths.UnsafePathError, match=r"Refusing to write into .*via/report: expected a path in"):
        safe_paths.output_dir(root / "via" / "report", root=root)
    assert sorted(p.name for p in outside.iterdir()) == ["metrics.json", "overrides.yaml", "precious.txt"]
    assert safe_paths.output_dir(root / "report") == root / "report"  # named by the user: allowed
    (root / "thumbs").symlink_to(outside)
    with pytest.raises(safe_paths.UnsafePathError, match=r"Refusing to write into .*thumbs: expected a folder"):
        safe_paths.subdir(root, "thumbs")


def test_write_bytes_replaces_files_and_never_follows_links(tmp_path, outside):
    path = tmp_path / "f.bin"
    safe_paths.write_bytes(path, b"one")
    safe_paths.write_text(path, "two")
    assert path.read_text() == "two" and oct(path.stat().st_mode & 0o777) == oct(0o666 & ~safe_paths._UMASK)
    link = tmp_path / "link.txt"
    link.symlink_to(outside / "precious.txt")
    with pytest.raises(safe_paths.UnsafePathError, match=r"Refusing to write .*link.txt: expected a file or nothing"):
        safe_paths.write_text(link, "pwned")
    dangling = tmp_path / "dangling.txt"
    dangling.symlink_to(outside / "new.txt")  # a link to a file that does not exist yet: not created
    with pytest.raises(safe_paths.UnsafePathError):
        safe_paths.write_text(dangling, "pwned")
    assert (outside / "precious.txt").read_text() == "keep me" and not (outside / "new.txt").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]  # no temporary file left behind
    assert os.path.islink(link) and os.path.islink(dangling)
