"""``medcnncad models`` (what is installed) and ``medcnncad trust`` (allow a model folder whose loading
can run code: a MONAI bundle with code in its configs, an nnU-Net v2 folder with pickled checkpoints, an
Auto3DSeg model whose network config names code)."""

from __future__ import annotations

import argparse
from pathlib import Path

from medcnncad.errors import InputError, ModelError
from medcnncad.models.auto3dseg import auto3dseg_hash
from medcnncad.models.bundle import bundle_code_entries, trust_bundle
from medcnncad.models.manifest import ClassifierManifest, load_manifest
from medcnncad.models.nnunet import nnunet_hash
from medcnncad.models.registry import describe_model, list_models, model_format, model_source
from medcnncad.models.trust import add_trusted_hash

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
            try:
                m = describe_model(folder)
            except ModelError as exc:
                print(f"{folder}\tINVALID: {exc}")
                continue
            labels = ",".join(f"{x.name}={x.value}" for x in getattr(m, "labels", ()))
            print(f"{folder.name}\t({model_source(m).split(';')[0]})\t{m.task}\tinputs {','.join(m.input_names)}\t"
                  f"labels {labels}\t{folder}")
    return 0


def run_trust(args: argparse.Namespace) -> int:
    folder = Path(args.bundle)
    kind = model_format(folder) if folder.is_dir() else None
    if kind == "bundle":
        code = bundle_code_entries(folder)
        digest = trust_bundle(folder)
        print(f"trusted {folder} (sha256 {digest}); {len(code)} executable config entries will run")
    elif kind == "nnunet":
        print(f"trusted {folder} (sha256 {add_trusted_hash(nnunet_hash(folder))}); its pickled checkpoints will load")
    elif kind == "auto3dseg":
        print(f"trusted {folder} (sha256 {add_trusted_hash(auto3dseg_hash(folder))}); its network config will run")
    else:
        raise InputError(f"{folder}: not a MONAI bundle, nnU-Net v2 or Auto3DSeg model folder (a MedCNNCAD "
                         f"manifest model needs no trust: its weights are tensors only)")
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Add ``models`` and ``trust``."""
    p = sub.add_parser("models", help="list installed models")
    p.set_defaults(func=run_models)

    p = sub.add_parser("trust", help="trust a MONAI bundle, nnU-Net v2 or Auto3DSeg model folder "
                                     "(by the hash of its files)")
    p.add_argument("bundle")
    p.set_defaults(func=run_trust)
