"""The user's explicit trust in a model folder whose loading could run code, keyed by its hash.

Three formats can carry code: a MONAI bundle whose configs hold ``$`` expressions or
non-MONAI ``_target_`` entries, an nnU-Net checkpoint that is a full pickle (not loadable
with ``torch.load(..., weights_only=True)``), and an Auto3DSeg checkpoint whose network config
names a class outside MONAI. Such a folder runs only with ``trust=True`` for one run
(``--trust``) or when the SHA-256 of its files is in ``$MEDCNNCAD_HOME/trusted_bundles.json``
(``medcnncad trust <folder>``). The hash covers every file that decides what runs, so a
changed model is no longer trusted.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path

from medcnncad.errors import TrustError

__all__ = ["files_hash", "trusted_hashes", "add_trusted_hash", "require_trust"]


def files_hash(folder: Path, files: Iterable[Path]) -> str:
    """SHA-256 over the relative paths (POSIX) and contents of ``files`` (sorted) under ``folder``."""
    digest = hashlib.sha256()
    for path in sorted(files):
        digest.update(path.relative_to(folder).as_posix().encode() + b"\0")
        sha = hashlib.sha256()
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                sha.update(block)
        digest.update(sha.digest())
    return digest.hexdigest()


def _trust_file() -> Path:
    home = Path(os.environ.get("MEDCNNCAD_HOME", Path.home() / ".medcnncad"))
    return home / "trusted_bundles.json"


def trusted_hashes() -> set[str]:
    """Hashes of model folders the user has trusted (``$MEDCNNCAD_HOME/trusted_bundles.json``)."""
    path = _trust_file()
    try:
        return set(json.loads(path.read_text()).get("sha256", []))
    except (FileNotFoundError, json.JSONDecodeError, AttributeError):
        return set()


def add_trusted_hash(digest: str) -> str:
    """Add one hash to the trusted list (written atomically); returns it."""
    path = _trust_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    hashes = sorted(trusted_hashes() | {digest})
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"sha256": hashes}, indent=2))
    tmp.replace(path)
    return digest


def require_trust(folder: Path, digest: str, trust: bool, what: str) -> None:
    """Raise :class:`TrustError` unless ``trust`` or ``digest`` is trusted. ``what`` says why code could run."""
    if trust or digest in trusted_hashes():
        return
    raise TrustError(f"{folder}: {what}; run it only if you trust its source: pass --trust, or "
                     f"'medcnncad trust {folder}' (sha256 {digest[:16]}...)")
