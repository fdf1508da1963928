"""The volumes of one 4D image (the Decathlon's stacked sequences) as the module's channel inputs.

Slicer 5.10 cannot load a 4D NIfTI as separate volumes, and later versions load it as a *sequence*: one browser and
one proxy volume that shows whichever volume the browser is at. A model needs one scalar volume node per channel, so:

- :func:`load_4d_file` reads the file with the engine and adds one volume node per channel it names;
- :func:`split_sequence` copies the named items of a volume sequence into volume nodes;
- :func:`check_not_sequence_frames` refuses a sequence's proxy given as a channel (it is only the volume shown);
- :func:`check_declared_channels` refuses a volume from a dataset folder's file given as another channel.

Which volume is which sequence comes from the user's order (``FLAIR,T1,T1c,T2``, 0-based volumes in order; an empty
entry skips a volume) or, for a file of a dataset folder's ``imagesTr/``, from its ``dataset.json``. A typed order
that contradicts that ``dataset.json`` is refused, naming its order. Names are the model's channel names or aliases,
in any case, separators ignored (``t1-ce`` is ``t1ce``). New nodes are named ``<source> <channel>`` (so
:func:`medcnncad.models.channels.assign_channels` proposes them too) and added all or none; the user's nodes are never
changed. Arrays are (K, J, I).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
import slicer
import slicer.util
import vtk

from medcnncad.data.dataset_json import declared_contradicts, declared_volumes, model_engine_channels
from medcnncad.errors import InputError
from medcnncad.io.images import read_header, read_volumes
from medcnncad.models.manifest import Manifest
from medcnncad.slicer.adaptor import NodeTransaction, ijk_to_ras_matrix

__all__ = ["volume_order", "load_4d_file", "split_sequence", "check_not_sequence_frames", "check_declared_channels",
           "SOURCE_ATTRIBUTE"]

SOURCE_ATTRIBUTE = "MedCNNCAD.sourceVolume"
"""Attribute of a node this module made: ``<file or sequence>#<0-based volume index>``."""


def _channel_of(manifest: Manifest, name: str, source: str) -> str:
    """The model's channel a typed name means (:meth:`~medcnncad.models.manifest.Manifest.channels_named`)."""
    found = manifest.channels_named(name)
    if len(found) == 1:
        return found[0]
    if found:
        raise InputError(f"{source}: volume order names {name.strip()!r}, an alias of model {manifest.id}'s channels "
                         f"{' and '.join(found)}; name the channel")
    known = ", ".join(c.name for c in manifest.inputs)
    raise InputError(f"{source}: volume order names {name.strip()!r}, not a channel of model {manifest.id} ({known})")


def _typed_order(text: str, manifest: Manifest, source: str) -> dict[int, str]:
    order = {index: _channel_of(manifest, name, source) for index, name in enumerate(text.split(",")) if name.strip()}
    repeated = sorted({c for c in order.values() if list(order.values()).count(c) > 1})
    if repeated:
        raise InputError(f"{source}: volume order {text!r} names {repeated[0]} twice")
    return order


def volume_order(text: str, manifest: Manifest, source: str, count: int,
                 declared: Mapping[int, str] | None = None) -> dict[int, str]:
    """0-based volume index -> the model's channel, for the channels the model reads.

    Args:
        text: the user's order, e.g. ``"FLAIR,T1,T1c,T2"`` (``",,T1c"``: volume 2 only); empty to use ``declared``.
        manifest: the model whose channels (names or aliases, any case, separators ignored) the order names.
        source: the file or sequence, for the messages.
        count: how many volumes the source holds.
        declared: what its dataset.json says each volume is (:func:`medcnncad.data.dataset_json.declared_volumes`:
            engine channels, or dataset.json's names for channels the engine does not read), if anything.

    Raises:
        InputError: naming ``source`` when no order is known, a name is not the model's (or an alias of two of its
            channels), a channel is named twice, the order names more volumes than exist, the source holds another
            number of volumes than ``declared``, or the order contradicts ``declared``.
    """
    engine = model_engine_channels(manifest)
    if declared and sorted(declared) != list(range(count)):
        raise InputError(f"{source}: {count} volumes, but its dataset.json declares {len(declared)} "
                         f"({', '.join(declared[i] for i in sorted(declared))}): which volume is which is unknown")
    if not text.strip():
        if not declared:
            raise InputError(f"{source}: {count} volumes and no dataset.json beside it to say which is which; type "
                             "their order (e.g. FLAIR,T1,T1c,T2 for the Decathlon's brain tumours)")
        order = {index: channel for index, name in declared.items() for channel in engine if engine[channel] == name}
        if not order:
            raise InputError(f"{source}: its dataset.json declares {', '.join(declared.values())}; model "
                             f"{manifest.id} reads none of them")
        return order
    order = _typed_order(text, manifest, source)
    if not order:
        raise InputError(f"{source}: volume order {text!r} names no channel")
    if max(order) >= count:
        raise InputError(f"{source}: volume order {text!r} names volume {max(order)}, but it holds {count} (0 to "
                         f"{count - 1})")
    for index, channel in order.items():
        if declared and declared_contradicts(declared[index], engine[channel]):
            raise InputError(f"{source}: volume {index} is {declared[index]} by its dataset.json, not {channel} "
                             f"(its order: {', '.join(declared[i] for i in sorted(declared))})")
    return order


def _file_volume_count(path: Path) -> int:
    header = read_header(path)
    if header.GetNumberOfComponents() > 1:
        raise InputError(f"{path}: {header.GetNumberOfComponents()} components per voxel (a Slicer sequence file or a "
                         "vector image): load it with Add Data, then Split into inputs")
    size = header.GetSize()
    return int(size[3]) if len(size) == 4 else 1


def _volume_node(array: np.ndarray, ijk_to_ras: vtk.vtkMatrix4x4, name: str, source: str) -> Any:
    node = slicer.util.addVolumeFromArray(array, ijkToRAS=ijk_to_ras, name=slicer.mrmlScene.GenerateUniqueName(name))
    node.CreateDefaultDisplayNodes()
    node.SetAttribute(SOURCE_ATTRIBUTE, source)
    return node


def _stem(path: Path) -> str:
    name = path.name
    for suffix in (".nii.gz", ".seq.nrrd", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def load_4d_file(path: str | Path, manifest: Manifest, order_text: str = "") -> dict[str, Any]:
    """Read the volumes of a 4D file that ``order_text`` (or its dataset.json) names; add one scalar volume node per
    channel. Returns channel -> node. Nothing is added when anything fails.

    Raises:
        InputError: naming the file (missing, unreadable, or an order :func:`volume_order` refuses).
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: file not found" if not path.exists() else f"{path}: not a volume file")
    order = volume_order(order_text, manifest, str(path), _file_volume_count(path), declared_volumes(path))
    images = read_volumes(path, list(order))
    with NodeTransaction():
        return {channel: _volume_node(sitk.GetArrayFromImage(image), ijk_to_ras_matrix(image),
                                      f"{_stem(path)} {channel}", f"{path}#{index}")
                for (index, channel), image in zip(order.items(), images)}


def _sequence_source(sequence_node: Any) -> str | None:
    storage = sequence_node.GetStorageNode()
    return storage.GetFileName() if storage is not None and storage.GetFileName() else None


def split_sequence(sequence_node: Any, manifest: Manifest, order_text: str = "") -> dict[str, Any]:
    """Copy the items of a volume sequence that ``order_text`` (or the dataset.json beside its file) names into new
    scalar volume nodes. Returns channel -> node; the sequence is not changed and nothing is added on failure.

    Raises:
        InputError: naming the sequence when it is missing, holds no scalar volumes, or the order is refused.
    """
    if sequence_node is None:
        raise InputError("select the 4D sequence to split into the model's inputs")
    name = sequence_node.GetName()
    count = sequence_node.GetNumberOfDataNodes()
    if count == 0 or sequence_node.GetDataNodeClassName() != "vtkMRMLScalarVolumeNode":
        kind = sequence_node.GetDataNodeClassName() or "nothing"
        raise InputError(f"sequence {name!r} holds {kind}, not scalar volumes")
    source = _sequence_source(sequence_node)
    order = volume_order(order_text, manifest, f"sequence {name!r}", count,
                         declared_volumes(source) if source else None)
    with NodeTransaction():
        nodes = {}
        for index, channel in order.items():
            item = sequence_node.GetNthDataNode(index)
            matrix = vtk.vtkMatrix4x4()
            item.GetIJKToRASMatrix(matrix)
            array = np.array(slicer.util.arrayFromVolume(item), copy=True)
            nodes[channel] = _volume_node(array, matrix, f"{name} {channel}", f"{source or name}#{index}")
        return nodes


def check_declared_channels(volumes: Mapping[str, Any], manifest: Manifest) -> None:
    """Refuse a volume loaded from a dataset folder's file (nnU-Net's ``imagesTr/<case>_0001.nii.gz``) given as
    another channel than its ``dataset.json`` says it is.

    Raises:
        InputError: naming the channel, the volume, its file and what its dataset.json declares.
    """
    engine = model_engine_channels(manifest)
    for channel, node in volumes.items():
        storage = node.GetStorageNode() if node is not None else None
        source = storage.GetFileName() if storage is not None else None
        declared = declared_volumes(source) if source and Path(source).is_file() else None
        if declared is not None and len(declared) == 1 and declared_contradicts(declared[0], engine.get(channel)):
            raise InputError(f"{channel}: volume {node.GetName()!r} ({source}) is {declared[0]} by its dataset.json, "
                             f"not {channel}")


def check_not_sequence_frames(volumes: Mapping[str, Any]) -> None:
    """Refuse a volume that is the proxy of a sequence of several volumes: it holds only the volume its browser
    is at, so which sequence the model reads would depend on the browser's position.

    Raises:
        InputError: naming the channel, the volume and the sequence.
    """
    module = getattr(slicer.modules, "sequences", None)
    if module is None:
        return
    logic = module.logic()
    for channel, node in volumes.items():
        browser = logic.GetFirstBrowserNodeForProxyNode(node) if node is not None else None
        sequence = browser.GetSequenceNode(node) if browser is not None else None
        if sequence is not None and sequence.GetNumberOfDataNodes() > 1:
            raise InputError(f"{channel}: volume {node.GetName()!r} shows one of the {sequence.GetNumberOfDataNodes()} "
                             f"volumes of sequence {sequence.GetName()!r}, whichever its browser is at; split the "
                             "sequence into its volumes (4D input: Split into inputs) and pick the one for "
                             f"{channel}")
