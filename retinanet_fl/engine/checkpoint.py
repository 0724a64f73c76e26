"""
A DetectionCheckpointer that writes its files atomically, whose load errors name the file, and
that refuses a head trained with the other kind of classification loss.
"""

import os
import tempfile
from typing import Any, Dict

import torch
from detectron2.checkpoint import DetectionCheckpointer

from ..modeling.head import RetinaNetFocalHead, check_cls_score_checkpoint


def _write_atomically(path: str, write: Any, mode: str) -> None:
    """Write through ``write(file)`` to a temporary file beside ``path``, then rename it onto it.

    A process killed at any moment leaves either the old file or the complete new one.
    """
    directory = os.path.dirname(path) or "."
    file_descriptor, temporary_path = tempfile.mkstemp(
        dir=directory, prefix=".tmp-", suffix=os.path.basename(path)
    )
    try:
        with os.fdopen(file_descriptor, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary_path, path)
    except BaseException:
        if os.path.exists(temporary_path):
            os.remove(temporary_path)
        raise


class AtomicCheckpointer(DetectionCheckpointer):
    """
    Detectron2's checkpointer, with crash-safe saving: each checkpoint is written to a temporary
    file and renamed into place, and ``last_checkpoint`` is updated only after that, so the latest
    checkpoint it names is always complete. Files that cannot be read raise an error naming them.
    A checkpoint whose classification layer has K logits per anchor (a sigmoid loss) loaded into
    a model with K + 1 (the softmax loss), or the reverse, raises an error naming the head's
    class count (Detectron2's checkpointer would skip that layer with a warning).
    """

    def save(self, name: str, **kwargs: Any) -> None:
        if not self.save_dir or not self.save_to_disk:
            return
        data: Dict[str, Any] = {"model": self.model.state_dict()}
        for key, checkpointable in self.checkpointables.items():
            data[key] = checkpointable.state_dict()
        data.update(kwargs)
        basename = f"{name}.pth"
        save_file = os.path.join(self.save_dir, basename)
        self.logger.info(f"Saving checkpoint to {save_file}")
        _write_atomically(save_file, lambda f: torch.save(data, f), "wb")
        self.tag_last_checkpoint(basename)

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        path = os.path.join(self.save_dir, "last_checkpoint")
        _write_atomically(path, lambda f: f.write(last_filename_basename), "w")

    def load(self, path: str, *args: Any, **kwargs: Any) -> Dict[str, Any]:
        if path and "://" not in path and not os.path.isfile(path):
            raise FileNotFoundError(
                f"Weights file '{path}' does not exist. Check MODEL.WEIGHTS (or the "
                "last_checkpoint file in OUTPUT_DIR when resuming)."
            )
        return super().load(path, *args, **kwargs)

    def _load_file(self, filename: str) -> Dict[str, Any]:
        try:
            return super()._load_file(filename)
        except Exception as error:
            raise RuntimeError(
                f"Could not read weights file '{filename}': it is corrupt or not a checkpoint "
                f"({type(error).__name__}: {error}). Check MODEL.WEIGHTS."
            ) from error

    def _load_model(self, checkpoint: Dict[str, Any]):
        state_dict = checkpoint.get("model", {})
        for name, module in self.model.named_modules():
            if isinstance(module, RetinaNetFocalHead):
                check_cls_score_checkpoint(module, state_dict, f"{name}." if name else "")
        return super()._load_model(checkpoint)

    def _torch_load(self, filename: str) -> Dict[str, Any]:
        # Refuse arbitrary pickled objects in .pth files; Detectron2's checkpoints need none.
        return torch.load(filename, map_location="cpu", weights_only=True)
