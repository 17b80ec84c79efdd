"""INT8 static quantization: int8 files open in the same predictor, say they are int8 and their
weights' width, keep the chosen nodes in float, and refuse bad calibration data; onnxruntime's
integer kernels compute the quantized graph as written (on this processor, with the weight
width chosen for it), and the quantization's own error stays within a bound for each weight
width (:mod:`int8_kernels` gives the bounds and why); the command line round trip. The
detection pipelines (R-CNN, YolactEdge) are test_quantize_detectors.py's; the settings and
helpers here are shared with it."""

import dataclasses
import warnings

import onnx
import pytest
import torch
from int8_kernels import (
    QUANTIZATION_BOUND,
    assert_kernels_compute,
    reference_predictor,
    relative_error,
)

import pansight
from pansight import hardware
from pansight.cli import main
from pansight.config import DataConfig, TrainConfig
from pansight.data.factory import build_dataset
from pansight.engine.checkpoint import model_payload, save_checkpoint
from pansight.errors import CheckpointError, ConfigError, DataError
from pansight.export import Int8Options, export_onnx, load_onnx, quantize_onnx
from pansight.export.metadata import ExportMetadata
from pansight.export.quantize import (
    calibration_images,
    final_convolutions,
    graph_feeds,
    output_heads,
)
from pansight.models.fcn import FAMILY as FCN_FAMILY
from pansight.models.fcn import FCN
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
YOLACT_EDGE = (
    "instance",
    {
        "input_size": 64,
        "fpn_channels": 16,
        "proto_channels": 16,
        "num_prototypes": 8,
        "flow_channels": 8,
    },
)
OPTIONS = Int8Options(num_images=4)
"""Weights as wide as this processor takes them: 7 bits without VNNI."""
WIDTHS = (7, 8)
TINY_RCNN = {
    "min_size": 64,
    "max_size": 128,
    "fpn_channels": 16,
    "representation_size": 32,
    "mask_head_channels": 16,
    "rpn_pre_nms_top_n_test": 100,
    "rpn_post_nms_top_n_test": 50,
    "detections_per_img": 20,
}
RCNN_FLOAT_OPERATORS = ("Gemm", "RoiAlign", "NonMaxSuppression")
"""Operators R-CNN graphs keep in float (NMS inside ``If`` branches)."""


def tiny_model(name):
    """A tiny random model for ``DATA``'s classes, every weight non-zero (FCN-8s starts its
    skips at zero)."""
    task, overrides = YOLACT_EDGE if name == "yolact_edge_r18" else TINY[name]
    class_names = list(build_dataset(DATA, "val", task).class_names)
    torch.manual_seed(0)
    model = build_model(name, class_names, overrides).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            if not parameter.any():
                parameter.normal_(0.0, 0.05)
    return model


def open_quietly(path):
    """``load_onnx(path, 1)`` without the warning an 8-bit file gives without VNNI."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return load_onnx(path, 1)


@dataclasses.dataclass
class Quantized:
    """A tiny model exported (``fp32``, the predictor of a file in ``folder``) and quantized on
    first use with weights of each width, calibrated on ``DATA`` (only the width chosen for
    this processor where a run needs no other)."""

    name: str
    fp32: object
    folder: object
    quantized: dict = dataclasses.field(default_factory=dict)

    def width(self, bits):
        """The int8 predictor with ``bits``-bit weights."""
        if bits not in self.quantized:
            options = dataclasses.replace(OPTIONS, reduce_range=bits == 7)
            path = quantize_onnx(self.fp32.path, self.folder / f"int8_{bits}.onnx", options)
            self.quantized[bits] = open_quietly(path)
        return self.quantized[bits]

    @property
    def int8(self):
        """The int8 predictor with the weight width chosen for this processor."""
        return self.width(OPTIONS.weight_bits)


@pytest.fixture(scope="module", params=list(TINY))
def exported(request, tmp_path_factory):
    """Each tiny model, exported, to quantize."""
    name = request.param
    folder = tmp_path_factory.mktemp(name)
    fp32 = export_onnx(tiny_model(name), folder / "fp32.onnx", train_data=dataclasses.asdict(DATA))
    return Quantized(name, load_onnx(fp32, 1), folder)


def test_int8_file_keeps_metadata_and_says_int8_and_its_weight_width(exported):
    fp32 = exported.fp32
    assert fp32.metadata.precision == "fp32" and fp32.metadata.fp32_nodes == []
    assert fp32.metadata.int8_weight_bits is None
    for bits in WIDTHS:
        int8 = exported.width(bits)
        assert int8.metadata.precision == "int8" and int8.metadata.int8_weight_bits == bits
        plain = {"precision": "fp32", "fp32_nodes": [], "int8_weight_bits": None}
        assert dataclasses.replace(int8.metadata, **plain) == fp32.metadata
        assert int8.metadata.model_name == exported.name


def test_weight_width_follows_the_processor_unless_chosen(monkeypatch):
    for needs_reduced_range, bits in ((True, 7), (False, 8)):
        monkeypatch.setattr(hardware, "int8_needs_reduced_range", lambda v=needs_reduced_range: v)
        assert Int8Options().weight_bits == bits
        assert Int8Options(reduce_range=True).weight_bits == 7
        assert Int8Options(reduce_range=False).weight_bits == 8


def test_8_bit_weights_warn_where_kernels_may_saturate(exported, monkeypatch):
    paths = {bits: exported.width(bits).path for bits in WIDTHS}
    monkeypatch.setattr(hardware, "int8_needs_reduced_range", lambda: True)
    with pytest.warns(RuntimeWarning, match="may saturate.*7-bit weights"):
        load_onnx(paths[8], 1)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        load_onnx(paths[7], 1)
        monkeypatch.setattr(hardware, "int8_needs_reduced_range", lambda: False)
        load_onnx(paths[8], 1)


def test_int8_graph_runs_integer_convolutions(exported):
    int8 = exported.int8
    graph = onnx.load(int8.path).graph
    operators = {node.op_type for node in graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "Conv"} <= operators
    int8_weights = [t for t in graph.initializer if t.data_type == onnx.TensorProto.INT8]
    float_convs = set(int8.metadata.fp32_nodes)
    quantized_convs = [n for n in graph.node if n.op_type == "Conv" and n.name not in float_convs]
    assert len(int8_weights) >= len(quantized_convs) > 0


def assert_head_stays_float(int8_graph, fp32_nodes, heads, outputs):
    """In ``int8_graph`` (a model) the convolutions computing ``outputs`` are ``heads``, among
    its ``fp32_nodes``; only the other convolutions read dequantized weights, and the nodes
    from ``heads`` to ``outputs`` hold no ``QuantizeLinear`` (onnxruntime would then quantize
    the heads' weights itself and run them as integer kernels)."""
    found_heads, between = output_heads(int8_graph, outputs)
    assert set(found_heads) == set(heads) <= set(fp32_nodes)
    nodes = {node.name: node for node in int8_graph.graph.node}
    assert not {nodes[name].op_type for name in between} & {"QuantizeLinear", "DequantizeLinear"}
    producers = {output: node for node in int8_graph.graph.node for output in node.output}
    for node in int8_graph.graph.node:
        if node.op_type == "Conv":
            weight_producer = producers.get(node.input[1])
            dequantized = (
                weight_producer is not None and weight_producer.op_type == "DequantizeLinear"
            )
            assert dequantized == (node.name not in heads), node.name


def test_yolact_head_stays_float_by_default(exported):
    fp32, int8 = exported.fp32, exported.int8
    outputs = YOLACT_HEAD if exported.name == "yolact_r18" else ()
    heads = final_convolutions(onnx.load(fp32.path), outputs)
    assert_head_stays_float(onnx.load(int8.path), int8.metadata.fp32_nodes, heads, outputs)
    assert bool(int8.metadata.fp32_nodes) == bool(outputs)
    if exported.name == "yolact_r18":
        assert len(heads) == 3 * 5  # box, class and coefficient convs at five pyramid levels


def calibration_feeds(predictor, count=2):
    """The graph inputs of ``count`` calibration images, one dict per image."""
    images = calibration_images(DATA, predictor.task, count)
    return [
        graph_feeds(predictor.preprocess([image])[0], bool(predictor.spec.per_image))
        for image in images
    ]


def test_int8_kernels_compute_the_quantized_graph(exported):
    """With the weight width chosen for this processor, each uint8 tensor the integer kernels
    compute is the float reference's from the same inputs, to one step at a few elements
    (:func:`int8_kernels.assert_kernels_compute`); 8-bit weights on AVX2 fail here."""
    int8 = exported.int8
    for feeds in calibration_feeds(int8):
        assert_kernels_compute(onnx.load(int8.path), feeds)


def test_quantization_error_is_bounded_for_each_weight_width(exported):
    """The quantized graph run as written (float arithmetic, no integer kernels: the same on
    every processor) stays within :data:`int8_kernels.QUANTIZATION_BOUND` of fp32, a bound
    twice as wide for 7-bit weights as for 8-bit ones."""
    fp32 = exported.fp32
    batch, _ = fp32.preprocess(calibration_images(DATA, fp32.task, OPTIONS.num_images))
    expected = fp32(batch)
    for bits in WIDTHS:
        found = reference_predictor(exported.width(bits))(batch)
        for output in fp32.spec.output_names:
            error = relative_error(getattr(found, output), getattr(expected, output))
            assert error < QUANTIZATION_BOUND[bits], (bits, output, error)


def test_int8_outputs_are_close_to_fp32_on_calibration_images(exported):
    """The kernels' outputs, another rounding of the quantized graph, are held to the same
    bound as the graph run as written."""
    fp32, int8 = exported.fp32, exported.int8
    bound = QUANTIZATION_BOUND[int8.metadata.int8_weight_bits]
    images = calibration_images(DATA, fp32.task, OPTIONS.num_images)
    batch, _ = fp32.preprocess(images)
    expected, found = fp32(batch), int8(batch)
    for output in fp32.spec.output_names:
        error = relative_error(getattr(found, output), getattr(expected, output))
        assert error < bound, (output, error)
    if exported.name == "fcn8s_r18":
        agreement = (expected.logits.argmax(1) == found.logits.argmax(1)).float().mean()
        assert agreement > 0.95


def test_int8_predictor_gives_the_eager_result_types(exported):
    int8 = exported.int8
    results = int8.predict(calibration_images(DATA, int8.task, 2))
    result_type = SemanticMap if exported.name == "fcn8s_r18" else Detections
    assert len(results) == 2 and all(isinstance(result, result_type) for result in results)


def test_every_output_can_stay_float_or_none_and_excluded_nodes_run_in_float(tmp_path):
    """An excluded convolution among quantized nodes (here one feeding a residual sum) runs in
    float: onnxruntime, left to itself, would quantize its weights (8 bits, one scale per
    tensor), putting a fifth of its outputs a step off the graph's."""
    fp32 = export_onnx(tiny_model("yolact_r18"), tmp_path / "fp32.onnx")
    options = Int8Options(calibration=DATA, num_images=2, keep_fp32_outputs=())
    assert load_onnx(quantize_onnx(fp32, tmp_path / "none.onnx", options)).metadata.fp32_nodes == []
    graph = onnx.load(fp32).graph
    sums = {name for node in graph.node if node.op_type == "Add" for name in node.input}
    name = next(
        node.name for node in graph.node if node.op_type == "Conv" and node.output[0] in sums
    )
    options = dataclasses.replace(options, exclude_nodes=(name,))
    one = load_onnx(quantize_onnx(fp32, tmp_path / "one.onnx", options), 1)
    assert one.metadata.fp32_nodes == [name]
    assert_kernels_compute(onnx.load(one.path), calibration_feeds(one, 1)[0])


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
    added = ("pansight.precision", "pansight.fp32_nodes", "pansight.int8_weight_bits")
    older = {key: value for key, value in props.items() if key not in added}
    assert ExportMetadata.from_props(older, "old.onnx") == metadata
    with pytest.raises(CheckpointError, match="precision 'int4' is unknown"):
        ExportMetadata.from_props({**props, "pansight.precision": "int4"}, "new.onnx")


def test_int8_files_without_weight_width_read_as_8_bits_and_unknown_widths_are_refused():
    metadata = ExportMetadata("fcn8s_r18", "semantic", ["a"], {}, {}, "int8", [], 7)
    props = metadata.to_props()
    assert props["pansight.int8_weight_bits"] == "7"
    assert ExportMetadata.from_props(props, "new.onnx") == metadata
    older = {key: value for key, value in props.items() if key != "pansight.int8_weight_bits"}
    assert ExportMetadata.from_props(older, "old.onnx").int8_weight_bits == 8
    with pytest.raises(CheckpointError, match="int8 weight width '4' is unknown"):
        ExportMetadata.from_props({**props, "pansight.int8_weight_bits": "4"}, "new.onnx")


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
    assert main([*arguments, *calibration, "--weight-bits", "7"]) == 0
    assert f"wrote {out} (int8, 7-bit weights)" in capsys.readouterr().out
    predictor = pansight.load(out)
    assert predictor.metadata.precision == "int8" and predictor.metadata.int8_weight_bits == 7
    assert predictor.trained_on == DATA
    assert "mIoU" in pansight.evaluate(out, progress=False)
    assert main(["export", str(tmp_path / "model.pt"), "--calibration", "shapes"]) == 2
    assert "need --int8" in capsys.readouterr().err
    assert main(["export", str(tmp_path / "model.pt"), "--weight-bits", "8"]) == 2
    assert "need --int8" in capsys.readouterr().err
    assert main([*arguments, "--calibration", "data.num_train=0"]) == 2
    assert "no train images" in capsys.readouterr().err


def test_models_that_do_not_quantize_yet_are_refused(tmp_path, monkeypatch):
    fp32 = export_onnx(tiny_model("fcn8s_r18"), tmp_path / "fcn.onnx")
    fcn_spec = FCN_FAMILY.export[FCN]
    monkeypatch.setitem(FCN_FAMILY.export, FCN, dataclasses.replace(fcn_spec, int8=None))
    with pytest.raises(ConfigError, match="fcn8s_r18 is not supported yet"):
        quantize_onnx(fp32, tmp_path / "int8.onnx", OPTIONS)
    assert not (tmp_path / "int8.onnx").exists()
