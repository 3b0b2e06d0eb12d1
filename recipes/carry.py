"""Carry a recipe's seed to another machine without its data: what is dear to make, not what is cheap.

    python recipes/carry.py save OUT DIR       # on the machine that stops
    make -C recipes ... <OUT's data files>     # on the next one, in the same OUT: the data stages again
    python recipes/carry.py restore DIR OUT    # then make as before: it goes on where the first machine stopped

A seed's folder holds two kinds of things. The data stages' files (the expert, the rollouts, the reflections, the
examples, the base) are large, and the recipe makes them again exactly from the same games, seeds and code. The
fine-tunes and evaluations are small and cost most of a seed's hours. `save` copies the second kind into DIR: every
run folder (one with a metrics.jsonl, a checkpoints/ or a `done`) without its checkpoints when it is done, with its
newest step-N checkpoint when it is not (one stopped before its first checkpoint is left, to be made again); the
episode folders (eval/, recovery/: whole files and the parts of stopped evaluations, each gzipped, since a committed
file stays under 2 MiB); the top-level JSON the runs' comparison wrote (compare.json); and the data stages' --stats
(DIR/stats/), which a published seed keeps. What it leaves, the data, is listed in DIR/data.txt. DIR is written whole
or not at all (through DIR.tmp), but for DIR/machine.txt, the seed's record of where and when each part ran, written
by hand: a save keeps it (or takes OUT's where DIR has none) and a restore leaves it in DIR. A done seed is
published from DIR as from OUT, without the machine: `make publish OUT=DIR ...` (PUBLISH_NEEDS= when DIR has no
compare.json).

`restore` first checks that OUT holds again every data entry DIR/data.txt lists (else it names them and stops, so that
make, finding them missing, never remakes a data file after the runs and so trains them again), then copies the runs
and episodes in (the episodes unzipped) with new times, newer than the data: make takes a done run as done, a
stopped fine-tune continues from its checkpoint (`finetune --resume` refuses, by its fingerprint, examples that
differ from the run's) and a stopped evaluation from its part. Restore into the same OUT path as the save: --resume
knows the run's files by where they are or by their bytes, and a data file made again differs in its records' times.
"""

from __future__ import annotations

import argparse
import gzip
import os
import shutil
import sys
from pathlib import Path

EPISODE_FOLDERS = ("eval", "recovery")
CARRIED_JSON = ("compare.json",)
STATS = ".stats.json"  # a data stage's --stats: carried in DIR/stats/ for publish, not restored (made with the data)
MACHINE = "machine.txt"  # the seed's record, by hand: kept across saves, not restored (neither data nor a run)


def zip_episodes(src: Path, dest: Path) -> None:
    """SRC's files into DEST, each gzipped (level 9, no name and no time in the header: the same episodes, the same
    bytes); DEST/X.gz for SRC/X."""
    dest.mkdir()
    for f in sorted(src.iterdir()):
        if f.is_file():
            with f.open("rb") as episodes, (dest / (f.name + ".gz")).open("wb") as raw:
                with gzip.GzipFile(filename="", mode="wb", compresslevel=9, fileobj=raw, mtime=0) as zipped:
                    shutil.copyfileobj(episodes, zipped)


def unzip_episodes(src: Path, dest: Path) -> None:
    """The reverse of zip_episodes: DEST/X for SRC/X.gz."""
    dest.mkdir()
    for f in sorted(src.iterdir()):
        if f.is_file() and f.name.endswith(".gz"):
            with gzip.open(f, "rb") as episodes, (dest / f.name[: -len(".gz")]).open("wb") as out:
                shutil.copyfileobj(episodes, out)


def is_run(folder: Path) -> bool:
    return any((folder / name).exists() for name in ("metrics.jsonl", "checkpoints", "done"))


def newest_checkpoint(run: Path) -> Path | None:
    steps = [p for p in (run / "checkpoints").glob("step-*") if p.name[5:].isdigit()]
    return max(steps, key=lambda p: int(p.name[5:]), default=None)


def save(out: Path, dest: Path) -> list[str]:
    """Copy OUT's runs and episodes into DEST (replaced whole); returns what was carried, for the log."""
    if not out.is_dir():
        raise SystemExit(f"carry: {out}: no such folder")
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    carried, data = [], []
    for entry in sorted(out.iterdir()):
        if entry.is_dir() and not any(entry.iterdir()):  # a run make had just begun: nothing to carry, not data
            carried.append(f"not {entry.name}/ (empty)")
        elif entry.is_dir() and is_run(entry):
            done = (entry / "done").exists()
            ckpt = None if done else newest_checkpoint(entry)
            if not done and ckpt is None:  # stopped before its first checkpoint: nothing to go on from
                carried.append(f"not {entry.name}/ (stopped before its first checkpoint: made again)")
                continue
            (tmp / entry.name).mkdir()
            for f in sorted(entry.iterdir()):
                if f.is_file():
                    shutil.copyfile(f, tmp / entry.name / f.name)
            if ckpt is not None:
                shutil.copytree(ckpt, tmp / entry.name / "checkpoints" / ckpt.name)
            carried.append(f"{entry.name}/" + (f" (stopped: {ckpt.relative_to(entry)})" if ckpt else ""))
        elif entry.is_dir() and entry.name in EPISODE_FOLDERS:
            zip_episodes(entry, tmp / entry.name)
            carried.append(f"{entry.name}/ ({sum(1 for f in entry.iterdir() if f.is_file())} files, gzipped)")
        elif entry.is_file() and entry.name in CARRIED_JSON:
            shutil.copyfile(entry, tmp / entry.name)
            carried.append(entry.name)
        elif entry.name == MACHINE:
            if not (dest / MACHINE).is_file():
                shutil.copyfile(entry, tmp / MACHINE)
                carried.append(MACHINE)
        elif entry.is_file() and entry.name.endswith(STATS):
            (tmp / "stats").mkdir(exist_ok=True)
            shutil.copyfile(entry, tmp / "stats" / entry.name)
            carried.append(f"stats/{entry.name}")
        elif not entry.name.endswith((".part", ".tmp")):
            data.append(entry.name + ("/" if entry.is_dir() else ""))
    (tmp / "data.txt").write_text("".join(f"{name}\n" for name in data))
    if (dest / MACHINE).is_file():
        shutil.copyfile(dest / MACHINE, tmp / MACHINE)
        carried.append(f"{MACHINE} (DIR's, kept)")
    shutil.rmtree(dest, ignore_errors=True)
    os.replace(tmp, dest)
    return carried


def restore(src: Path, out: Path) -> list[str]:
    """Copy SRC's runs and episodes into OUT, whose data must have been made again first."""
    listed = src / "data.txt"
    if not listed.is_file():
        raise SystemExit(f"carry: {listed}: no such file (not a folder `carry.py save` wrote)")
    data = [line for line in listed.read_text().splitlines() if line]
    missing = [name for name in data if not (out / name.rstrip("/")).exists()]
    if missing:
        raise SystemExit(
            f"carry: {out} lacks the data the runs were made from: {', '.join(missing)}. Make them first, in this "
            "folder (the recipe's make with these targets), then restore"
        )
    carried = sorted(p for p in src.iterdir() if p.name not in ("data.txt", "stats", MACHINE))
    there = [p.name for p in carried if (out / p.name).exists()]
    if there:
        raise SystemExit(f"carry: {out} already holds {', '.join(there)}: restore is for a folder without its runs")
    for p in carried:  # new times: newer than the data
        if p.is_dir() and p.name in EPISODE_FOLDERS:
            unzip_episodes(p, out / p.name)
        elif p.is_dir():
            shutil.copytree(p, out / p.name, copy_function=shutil.copyfile)
        else:
            shutil.copyfile(p, out / p.name)
    return [p.name for p in carried]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("save", help="copy OUT's runs and episodes into DIR")
    s.add_argument("out", type=Path, metavar="OUT")
    s.add_argument("dest", type=Path, metavar="DIR")
    r = sub.add_parser("restore", help="copy DIR's runs and episodes into OUT, once its data are made again")
    r.add_argument("src", type=Path, metavar="DIR")
    r.add_argument("out", type=Path, metavar="OUT")
    args = parser.parse_args(argv)
    if args.command == "save":
        done = save(args.out, args.dest)
    else:
        done = restore(args.src, args.out)
    print(f"carry: {args.command}: " + ", ".join(done), file=sys.stderr)


if __name__ == "__main__":
    main()
