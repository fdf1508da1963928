"""Reading the JSON files a user hands over (report.json, summary.json, manifest templates) with one clear error."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from medcnncad.errors import InputError

__all__ = ["read_json", "read_json_object"]


def read_json(path: str | Path) -> Any:
    """The parsed content of the JSON file ``path``.

    Raises:
        InputError: naming the path: missing, a folder, unreadable, or not JSON (a truncated file).
    """
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise InputError(f"{path}: a folder, not a JSON file") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot be read ({exc.strerror})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: not a JSON file ({exc})") from None


def read_json_object(path: str | Path, what: str, keys: tuple[str, ...] = ()) -> dict[str, Any]:
    """:func:`read_json` of a file that must hold an object with ``keys``; ``what`` names it in the error (e.g.
    "a MedCNNCAD case report.json").

    Raises:
        InputError: as :func:`read_json`, or naming the path and what is missing.
    """
    data = read_json(path)
    missing = [key for key in keys if not isinstance(data, dict) or key not in data]
    if not isinstance(data, dict) or missing:
        raise InputError(f"{path}: not {what}" + (f" (no {', '.join(missing)})" if isinstance(data, dict) else ""))
    return data
