"""``curvature-collect SWEEP_DIR``: the runs of a ``curvature-train -m`` sweep in one table.

Each run directory under ``SWEEP_DIR`` holds ``metrics.json`` and Hydra's ``.hydra/overrides.yaml``; one row
per run gets the run's overrides (``data.noise``, ``seed``, ...) and its scalar metrics. Writes
``SWEEP_DIR/summary.csv`` (every column) and ``SWEEP_DIR/summary.md`` (the overrides that vary, the detection
metrics; with several seeds, also their mean and standard deviation per setting), and prints the markdown::

    curvature-train -m experiment=cifar10_mislabeled sweep=noise_seed
    curvature-collect multirun/2026-01-31/12-00-00

A sweep folder is data from a stranger: ``overrides.yaml`` is read as plain YAML (nothing resolved or built), a
``metrics.json`` or ``overrides.yaml`` that is a link leading out of ``SWEEP_DIR`` is refused, and
``summary.csv`` / ``summary.md`` are never written through a link (:mod:`curvature_callback.core.safe_paths`).
"""

from __future__ import annotations

import argparse
import csv
import io
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from curvature_callback.analysis.scores import read_metrics
from curvature_callback.core import safe_paths

__all__ = ["collect", "main", "markdown", "parse_overrides", "write_summary"]

#: a row's key naming its overrides (the settings), so that a metric that is text (``label_issues_method``) is
#: never taken for one; left out of ``summary.csv``
OVERRIDES = "_overrides"
#: metrics in the markdown table, in this order, when present
SHOWN = ("auroc_curvature", "ap_curvature", "auroc_loss", "ap_loss", "train_acc", "flipped_memorized",
         "n_flipped", "wall_time_s")


def parse_overrides(lines: Sequence[str]) -> dict[str, str]:
    """Overrides as Hydra parses them: the key as written, ``+`` (add), ``++`` (force add) and ``~`` (delete) kept,
    mapped to the value as written (``""`` for a delete without one).

    Hydra's own grammar does the parsing (quoting, ``@package``, lists); nothing is resolved or built.

    Raises:
        ValueError: a line that is not a Hydra override.

    Example:
        >>> parse_overrides(["data.noise=0.1", "+trainer.limit_train_batches=2", "~logger", "model@m=a,b"])
        {'data.noise': '0.1', '+trainer.limit_train_batches': '2', '~logger': '', 'model@m': 'a,b'}
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

    parser = OverridesParser.create()
    out = {}
    for line in lines:
        try:
            (override,) = parser.parse_overrides([str(line)])
        except OverrideParseException as e:
            raise ValueError(f"Expected a Hydra override such as data.noise=0.1, got {line!r}: {e}") from e
        except RecursionError as e:  # the grammar's parser recurses into nested lists: `a=[[[[...`
            raise ValueError(f"Expected a Hydra override such as data.noise=0.1, got {str(line)[:80]!r} ... with "
                             "values nested too deep to parse: remove or fix it.") from e
        out[override.get_key_element()] = override.input_line.partition("=")[2]
    return out


def _flatten(metrics: dict[str, Any]) -> dict[str, Any]:
    """Scalars as they are, ``{"time_s": {"train": 1}}`` as ``time_s.train``, lists by their length."""
    flat: dict[str, Any] = {}
    for key, value in metrics.items():
        if isinstance(value, dict):
            flat.update({f"{key}.{k}": v for k, v in _flatten(value).items()})
        elif isinstance(value, list):
            flat[f"n_{key}"] = len(value)
        else:
            flat[key] = value
    return flat


def _read_overrides(path: Path, sweep_dir: Path) -> dict[str, str]:
    """A run's ``.hydra/overrides.yaml`` (a list of ``key=value`` strings), read as plain text: nothing resolved."""
    try:
        lines = yaml.safe_load(safe_paths.inside(path, sweep_dir).read_text(encoding="utf-8"))
    except (UnicodeDecodeError, yaml.YAMLError) as e:
        raise ValueError(f"Expected {path} to be Hydra's YAML list of overrides, got unreadable text ({e}): remove "
                         "or fix the file.") from e
    except RecursionError as e:  # PyYAML builds nested collections recursively: `[[[[...` runs out of stack
        raise ValueError(f"Expected {path} to be Hydra's YAML list of overrides, got collections nested too deep to "
                         "read: remove or fix the file.") from e
    if lines is None:
        return {}
    if not isinstance(lines, list) or not all(isinstance(line, (str, int, float, bool)) for line in lines):
        raise ValueError(f"Expected {path} to be a YAML list of `key=value` strings (Hydra's overrides), got "
                         f"{type(lines).__name__}: remove or fix the file.")
    return parse_overrides([str(line) for line in lines])


def collect(sweep_dir: str | Path) -> list[dict[str, Any]]:
    """One row per run under ``sweep_dir`` (any depth), ordered by run folder: ``run``, overrides, metrics.

    Only files inside ``sweep_dir`` are read: a ``metrics.json`` or ``.hydra/overrides.yaml`` that is (or lies
    under) a link leading out of it is refused; linked folders are not searched.

    Raises:
        FileNotFoundError: when no run under ``sweep_dir`` has a ``metrics.json``.
        ValueError: a run's file is unreadable, or (``safe_paths.UnsafePathError``) links out of ``sweep_dir``.
    """
    sweep_dir = Path(sweep_dir)
    rows = []
    for path in sorted(sweep_dir.rglob("metrics.json"), key=lambda p: _natural(p.parent.relative_to(sweep_dir))):
        run = path.parent
        if not path.is_file():  # a folder, a FIFO (reading it would wait forever), a device
            raise ValueError(f"Expected {path} to be a file (curvature-train's metrics), got something else (a folder, "
                             "a FIFO or a device): remove it, or collect another folder.")
        overrides_file = run / ".hydra" / "overrides.yaml"
        overrides = _read_overrides(overrides_file, sweep_dir) if overrides_file.is_file() else {}
        rows.append({"run": run.relative_to(sweep_dir).as_posix(), **overrides,
                     **_flatten(read_metrics(safe_paths.inside(path, sweep_dir))), OVERRIDES: tuple(overrides)})
    if not rows:
        raise FileNotFoundError(
            f"No metrics.json under {sweep_dir}: pass the folder of a finished `curvature-train -m` sweep "
            "(multirun/<date>/<time>), whose runs each wrote metrics.json."
        )
    return rows


def _natural(path: Path) -> list[Any]:
    """Sort key: run folders 2 before 10."""
    return [(0, int(part), "") if part.isdigit() else (1, 0, part) for part in path.parts]


def _format(value: Any) -> str:
    """A markdown table cell: floats to 4 digits; a `|` or a line break in a value from a run folder kept as text."""
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return " ".join(str(value).splitlines()).replace("|", "\\|")


def _table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(map(_format, header)) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(_format(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def markdown(rows: list[dict[str, Any]]) -> str:
    """The runs (overrides that vary, then :data:`SHOWN` metrics) and, with several seeds, their mean ± std."""
    keys = [k for k in rows[0] if k not in ("run", OVERRIDES)]
    for row in rows[1:]:
        keys += [k for k in row if k not in keys and k not in ("run", OVERRIDES)]
    shown = [m for m in SHOWN if any(m in r for r in rows)]
    named = {k for r in rows for k in r.get(OVERRIDES, ())}  # rows of collect(); others: the non-numeric keys
    overrides = [k for k in keys if k not in shown and (k in named if named else not _is_metric(k, rows))]
    varying = [k for k in overrides if len({str(r.get(k)) for r in rows}) > 1]
    text = _table(["run", *varying, *shown], [[r["run"], *(r.get(k) for k in varying), *(r.get(m) for m in shown)]
                                              for r in rows])
    if "seed" in varying:
        settings = [k for k in varying if k != "seed"]
        groups: dict[tuple, list[dict[str, Any]]] = {}
        for r in rows:
            groups.setdefault(tuple(str(r.get(k)) for k in settings), []).append(r)
        means = [m for m in shown if m.startswith(("auroc", "ap", "train_acc", "flipped"))]
        body = []
        for setting, members in groups.items():
            cells = []
            for m in means:
                values = [float(r[m]) for r in members if isinstance(r.get(m), (int, float))]
                cells.append(_mean_std(values))
            body.append([*setting, len(members), *cells])
        text += "\n\nMean ± standard deviation over seeds:\n\n" + _table([*settings, "runs", *means], body)
    return text + "\n"


def _is_metric(key: str, rows: list[dict[str, Any]]) -> bool:
    return any(isinstance(r.get(key), (int, float, bool)) and not isinstance(r.get(key), str) for r in rows)


def _mean_std(values: list[float]) -> str:
    if not values:
        return ""
    mean = sum(values) / len(values)
    if len(values) == 1:
        return f"{mean:.4g}"
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
    return f"{mean:.4g} ± {std:.2g}"


def write_summary(rows: list[dict[str, Any]], out_dir: str | Path) -> tuple[Path, Path]:
    """``summary.csv`` (every column of every run) and ``summary.md`` (:func:`markdown`) in ``out_dir``.

    Raises:
        safe_paths.UnsafePathError: (a ValueError) ``summary.csv`` or ``summary.md`` is a link; it is left as
            it is, and what it points to untouched.
    """
    out_dir = Path(out_dir)
    columns = ["run"]
    for row in rows:
        columns += [k for k in row if k not in columns and k != OVERRIDES]
    csv_path, md_path = out_dir / "summary.csv", out_dir / "summary.md"
    for path in (csv_path, md_path):  # both checked before either is written: a refusal leaves no half summary
        safe_paths.not_a_link(path)
    table = io.StringIO(newline="")
    writer = csv.DictWriter(table, fieldnames=columns)
    writer.writeheader()
    writer.writerows([{k: ("" if r.get(k) is None else r.get(k)) for k in columns} for r in rows])
    safe_paths.write_text(csv_path, table.getvalue())
    safe_paths.write_text(md_path, markdown(rows))
    return csv_path, md_path


def main(argv: Sequence[str] | None = None) -> int:
    """Console script ``curvature-collect``."""
    parser = argparse.ArgumentParser(prog="curvature-collect", description=__doc__.splitlines()[0])
    parser.add_argument("sweep_dir", help="folder of a curvature-train -m sweep (multirun/<date>/<time>)")
    parser.add_argument("--out", default=None, help="where summary.csv and summary.md go (default: SWEEP_DIR)")
    args = parser.parse_args(argv)
    try:
        rows = collect(args.sweep_dir)
        csv_path, md_path = write_summary(rows, safe_paths.output_dir(args.out) if args.out else args.sweep_dir)
    except (FileNotFoundError, ValueError) as e:  # ValueError: an unreadable file, or a link refused
        print(f"curvature-collect: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a file that cannot be read or written: the system says which and why
        print(f"curvature-collect: cannot read or write {e.filename or 'a file'} ({e.strerror or e}): check the path "
              "and its permissions.", file=sys.stderr)
        return 2
    print(markdown(rows), end="")
    print(f"\n{len(rows)} runs -> {csv_path}, {md_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
