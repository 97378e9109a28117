"""Data of any size (issue 22): wall time, decode time and memory of a 1-trial sweep as the dataset grows, against
torchvision ImageFolder + DataLoader reading the same JPEGs.

Synthetic ImageFolders of random-ish 256 px JPEGs (smooth colour fields plus noise, 10 classes, 80 % train) are
generated under ``--bench`` (not committed). For each size it runs, each in a fresh process with a fresh
``TLKIT_CACHE`` (so every run decodes):

* ``decode``: ``load_dataset`` alone, the decode into the store;
* ``sweep auto wN``: ``python -m tlkit.sweep`` of a 1-trial linear probe (``--workers N``), data in memory or mapped
  by tlkit's rule (a quarter of the available memory);
* ``sweep mapped wN``: the same with ``TLKIT_IN_MEMORY_LIMIT=0`` (always mapped);
* ``torchvision``: one data-only epoch of ImageFolder + DataLoader(num_workers=2), resized to the image size;
* ``open .pt`` / ``open .npy``: opening the decoded train split as the old ``torch.save`` cache and as the store.

It prints wall seconds, decode seconds (the ``decode`` run), and the peaks of the whole process tree, sampled every
0.2 s from ``/proc/<pid>/smaps_rollup``: summed RSS, summed PSS (shared pages divided among the processes that map
them, so one page-cache copy counts once) and summed anonymous memory (what the page cache cannot give back).

    python benchmarks/data_scale.py --sizes 2000 8000 24000 [--bench /tmp/tlkit_data_scale]
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import textwrap
import threading
import time
from multiprocessing import Pool
from pathlib import Path

IMAGE = 256
CLASSES = 10


def _write_images(job: tuple[Path, int, int]) -> None:
    import numpy as np
    from PIL import Image

    folder, start, stop = job
    for i in range(start, stop):
        rng = np.random.default_rng(i)
        split = "train" if i % 5 else "test"
        cls = (i // 5) % CLASSES
        small = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
        img = Image.fromarray(small).resize((IMAGE, IMAGE), Image.BICUBIC)
        pixels = np.asarray(img, dtype=np.int16) + rng.integers(-12, 13, (IMAGE, IMAGE, 3), dtype=np.int16)
        path = folder / split / f"class{cls}" / f"{i:06d}.jpg"
        Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(path, quality=90)


def make_folder(bench: Path, n: int) -> Path:
    folder = bench / f"images_{n}"
    if (folder / "done").exists():
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    for split in ("train", "test"):
        for c in range(CLASSES):
            (folder / split / f"class{c}").mkdir(parents=True)
    step = 500
    with Pool(len(os.sched_getaffinity(0))) as pool:
        pool.map(_write_images, [(folder, i, min(n, i + step)) for i in range(0, n, step)])
    (folder / "done").write_text("")
    return folder


def experiment_file(bench: Path, folder: Path, backbone: str, image_size: int) -> Path:
    path = bench / f"exp_{folder.name}.py"
    path.write_text(textwrap.dedent(f"""\
        from tlkit import Data, Experiment, Train

        experiment = Experiment(
            data=Data("imagefolder", root={str(folder)!r}, val_fraction=0.2),
            backbones=[{backbone!r}], strategies=["linear_probe"], pretrained=False,
            train=Train(epochs=2, batch_size=256, image_size={image_size}),
            search={{}}, trials=1, repeats=0, seed=0,
        )
        """))
    return path


# --- measuring -----------------------------------------------------------------------------------------------------

def _tree(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as fh:
                    todo.extend(int(c) for c in fh.read().split())
        except OSError:
            pass
    return out


def _rollup(pid: int) -> dict[str, int]:
    values = {}
    try:
        with open(f"/proc/{pid}/smaps_rollup") as fh:
            for line in fh:
                parts = line.split()
                if len(parts) == 3 and parts[2] == "kB":
                    values[parts[0].rstrip(":")] = int(parts[1]) * 1024
    except OSError:
        pass
    return values


def run_measured(command: list[str], env: dict[str, str]) -> dict[str, float]:
    """Wall seconds and the peaks of the process tree's summed Rss, Pss and Anonymous memory."""
    peaks = {"Rss": 0, "Pss": 0, "Anonymous": 0}
    start = time.perf_counter()
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output: list[str] = []
    reader = threading.Thread(target=lambda: output.extend(proc.stdout), daemon=True)
    reader.start()
    while proc.poll() is None:
        rollups = [_rollup(p) for p in _tree(proc.pid)]
        for k in peaks:
            peaks[k] = max(peaks[k], sum(r.get(k, 0) for r in rollups))
        time.sleep(0.2)
    wall = time.perf_counter() - start
    reader.join(5)
    if proc.returncode != 0:
        sys.exit(f"{' '.join(command)} failed ({proc.returncode}):\n{''.join(output)[-3000:]}")
    result = {"wall": wall, **{k: v / 2**30 for k, v in peaks.items()}}
    for line in output:
        if line.startswith("RESULT "):
            key, value = line.split()[1:3]
            result[key] = float(value)
    return result


def _env(cache: Path, **extra: str) -> dict[str, str]:
    shutil.rmtree(cache, ignore_errors=True)
    return {**os.environ, "TLKIT_CACHE": str(cache), "PYTHONPATH": str(Path(__file__).parents[1]), **extra}


# --- the runs (each its own process: `--one KIND FOLDER`) ----------------------------------------------------------

def one_decode(folder: Path) -> None:
    from tlkit.data.datasets import load_dataset

    start = time.perf_counter()
    train, test = load_dataset("imagefolder", folder)
    print(f"RESULT decode {time.perf_counter() - start:.3f}")
    print(f"RESULT mapped {int(train.mapped)}")


def one_torchvision(folder: Path, image_size: int) -> None:
    import torch
    import torchvision.transforms as T
    from torchvision.datasets import ImageFolder

    transform = T.Compose([T.Resize(image_size), T.ToTensor(), T.Normalize((0.5,) * 3, (0.5,) * 3)])
    loader = torch.utils.data.DataLoader(ImageFolder(str(folder / "train"), transform=transform), batch_size=256,
                                         shuffle=True, num_workers=2)
    start = time.perf_counter()
    for _ in loader:
        pass
    print(f"RESULT epoch {time.perf_counter() - start:.3f}")


def one_open(folder: Path, fmt: str) -> None:
    """Open the decoded train split as the old torch.save cache (``.pt``) or the store (``.npy``) and touch one
    batch; the files were written by ``write_formats``."""
    import numpy as np
    import torch

    start = time.perf_counter()
    if fmt == "pt":
        images = torch.load(folder / "train.pt", weights_only=True)["train_images"]
    else:
        images = torch.from_numpy(np.ascontiguousarray(np.load(folder / "train.npy", mmap_mode="r")[:256]))
    _ = images[:256].float().mean()
    print(f"RESULT open {time.perf_counter() - start:.4f}")


def write_formats(cache: Path, out: Path) -> None:
    import numpy as np
    import torch

    store = next(p for p in (cache / "datasets").iterdir() if p.is_dir())
    out.mkdir(parents=True, exist_ok=True)
    shutil.copy(store / "train.npy", out / "train.npy")
    torch.save({"train_images": torch.from_numpy(np.load(store / "train.npy"))}, out / "train.pt")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[2000, 8000, 24000])
    parser.add_argument("--bench", type=Path, default=Path("/tmp/tlkit_data_scale"))
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--runs", nargs="+", default=["decode", "auto:1", "auto:2", "mapped:2", "torchvision",
                                                      "formats"])
    parser.add_argument("--formats-max", type=int, default=8000, help="largest size the .pt/.npy comparison runs at")
    parser.add_argument("--one", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        kind, folder = args.one[0], Path(args.one[1])
        {"decode": lambda: one_decode(folder), "torchvision": lambda: one_torchvision(folder, args.image_size),
         "pt": lambda: one_open(folder, "pt"), "npy": lambda: one_open(folder, "npy")}[kind]()
        return
    args.bench.mkdir(parents=True, exist_ok=True)
    me = [sys.executable, __file__, "--image-size", str(args.image_size), "--one"]
    print(f"{'images':>7} {'run':<16} {'wall s':>8} {'decode s':>8} {'RSS GiB':>8} {'PSS GiB':>8} {'anon GiB':>8}"
          f"  note")
    for n in args.sizes:
        folder = make_folder(args.bench, n)
        exp = experiment_file(args.bench, folder, args.backbone, args.image_size)
        decode = None
        for run in args.runs:
            cache = args.bench / "cache"
            note = ""
            if run == "decode":
                r = run_measured(me + ["decode", str(folder)], _env(cache))
                decode = r["decode"]
                note = "mapped" if r.get("mapped") else "in memory"
            elif run == "torchvision":
                r = run_measured(me + ["torchvision", str(folder)], _env(cache))
                note = f"one data-only epoch of train: {r['epoch']:.1f} s"
            elif run == "formats":
                if n > args.formats_max:
                    continue
                run_measured(me + ["decode", str(folder)], _env(cache))
                write_formats(cache, args.bench / "formats")
                for fmt in ("pt", "npy"):
                    r = run_measured(me + [fmt, str(args.bench / "formats")], _env(cache))
                    print(f"{n:>7} {'open .' + fmt:<16} {r['wall']:>8.2f} {'':>8} {r['Rss']:>8.2f} {r['Pss']:>8.2f} "
                          f"{r['Anonymous']:>8.2f}  open + first batch {r['open']:.3f} s", flush=True)
                shutil.rmtree(args.bench / "formats")
                continue
            else:
                path, workers = run.split(":")
                extra = {"TLKIT_IN_MEMORY_LIMIT": "0"} if path == "mapped" else {}
                out = args.bench / "out"
                shutil.rmtree(out, ignore_errors=True)
                r = run_measured([sys.executable, "-m", "tlkit.sweep", str(exp), "--out", str(out), "--quiet",
                                  "--workers", workers], _env(cache, **extra))
                run = f"sweep {path} w{workers}"
            shown = f"{decode:.1f}" if run == "decode" and decode is not None else ""
            print(f"{n:>7} {run:<16} {r['wall']:>8.1f} {shown:>8} {r['Rss']:>8.2f} {r['Pss']:>8.2f} "
                  f"{r['Anonymous']:>8.2f}  {note}", flush=True)
    shutil.rmtree(args.bench / "cache", ignore_errors=True)


if __name__ == "__main__":
    main()
