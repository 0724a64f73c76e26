import os

import pytest
import torch
from torch import nn

from retinanet_fl.engine import AtomicCheckpointer


def make_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3))


def test_save_then_load_restores_weights_and_tags_last(tmp_path):
    model = make_model()
    AtomicCheckpointer(model, save_dir=str(tmp_path)).save("model_0000009", iteration=9)
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000009.pth"
    assert not [name for name in os.listdir(tmp_path) if name.startswith(".tmp-")]

    restored = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3))
    extra = AtomicCheckpointer(restored, save_dir=str(tmp_path)).resume_or_load("", resume=True)
    assert extra["iteration"] == 9
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, restored.state_dict()[name]), name


def test_failed_save_keeps_previous_checkpoint(tmp_path, monkeypatch):
    model = make_model()
    checkpointer = AtomicCheckpointer(model, save_dir=str(tmp_path))
    checkpointer.save("model_final")
    before = (tmp_path / "model_final.pth").read_bytes()

    def crash(*args, **kwargs):
        raise KeyboardInterrupt("killed while writing")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        checkpointer.save("model_final")
    assert (tmp_path / "model_final.pth").read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["last_checkpoint", "model_final.pth"]


def test_missing_weights_file_names_it(tmp_path):
    missing = str(tmp_path / "nope.pth")
    with pytest.raises(FileNotFoundError, match="nope.pth.*MODEL.WEIGHTS"):
        AtomicCheckpointer(make_model()).load(missing)


def test_corrupt_weights_file_names_it(tmp_path):
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(b"this is not a checkpoint")
    with pytest.raises(RuntimeError, match="corrupt.pth.*corrupt or not a checkpoint"):
        AtomicCheckpointer(make_model()).load(str(corrupt))


class NotAllowed:
    pass


def test_pth_checkpoints_refuse_arbitrary_objects(tmp_path):
    path = tmp_path / "unsafe.pth"
    torch.save({"model": make_model().state_dict(), "payload": NotAllowed()}, path)
    with pytest.raises(RuntimeError, match="unsafe.pth"):
        AtomicCheckpointer(make_model()).load(str(path))
