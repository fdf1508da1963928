"""``medcnncad phantom`` and ``medcnncad sample-data``: synthetic cases on disk."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from medcnncad.cli.options import DEMO_SEED, add
from medcnncad.data.phantom import make_phantom, preset, write_phantom, write_sample_case
from medcnncad.data.transplant import transplant_phantom
from medcnncad.models.manifest import load_manifest, sha256_file
from medcnncad.models.registry import find_model

__all__ = ["add_parsers"]


def run_phantom(args: argparse.Namespace) -> int:
    config = preset(args.preset)
    case = transplant_phantom(args.seed, args.transplant_from, config) if args.transplant_from else \
        make_phantom(args.seed, config)
    paths = write_phantom(case, args.out)
    for name, path in paths.items():
        print(f"{name}\t{path}")
    return 0


def run_sample_data(args: argparse.Namespace) -> int:
    out = Path(args.out)
    paths = write_sample_case(out, load_manifest(find_model(args.model)), seed=args.seed)
    index = {"seed": args.seed, "recipe": f"medcnncad sample-data --out {out} --seed {args.seed}",
             "files": {k: {"file": v.name, "sha256": sha256_file(v)} for k, v in paths.items()}}
    (out / "MedCNNCADPhantom.json").write_text(json.dumps(index, indent=2) + "\n")
    for name, path in paths.items():
        print(f"{name}\t{path}\t{index['files'][name]['sha256']}")
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Add ``phantom`` and ``sample-data``."""
    p = sub.add_parser("phantom", help="write one synthetic BraTS-like case with its label map")
    add(p, "out", "seed", "preset", "transplant-from")
    p.set_defaults(func=run_phantom)

    p = sub.add_parser("sample-data", help="write the compact sample case registered with Slicer's Sample Data")
    add(p, "out", "seed", "model", seed={"default": DEMO_SEED},
        model={"help": "model whose label names the reference uses"})
    p.set_defaults(func=run_sample_data)
