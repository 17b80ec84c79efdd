"""INT8 static quantization: int8 files open in the same predictor, say they are int8, keep
the chosen nodes in float, stay close to fp32 on their calibration images, and refuse bad
calibration data; the command line round trip."""

import dataclasses

import onnx
import pytest
import torch

import pansight
from pansight.cli import main
from pansight.config import DataConfig, TrainConfig
from pansight.data.factory import build_dataset
from pansight.engine.checkpoint import model_payload, save_checkpoint
from pansight.errors import CheckpointError, ConfigError, DataError
from pansight.export import Int8Options, export_onnx, load_onnx, quantize_onnx
from pansight.export.metadata import ExportMetadata
from pansight.export.quantize import calibration_images, final_convolutions
from pansight.models.zoo import build_model
from pansight.structures import Detections, SemanticMap

DATA = DataConfig(mode="multi", image_size=48, num_train=6, num_val=2)
TINY = {
    "fcn8s_r18": ("semantic", {"input_size": 64}),
    "yolact_r18": (
        "instance",
        {"input_size": 64, "fpn_channels": 16, "proto_channels": 16, "num_prototypes": 8},
    ),
}
YOLACT_HEAD = ("box_deltas", "class_logits", "mask_coefficients")
OPTIONS = Int8Options(num_images=4)


def tiny_model(name):
    """A tiny random model for ``DATA``'s classes, every weight non-zero (FCN-8s starts its
    skips at zero)."""
    task, overrides = TINY[name]
    class_names = list(build_dataset(DATA, "val", task).class_names)
    torch.manual_seed(0)
    model = build_model(name, class_names, overrides).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            if not parameter.any():
                parameter.normal_(0.0, 0.05)
    return model


@pytest.fixture(scope="module", params=list(TINY))
def exported(request, tmp_path_factory):
    """``(name, fp32 predictor, int8 predictor)`` of each tiny model, int8 calibrated on
    ``DATA``."""
    name = request.param
    folder = tmp_path_factory.mktemp(name)
    fp32 = export_onnx(tiny_model(name), folder / "fp32.onnx", train_data=dataclasses.asdict(DATA))
    int8 = quantize_onnx(fp32, folder / "int8.onnx", OPTIONS)
    return name, load_onnx(fp32, 1), load_onnx(int8, 1)


def test_int8_file_keeps_metadata_and_says_int8(exported):
    name, fp32, int8 = exported
    assert fp32.metadata.precision == "fp32" and fp32.metadata.fp32_nodes == []
    assert int8.metadata.precision == "int8"
    assert dataclasses.replace(int8.metadata, precision="fp32", fp32_nodes=[]) == fp32.metadata
    assert int8.metadata.model_name == name


def test_int8_graph_runs_integer_convolutions(exported):
    _, _, int8 = exported
    graph = onnx.load(int8.path).graph
    operators = {node.op_type for node in graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "Conv"} <= operators
    int8_weights = [t for t in graph.initializer if t.data_type == onnx.TensorProto.INT8]
    float_convs = set(int8.metadata.fp32_nodes)
    quantized_convs = [n for n in graph.node if n.op_type == "Conv" and n.name not in float_convs]
    assert len(int8_weights) >= len(quantized_convs) > 0


def test_yolact_head_stays_float_by_default(exported):
    name, fp32, int8 = exported
    graph = onnx.load(int8.path).graph
    outputs = YOLACT_HEAD if name == "yolact_r18" else ()
    head = set(final_convolutions(onnx.load(fp32.path), outputs))
    assert set(int8.metadata.fp32_nodes) == head
    producers = {output: node for node in graph.node for output in node.output}
    for node in graph.node:
        if node.op_type != "Conv":
            continue
        weight_producer = producers.get(node.input[1])
        dequantized = weight_producer is not None and weight_producer.op_type == "DequantizeLinear"
        assert dequantized == (node.name not in head), node.name
    if name == "yolact_r18":
        assert len(head) == 3 * 5  # box, class and coefficient convs at five pyramid levels


def test_int8_outputs_are_close_to_fp32_on_calibration_images(exported):
    name, fp32, int8 = exported
    images = calibration_images(DATA, fp32.task, OPTIONS.num_images)
    batch, _ = fp32.preprocess(images)
    expected, found = fp32(batch), int8(batch)
    for output in fp32.spec.output_names:
        reference, quantized = getattr(expected, output), getattr(found, output)
        error = (quantized - reference).norm() / reference.norm()
        assert error < 0.08, (output, float(error))
    if name == "fcn8s_r18":
        agreement = (expected.logits.argmax(1) == found.logits.argmax(1)).float().mean()
        assert agreement > 0.95


def test_int8_predictor_gives_the_eager_result_types(exported):
    name, _, int8 = exported
    results = int8.predict(calibration_images(DATA, int8.task, 2))
    result_type = SemanticMap if name == "fcn8s_r18" else Detections
    assert len(results) == 2 and all(isinstance(result, result_type) for result in results)


def test_every_output_can_stay_float_or_none(tmp_path):
    fp32 = export_onnx(tiny_model("yolact_r18"), tmp_path / "fp32.onnx")
    options = Int8Options(calibration=DATA, num_images=2, keep_fp32_outputs=())
    assert load_onnx(quantize_onnx(fp32, tmp_path / "none.onnx", options)).metadata.fp32_nodes == []
    graph = onnx.load(fp32)
    name = final_convolutions(graph, ("prototypes",))[0]
    options = dataclasses.replace(options, exclude_nodes=(name,))
    assert load_onnx(quantize_onnx(fp32, tmp_path / "one.onnx", options)).metadata.fp32_nodes == [
        name
    ]


def test_bad_options_and_calibration_data_are_refused(tmp_path):
    fp32 = export_onnx(tiny_model("fcn8s_r18"), tmp_path / "fp32.onnx")
    out, missing = tmp_path / "int8.onnx", tmp_path / "nowhere"
    cases = [
        (Int8Options(calibration=dataclasses.replace(DATA, num_train=0)), DataError, "no train"),
        (Int8Options(calibration=DataConfig(name="coco", root=str(missing))), DataError, "nowhere"),
        (Int8Options(calibration=DATA, num_images=0), ConfigError, "num_images=0"),
        (Int8Options(calibration=DATA, keep_fp32_outputs=("scores",)), ConfigError, "scores"),
        (Int8Options(calibration=DATA, exclude_nodes=("/no/such",)), ConfigError, "/no/such"),
    ]
    for options, error, message in cases:
        with pytest.raises(error, match=message):
            quantize_onnx(fp32, out, options)
        assert not out.exists()
    int8 = quantize_onnx(fp32, out, Int8Options(calibration=DATA, num_images=2))
    with pytest.raises(CheckpointError, match="already int8"):
        quantize_onnx(int8, tmp_path / "twice.onnx", OPTIONS)


def test_files_without_precision_read_as_fp32_and_unknown_precision_is_refused():
    metadata = ExportMetadata("fcn8s_r18", "semantic", ["a"], {}, {})
    props = metadata.to_props()
    added = ("pansight.precision", "pansight.fp32_nodes")
    older = {key: value for key, value in props.items() if key not in added}
    assert ExportMetadata.from_props(older, "old.onnx") == metadata
    with pytest.raises(CheckpointError, match="precision 'int4' is unknown"):
        ExportMetadata.from_props({**props, "pansight.precision": "int4"}, "new.onnx")


def test_cli_int8_export_round_trip(tmp_path, capsys):
    model = tiny_model("fcn8s_r18")
    train_config = TrainConfig(task="semantic", model="fcn8s_r18", data=DATA)
    dataset = build_dataset(DATA, "val", "semantic")
    payload = model_payload(
        model, model_name="fcn8s_r18", train_config=train_config, data_set=dataset, metrics={}
    )
    save_checkpoint(tmp_path / "model.pt", payload)
    out = tmp_path / "int8.onnx"
    arguments = ["export", str(tmp_path / "model.pt"), "--out", str(out), "--int8"]
    calibration = ["--calibration", "shapes", "data.num_train=3", "--calibration-images", "2"]
    assert main(arguments + calibration) == 0
    assert f"wrote {out} (int8)" in capsys.readouterr().out
    predictor = pansight.load(out)
    assert predictor.metadata.precision == "int8"
    assert predictor.trained_on == DATA
    assert "mIoU" in pansight.evaluate(out, progress=False)
    assert main(["export", str(tmp_path / "model.pt"), "--calibration", "shapes"]) == 2
    assert "need --int8" in capsys.readouterr().err
    assert main([*arguments, "--calibration", "data.num_train=0"]) == 2
    assert "no train images" in capsys.readouterr().err


def test_models_that_do_not_quantize_yet_are_refused(tmp_path):
    torch.manual_seed(0)
    tiny = {"input_size": 64, "fpn_channels": 16, "proto_channels": 16, "num_prototypes": 8}
    model = build_model("yolact_edge_r18", ["circle", "square"], {**tiny, "flow_channels": 8})
    fp32 = export_onnx(model.eval(), tmp_path / "edge.onnx")
    with pytest.raises(ConfigError, match="yolact_edge_r18 is not supported yet"):
        quantize_onnx(fp32, tmp_path / "int8.onnx", OPTIONS)
    assert not (tmp_path / "int8.onnx").exists()
