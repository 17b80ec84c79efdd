"""A model family registered at run time works everywhere the shipped families do: the zoo
lists and builds it, ``pansight.train`` trains it with its own recipe, ``pansight.load`` and
``evaluate`` read its checkpoint, and it exports to ONNX and int8, all without any change to
``zoo.py``, ``api.py`` or ``export/``."""

from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import pansight
from pansight.errors import ConfigError
from pansight.export import export_onnx, load_onnx, quantize_onnx
from pansight.export.quantize import Int8Options
from pansight.models import registry, zoo
from pansight.models.base import PansightModel, check_class_names, resize_to_square
from pansight.models.classification.classifier import target_labels
from pansight.structures import Classification, ImageBatch, Target


@dataclass(frozen=True)
class ColourNetConfig:
    input_size: int = 32
    channels: int = 8


@dataclass
class ColourNetOutputs:
    logits: Tensor


class ColourNet(PansightModel):
    """Two convolutions and a linear head: a family as small as a family can be."""

    task = "classify"

    def __init__(self, config: ColourNetConfig, class_names: list[str]) -> None:
        super().__init__(config, class_names)
        check_class_names(class_names)
        self.convs = nn.Sequential(
            nn.Conv2d(3, config.channels, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(config.channels, config.channels, 3, stride=2, padding=1),
            nn.ReLU(),
        )
        self.fc = nn.Linear(config.channels, self.num_classes)

    def preprocess(self, images, targets=None):
        return resize_to_square(images, targets, self.config.input_size)

    def forward(self, batch: ImageBatch, targets=None) -> ColourNetOutputs:
        features = self.convs(self.normalize(batch.tensor))
        return ColourNetOutputs(self.fc(features.mean(dim=(2, 3))))

    def loss(self, outputs: ColourNetOutputs, targets: list[Target]) -> dict[str, Tensor]:
        labels = target_labels(targets, self.num_classes)
        return {"cls": F.cross_entropy(outputs.logits, labels)}

    def postprocess(self, outputs: ColourNetOutputs, batch: ImageBatch) -> list[Classification]:
        probabilities = outputs.logits.float().softmax(dim=1)
        scores, labels = probabilities.max(dim=1)
        return [
            Classification(label=int(label), score=float(score), scores=row)
            for label, score, row in zip(labels, scores, probabilities)
        ]


@pytest.fixture
def color_family():
    family = registry.register(
        registry.Family(
            name="color_net",
            models={
                "color_net": registry.ModelEntry(
                    "classify", ColourNetConfig, ColourNet, "two convolutions and a linear head"
                )
            },
            recipes={"classify": {"optimizer": "adamw", "lr": 5e-3, "batch_size": 8}},
            export={ColourNet: registry.ExportSpec(ColourNetOutputs, ("logits",))},
        )
    )
    yield family
    registry.unregister(family.name)


def test_the_zoo_lists_and_builds_a_registered_family(color_family):
    assert "color_net" in zoo.MODELS and "color_net" in zoo.models_for_task("classify")
    model = zoo.build_model("color_net", ["a", "b"], {"channels": "4"})
    assert isinstance(model, ColourNet) and model.config.channels == 4


def test_a_registered_family_trains_loads_evaluates_and_exports(color_family, tmp_path):
    data = {"data.num_train": 16, "data.num_val": 8, "data.image_size": 32}
    run = pansight.train(
        "classify",
        model="color_net",
        max_iters=3,
        warmup_iters=0,
        out=str(tmp_path / "run"),
        **{key.replace(".", "__"): value for key, value in data.items()},
    )
    config = (tmp_path / "run" / "config.yaml").read_text()
    assert "batch_size: 8" in config and "lr: 0.005" in config  # the family's recipe
    loaded = pansight.load(tmp_path / "run" / "model.pt")
    assert isinstance(loaded, ColourNet) and isinstance(run.model, ColourNet)
    assert set(pansight.evaluate(tmp_path / "run" / "model.pt", progress=False)) >= {"top1"}
    onnx_path = export_onnx(loaded, tmp_path / "color.onnx", model_name="color_net")
    images = [torch.rand(3, 40, 30, generator=torch.Generator().manual_seed(i)) for i in range(2)]
    expected = [result.scores for result in loaded.predict(images)]
    found = [result.scores for result in load_onnx(onnx_path).predict(images)]
    torch.testing.assert_close(torch.stack(found), torch.stack(expected), atol=1e-5, rtol=1e-4)
    options = Int8Options(num_images=4, reduce_range=True)
    int8 = quantize_onnx(onnx_path, tmp_path / "color_int8.onnx", options)
    assert pansight.load(int8).metadata.precision == "int8"


def test_a_family_cannot_take_a_name_already_registered(color_family):
    with pytest.raises(ConfigError, match="'color_net'"):
        registry.register(registry.Family("other", {"color_net": color_family.models["color_net"]}))
    with pytest.raises(ConfigError, match="'classifier_r18' is already registered"):
        registry.register(
            registry.Family("other", {"classifier_r18": color_family.models["color_net"]})
        )
