"""``medcnncad models`` (what is installed) and ``medcnncad trust`` (allow a code-bearing MONAI bundle)."""

from __future__ import annotations

import argparse
from pathlib import Path

from medcnncad.errors import InputError, ModelError
from medcnncad.models.bundle import bundle_code_entries, trust_bundle
from medcnncad.models.manifest import ClassifierManifest, load_manifest
from medcnncad.models.registry import list_models

__all__ = ["add_parsers"]


def run_models(args: argparse.Namespace) -> int:
    for folder in list_models():
        if (folder / "manifest.json").is_file():
            try:
                m = load_manifest(folder)
            except ModelError as exc:
                print(f"{folder}\tINVALID: {exc}")
                continue
            # a ClassifierManifest is exactly a task "classification" manifest
            outputs = (f"classes {','.join(m.class_names)} of {m.lesion_structure} lesions"
                       if isinstance(m, ClassifierManifest)
                       else f"labels {','.join(f'{x.name}={x.value}' for x in m.labels)}")
            print(f"{m.id}\t{m.version}\t{m.task}\tinputs {','.join(m.input_names)}\t{outputs}\t"
                  f"trained on: {m.trained_on or 'unknown'}\t{folder}")
        else:
            print(f"{folder.name}\t(MONAI bundle)\t\t\t\t{folder}")
    return 0


def run_trust(args: argparse.Namespace) -> int:
    folder = Path(args.bundle)
    if not (folder / "configs" / "metadata.json").is_file():
        raise InputError(f"{folder}: not a MONAI bundle folder (no configs/metadata.json)")
    code = bundle_code_entries(folder)
    digest = trust_bundle(folder)
    print(f"trusted {folder} (sha256 {digest}); {len(code)} executable config entries will run")
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Add ``models`` and ``trust``."""
    p = sub.add_parser("models", help="list installed models")
    p.set_defaults(func=run_models)

    p = sub.add_parser("trust", help="trust a MONAI bundle (by the hash of its configs and weights)")
    p.add_argument("bundle")
    p.set_defaults(func=run_trust)
