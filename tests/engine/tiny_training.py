"""A tiny model and data set for the engine's tests, and a script that trains them.

Run as a script it trains once and can record what happened (``--record-dir``): the data-set
indices this rank loaded, the checkpoints it wrote and a hash of its final parameters. The tests
launch it in a subprocess (to kill it with SIGKILL part-way) and under ``torchrun`` (two ranks).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import signal
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Dataset

from pansight.config import DataConfig, TrainConfig
from pansight.models.base import PansightModel
from pansight.structures import ImageBatch, Target

CLASS_NAMES = ["dark", "mid", "bright"]


@dataclass(frozen=True)
class TinyConfig:
    """``nan_at``/``kill_at``: on that training loss call (1-based) return NaN / SIGKILL self."""

    channels: int = 4
    nan_at: int = 0
    kill_at: int = 0


@dataclass
class TinyOutputs:
    logits: Tensor


class TinyClassifier(PansightModel):
    """conv -> batch norm -> ReLU -> global pool -> dropout -> linear, on 16x16 images."""

    task = "classify"

    def __init__(self, config: TinyConfig, class_names: list[str]) -> None:
        super().__init__(config, class_names)
        self.conv = nn.Conv2d(3, config.channels, 3, padding=1)
        self.norm = nn.BatchNorm2d(config.channels)
        self.dropout = nn.Dropout(0.3)
        self.fc = nn.Linear(config.channels, len(class_names))
        self.loss_calls = 0

    def preprocess(
        self, images: list[Tensor], targets: list[Target] | None = None
    ) -> tuple[ImageBatch, list[Target] | None]:
        return ImageBatch.from_images(images), targets

    def forward(self, batch: ImageBatch, targets: list[Target] | None = None) -> TinyOutputs:
        features = F.relu(self.norm(self.conv(self.normalize(batch.tensor))))
        pooled = self.dropout(features.mean(dim=(2, 3)))
        return TinyOutputs(self.fc(pooled))

    def loss(self, outputs: TinyOutputs, targets: list[Target]) -> dict[str, Tensor]:
        self.loss_calls += 1
        if self.loss_calls == self.config.kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        labels = torch.tensor([t.label for t in targets], device=outputs.logits.device)
        loss = F.cross_entropy(outputs.logits, labels)
        if self.loss_calls == self.config.nan_at:
            loss = loss * float("nan")
        return {"loss_cls": loss, "loss_small": 0.01 * outputs.logits.pow(2).mean()}


class RandomImages(Dataset):
    """``size`` random 16x16 images whose label is their brightness tercile.

    Each sample is a fixed function of its index, flipped left-right at random by the global
    torch generator (a stand-in for augmentation). ``loaded`` lists the indices read, in order.
    """

    class_names = CLASS_NAMES
    category_ids = [10, 20, 30]
    semantic_class_names = None
    thing_flags = None

    def __init__(self, size: int = 40) -> None:
        self.size = size
        self.loaded: list[int] = []

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> tuple[Tensor, Target]:
        self.loaded.append(index)
        generator = torch.Generator().manual_seed(index)
        label = index % 3
        image = (torch.rand(3, 16, 16, generator=generator) + label) / 3
        if torch.rand(()) < 0.5:
            image = image.flip(-1)
        return image, Target(image_id=index, size=(16, 16), label=label)


def tiny_train_config(out: Path | str, **changes: object) -> TrainConfig:
    """A run of the tiny model: 40 images, batches of 8 (5 per epoch), 4 epochs, on the CPU."""
    values = dict(
        task="classify",
        model="tiny",
        data=DataConfig(name="random"),
        epochs=4,
        batch_size=8,
        lr=0.1,
        warmup_iters=3,
        checkpoint_every=4,
        log_every=5,
        seed=7,
        out=str(out),
        device="cpu",
    )
    return TrainConfig(**(values | changes))


def build_tiny(config: TrainConfig, **model_changes: int) -> TinyClassifier:
    """The tiny model, built after seeding as a caller of the trainer does."""
    from pansight.engine.trainer import seed_everything

    seed_everything(config.seed)
    return TinyClassifier(TinyConfig(**model_changes), CLASS_NAMES)


def parameters_hash(model: nn.Module) -> str:
    """SHA-256 of every parameter (not buffers: batch-norm statistics are per rank)."""
    digest = hashlib.sha256()
    for name, tensor in model.named_parameters():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", required=True)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--images", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--kill-at", type=int, default=0)
    parser.add_argument("--record-dir", default="")
    args = parser.parse_args()

    import pansight.engine.trainer as trainer_module

    saved: list[str] = []
    save_checkpoint = trainer_module.save_checkpoint

    def recording_save(path: Path, payload: dict) -> None:
        saved.append(str(path))
        save_checkpoint(path, payload)

    trainer_module.save_checkpoint = recording_save
    config = tiny_train_config(args.out, epochs=args.epochs, batch_size=args.batch_size)
    model = build_tiny(config, kill_at=args.kill_at)
    data = RandomImages(args.images)
    trainer = trainer_module.Trainer(config, model, data, model_name="tiny")
    trainer.fit()
    if args.record_dir:
        record = {
            "rank": int(os.environ.get("RANK", 0)),
            "indices": data.loaded,
            "iterations": trainer.iteration,
            "saved": saved,
            "parameters": parameters_hash(model),
        }
        path = Path(args.record_dir) / f"rank{record['rank']}.json"
        path.write_text(json.dumps(record))


if __name__ == "__main__":
    main()
