#!/usr/bin/env python
"""Rewrite the README's demo figures from a run at HEAD: one command, the tables and the PNG it owns.

Runs ``scripts/demo.py`` (a finished demo under ``--out`` is reused: delete it to rerun from
scratch), then replaces each README block that this script owns, between
``<!-- readme-figures:NAME -->`` and ``<!-- /readme-figures:NAME -->``:

- ``demo-table``: clean vs adversarial metrics of the demo's three attacks;
- ``demo-organs``: Dice per class under each attack;
- ``demo-figure``: one case's figure (clean and adversarial slice, perturbation, predictions),
  copied to ``docs/demo_case.png``.

Each block names the command and the commit that produced it. Figures of other README
sections (transfer, stronger attacks, the paper's tables, speed) still name their own
commands next to them and are not rewritten here.

    python scripts/readme_figures.py            # make readme-figures
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re
import shutil
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import scripts.demo as demo  # noqa: E402

COMMAND = "make readme-figures"


def replace_block(text: str, name: str, content: str) -> str:
    """``text`` with the block ``name`` holding ``content``.

    Raises:
        ValueError: the README lacks the block's markers.
    """
    pattern = re.compile(rf"(<!-- readme-figures:{re.escape(name)} -->\n).*?(<!-- /readme-figures:{re.escape(name)} -->)",
                         re.DOTALL)
    if not pattern.search(text):
        raise ValueError(f"README has no block {name!r} (<!-- readme-figures:{name} --> ... "
                         f"<!-- /readme-figures:{name} -->)")
    return pattern.sub(lambda m: m.group(1) + content.rstrip("\n") + "\n" + m.group(2), text, count=1)


def demo_reports(out: str) -> dict:
    """``{attack title: (overall, run folder)}`` of the demo's finished attack runs under ``out``."""
    data_dir = os.path.join(out, "data")
    checkpoint = os.path.join(out, "model", "model_best.pt")
    reports = {}
    for title, attack in demo.ATTACKS.items():
        argv = demo.MODEL + ["--data_dir", data_dir, "--pretrained_path", checkpoint, "--debugging", *attack]
        run_dir = os.path.join(out, "adversarial", demo.attack_folder(argv))
        with open(os.path.join(run_dir, "results.json")) as f:
            reports[title] = (json.load(f)["overall"], run_dir)
    return reports


def commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def rebuild(readme: str, reports: dict, docs: str, epochs: int) -> None:
    """Rewrite the owned blocks of ``readme`` from ``reports`` (see :func:`demo_reports`)."""
    stamp = f"<sub>`{COMMAND}` at commit {commit()} ({epochs} training epoch{'' if epochs == 1 else 's'})</sub>\n"
    with open(readme, encoding="utf-8") as f:
        text = f.read()
    text = replace_block(text, "demo-table", demo.comparison_table(reports) + "\n\n" + stamp)
    text = replace_block(text, "demo-organs", demo.organ_table(reports) + "\n\n" + stamp)
    title, (_, run_dir) = next((t, r) for t, r in reports.items() if t.startswith("VAFA"))
    figures = sorted(glob.glob(os.path.join(run_dir, "figures", "*.png")))
    if figures:
        os.makedirs(docs, exist_ok=True)
        shutil.copyfile(figures[0], os.path.join(docs, "demo_case.png"))
        rel = os.path.relpath(os.path.join(docs, "demo_case.png"), os.path.dirname(os.path.abspath(readme)))
        case = os.path.splitext(os.path.basename(figures[0]))[0]
        text = replace_block(text, "demo-figure", f"![{title} on demo case {case}]({rel})\n\n" + stamp)
    tmp = readme + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, readme)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="demo_output", help="the demo's folder (a finished demo is reused)")
    parser.add_argument("--epochs", type=int, default=200, help="the demo's training epochs (200: the README's)")
    parser.add_argument("--readme", default=os.path.join(ROOT, "README.md"), help="README to rewrite")
    parser.add_argument("--docs", default=os.path.join(ROOT, "docs"), help="folder of the README's images")
    args = parser.parse_args(argv)
    code = demo.main(["--out", args.out, "--epochs", str(args.epochs)])
    if code:
        return code
    try:
        rebuild(args.readme, demo_reports(os.path.abspath(args.out)), args.docs, args.epochs)
    except (OSError, ValueError) as err:
        print(f"readme_figures.py: error: {err}", file=sys.stderr)
        return 2
    print(f"rewrote the demo blocks of {args.readme}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
