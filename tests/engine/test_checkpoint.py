"""Checkpoint files: round trips, atomic replacement, errors naming the file, RNG states,
the category ids recorded per label."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch

from pansight.engine import checkpoint
from pansight.engine.checkpoint import (
    capture_rng_state,
    label_category_ids,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
)
from pansight.errors import CheckpointError


def test_round_trip_stamps_format_and_keeps_plain_values(tmp_path: Path) -> None:
    payload = {
        "model_name": "tiny",
        "class_names": ["a", "b"],
        "semantic_class_names": None,
        "state_dict": {"fc.weight": torch.arange(6.0).view(2, 3)},
        "metrics": {"top1": 0.75},
    }
    save_checkpoint(tmp_path / "runs" / "last.pt", payload)
    loaded = load_checkpoint(tmp_path / "runs" / "last.pt")
    assert loaded["format"] == "pansight-checkpoint" and loaded["version"] == 1
    assert torch.equal(loaded["state_dict"]["fc.weight"], payload["state_dict"]["fc.weight"])
    assert {k: loaded[k] for k in ("model_name", "class_names", "metrics")} == {
        "model_name": "tiny",
        "class_names": ["a", "b"],
        "metrics": {"top1": 0.75},
    }
    assert loaded["semantic_class_names"] is None


def test_failed_save_keeps_previous_file_and_leaves_no_temporary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "last.pt"
    save_checkpoint(path, {"iteration": 5})

    def torn_save(obj: object, stream) -> None:
        stream.write(b"PK\x03\x04 half a checkpoint")
        raise RuntimeError("disk went away")

    monkeypatch.setattr(checkpoint.torch, "save", torn_save)
    with pytest.raises(RuntimeError, match="disk went away"):
        save_checkpoint(path, {"iteration": 10})
    monkeypatch.undo()

    assert load_checkpoint(path)["iteration"] == 5
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_write_error_becomes_checkpoint_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def full_disk(obj: object, stream) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(checkpoint.torch, "save", full_disk)
    with pytest.raises(CheckpointError, match=r"last\.pt: cannot write checkpoint: .*No space"):
        save_checkpoint(tmp_path / "last.pt", {})
    assert list(tmp_path.iterdir()) == []


def test_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=r"nope\.pt: no such checkpoint file"):
        load_checkpoint(tmp_path / "nope.pt")


def test_unreadable_file_is_named(tmp_path: Path) -> None:
    path = tmp_path / "garbage.pt"
    path.write_bytes(b"this is not a zip archive")
    with pytest.raises(CheckpointError, match=r"garbage\.pt: cannot read checkpoint"):
        load_checkpoint(path)


def test_foreign_checkpoint_is_named(tmp_path: Path) -> None:
    path = tmp_path / "resnet.pth"
    torch.save({"conv1.weight": torch.zeros(1)}, path)
    with pytest.raises(CheckpointError, match=r"resnet\.pth: not a pansight checkpoint"):
        load_checkpoint(path)


def test_newer_version_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "future.pt"
    torch.save({"format": "pansight-checkpoint", "version": 99}, path)
    with pytest.raises(CheckpointError, match=r"future\.pt: checkpoint version 99 is newer"):
        load_checkpoint(path)


def test_rng_state_survives_a_checkpoint(tmp_path: Path) -> None:
    torch.manual_seed(3)
    np.random.seed(3)
    random.seed(3)
    np.random.standard_normal()  # leaves a cached Gaussian in NumPy's state
    save_checkpoint(tmp_path / "rng.pt", {"rng": capture_rng_state()})
    expected = (torch.rand(4), np.random.standard_normal(3), random.random())

    torch.manual_seed(99)
    np.random.seed(99)
    random.seed(99)
    restore_rng_state(load_checkpoint(tmp_path / "rng.pt")["rng"])
    drawn = (torch.rand(4), np.random.standard_normal(3), random.random())

    assert torch.equal(drawn[0], expected[0])
    assert np.array_equal(drawn[1], expected[1])
    assert drawn[2] == expected[2]


def test_category_ids_follow_the_label_space_of_the_model() -> None:
    """A panoptic model labels things and stuff: it takes the semantic ids, not the thing ids."""
    from types import SimpleNamespace

    data_set = SimpleNamespace(
        class_names=["car", "person"],
        category_ids=[3, 1],
        semantic_class_names=["car", "person", "sky"],
        semantic_category_ids=[3, 1, 200],
    )
    assert label_category_ids(data_set, ["car", "person", "sky"]) == [3, 1, 200]
    assert label_category_ids(data_set, ["car", "person"]) == [3, 1]
    assert label_category_ids(data_set, ["a", "b", "c", "d"]) == [0, 1, 2, 3]
    assert label_category_ids(object(), ["a"]) == [0]
