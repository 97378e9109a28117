"""tlkit against its peers on the same work: a hand-written PyTorch loop, the same loop in Lightning and a
hand-written Optuna sweep. Each variant runs in its own process, variants interleave round by round, and the
script prints medians, ratios and each process's peak memory.

The work (as in the speed issue): CIFAR-10 classes 5-9 from ``cifar10-jpeg.zip``, 10,000 training images (2,000
per class), 2,500 validation, 5,000 test, 32 px, batch 128, SGD with momentum 0.9, random crop + flip while the
body trains, random initialisation (no weights can be downloaded here). The peers read the JPEGs with torchvision's
ImageFolder and a DataLoader with 2 workers (what a hand-written script does); tlkit reads its decoded uint8 cache,
which is made once before the timing starts, as the peers' JPEGs are extracted once before it starts. "cold" means
no cached features; "warm" means the features of an earlier run are on disk.

A linear probe only makes sense on pretrained weights, and none can be downloaded here, so the probe and sweep works
start every variant from the same weights file (``body.safetensors``: a resnet18 randomly initialised once with
seed 0, standing in for pretrained weights; tlkit reads it as ``weights={"resnet18": ...}``, the hand loops load it
the same way). The body is then the same in every trial, as it is with real pretrained weights; only the head's
initialisation and the learning rate differ.

    pip install lightning   # only for this benchmark
    python benchmarks/peers.py --data-dir ../shared/datasets                        # every work, 3 rounds
    python benchmarks/peers.py --data-dir ../shared/datasets --works sweep --repeats 2

Works and their variants (``--works``):

- ``finetune``: a full fine-tuning trial of resnet18, 2 epochs; training images/s (hand, Lightning, tlkit, tlkit
                with bf16 autocast on this CPU).
- ``probe``:    a linear-probe trial of resnet18, 2 epochs (frozen BatchNorm in eval); whole process (hand, tlkit).
- ``sweep``:    an 8-trial linear-probe sweep of resnet18 (TPE + median pruner, lr searched), 2 epochs a trial;
                whole process (hand Optuna sweep, tlkit cold, tlkit warm).
- ``effnet``:   full fine-tuning of efficientnet_b0, 1 epoch; training images/s (hand NCHW, hand channels_last,
                tlkit, tlkit with bf16 autocast).
- ``tax``:      a one-epoch full fine-tuning trial of resnet18 on tlkit's own data tensors, whole process: a minimal
                hand loop (in the memory layout tlkit picks) vs tlkit's trial runner vs the whole
                ``python -m tlkit.sweep`` around one trial.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
import zipfile
from pathlib import Path
from typing import Any, Callable

CLASSES = [5, 6, 7, 8, 9]
TRAIN_PER_CLASS, VAL_PER_CLASS, TEST_PER_CLASS = 2000, 500, 1000
if os.environ.get("PEERS_SMALL"):  # --small: a quick check that every variant runs, not a measurement
    TRAIN_PER_CLASS, VAL_PER_CLASS, TEST_PER_CLASS = 200, 50, 100
BATCH, LR, MOMENTUM, IMAGE_SIZE = 128, 0.01, 0.9, 32

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # timm's ImageNet defaults, as tlkit uses for these models

WORKS: dict[str, list[str]] = {
    "finetune": ["hand", "lightning", "tlkit", "tlkit-bf16"],
    "probe": ["hand", "tlkit"],
    "sweep": ["optuna", "tlkit-cold", "tlkit-warm"],
    "effnet": ["hand", "hand-channels_last", "tlkit", "tlkit-bf16"],
    "tax": ["hand-on-tlkit-tensors", "tlkit-runner", "tlkit-sweep"],
}
SETUP = {"finetune": ("resnet18", 2, False), "probe": ("resnet18", 2, True), "sweep": ("resnet18", 2, True),
         "effnet": ("efficientnet_b0", 1, False), "tax": ("resnet18", 1, False)}


def body_file() -> Path:
    """The probes' stand-in for pretrained weights (made once by ``prepare_data``)."""
    return Path(os.environ["PEERS_BENCH"]) / "body.safetensors"


# --- the peers: what a user writes by hand --------------------------------------------------------------------------

def _loaders(folder: Path, probe: bool) -> dict[str, Any]:
    import torch
    import torchvision.transforms as T
    from torchvision.datasets import ImageFolder

    plain = T.Compose([T.ToTensor(), T.Normalize(MEAN, STD)])
    train_tf = plain if probe else T.Compose([T.RandomCrop(IMAGE_SIZE, padding=4), T.RandomHorizontalFlip(), plain])
    make = lambda split, tf, shuffle: torch.utils.data.DataLoader(  # noqa: E731
        ImageFolder(str(folder / split), transform=tf), batch_size=BATCH if shuffle else 2 * BATCH,
        shuffle=shuffle, num_workers=2, drop_last=shuffle)
    return {"train": make("train", train_tf, True), "val": make("val", plain, False),
            "test": make("test", plain, False)}


def _model(arch: str, probe: bool, channels_last: bool = False) -> Any:
    import timm
    import torch

    model = timm.create_model(arch, pretrained=False, num_classes=len(CLASSES))
    if probe:  # the shared "pretrained" body; the head keeps its own random initialisation
        from safetensors.torch import load_file

        head = {f"{model.default_cfg['classifier']}.{k}" for k in model.get_classifier().state_dict()}
        body = {k: v for k, v in load_file(str(body_file())).items() if k not in head}
        model.load_state_dict(body, strict=False)
        for p in model.parameters():
            p.requires_grad_(False)
        for p in model.get_classifier().parameters():
            p.requires_grad_(True)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def _accuracy(model: Any, loader: Any, channels_last: bool = False) -> float:
    import torch

    model.eval()
    right = seen = 0
    with torch.no_grad():
        for x, y in loader:
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            right += (model(x).argmax(1) == y).sum().item()
            seen += len(y)
    return right / seen


def hand_trial(arch: str, epochs: int, probe: bool, folder: Path, lr: float = LR, channels_last: bool = False,
               on_epoch: Callable[[int, float], None] | None = None) -> dict[str, float]:
    """The loop a user writes: ImageFolder + DataLoader, SGD, val every epoch, test at the end."""
    import torch
    import torch.nn.functional as F

    torch.manual_seed(0)
    loaders = _loaders(folder, probe)
    model = _model(arch, probe, channels_last)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=lr, momentum=MOMENTUM)
    images, seconds, val = 0, 0.0, 0.0
    for epoch in range(epochs):
        model.train()
        if probe:
            model.eval()  # frozen BatchNorm keeps its statistics
        start = time.perf_counter()
        for x, y in loaders["train"]:
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            images += len(y)
        seconds += time.perf_counter() - start
        val = _accuracy(model, loaders["val"], channels_last)
        if on_epoch is not None:
            on_epoch(epoch, val)
    return {"images_per_s": images / seconds, "val": val, "test": _accuracy(model, loaders["test"], channels_last)}


def optuna_sweep(folder: Path, trials: int = 8) -> dict[str, float]:
    """The sweep a user writes: Optuna's TPE and median pruner around the hand loop."""
    import optuna

    def objective(trial: optuna.Trial) -> float:
        def report(epoch: int, val: float) -> None:
            trial.report(val, epoch)
            if trial.should_prune():
                raise optuna.TrialPruned()
        lr = trial.suggest_float("lr", 1e-4, 1e-1, log=True)
        return hand_trial("resnet18", 2, True, folder, lr=lr, on_epoch=report)["val"]

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=0),
                                pruner=optuna.pruners.MedianPruner())
    study.optimize(objective, n_trials=trials)
    return {"val": study.best_value}


def lightning_trial(folder: Path, epochs: int) -> dict[str, float]:
    """The hand loop as a LightningModule, with Lightning's defaults (checkpointing, its logger)."""
    import lightning as L
    import torch
    import torch.nn.functional as F

    class Module(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.model = _model("resnet18", probe=False)

        def training_step(self, batch: Any, _: int) -> Any:
            x, y = batch
            return F.cross_entropy(self.model(x), y)

        def validation_step(self, batch: Any, _: int) -> None:
            x, y = batch
            self.log("val_acc", (self.model(x).argmax(1) == y).float().mean())

        def test_step(self, batch: Any, _: int) -> None:
            x, y = batch
            self.log("test_acc", (self.model(x).argmax(1) == y).float().mean())

        def configure_optimizers(self) -> Any:
            return torch.optim.SGD(self.parameters(), lr=LR, momentum=MOMENTUM)

    class Clock(L.Callback):  # training time only: from an epoch's start to its validation
        def __init__(self) -> None:
            self.images, self.seconds, self.start = 0, 0.0, None

        def on_train_epoch_start(self, *_: Any) -> None:
            self.start = time.perf_counter()

        def on_train_batch_end(self, trainer: Any, module: Any, outputs: Any, batch: Any, _: int) -> None:
            self.images += len(batch[1])

        def on_validation_start(self, *_: Any) -> None:
            if self.start is not None:
                self.seconds += time.perf_counter() - self.start
                self.start = None

    torch.manual_seed(0)
    loaders = _loaders(folder, probe=False)
    clock = Clock()
    trainer = L.Trainer(max_epochs=epochs, accelerator="cpu", devices=1, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=[clock], default_root_dir=str(folder / "lightning"))
    module = Module()
    trainer.fit(module, loaders["train"], loaders["val"])
    test = trainer.test(module, loaders["test"], verbose=False)[0]["test_acc"]
    return {"images_per_s": clock.images / clock.seconds, "test": test}


def hand_on_tlkit_tensors(experiment: Path) -> dict[str, float]:
    """The least a trial can be: tlkit's decoded tensors and batching, timm's model in the memory layout tlkit
    picks for it (so the two compute the same and the difference is what tlkit adds), a bare SGD loop."""
    import timm
    import torch
    import torch.nn.functional as F

    from tlkit.engine.compute import set_memory_format
    from tlkit.data.tensors import iterate_batches
    from tlkit.config.loading import load_experiment
    from tlkit.cli import prepare

    exp = load_experiment(experiment)
    splits, _ = prepare(exp)
    torch.manual_seed(0)
    model = timm.create_model("resnet18", pretrained=False, num_classes=len(CLASSES))
    layout = torch.channels_last if set_memory_format(model, torch.device("cpu")) else torch.contiguous_format
    optimizer = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM)
    model.train()
    start, images = time.perf_counter(), 0
    for x, y in iterate_batches(splits.train, BATCH, shuffle_seed=0, augment=["crop", "hflip"], padding=4,
                                mean=MEAN, std=STD, drop_last=True, image_size=IMAGE_SIZE):
        loss = F.cross_entropy(model(x.contiguous(memory_format=layout)), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        images += len(y)
    seconds = time.perf_counter() - start
    model.eval()
    scores = {}
    with torch.no_grad():
        for name in ("val", "test"):
            right = seen = 0
            for x, y in iterate_batches(getattr(splits, name), 2 * BATCH, mean=MEAN, std=STD, image_size=IMAGE_SIZE):
                right += (model(x.contiguous(memory_format=layout)).argmax(1) == y).sum().item()
                seen += len(y)
            scores[name] = right / seen
    return {"images_per_s": images / seconds, **scores}


def tlkit_runner_trial(experiment: Path, folder: Path) -> dict[str, float]:
    """One trial through tlkit's runner (epoch checkpoints, outcome file, best weights), no study around it, then
    its best weights scored on test."""
    import torch

    from tlkit.models.backbones import create_backbone, preprocessing
    from tlkit.config.loading import load_experiment
    from tlkit.metrics import get_metric
    from tlkit.engine.runner import TrialSpec, run_trial
    from tlkit.cli import prepare
    from tlkit.engine.evaluate import evaluate
    from tlkit.engine.source import read_weights_file

    exp = load_experiment(experiment)
    splits, _ = prepare(exp)
    shutil.rmtree(folder, ignore_errors=True)
    spec = TrialSpec(backbone="resnet18", strategy="full_finetune", params={}, recipe=exp.train,
                     metric=exp.metric, seed=0, folder=folder)
    result = run_trial(spec, splits, torch.device("cpu"))
    model = create_backbone("resnet18", splits.num_classes, IMAGE_SIZE)
    model.load_state_dict(read_weights_file("resnet18", str(folder / "best.safetensors")))
    test = evaluate(model, splits.test, metric=get_metric("accuracy"), batch_size=BATCH, device=torch.device("cpu"),
                    image_size=IMAGE_SIZE, **preprocessing(model))
    return {"images_per_s": result.history[-1]["images_per_s"], "val": result.value, "test": test.metric}


# --- tlkit: an experiment file and the command line ----------------------------------------------------------------

def experiment_file(bench: Path, work: str, data_dir: Path) -> Path:
    arch, epochs, probe = SETUP[work]
    trials = 8 if work == "sweep" else 1
    search = ('{"lr": FloatDistribution(1e-4, 1e-1, log=True)}' if work == "sweep" else "{}")
    path = bench / f"bench_{work}.py"
    path.write_text(textwrap.dedent(f"""\
        from optuna.distributions import FloatDistribution
        from tlkit import Data, Experiment, Train

        experiment = Experiment(
            data=Data("cifar10", root={str(data_dir)!r}, classes={CLASSES}, train_per_class={TRAIN_PER_CLASS + VAL_PER_CLASS},
                      val_fraction={VAL_PER_CLASS / (TRAIN_PER_CLASS + VAL_PER_CLASS)},
                      test_per_class={TEST_PER_CLASS}),
            backbones=["{arch}"], strategies=["{'linear_probe' if probe else 'full_finetune'}"],
            train=Train(epochs={epochs}, batch_size={BATCH}, optimizer="sgd", lr={LR}, momentum={MOMENTUM},
                        weight_decay=0.0, scheduler="constant", image_size={IMAGE_SIZE}),
            search={search}, trials={trials}, repeats=0, seed=0,
            {f'weights={{"resnet18": {str(body_file())!r}}}' if probe else 'pretrained=False'},
        )
        """))
    return path


def tlkit_sweep(experiment: Path, out: Path, data_dir: Path, *options: str) -> dict[str, float]:
    import pandas as pd

    shutil.rmtree(out, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "tlkit.sweep", str(experiment), "--data-dir", str(data_dir), "--out",
                    str(out), "--quiet", *options], check=True, stdout=subprocess.DEVNULL)
    history = pd.read_csv(out / "history.csv")
    images = history["images_per_s"]
    summary = pd.read_csv(out / "summary.csv")
    return {"images_per_s": float(len(images) / (1 / images).sum()),  # harmonic mean: equal images per epoch
            "val": float(summary["best_val_accuracy"].max()), "test": float(summary["test_accuracy"].iloc[0])}


# --- the driver: one process per run, interleaved -------------------------------------------------------------------

def run_one(variant: str, work: str, bench: Path, data_dir: Path) -> dict[str, float]:
    """Inside the child process."""
    arch, epochs, probe = SETUP[work]
    jpegs = bench / "jpegs"
    if work in ("finetune", "probe", "effnet") and variant.startswith("hand"):
        return hand_trial(arch, epochs, probe, jpegs, channels_last=variant.endswith("channels_last"))
    if variant == "lightning":
        return lightning_trial(jpegs, epochs)
    if variant == "optuna":
        return optuna_sweep(jpegs)
    if variant == "hand-on-tlkit-tensors":
        return hand_on_tlkit_tensors(experiment_file(bench, work, data_dir))
    if variant == "tlkit-runner":
        return tlkit_runner_trial(experiment_file(bench, work, data_dir), bench / "runner_trial")
    if variant == "tlkit-warm":
        return tlkit_sweep(experiment_file(bench, work, data_dir), bench / f"out_{work}", data_dir)
    if variant.startswith("tlkit"):  # tlkit, tlkit-bf16, tlkit-cold, tlkit-sweep: no features from an earlier run
        shutil.rmtree(bench / "cache" / "features", ignore_errors=True)
        options = ["--set", "train.cpu_amp=True"] if variant.endswith("bf16") else []
        return tlkit_sweep(experiment_file(bench, work, data_dir), bench / f"out_{work}", data_dir, *options)
    raise ValueError(variant)


def measure(variant: str, work: str, bench: Path, data_dir: Path) -> dict[str, float]:
    """A fresh process; its wall time and peak resident memory (of the process, or of the largest process it
    waited for: DataLoader workers and tlkit's sweep child are separate processes and are not added up)."""
    if variant == "tlkit-warm" and not (bench / "cache" / "features").is_dir():
        run_one("tlkit-cold", work, bench, data_dir)  # a warm run needs an earlier one
    result = bench / "result.json"
    start = time.perf_counter()
    child = subprocess.Popen([sys.executable, __file__, "--one", variant, "--work", work, "--bench", str(bench),
                              "--data-dir", str(data_dir)], env=_env(bench))
    _, status, usage = os.wait4(child.pid, 0)
    seconds = time.perf_counter() - start
    if status != 0:
        raise SystemExit(f"{work}/{variant} failed (status {status})")
    return {**json.loads(result.read_text()), "seconds": seconds, "peak_mib": usage.ru_maxrss / 1024}


def _env(bench: Path) -> dict[str, str]:
    return {**os.environ, "TLKIT_CACHE": str(bench / "cache"), "PYTHONPATH": str(Path(__file__).parents[1]),
            "PEERS_BENCH": str(bench)}


def prepare_data(bench: Path, data_dir: Path) -> None:
    """Once, outside the timing: the peers' JPEG folders and tlkit's decoded cache of the same zip."""
    if not body_file().is_file():
        import timm
        import torch
        from safetensors.torch import save_file

        torch.manual_seed(0)
        model = timm.create_model("resnet18", pretrained=False, num_classes=len(CLASSES))
        save_file(model.state_dict(), str(body_file()))
    jpegs = bench / "jpegs"
    if not jpegs.is_dir():
        names = {n: i for i, n in enumerate(["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                                             "ship", "truck"])}
        with zipfile.ZipFile(data_dir / "cifar10-jpeg.zip") as zf:
            members = sorted(n for n in zf.namelist() if n.endswith(".jpg"))
            taken: dict[tuple[str, str], int] = {}
            for name in members:
                _, split, cls, _ = name.split("/")
                if names.get(cls) not in CLASSES:
                    continue
                k = taken.get((split, cls), 0)
                taken[(split, cls)] = k + 1
                target = (("test" if k < TEST_PER_CLASS else None) if split == "test" else "train" if k < TRAIN_PER_CLASS else
                          "val" if k < TRAIN_PER_CLASS + VAL_PER_CLASS else None)
                if target:
                    dest = jpegs / target / cls / Path(name).name
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    dest.write_bytes(zf.read(name))
    subprocess.run([sys.executable, "-m", "tlkit.sweep", str(experiment_file(bench, "tax", data_dir)), "--data-dir",
                    str(data_dir), "--check"], check=True, env=_env(bench), stdout=subprocess.DEVNULL)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, required=True, help="folder holding cifar10-jpeg.zip")
    parser.add_argument("--works", nargs="+", default=list(WORKS), choices=list(WORKS))
    parser.add_argument("--repeats", type=int, default=3, help="rounds; each round runs every variant once")
    parser.add_argument("--bench", type=Path, help="working folder (default: a new temporary one)")
    parser.add_argument("--small", action="store_true", help="a tenth of the images: checks that every variant runs")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    args = parser.parse_args()
    data_dir = args.data_dir.resolve()
    if args.small and not os.environ.get("PEERS_SMALL"):
        os.environ["PEERS_SMALL"] = "1"
        os.execv(sys.executable, [sys.executable, *sys.argv])  # the sizes are read at import
    if args.one:
        out = run_one(args.one, args.work, args.bench, data_dir)
        (args.bench / "result.json").write_text(json.dumps(out))
        return
    bench = (args.bench or Path(tempfile.mkdtemp(prefix="tlkit-peers-"))).resolve()
    bench.mkdir(parents=True, exist_ok=True)
    os.environ["PEERS_BENCH"] = str(bench)  # where body_file() is, here and in every child
    prepare_data(bench, data_dir)
    import torch
    print(f"{os.cpu_count()} CPUs (capability {torch.backends.cpu.get_cpu_capability()}), torch {torch.__version__}, "
          f"{args.repeats} rounds, working folder {bench}")
    from tlkit.engine.compute import cpu_has_native_bf16

    native_bf16 = cpu_has_native_bf16()
    if not native_bf16:  # emulated bf16 is many times slower than float32: nothing to learn, hours to spend
        print("this CPU has no native bfloat16 (AVX512-BF16 or AMX): the bf16 variants are skipped")
    for work in args.works:
        variants = [v for v in WORKS[work] if native_bf16 or not v.endswith("bf16")]
        runs: dict[str, list[dict[str, float]]] = {v: [] for v in variants}
        for _ in range(args.repeats):
            for variant in variants:
                runs[variant].append(measure(variant, work, bench, data_dir))
        report(work, runs)


def report(work: str, runs: dict[str, list[dict[str, float]]]) -> None:
    arch, epochs, probe = SETUP[work]
    print(f"\n## {work}: {arch}, {'linear probe' if probe else 'full fine-tuning'}, {epochs} epoch(s)")
    first = WORKS[work][0]
    ref = {k: statistics.median(r[k] for r in runs[first]) for k in ("seconds", "images_per_s") if k in runs[first][0]}
    for variant, rs in runs.items():
        med = {k: statistics.median(r[k] for r in rs) for k in rs[0]}
        each = ", ".join(f"{r['seconds']:.1f}" for r in rs)
        line = (f"{variant:22s} whole process {med['seconds']:7.1f} s (runs: "
                f"{each}; {ref['seconds'] / med['seconds']:.2f}x faster "
                f"than {first})  peak {med['peak_mib']:6.0f} MiB")
        if "images_per_s" in med and "images_per_s" in ref:
            line += (f"  training {med['images_per_s']:6.0f} img/s ({med['images_per_s'] / ref['images_per_s']:.2f}x)")
        if "test" in med:
            line += f"  test acc {med['test']:.3f}"
        elif "val" in med:
            line += f"  best val acc {med['val']:.3f}"
        print(line, flush=True)


if __name__ == "__main__":
    main()
