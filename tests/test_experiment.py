"""Experiment files load by path, report errors at file:line, and take typed ``--set`` overrides."""
from __future__ import annotations

import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from tlkit.errors import TlkitError
from tlkit.config.experiment import Experiment, Train, validate
from tlkit.config.identity import experiment_to_dict, identity
from tlkit.config.loading import apply_overrides, load_experiment
from tlkit.testing import write_experiment


@pytest.fixture
def exp(tmp_path) -> Experiment:
    return load_experiment(write_experiment(tmp_path, name="tiny"))


def test_loads_by_path_and_names_the_study_after_the_file(exp):
    assert exp.name == "tiny"
    assert exp.backbones == ["test_resnet"]
    assert exp.train.epochs == 2
    assert isinstance(exp.search["lr"], FloatDistribution)


def test_get_experiment_function_is_accepted(tmp_path):
    path = tmp_path / "fn.py"
    path.write_text("from tlkit import Experiment\n\ndef get_experiment():\n"
                    "    return Experiment(backbones=['test_vit'], strategies=['bitfit'], name='named')\n")
    exp = load_experiment(path)
    assert exp.name == "named" and exp.strategies == ["bitfit"]


def test_syntax_error_reports_file_and_line(tmp_path):
    path = tmp_path / "broken.py"
    path.write_text("from tlkit import Experiment\n\nexperiment = Experiment(\n    backbones=['a'],,\n)\n")
    with pytest.raises(TlkitError, match=r"broken\.py:4: syntax error"):
        load_experiment(path)


def test_unknown_field_says_did_you_mean_with_the_line(tmp_path):
    path = tmp_path / "typo.py"
    path.write_text("from tlkit import Experiment, Train\n\nexperiment = Experiment(\n    backbones=['test_vit'],\n"
                    "    strategies=['bitfit'],\n    train=Train(epoch=3),\n)\n")
    with pytest.raises(TlkitError, match=r"typo\.py:6: .*Unknown Train field 'epoch'\. Did you mean 'epochs'\?"):
        load_experiment(path)


def test_wrong_type_names_the_field(tmp_path):
    path = write_experiment(tmp_path, trials="3")
    with pytest.raises(TlkitError, match=r"trials must be int but got '3'"):
        load_experiment(path)
    path = write_experiment(tmp_path, data={"classes": [1, "two"]})
    with pytest.raises(TlkitError, match=r"classes\[1\] must be int but got 'two'"):
        load_experiment(path)


def test_missing_file_and_missing_object(tmp_path):
    with pytest.raises(TlkitError, match="does not exist"):
        load_experiment(tmp_path / "nope.py")
    empty = tmp_path / "empty.py"
    empty.write_text("x = 1\n")
    with pytest.raises(TlkitError, match="defines no `experiment = Experiment"):
        load_experiment(empty)


def test_overrides_are_literals_and_typed(exp):
    new = apply_overrides(exp, ["search.lr=None", "train.lr=3e-4", 'backbones=["test_vit", "test_resnet"]',
                                "train.optimizer=sgd", "train.epochs=7", "train.label_smoothing=0",
                                "data.classes=None"])
    assert new.train.lr == 3e-4 and new.backbones == ["test_vit", "test_resnet"] and "lr" not in new.search
    assert new.train.optimizer == "sgd" and new.train.epochs == 7
    assert new.train.label_smoothing == 0.0 and isinstance(new.train.label_smoothing, float)
    assert new.data.classes is None
    assert exp.train.lr == Train().lr  # the original is untouched


def test_setting_a_searched_field_is_refused_with_the_way_to_do_it(exp):
    """``--set train.lr=3e-4`` while ``lr`` is searched would change nothing: every trial samples its own lr."""
    assert "lr" in exp.search
    with pytest.raises(TlkitError, match=r"searches 'lr' \(search\.lr\), so every trial overrides train\.lr.*"
                                         r"--set search\.lr=\[low,high\].*--set search\.lr=None --set train\.lr=3e-4"):
        apply_overrides(exp, ["train.lr=3e-4"])


def test_override_never_evaluates_code(exp, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for override in ["name=__import__('pathlib').Path('pwned').touch()",  # refused: not a study name
                     "train.optimizer=__import__('pathlib').Path('pwned').touch()"]:  # refused: not an optimizer
        with pytest.raises(TlkitError):
            apply_overrides(exp, [override])
    new = apply_overrides(exp, ["data.name=__import__('pathlib').Path('pwned').touch()"])
    assert new.data.name.startswith("__import__")  # taken as a plain string (checked later, by the sweep), never run
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize("override, message", [
    ("train.lrr=1e-3", r"Unknown key 'train\.lrr'\. Did you mean 'train\.lr'"),
    ("trian.lr=1e-3", r"Unknown key 'trian\.lr'\. Did you mean 'train\.lr'"),
    ("train.epochs=2.5", r"train\.epochs must be int but got 2\.5"),
    ("train.epochs=0", r"train\.epochs must be >= 1 but got 0"),
    ("train.optimizer=adamm", r"Unknown train\.optimizer 'adamm'\. Did you mean 'adamw'"),
    ("backbones=test_vit", r"backbones must be a list but got 'test_vit'"),
    ("train.lr", r"expected KEY=VALUE"),
    ("metric=accuracyy", r"Did you mean 'accuracy'"),
    ("search.lr=5", r"a searched range is \[low, high\]"),
    ("search.lrr=[1, 2]", r"Unknown key 'search\.lrr'\. Did you mean 'search\.lr'"),
])
def test_bad_overrides_fail_clearly(exp, override, message):
    with pytest.raises(TlkitError, match=message):
        apply_overrides(exp, [override])


def test_search_overrides_keep_the_kind_of_distribution(exp):
    new = apply_overrides(exp, ["search.lr=[1e-5, 1e-3]", "search.weight_decay=[1e-6, 0.1]"])
    assert new.search["lr"] == FloatDistribution(1e-5, 1e-3, log=True)
    exp.search["batch_size"] = CategoricalDistribution([16, 32])
    assert apply_overrides(exp, ["search.batch_size=[8, 64]"]).search["batch_size"].choices == (8, 64)


def test_search_keys_must_be_train_fields():
    with pytest.raises(TlkitError, match=r"Unknown search key .*'weight_dekay'. Did you mean 'weight_decay'"):
        Experiment(backbones=["test_vit"], strategies=["bitfit"],
                   search={"weight_dekay": FloatDistribution(1e-4, 1e-2)})


def test_resolved_experiment_is_json_and_identity_ignores_budget(exp):
    import json

    as_dict = experiment_to_dict(exp)
    assert json.loads(json.dumps(as_dict))["search"]["lr"]["name"] == "FloatDistribution"
    more = apply_overrides(exp, ["trials=9", "data.root='/elsewhere'"])
    assert identity(more) == identity(exp)
    assert identity(apply_overrides(exp, ["train.epochs=3"])) != identity(exp)


@pytest.mark.parametrize("fields, message", [
    ({"lr": float("nan")}, r"train\.lr must be a finite number > 0 but got nan\. HINT: .*--set train\.lr="),
    ({"weight_decay": float("inf")}, r"train\.weight_decay must be a finite number >= 0 but got inf"),
    ({"momentum": 1.0}, r"train\.momentum must be in \[0, 1\) but got 1\.0"),
    ({"label_smoothing": -0.1}, r"train\.label_smoothing must be in \[0, 1\)"),
    ({"epochs": 3, "warmup_epochs": 3}, r"train\.warmup_epochs must be less than train\.epochs"),
    ({"max_batches": 0}, r"train\.max_batches must be None or an int >= 1 but got 0"),
    ({"augment": ["crop", "flip"]}, r"Unknown augmentation in train\.augment 'flip'\. Did you mean 'hflip'"),
    ({"epochs": "2"}, r"train\.epochs must be int but got '2'"),
])
def test_a_recipe_no_trial_can_train_with_is_refused_where_it_is_made(fields, message):
    with pytest.raises(TlkitError, match=message):
        Train(**fields)


def test_a_source_recipe_is_checked_and_named_as_the_source(tmp_path):
    path = write_experiment(tmp_path / "src", pretrained=True, source={"data": {"name": "digits", "classes": [0, 1]}})
    exp = load_experiment(path)
    with pytest.raises(TlkitError, match=r"source\.train\.momentum must be in \[0, 1\) .*--set source\.train\."):
        apply_overrides(exp, ["source.train.momentum=-0.5"])
    with pytest.raises(TlkitError, match=r"source\.data\.classes=\[0\] keeps one class"):
        apply_overrides(exp, ["source.data.classes=[0]"])


@pytest.mark.parametrize("search, message", [
    ({"batch_size": IntDistribution(0, 64)}, r"search\['batch_size'\] .* can give 0, which no trial can use: "
                                             r"train\.batch_size must be >= 1"),
    ({"batch_size": FloatDistribution(8, 64)}, r"can give 8\.0, .*train\.batch_size must be int"),
    ({"momentum": FloatDistribution(0.5, 1.0)}, r"can give 1\.0, .*train\.momentum must be in \[0, 1\)"),
    ({"optimizer": CategoricalDistribution(["adamw", "sgdd"])}, r"can give 'sgdd', .*Did you mean 'sgd'"),
    ({"warmup_epochs": IntDistribution(0, 10)}, r"train\.warmup_epochs can be 10 while train\.epochs can be 10"),
])
def test_every_value_a_search_can_give_must_be_one_a_trial_can_use(search, message):
    with pytest.raises(TlkitError, match=message):
        Experiment(backbones=["test_vit"], strategies=["bitfit"], search=search)
    fine = {k: IntDistribution(1, 9) if k in ("batch_size", "warmup_epochs") else
            FloatDistribution(0.0, 0.9) if k == "momentum" else CategoricalDistribution(["adamw", "sgd"])
            for k in search}
    Experiment(backbones=["test_vit"], strategies=["bitfit"], search=fine)  # the same keys, in range: accepted


def test_the_seed_and_weights_are_checked(exp):
    with pytest.raises(TlkitError, match=r"seed must be an int in \[0, 400000\] but got 400001"):
        apply_overrides(exp, ["seed=400001"])
    exp.weights["test_resnett"] = "r.pt"  # as --weights sets it, checked again by validate()
    with pytest.raises(TlkitError, match=r"backbone 'test_resnett', which is not one of the experiment's backbones "
                                         r"\(test_resnet\)\. Did you mean 'test_resnet'\?"):
        validate(exp)


def test_an_experiment_file_must_be_python_and_must_not_exit(tmp_path):
    path = write_experiment(tmp_path, prelude="import sys\nif True:\n    sys.exit(0)\n")
    with pytest.raises(TlkitError, match=r"tiny\.py:5: the file called sys\.exit\(0\) .*defines no experiment"):
        load_experiment(path)
    notes = tmp_path / "notes.txt"
    notes.write_text("experiment = None\n")
    with pytest.raises(TlkitError, match=r"'.*notes\.txt' is not a Python file \(\.py\)"):
        load_experiment(notes)


def test_an_error_in_the_file_is_one_line_with_its_line_number_whatever_it_says(tmp_path):
    path = write_experiment(tmp_path, prelude="raise ValueError('first line\\nsecond line')\n")
    with pytest.raises(TlkitError) as caught:
        load_experiment(path)
    assert str(caught.value) == (f"{path}:3: ValueError: first line HINT: fix that line of the experiment file and "
                                 f"run again.")


def test_runtime_settings_are_apart_from_the_recipe_and_out_of_the_identity(exp):
    """Issue 21: device and checkpoints moved from Train to Runtime, and the identity is read from field metadata."""
    from tlkit.config.experiment import Runtime
    from tlkit.config.identity import not_identity_paths

    assert not_identity_paths() == {"trials", "repeats", "replicates", "max_replicates", "rope", "soups", "name", "backbones", "strategies", "keep_top_backbones",
                                    "runtime", "data.root", "data.download", "source.data.root",
                                    "source.data.download"}
    other = apply_overrides(exp, ["runtime.device='cpu'", "runtime.keep_checkpoints='last'",
                                  "runtime.checkpoint_every_s=0", "trials=9", "data.root='/elsewhere'"])
    assert other.runtime == Runtime("cpu", "last", 0.0) and identity(other) == identity(exp)
    assert not [k for k in identity(exp) if k.startswith(("runtime", "trials", "data.root"))]
    assert identity(apply_overrides(exp, ["train.amp=False"])) != identity(exp)  # a recipe field is identity


@pytest.mark.parametrize("override", ["train.device=cpu", "train.keep_checkpoints=last",
                                      "train.checkpoint_every_s=0"])
def test_a_moved_runtime_field_says_where_it_went(exp, override):
    key = override.split("=")[0].split(".")[1]
    with pytest.raises(TlkitError, match=rf"train\.{key} is now runtime\.{key}.*--set runtime\.{key}="):
        apply_overrides(exp, [override])


def test_an_experiment_file_with_train_device_says_where_it_went(tmp_path):
    path = tmp_path / "old.py"
    path.write_text("from tlkit import Data, Experiment, Train\n"
                    "experiment = Experiment(backbones=['test_resnet'], strategies=['linear_probe'],\n"
                    "                        train=Train(device='cpu'))\n")
    with pytest.raises(TlkitError, match=r"old\.py:3: TypeError: train\.device is now runtime\.device.*"
                                         r"Runtime\(device=\.\.\.\)"):
        load_experiment(path)


def test_an_experiment_file_imports_a_module_beside_it(tmp_path):
    """As `python file.py` does; the shipped CIFAR experiments share one task definition this way."""
    (tmp_path / "shared_task.py").write_text("from tlkit import Data\n\ndef target():\n    return Data('digits')\n")
    (tmp_path / "uses_it.py").write_text("import shared_task\nfrom tlkit import Experiment\n"
                                         "experiment = Experiment(backbones=['test_resnet'], "
                                         "strategies=['linear_probe'], data=shared_task.target())\n")
    assert load_experiment(tmp_path / "uses_it.py").data.name == "digits"
    import sys
    assert str(tmp_path) not in sys.path  # put back as it was


def test_the_offline_cifar_experiments_share_one_source_task():
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "experiments"
    split, strategies = load_experiment(root / "cifar_split.py"), load_experiment(root / "strategies_cifar.py")
    assert split.source == strategies.source and split.data == strategies.data
    assert split.source is not strategies.source  # each its own copy: --data-dir changes one only
