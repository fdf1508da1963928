"""``medcnncad train soup``: the uniform mean of training runs' weights, written as a training run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from medcnncad.cli.app import main
from medcnncad.errors import InputError
from medcnncad.models.manifest import sha256_file
from medcnncad.models.registry import find_model, load_model
from medcnncad.training.soup import average_state_dicts, make_soup

SHIPPED = "brats-robust-unet"


def _run(folder: Path, shift: float, seed: int, training: dict | None = None, **changes) -> Path:
    """A run folder: the shipped manifest and its weights with ``shift`` added to every float tensor."""
    raw = json.loads((find_model(SHIPPED) / "manifest.json").read_text())
    raw["training"] = {"config": {"seed": seed}, "seconds": 1.0, **(training or {})}
    raw.update(changes)
    folder.mkdir()
    state = torch.load(find_model(SHIPPED) / "model.pt", map_location="cpu")
    torch.save({k: v + shift if v.is_floating_point() else v for k, v in state.items()}, folder / "model.pt")
    raw["weights"] = {"file": "model.pt", "sha256": sha256_file(folder / "model.pt")}
    (folder / "manifest.json").write_text(json.dumps(raw))
    return folder


def test_average_by_hand_and_integer_tensors_kept():
    a = {"w": torch.tensor([1.0, 2.0]), "n": torch.tensor(3)}
    b = {"w": torch.tensor([2.0, 5.0]), "n": torch.tensor(3)}
    c = {"w": torch.tensor([3.0, 11.0]), "n": torch.tensor(3)}
    soup = average_state_dicts([a, b, c], ["a", "b", "c"])
    assert torch.equal(soup["w"], torch.tensor([2.0, 6.0])) and soup["w"].dtype == torch.float32
    assert torch.equal(soup["n"], torch.tensor(3))
    with pytest.raises(InputError, match="b: integer tensor n differs"):
        average_state_dicts([a, {**b, "n": torch.tensor(4)}], ["a", "b"])
    with pytest.raises(InputError, match=r"b: tensor w is torch.float32 \(3,\), a's is torch.float32 \(2,\)"):
        average_state_dicts([a, {**b, "w": torch.zeros(3)}], ["a", "b"])
    with pytest.raises(InputError, match="b: tensor w is torch.float16"):
        average_state_dicts([a, {**b, "w": b["w"].half()}], ["a", "b"])
    with pytest.raises(InputError, match="other tensors than a's .e.g. extra"):
        average_state_dicts([a, {**b, "extra": torch.zeros(1)}], ["a", "b"])
    # bf16 members: summed in float64, stored in bf16 (the float32 mean 1/3 + 2/3 would round the same way)
    x, y = {"w": torch.tensor([1.0, 0.1], dtype=torch.bfloat16)}, {"w": torch.tensor([2.0, 0.2], dtype=torch.bfloat16)}
    mean = average_state_dicts([x, y], ["x", "y"])["w"]
    assert mean.dtype == torch.bfloat16
    assert torch.equal(mean, ((x["w"].double() + y["w"].double()) / 2).to(torch.bfloat16))


def test_the_soup_of_two_runs_loads_and_holds_their_mean(tmp_path):
    one, two = _run(tmp_path / "one", 0.01, 11), _run(tmp_path / "two", 0.03, 12)
    out = make_soup([one, two], tmp_path / "soup")
    shipped = torch.load(find_model(SHIPPED) / "model.pt", map_location="cpu")
    soup = torch.load(out / "model.pt", map_location="cpu")
    for key, value in shipped.items():
        if value.is_floating_point():
            torch.testing.assert_close(soup[key], value + 0.02, atol=1e-6, rtol=0)
    record = json.loads((out / "manifest.json").read_text())["training"]["soup"]
    assert [m["seed"] for m in record["members"]] == [11, 12]
    assert json.loads((out / "manifest.json").read_text())["weights"] == {"file": "model.pt",
                                                                         "sha256": sha256_file(out / "model.pt")}
    assert [m["weights_sha256"] for m in record["members"]] == [sha256_file(one / "model.pt"),
                                                                sha256_file(two / "model.pt")]
    assert load_model(str(out)).manifest.weights_sha256 == sha256_file(out / "model.pt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one", "soup", "two"]  # no staging folder left


def test_a_soup_names_every_members_real_patients(tmp_path):
    """Members trained on different real patients: the soup's record lists them all, so evaluate-real marks any
    member's patient as a training patient (the rest of the block describes the first member only)."""
    from medcnncad.evaluation.real import training_patients

    one = _run(tmp_path / "one", 0.01, 11, {"real_patients": ["BRATS_001"],
                                           "config": {"seed": 11, "transplant_from": ["/d/brats_2013_pat0001_1"]}})
    two = _run(tmp_path / "two", 0.03, 12, {"real_patients": ["BRATS_007"],
                                           "config": {"seed": 12, "real_from": ["/d/BraTS2021_00006"]}})
    training = json.loads((make_soup([one, two], tmp_path / "soup") / "manifest.json").read_text())["training"]
    assert training["real_patients"] == ["BRATS_001", "BRATS_007", "BraTS2021_00006", "brats_2013_pat0001_1"]
    assert training_patients(training) == set(training["real_patients"])


def test_a_member_given_twice_or_a_soup_as_member_is_refused(tmp_path):
    one, two = _run(tmp_path / "one", 0.01, 11), _run(tmp_path / "two", 0.03, 12)
    with pytest.raises(InputError, match="the same run or weights as"):
        make_soup([one, two, one], tmp_path / "soup")
    copy = tmp_path / "copy"
    copy.mkdir()
    for name in ("manifest.json", "model.pt"):
        (copy / name).write_bytes((one / name).read_bytes())
    with pytest.raises(InputError, match="the same run or weights as"):
        make_soup([one, copy], tmp_path / "soup")
    soup = make_soup([one, two], tmp_path / "soup")
    with pytest.raises(InputError, match="already a soup"):
        make_soup([soup, one], tmp_path / "soup2")
    with pytest.raises(InputError, match="already a soup"):  # the shipped model is the soup of two seeds
        make_soup([SHIPPED, one], tmp_path / "soup2")


def test_a_failed_write_leaves_nothing(tmp_path, monkeypatch):
    import medcnncad.training.candidate as folders  # where the soup's folder is written

    one, two = _run(tmp_path / "one", 0.01, 11), _run(tmp_path / "two", 0.03, 12)

    def broken(*_args):
        raise OSError("disk full")

    monkeypatch.setattr(folders, "write_manifest_json", broken)
    with pytest.raises(OSError, match="disk full"):
        make_soup([one, two], tmp_path / "soup")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one", "two"]  # neither the folder nor its staging


def test_members_of_another_network_or_too_few_are_refused_and_nothing_is_written(tmp_path, capsys):
    one = _run(tmp_path / "one", 0.01, 11)
    other = _run(tmp_path / "other", 0.03, 12, network={"class": "monai.networks.nets.UNet", "kwargs": {}})
    with pytest.raises(InputError, match="its 'network' differs"):
        make_soup([one, other], tmp_path / "soup")
    with pytest.raises(InputError, match="at least two members"):
        make_soup([one], tmp_path / "soup")
    assert not (tmp_path / "soup").exists()
    assert main(["train", "soup", "--members", str(one), str(other), "--out", str(tmp_path / "soup")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "its 'network' differs" in err[0]
