"""Trust, round 2 (issue 16): the console scripts end every malformed input with their own message (the argument or
file named, what was expected, how to fix it; exit status 2; no traceback), and curvature-train writes through no
symbolic link in its run folder."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import get_class
from test_report import _make_run, _tiny_run, _with_data_config

from curvature_callback.analysis import read_metrics, read_scores_csv, write_scores_csv
from curvature_callback.analysis.report import write_report
from curvature_callback.core import safe_paths
from curvature_callback.experiments import collect as collect_cli
from curvature_callback.experiments import config_checks, report_cli, run_folder, train
from curvature_callback.experiments.arguments import ConfigError
from curvature_callback.experiments.data import CIFARDataModule, DigitsDataModule, ImageFolderDataModule

ENV = {**os.environ, "WANDB_MODE": "disabled"}


def _cli(module: str, *args: str, cwd: Path | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", f"curvature_callback.experiments.{module}", *args],
                          capture_output=True, text=True, timeout=timeout, cwd=cwd, env=ENV)


def _refused(done: subprocess.CompletedProcess, pattern: str) -> None:
    """Exit status 2, the pattern in the last line of stderr, and no traceback."""
    assert done.returncode == 2, done.stdout[-1000:] + done.stderr[-3000:]
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    assert re.search(pattern, done.stderr.strip().splitlines()[-1]), done.stderr[-2000:]


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """A run folder with images and a reference (test_report's synthetic run), copied by each test that damages it."""
    root = tmp_path_factory.mktemp("trust")
    return {**_make_run(root), "root": root}


@pytest.fixture
def run(made, tmp_path):
    shutil.copytree(made["run"], tmp_path / "run")
    return tmp_path / "run"


def _edit_csv(path: Path, row: int, column: int | slice, value: str) -> None:
    """Set one cell of a CSV (``row`` 0 is the header), or with a slice, replace those cells by ``value``."""
    lines = path.read_text().splitlines()
    cells = lines[row].split(",")
    cells[column] = [value] if isinstance(column, slice) else value
    lines[row] = ",".join(cells)
    path.write_text("\n".join(lines) + "\n")


# ------------------------------------------------------------------------------------------ scores.csv
SCORES_CASES = {  # name: (how the file is damaged, what the message says)
    "a row with too few fields": (lambda p: _edit_csv(p, 4, slice(0, None), "3"),
                                  r"Expected 6 fields on every line of .*scores.csv .* got 1 on line 5"),
    "a row with too many fields": (lambda p: _edit_csv(p, 4, 5, "7,8"), r"Expected 6 fields .* got 7 on line 5"),
    "a 30-digit given_label": (lambda p: _edit_csv(p, 4, 2, "1" * 30),
                               r"Expected column `given_label` of .*scores.csv to hold integers >= 0 .*got '1{30}' on "
                               "line 5: remove or fix the file"),
    "a NaN label": (lambda p: _edit_csv(p, 4, 1, "nan"), r"column `label` .* got 'nan' on line 5"),
    "a negative label": (lambda p: _edit_csv(p, 4, 2, "-5"), r"column `given_label` .* got '-5' on line 5"),
    "a label as a float": (lambda p: _edit_csv(p, 4, 2, "1e300"), r"column `given_label` .* got '1e300'"),
    "flipped that is not 0 or 1": (lambda p: _edit_csv(p, 4, 3, "7"), r"column `flipped` .* to hold 0 or 1, got '7'"),
    "a source_index as a float": (lambda p: _edit_csv(p, 4, 5, "1e3"), r"column `source_index` .* got '1e3'"),
    "an index out of order": (lambda p: _edit_csv(p, 4, 0, "7"), r"column `index` .* to count 0, 1, 2, .* got '7'"),
    "two columns of one name": (lambda p: _edit_csv(p, 0, 2, "label"),
                                r"header of distinct column names, `index` first, got \['index', 'label', 'label'"),
    "no index column": (lambda p: _edit_csv(p, 0, 0, "row"), r"`index` first, got \['row'"),
    "an empty file": (lambda p: p.write_text(""), r"scores.csv is empty: expected a header row"),
    "binary garbage": (lambda p: p.write_bytes(bytes(range(256)) * 8), r"to be UTF-8 CSV text, got bytes that are not"),
    "a field past the csv module's limit": (lambda p: _edit_csv(p, 4, 5, "9" * 200_000),
                                            r"to be CSV, got text the csv module refuses \(field larger than field"),
}


@pytest.mark.parametrize("case", list(SCORES_CASES))
def test_report_refuses_a_malformed_scores_csv_naming_file_line_and_column(run, capsys, case):
    damage, message = SCORES_CASES[case]
    damage(run / "scores.csv")
    assert report_cli.main([str(run)]) == 2
    assert re.search(message, capsys.readouterr().err), case
    with pytest.raises(ValueError, match=message):
        read_scores_csv(run / "scores.csv")


def test_scores_csv_reads_back_what_write_scores_csv_wrote_and_writes_through_no_link(tmp_path):
    columns = {"label": np.array([0, 3]), "given_label": np.array([1, 3]), "flipped": np.array([True, False]),
               "curvature": np.array([np.nan, 2.5]), "file": np.array(["a,b.png", 'c"d.png'], dtype=object)}
    write_scores_csv(tmp_path / "scores.csv", columns)
    got = read_scores_csv(tmp_path / "scores.csv")
    assert got["index"].tolist() == [0, 1] and got["flipped"].tolist() == [1, 0] and np.isnan(got["curvature"][0])
    assert got["file"].tolist() == ["a,b.png", 'c"d.png']
    (tmp_path / "notes.txt").write_text("mine")
    (tmp_path / "linked.csv").symlink_to(tmp_path / "notes.txt")
    with pytest.raises(safe_paths.UnsafePathError, match=r"Refusing to write .*linked.csv: expected a file or nothing"):
        write_scores_csv(tmp_path / "linked.csv", columns)
    assert (tmp_path / "notes.txt").read_text() == "mine"


# ------------------------------------------------------------------------------------------ metrics.json
METRICS_CASES = {
    "nested 100,000 deep": ("[" * 100_000 + "]" * 100_000, r"nested at most 32 deep\), got arrays or objects nested "
                            "100000 deep: remove or fix the file"),
    "an object nested 40 deep": ('{"a":' * 40 + "1" + "}" * 40, r"nested 40 deep"),
    "binary garbage": (bytes(range(256)), r"got bytes that are not UTF-8 text"),
    "empty": ("", r"got unreadable text \(Expecting value"),
    "a 5000-digit number": ('{"train_acc": ' + "9" * 5000 + "}", r"got unreadable text \(Exceeds the limit"),
    "a list": ("[1, 2]", r"a JSON object, got a list"),
}


def _write(path: Path, content: str | bytes) -> None:
    path.write_bytes(content) if isinstance(content, bytes) else path.write_text(content)


@pytest.mark.parametrize("case", list(METRICS_CASES))
def test_report_and_collect_refuse_a_malformed_metrics_json(run, tmp_path, capsys, case):
    content, message = METRICS_CASES[case]
    _write(run / "metrics.json", content)
    assert report_cli.main([str(run)]) == 2
    err = capsys.readouterr().err
    assert re.search(r"curvature-report: Expected .*metrics.json to hold .*" + message, err), err[:500]
    sweep = tmp_path / "sweep"
    (sweep / "0").mkdir(parents=True)
    _write(sweep / "0" / "metrics.json", content)
    assert collect_cli.main([str(sweep)]) == 2
    assert re.search(r"curvature-collect: Expected .*metrics.json to hold .*" + message, capsys.readouterr().err)
    with pytest.raises(ValueError, match=message):
        read_metrics(run / "metrics.json")


def test_report_reads_nan_and_huge_numbers_in_metrics_json_as_numbers(run):
    (run / "metrics.json").write_text('{"train_acc": NaN, "train_acc_original": 1e999, "flipped_memorized": "x"}')
    page = write_report(run).read_text()
    assert "<td>nan</td>" in page and "<td>inf</td>" in page and "flipped samples fit" not in page


# ------------------------------------------------------------------------------------------ curvature-report's options
@pytest.mark.parametrize(("option", "value", "message"), [
    ("--top-k", "-5", r"argument --top-k: expected an integer >= 1 \(a number of samples\), got '-5'"),
    ("--top-k", "0", r"argument --top-k: expected an integer >= 1"),
    ("--top-k", "many", r"argument --top-k: expected an integer >= 1 .*got 'many'"),
    ("--dup-top-k", "0", r"argument --dup-top-k: expected an integer >= 1"),
    ("--dup-threshold", "nan", r"argument --dup-threshold: expected a cosine similarity in \[-1, 1\] .*got 'nan'"),
    ("--dup-threshold", "5", r"argument --dup-threshold: expected a cosine similarity in \[-1, 1\]"),
])
def test_report_refuses_out_of_range_options_as_it_parses(run, capsys, option, value, message):
    with pytest.raises(SystemExit) as exit_:
        report_cli.main([str(run), option, value])
    assert exit_.value.code == 2 and re.search(message, capsys.readouterr().err)
    assert not (run / "report").exists()  # refused before anything was read or written


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"top_k": -5}, r"Expected argument `top_k` to be an integer >= 1 \(samples in each question's grid\), got -5"),
    ({"dup_top_k": 0}, r"Expected argument `dup_top_k` to be an integer >= 1 or None"),
    ({"dup_threshold": float("nan")}, r"Expected argument `dup_threshold` to be a cosine similarity in \[-1, 1\]"),
])
def test_write_report_refuses_out_of_range_options(run, kwargs, message):
    with pytest.raises(ValueError, match=message):
        write_report(run, **kwargs)


def test_report_refuses_class_names_that_miss_a_label(run, capsys):
    assert report_cli.main([str(run), "--class-names", "a,b"]) == 2
    assert re.search(r"Expected `class_names` \(--class-names\) to name every label of the run, 0 to 9, got 2 "
                     r"name\(s\): 'a', 'b'. Pass one name per class in label order, or none.", capsys.readouterr().err)


def test_report_and_collect_refuse_an_out_folder_that_is_a_file(run, tmp_path, capsys):
    (tmp_path / "taken").write_text("mine")
    assert report_cli.main([str(run), "--out", str(tmp_path / "taken")]) == 2
    message = r"Expected .*taken to be a folder for the output, or nothing there, but it is a file: name another " \
              r"folder with --out, or move the file away."
    assert re.search(message, capsys.readouterr().err)
    sweep = tmp_path / "sweep"
    (sweep / "0").mkdir(parents=True)
    (sweep / "0" / "metrics.json").write_text("{}")
    assert collect_cli.main([str(sweep), "--out", str(tmp_path / "taken")]) == 2
    assert re.search(message, capsys.readouterr().err)
    assert (tmp_path / "taken").read_text() == "mine"
    (run / "report").write_text("mine")  # the default output folder, taken by a file
    with pytest.raises(ValueError, match=r"report to be a folder .* move the file away, or pass --out"):
        write_report(run)


def test_report_says_which_array_file_it_cannot_load(run, made, tmp_path, capsys):
    (tmp_path / "empty.npy").write_bytes(b"")
    reference = str(made["root"] / "cifar100_infl_matrix.npz")
    cases = {
        ("--images", str(tmp_path / "empty.npy")): r"Expected .*empty.npy to be an .npy of numeric \[N, ...\] images, "
                                                   r"loadable without pickle, got one that is not \(EOFError",
        ("--images", str(tmp_path)): r"to be an .npy of numeric .* \(IsADirectoryError",
        ("--reference", str(tmp_path / "empty.npy")): r"empty.npy to be an .npy vector of reference scores .*EOFError",
        ("--reference-order", str(tmp_path / "empty.npy"), "--reference", reference):
            r"Expected --reference-order .*empty.npy to be an .npy of integer rows, .* \(EOFError",
        ("--out", str(tmp_path / "empty.npy" / "sub")): r"cannot read or write .*empty.npy/sub \(Not a directory\): "
                                                        "check the path and its permissions",
    }
    for args, message in cases.items():
        assert report_cli.main([str(run), *args]) == 2, args
        assert re.search(message, capsys.readouterr().err), args


def test_report_rebuild_explains_a_config_too_deep_to_read(tmp_path):
    run = _tiny_run(tmp_path / "run")
    (run / ".hydra").mkdir()
    (run / ".hydra" / "config.yaml").write_text("data: " + "[" * 5000)
    page = report_cli.report_run(run, rebuild_data=True).read_text()
    assert re.search(r"images unavailable: .*config.yaml nests collections too deep to read: pass --images", page)
    _with_data_config(run, {"_target_": "curvature_callback.experiments.data.digits.DigitsDataModule", "noise": 5})
    page = report_cli.report_run(run, rebuild_data=True).read_text()
    assert re.search(r"images unavailable: rebuilding .*DigitsDataModule .* failed \(ValueError: Expected argument "
                     r"`noise` to be a finite number in \[0, 1\]", page)


@pytest.mark.slow
def test_the_console_scripts_print_no_traceback(run, tmp_path):
    """The installed entry points, as a user runs them: a 30-digit label, a deep metrics.json, --top-k -5."""
    _edit_csv(run / "scores.csv", 4, 2, "1" * 30)
    _refused(_cli("report_cli", str(run)), r"^curvature-report: Expected column `given_label` of .*scores.csv")
    done = _cli("report_cli", str(run), "--top-k", "-5")
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "--top-k: expected an integer >= 1" in done.stderr
    sweep = tmp_path / "sweep"
    (sweep / "0").mkdir(parents=True)
    (sweep / "0" / "metrics.json").write_text("[" * 100_000)
    _refused(_cli("collect", str(sweep)), r"^curvature-collect: Expected .*metrics.json .* nested 100000 deep")


# ------------------------------------------------------------------------------------------ curvature-collect
def test_collect_refuses_overrides_too_deep_to_parse(tmp_path, capsys):
    (tmp_path / "0" / ".hydra").mkdir(parents=True)
    (tmp_path / "0" / "metrics.json").write_text("{}")
    for text, message in (("[" * 5000, r"overrides.yaml to be Hydra's YAML list of overrides, got collections nested "
                                       "too deep to read"),
                          ("- 'a=" + "[" * 3000 + "]" * 3000 + "'", r"Expected a Hydra override such as "
                           r"data.noise=0.1, got 'a=\[\[\[.* with values nested too deep to parse")):
        (tmp_path / "0" / ".hydra" / "overrides.yaml").write_text(text)
        assert collect_cli.main([str(tmp_path)]) == 2
        assert re.search(message, capsys.readouterr().err)


@pytest.mark.parametrize("kind", ["folder", "fifo"])
def test_collect_refuses_a_metrics_json_that_is_no_file_instead_of_waiting_on_it(tmp_path, capsys, kind):
    (tmp_path / "0").mkdir()
    (tmp_path / "0" / "metrics.json").mkdir() if kind == "folder" else os.mkfifo(tmp_path / "0" / "metrics.json")
    assert collect_cli.main([str(tmp_path)]) == 2  # a FIFO read would block forever
    assert re.search(r"Expected .*metrics.json to be a file \(curvature-train's metrics\), got something else",
                     capsys.readouterr().err)


def test_collect_keeps_table_cells_that_hold_a_bar_or_a_line_break_in_their_cell(tmp_path):
    for job, tag in (("0", "a|b"), ("1", "'c\nd'")):
        (tmp_path / job / ".hydra").mkdir(parents=True)
        (tmp_path / job / ".hydra" / "overrides.yaml").write_text(json.dumps([f"+tag={tag}"]))
        (tmp_path / job / "metrics.json").write_text(json.dumps({"auroc_curvature": 0.5}))
    page = collect_cli.markdown(collect_cli.collect(tmp_path))
    assert "| 0 | a\\|b | 0.5 |" in page and "| 1 | 'c d' | 0.5 |" in page


# ------------------------------------------------------------------------------------------ safe_paths.refuse_links
def test_refuse_links_checks_the_named_entries_and_every_link_under_the_named_folders(tmp_path):
    (tmp_path / "elsewhere.txt").write_text("mine")
    folder = tmp_path / "run"
    (folder / "store" / "deep").mkdir(parents=True)
    (folder / "data").symlink_to(tmp_path)  # not a name the program writes: left alone
    safe_paths.refuse_links(folder, ("scores.csv", "*.log"), ("store",), fix="Remove it.")
    for planted in (folder / "train.log", folder / "store" / "deep" / "x.npy", folder / "scores.csv"):
        planted.symlink_to(tmp_path / "elsewhere.txt")
        with pytest.raises(safe_paths.UnsafePathError, match=rf"Refusing to write {re.escape(str(planted))}: expected "
                           r"a file or nothing there, but it is a link to .*elsewhere.txt; .* Remove it."):
            safe_paths.refuse_links(folder, ("scores.csv", "*.log"), ("store",), fix="Remove it.")
        planted.unlink()
    (tmp_path / "linked-run").symlink_to(folder)  # the folder itself may be a link: the user named it
    safe_paths.refuse_links(tmp_path / "linked-run", ("scores.csv",), ("store",), fix="")
    safe_paths.refuse_links(tmp_path / "nothing-yet", ("scores.csv",), fix="")


# ------------------------------------------------------------------------------------------ curvature-train's config
def _compose(tmp_path, *overrides):
    with initialize_config_dir(config_dir=train.CONF_DIR, version_base="1.3"):
        return compose("train", overrides=[f"output_dir={tmp_path}", *overrides])


@pytest.mark.parametrize(("override", "message"), [
    ("trainer.max_epochs=abc", r"Expected trainer.max_epochs to be an integer >= -1 or null \(-1: no limit\), got "
                               r"'abc'. Fix it on the command line \(trainer.max_epochs=40, say\) or in the config"),
    ("data.batch_size=0", r"Expected data.batch_size to be an integer >= 1 \(training samples per batch\), got 0. "
                          r"Fix it on the command line \(data.batch_size=64, say\)"),
    ("data.noise=2.0", r"Expected data.noise to be a finite number in \[0, 1\] \(the fraction of training labels "
                       r"flipped\), got 2.0. Fix it on the command line \(data.noise=0.1, say\)"),
    ("data.noise=nan", r"Expected data.noise to be a finite number in \[0, 1\] .*got nan"),
    ("data.noise=true", r"Expected data.noise to be a finite number .*got True"),
    ("data.batch_size=1e3", r"Expected data.batch_size to be an integer >= 1 .*got 1000.0"),
    ("data.val_fraction=1.0", r"Expected data.val_fraction to be a finite number in \[0, 1\)"),
    ("data.noise_kind=pairs", r"Expected data.noise_kind to be one of 'symmetric', 'pair', 'confusion', 'model' "
                              r"\(what a flipped label becomes: .*\), got 'pairs'. .*data.noise_kind=confusion"),
    ("+trainer.limit_train_batches=2.5", r"Expected trainer.limit_train_batches to be an integer >= 0 or null, or a "
                                         r"finite number in \[0, 1\]"),
    ("seed=-1", r"Expected seed to be an integer in \[0, 4294967295\]"),
    ("threads=0", r"Expected threads to be an integer >= 1 or null"),
    ("top_k=0", r"Expected top_k to be an integer >= 1 \(samples shown in top_k.png\)"),
    ("report=maybe", r"Expected report to be one of true, false"),
    ("model.lr=-1", r"Expected model.lr to be a finite number > 0 \(the learning rate\), got -1. Fix it on the "
                    r"command line \(model.lr=0.002, say\)"),
    ("model.optimizer=lbfgs", r"Expected model.optimizer to be one of 'sgd', 'adam' \(SGD with momentum, or AdamW\)"),
    ("model.scheduler=step", r"Expected model.scheduler to be one of 'cosine', 'multistep', null"),
    ("data._target_=no_such.Module", r"Expected data._target_ to name a datamodule class, got 'no_such.Module', "
                                     r"which cannot be imported .*: choose one with data=digits, data=cifar10"),
    ("model._target_=no_such.Module", r"Expected model._target_ to name a LightningModule class, got "
                                      r"'no_such.Module', which cannot be imported .*: choose one with model="),
    ("data=imagenet", r"Could not build data.root from the config: MissingMandatoryValue: Missing mandatory value: "
                      r"data.root. Fix data.root on the command line"),
])
def test_train_checks_the_composed_config_before_building_anything(tmp_path, override, message):
    cfg = _compose(tmp_path, override)
    with pytest.raises(ConfigError, match=message):
        train.run(cfg)
    assert list(tmp_path.iterdir()) == []  # nothing built, nothing written


def test_train_refuses_look_alike_noise_on_data_whose_classes_it_does_not_know(tmp_path):
    cfg = _compose(tmp_path, "data=imagenet", "data.root=x", "data.noise_kind=confusion")
    with pytest.raises(ConfigError, match=r"Could not build data from the config: ValueError: "
                                          r"data.noise_kind='confusion' follows the classes of cifar10, fashion_mnist, "
                                          r"digits; ImageFolderDataModule here holds other classes: use "
                                          r"noise_kind=symmetric or pair"):
        train.run(cfg)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(("data", "extra"), [("digits", ()), ("cifar10", ()), ("fashion_mnist", ()),
                                              ("imagenet", ("data.root=x",))])
def test_every_checked_data_and_trainer_key_refuses_a_word_by_its_config_name(tmp_path, data, extra):
    """Each numeric or enumerated key of the data and trainer groups that a config sets gets our message."""
    base = _compose(tmp_path, f"data={data}", *extra)
    keys = [f"data.{k}" for k in get_class(base.data._target_).ARGUMENTS if k in base.data]
    keys += [f"trainer.{k}" for k in config_checks.TRAINER if k in base.trainer]
    keys += [k for k in config_checks.TOP_LEVEL if k in base]
    assert {"data.noise", "data.batch_size", "data.num_workers", "data.seed", "trainer.max_epochs"} <= set(keys)
    for key in keys:
        with pytest.raises(ConfigError, match=rf"Expected {re.escape(key)} to be .*, got 'abc'. Fix it on the command"):
            config_checks.check_config(_compose(tmp_path, f"data={data}", *extra, f"{key}=abc"))


def test_trainer_refusals_past_our_checks_name_the_config_entry(tmp_path):
    with pytest.raises(ConfigError, match=r"Could not build trainer from the config: MisconfigurationException: "
                                          r"`Trainer\(devices=0\)` value is not a valid input .* Fix trainer on the"):
        train.run(_compose(tmp_path, "trainer.devices=0", "~logger"))
    with pytest.raises(ConfigError, match=r"Could not build callbacks.curvature from the config: ValueError: Expected "
                                          r"argument `h` to be a positive finite float"):
        train.run(_compose(tmp_path, "callbacks.curvature.h=abc", "~logger"))


@pytest.mark.parametrize(("cls", "kwargs", "message"), [
    (DigitsDataModule, {"noise": 2.0}, r"Expected argument `noise` to be a finite number in \[0, 1\]"),
    (DigitsDataModule, {"batch_size": 0}, r"Expected argument `batch_size` to be an integer >= 1"),
    (DigitsDataModule, {"val_fraction": 1}, r"Expected argument `val_fraction` to be a finite number in \[0, 1\)"),
    (CIFARDataModule, {"limit": 0}, r"Expected argument `limit` to be an integer >= 1 or null"),
    (CIFARDataModule, {"num_workers": -1}, r"Expected argument `num_workers` to be an integer >= 0"),
    (ImageFolderDataModule, {"root": "x", "image_size": 0}, r"Expected argument `image_size` to be an integer >= 1"),
])
def test_datamodules_check_their_arguments_with_the_same_rules(cls, kwargs, message):
    with pytest.raises(ValueError, match=message):
        cls(**kwargs)


@pytest.mark.slow
def test_train_cli_prints_config_errors_without_a_traceback(tmp_path):
    """The three of the issue, through the console script: our message on stderr, exit status 2."""
    for override, message in (("trainer.max_epochs=abc", r"Expected trainer.max_epochs to be an integer"),
                              ("data.batch_size=0", r"Expected data.batch_size to be an integer >= 1"),
                              ("data.noise=2.0", r"Expected data.noise to be a finite number in \[0, 1\]")):
        done = _cli("train", override, f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
        _refused(done, r"^curvature-train: " + message)


# ------------------------------------------------------------------------------------------ curvature-train's links
@pytest.mark.parametrize("name", ["scores.csv", "metrics.json", "labels.npz", "histogram.png", "top_k.png",
                                  "review_images.npy", "review_indices.npy", "corrections.csv",
                                  "train.log", "report", "curvature", ".hydra", "checkpoints", "csv"])
def test_train_refuses_a_run_folder_with_a_link_where_it_writes(tmp_path, name):
    (tmp_path / "notes.txt").write_text("mine")
    run = tmp_path / "run"
    run.mkdir()
    (run / name).symlink_to(tmp_path / "notes.txt")
    with pytest.raises(safe_paths.UnsafePathError, match=rf"Refusing to write .*run/{re.escape(name)}: expected a file "
                       r"or nothing there, but it is a link to .*notes.txt; .*Remove the link, or run in a fresh "
                       r"folder \(hydra.run.dir=...\)"):
        train.run(_compose(run, "~logger"))
    assert (tmp_path / "notes.txt").read_text() == "mine"


@pytest.mark.slow
def test_train_cli_writes_through_no_link_in_its_run_folder(tmp_path):
    """`ln -s ELSEWHERE/notes.txt RUN/scores.csv; curvature-train hydra.run.dir=RUN`: refused before training, and
    before Hydra writes .hydra/ (a link there, or at its log, is refused too), in a run and in a sweep."""
    notes = tmp_path / "elsewhere" / "notes.txt"
    notes.parent.mkdir()
    notes.write_text("mine")
    run = tmp_path / "run"
    for planted, args in ((run / "scores.csv", [f"hydra.run.dir={run}"]),
                          (run / ".hydra" / "config.yaml", [f"hydra.run.dir={run}"]),
                          (tmp_path / "sweep" / "0" / "train.log", ["-m", f"hydra.sweep.dir={tmp_path / 'sweep'}"])):
        planted.parent.mkdir(parents=True, exist_ok=True)
        planted.symlink_to(notes)
        done = _cli("train", *args, "trainer.max_epochs=1", cwd=tmp_path)
        _refused(done, rf"^curvature-train: Refusing to write {re.escape(str(planted))}: expected a file or nothing "
                       r"there, but it is a link to .*notes.txt; .*Remove the link")
        assert notes.read_text() == "mine" and planted.is_symlink()
        assert not (run / "metrics.json").exists() and not (run / "curvature").exists()
        planted.unlink()


@pytest.mark.parametrize("name", ["labels.npz", "metrics.json"])
def test_train_writers_refuse_a_link_that_appears_during_the_run(tmp_path, monkeypatch, name):
    """The check before the run aside, each file is written by safe_paths (a link made meanwhile is not followed)."""
    monkeypatch.setattr(train, "check_run_dir", lambda run_dir: None)
    (tmp_path / "notes.txt").write_text("mine")
    run = tmp_path / "run"
    run.mkdir()
    (run / name).symlink_to(tmp_path / "notes.txt")
    cfg = _compose(run, "trainer.max_epochs=1", "+trainer.limit_train_batches=2", "~logger", "threads=null",
                   "trainer.enable_progress_bar=false", "callbacks.curvature.n_vectors=1", "model.net.width=8",
                   "report=false")
    with pytest.raises(safe_paths.UnsafePathError, match=rf"Refusing to write .*{re.escape(name)}: expected a file"):
        train.run(cfg)
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_a_run_without_curvature_writes_its_report_ranked_by_the_recommended_scores(tmp_path):
    """A gradient pass (n_vectors=0) stores no curvature: the run ranks its grid by the recommended score and writes
    its report all the same (it was a KeyError, then no report); curvature-report makes it again from the folder."""
    cfg = _compose(tmp_path, "trainer.max_epochs=1", "+trainer.limit_train_batches=2", "~logger", "threads=null",
                   "trainer.enable_progress_bar=false", "callbacks.curvature.n_vectors=0", "model.net.width=8")
    metrics = train.run(cfg)
    assert metrics["auroc_recommended"] is not None and (tmp_path / "top_k.png").is_file()
    assert (tmp_path / "report" / "index.html").is_file() and not (tmp_path / "histogram.png").exists()
    (tmp_path / "report" / "index.html").unlink()
    assert report_cli.main([str(tmp_path)]) == 0
    page = (tmp_path / "report" / "index.html").read_text()
    assert "Samples to review" in page and "Which labels are wrong?" in page


def test_train_refuses_a_run_folder_that_is_a_file(tmp_path):
    (tmp_path / "taken").write_text("mine")
    with pytest.raises(ConfigError, match=r"Expected the run folder .*taken to be a folder, or nothing there, but it "
                                          r"is a file: choose another one \(hydra.run.dir=...\)"):
        run_folder.check_run_dir(tmp_path / "taken")


def test_report_names_a_store_file_list_that_is_not_text(run, capsys):
    (run / "curvature" / "filenames.txt").write_bytes(bytes(range(128, 256)))
    assert report_cli.main([str(run)]) == 2
    assert re.search(r"Expected .*curvature/filenames.txt to be UTF-8 text, one file name a line .* got bytes that are "
                     r"not", capsys.readouterr().err)


def _npy_claiming(path: Path, dtype: str, shape: tuple[int, ...]) -> None:
    """An .npy whose header announces ``shape`` (terabytes) over a few bytes of data."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": dtype, "fortran_order": False, "shape": shape})
    path.write_bytes(header.getvalue() + bytes(64))


@pytest.mark.parametrize("name", ["review_images.npy", "review_indices.npy", "--images"])
def test_report_refuses_an_npy_whose_header_claims_more_than_the_file_holds(run, tmp_path, capsys, name):
    np.save(run / "review_images.npy", np.zeros((2, 8, 8, 3), dtype=np.uint8))
    np.save(run / "review_indices.npy", np.arange(2, dtype=np.int64))
    args = []
    if name == "--images":
        _npy_claiming(tmp_path / "images.npy", "<f4", (10**12, 3, 32, 32))
        args = ["--images", str(tmp_path / "images.npy")]
    else:
        _npy_claiming(run / name, "|u1" if name == "review_images.npy" else "<i8",
                      (10**12, 8, 8, 3) if name == "review_images.npy" else (10**12,))
    assert report_cli.main([str(run), *args]) == 2  # not a MemoryError
    file = "images.npy" if name == "--images" else name
    assert re.search(rf"Expected .*{file} to be an .npy of .* got a header announcing .* in a file holding 64 bytes "
                     r"after it \(a damaged or cut-short file; nothing was loaded\)", capsys.readouterr().err)
    assert not any((run / "report").glob("*"))  # nothing written (the empty output folder comes first, as always)


@pytest.mark.parametrize("name", ["review_images.npy", "review_indices.npy", "--images"])
def test_report_refuses_an_npy_that_is_a_fifo_instead_of_waiting_on_it(run, tmp_path, capsys, name):
    np.save(run / "review_images.npy", np.zeros((2, 8, 8, 3), dtype=np.uint8))
    np.save(run / "review_indices.npy", np.arange(2, dtype=np.int64))
    fifo = tmp_path / "images.npy" if name == "--images" else run / name
    fifo.unlink(missing_ok=True)
    os.mkfifo(fifo)
    args = ["--images", str(fifo)] if name == "--images" else []
    assert report_cli.main([str(run), *args]) == 2  # a read would block forever
    assert re.search(rf"Expected .*{fifo.name} to be an .npy of .*, a regular file, got a named pipe \(FIFO\)",
                     capsys.readouterr().err)
    assert not any((run / "report").glob("*"))  # nothing written (the empty output folder comes first, as always)


def test_train_cli_refuses_corrections_that_drop_every_sample(tmp_path):
    """Not a Hydra traceback of a sampler of no samples: our message, exit status 2, and no more written than for a
    corrections file made for other labels (refused at the same point, the datamodule's setup)."""
    given = DigitsDataModule(noise=0.0).curvature_dataset()
    header = "index,given_label,suggested_label,action,new_label\n"
    every = tmp_path / "every.csv"
    every.write_text(header + "".join(f"{i},{int(y)},,drop,\n" for i, (_, y) in enumerate(given)))
    done = _cli("train", f"data.corrections={every}", "data.noise=0", f"hydra.run.dir={tmp_path / 'run'}",
                cwd=tmp_path)
    _refused(done, rf"^curvature-train: Expected data.corrections=.*every.csv to keep at least one sample to train "
                   rf"on, got every one of the {len(given)} samples dropped: set some rows' action to keep or "
                   r"relabel, or pass data.corrections=null.$")
    other = tmp_path / "other.csv"
    other.write_text(header + f"0,{(int(given[0][1]) + 1) % 10},,drop,\n")
    _refused(_cli("train", f"data.corrections={other}", "data.noise=0", f"hydra.run.dir={tmp_path / 'other'}",
                  cwd=tmp_path), r"^curvature-train: .*other.csv")
    written = sorted(p.relative_to(tmp_path / "run") for p in (tmp_path / "run").rglob("*"))
    assert written == sorted(p.relative_to(tmp_path / "other") for p in (tmp_path / "other").rglob("*"))
    assert not {"scores.csv", "metrics.json", "curvature", "corrections.csv"} & {p.parts[0] for p in written}
