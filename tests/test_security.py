"""No password is printed, no file is written outside ``--out`` / ``--store``, and a name listed twice is refused
before any work (issue 27): each case as a hostile user would type it, checked on what the user sees and on what is
on disk afterwards."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tlkit.analysis.agreement import rank_table
from tlkit.config.experiment import check_study_name
from tlkit.errors import TlkitError, describe_error, mask_secrets, url_password
from tlkit.report import main as report_main
from tlkit.sweep import main
from tlkit.testing import write_experiment

SECRET = "S3cretPW"
TINY = {"trials": 1, "repeats": 0, "train": {"epochs": 1, "batch_size": 16}, "data": {"train_per_class": 8},
        "backbones": ["test_resnet"], "strategies": ["linear_probe"]}


def _files(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


@pytest.mark.parametrize("text, masked", [
    ("postgresql://tlkit:S3cretPW@db.example:5432/studies", "postgresql://tlkit:***@db.example:5432/studies"),
    ("postgresql+psycopg://u:p@ss@host/db", "postgresql+psycopg://u:***@host/db"),  # an unescaped '@' too
    ("ftp://user:S3cretPW@127.0.0.1/x and s3://bucket/k", "ftp://user:***@127.0.0.1/x and s3://bucket/k"),
    ("host=h password=S3cretPW dbname=x", "host=h password=*** dbname=x"),
    ("postgresql://h/db?password=S3cretPW&sslmode=require", "postgresql://h/db?password=***&sslmode=require"),
    ("sqlite:////tmp/a/study.db", "sqlite:////tmp/a/study.db"),
    ("postgresql://u:pa/ss@h/db and more", "postgresql://u:***@h/db and more"),  # unescaped '/': SQLAlchemy takes it
    ("'postgresql://u:pa ss@h:5432/db'", "'postgresql://u:***@h:5432/db'"),
    ("https://user@host/x", "https://user@host/x"),  # no password: nothing to hide
])
def test_mask_secrets_hides_passwords_and_nothing_else(text, masked):
    assert mask_secrets(text) == masked


def test_the_password_a_url_parser_reads_is_masked_wherever_it_appears():
    url = "postgresql://tlkit:we!rd;pass@127.0.0.1/test"
    assert url_password(url) == "we!rd;pass"
    assert mask_secrets(f"driver said: bad password we!rd;pass for {url}", [url_password(url)]) == (
        "driver said: bad password *** for postgresql://tlkit:***@127.0.0.1/test")
    assert mask_secrets("the log of postgres", ["pw"]) == "the log of postgres"  # too short to replace safely


def test_every_tlkit_error_and_described_error_is_masked():
    assert SECRET not in str(TlkitError(f"Cannot open postgresql://u:{SECRET}@h/db"))
    assert describe_error(ValueError(f"bad URL 'ftp://u:{SECRET}@h/'")) == "ValueError: bad URL 'ftp://u:***@h/'"


@pytest.mark.parametrize("flags", [
    ["--storage", f"postgresql+psycopg://tlkit:{SECRET}@127.0.0.1:1/test"],  # nothing listens on port 1
    ["--storage", f"postgresql://tlkit:{SECRET}@127.0.0.1:notaport/test"],  # SQLAlchemy quotes unparsable URLs
    ["--store", f"ftp://tlkit:{SECRET}@127.0.0.1:1/store"],
])
def test_a_storage_or_store_url_that_cannot_be_opened_never_prints_its_password(tmp_path, capfd, flags):
    exp = write_experiment(tmp_path, **TINY)
    assert main([str(exp), "--out", str(tmp_path / "results"), "--quiet", *flags]) == 2
    said = capfd.readouterr()
    assert SECRET not in said.err + said.out and "***@127.0.0.1" in said.err, said.err
    assert not (tmp_path / "results").exists()


def test_the_report_never_prints_the_storage_password(tmp_path, capfd):
    (tmp_path / "results").mkdir()
    code = report_main([str(tmp_path / "results"), "--study", "x", "--storage",
                        f"postgresql+psycopg://tlkit:{SECRET}@127.0.0.1:1/test"])
    said = capfd.readouterr()
    assert code == 2 and SECRET not in said.err + said.out and "***@" in said.err, said.err


@pytest.mark.parametrize("name", ["../../escaped", "/tmp/tlkit-absolute-study", "a/b", "..", ".hidden", "a:b",
                                  "tab\there", "*", "study?", "[ab]", "-x"])  # globs: the store's rm expands them
def test_a_study_name_that_is_not_one_folder_name_is_refused_before_anything_is_written(tmp_path, capfd, name):
    work, store = tmp_path / "work", tmp_path / "store"
    work.mkdir(), store.mkdir()
    exp = write_experiment(work, **TINY)
    before = _files(tmp_path)
    cwd = os.getcwd()
    os.chdir(work)  # the default results folder is results/<name> under the working directory
    try:
        assert main([str(exp), f"--study={name}", "--store", str(store), "--quiet"]) == 2
    finally:
        os.chdir(cwd)
    err = capfd.readouterr().err
    assert "cannot name a results folder" in err and "HINT: pass --study NAME" in err and "Traceback" not in err
    assert _files(tmp_path) == before and not Path("/tmp/tlkit-absolute-study").exists()


def test_an_experiment_file_whose_name_is_not_a_folder_name_is_refused(tmp_path):
    assert check_study_name("cifar-10 run.v2") == "cifar-10 run.v2"  # spaces and dots inside are one folder name
    exp = write_experiment(tmp_path, name="a:b", **TINY)
    with pytest.raises(TlkitError, match="the experiment file's name 'a:b.py' cannot name a results folder"):
        from tlkit.config.loading import load_experiment
        load_experiment(exp)


@pytest.mark.parametrize("override, said", [
    ('backbones=["test_resnet","test_resnet"]', "backbones lists 'test_resnet' more than once"),
    ('strategies=["linear_probe","last_n","linear_probe"]', "strategies lists 'linear_probe' more than once"),
])
def test_a_name_listed_twice_is_refused_up_front(tmp_path, capfd, override, said):
    exp = write_experiment(tmp_path, **TINY)
    assert main([str(exp), "--out", str(tmp_path / "results"), "--quiet", "--set", override]) == 2
    err = capfd.readouterr().err
    assert said in err and "HINT: list each" in err and not (tmp_path / "results").exists()


def test_a_results_folder_from_before_the_refusal_still_gets_a_report(tmp_path, capfd):
    """A folder whose experiment.json lists a backbone twice (written before duplicates were refused) crashed the
    report; the report now reads the name as its one cell."""
    exp, out = write_experiment(tmp_path, **TINY), tmp_path / "results"
    assert main([str(exp), "--out", str(out), "--quiet"]) == 0
    facts = json.loads((out / "experiment.json").read_text())
    facts["backbones"] *= 2
    facts["strategies"] *= 2
    (out / "experiment.json").write_text(json.dumps(facts))
    row = {"backbone": "test_resnet", "logme": 0.1, "knn_accuracy": 0.5, "h_score": 1.0, "seconds": 0.1}
    ranked_twice = rank_table([row, row]).assign(searched=True, train_images=100)  # as such a sweep wrote it
    ranked_twice.to_csv(out / "ranking.csv", index=False)
    capfd.readouterr()
    assert report_main([str(out)]) == 0, capfd.readouterr().err
    text = (out / "report.md").read_text()
    assert "Partial results" not in text and "## Ranking before training" in text
