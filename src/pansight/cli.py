"""The ``pansight`` command line: train | eval | predict | models | data | demo | serve.

Every command prints errors a user can act on as one line (``error: FILE: problem``) and exits
with status 2; nothing already written is lost.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from pansight.api import evaluate, evaluate_video, train
from pansight.config import TASKS, apply_overrides, parse_key_values
from pansight.data.shapes import ShapesDataset
from pansight.data.shapes_coco import write_coco
from pansight.demo import run_demo as demo
from pansight.engine.distributed import is_main_process
from pansight.engine.model_files import open_weights
from pansight.errors import ConfigError, PansightError
from pansight.models.zoo import MODELS
from pansight.predict import predict_files

EPILOG = """examples:
  pansight train classify data=digits epochs=5
  pansight train localize data.num_train=3000 out=runs/loc
  pansight eval runs/loc/model.pt
  pansight predict runs/loc/model.pt photo.png images/ --out runs/pred
  pansight train semantic out=runs/sem
  pansight predict runs/sem/model.pt photo.png --channels
  pansight train instance model=yolact_r18 out=runs/yolact
  pansight predict runs/yolact/model.pt photo.png --show-prototypes
  pansight predict runs/yolact/model.pt clip.mp4 --out runs/video
  pansight predict runs/yolact/model.pt frames/ --video --fps 30
  pansight data write --out data/shapes --mode multi
  pansight demo
  pansight serve runs/sem/model.pt runs/yolact/model.pt --port 8000
"""


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.handler(args) or 0
    except PansightError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pansight",
        description="Image understanding from classification to panoptic segmentation.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    train = commands.add_parser("train", help="train a model for a task")
    train.add_argument("task", choices=TASKS)
    train.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    train.add_argument("--config", type=Path, help="a YAML file of overrides (applied first)")
    train.set_defaults(handler=run_train)

    evaluate = commands.add_parser("eval", help="evaluate a checkpoint on its validation split")
    evaluate.add_argument("checkpoint", type=Path)
    evaluate.add_argument("overrides", nargs="*", metavar="key=value", help="data overrides")
    evaluate.add_argument("--split", default="val", choices=("train", "val"))
    evaluate.add_argument("--out", type=Path, help="write the metrics as JSON here")
    evaluate.add_argument(
        "--video",
        action="store_true",
        help="video mask AP on whole clips (data=shapes_video or youtube_vis)",
    )
    evaluate.add_argument(
        "--keyframe-interval",
        type=int,
        help="with --video: a YolactEdge keyframe every N frames (1: every frame)",
    )
    evaluate.set_defaults(handler=run_eval)

    predict = commands.add_parser("predict", help="run a checkpoint on images or videos")
    predict.add_argument("checkpoint", type=Path)
    predict.add_argument(
        "inputs",
        nargs="+",
        type=Path,
        help="image files or folders; or video files (by suffix) and, with --video, folders of "
        "frames: each clip gives OUT/<name>.mp4 and OUT/<name>.json",
    )
    predict.add_argument("--out", type=Path, default=Path("runs/predict"))
    predict.add_argument("--batch-size", type=int, default=8)
    predict.add_argument(
        "--video",
        action="store_true",
        help="read each folder named as one video clip, its images the frames in name order",
    )
    predict.add_argument(
        "--fps", type=float, help="frame rate of output videos (default: the input's, else 25)"
    )
    predict.add_argument(
        "--channels",
        action="store_true",
        help="semantic models: also save each image's per-class score channels as a grid",
    )
    predict.add_argument(
        "--show-prototypes",
        action="store_true",
        help="YOLACT models: also save each image's prototype masks and, per detection, its "
        "coefficients and assembled mask",
    )
    predict.set_defaults(handler=run_predict)

    export = commands.add_parser("export", help="export a checkpoint to ONNX")
    export.add_argument("checkpoint", type=Path)
    export.add_argument("--format", choices=("onnx",), default="onnx")
    export.add_argument(
        "--dynamic",
        action="store_true",
        help="a dynamic batch axis (predict runs whole batches); default: one image per run",
    )
    export.add_argument("--out", type=Path, help="the file to write (default: CHECKPOINT.onnx)")
    export.add_argument(
        "--int8",
        action="store_true",
        help="quantize the graph to int8 (onnxruntime static quantization, calibrated on images)",
    )
    export.add_argument(
        "--calibration",
        nargs="+",
        metavar="DATA",
        help="with --int8: the calibration data set, NAME and/or data.KEY=VALUE as eval takes "
        "them (default: the data set the checkpoint was trained on); its train split is read",
    )
    export.add_argument(
        "--calibration-images",
        type=int,
        default=32,
        metavar="N",
        help="with --int8: calibration images (default 32)",
    )
    export.add_argument(
        "--weight-bits",
        choices=("auto", "7", "8"),
        default="auto",
        help="with --int8: the width of the int8 weights; 8 runs exactly only on processors "
        "with VNNI, 7 (a step twice as coarse) on every x86 processor; auto (default): what "
        "this processor needs",
    )
    export.add_argument(
        "--keep-fp32-outputs",
        nargs="*",
        metavar="OUTPUT",
        help="with --int8: graph outputs whose final convolutions stay in float (default: the "
        "model's own choice; none given: quantize them all)",
    )
    export.add_argument(
        "--exclude-nodes",
        nargs="+",
        default=[],
        metavar="NODE",
        help="with --int8: further graph nodes, by name, left in float",
    )
    export.set_defaults(handler=run_export)

    models = commands.add_parser("models", help="list the models of each task")
    models.add_argument("task", nargs="?", choices=TASKS)
    models.set_defaults(handler=run_models)

    data = commands.add_parser("data", help="write the synthetic world to disk as COCO")
    data.add_argument("action", choices=("write",))
    data.add_argument("--out", type=Path, default=Path("data/shapes"))
    data.add_argument("--mode", choices=("single", "multi"), default="multi")
    data.add_argument("--num-train", type=int, default=200)
    data.add_argument("--num-val", type=int, default=50)
    data.add_argument("--image-size", type=int, default=128)
    data.add_argument("--seed", type=int, default=0)
    data.set_defaults(handler=run_data)

    demo = commands.add_parser(
        "demo", help="train, evaluate and draw every rung on the synthetic world"
    )
    demo.add_argument("--out", type=Path, default=Path("runs/demo"))
    demo.add_argument("--quick", action="store_true", help="a shorter run with fewer images")
    demo.set_defaults(handler=run_demo)

    serve = commands.add_parser(
        "serve", help="a local web page showing the results of checkpoints on an image"
    )
    serve.add_argument("checkpoints", nargs="+", type=Path, metavar="CHECKPOINT")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default: local only)")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--queue-size", type=int, default=8, help="waiting predictions at most")
    serve.add_argument("--max-upload-mb", type=float, default=8.0, help="largest upload in MiB")
    serve.set_defaults(handler=run_serve)
    return parser


def run_train(args: argparse.Namespace) -> int:
    overrides: dict[str, Any] = {}
    if args.config:
        overrides |= _yaml_overrides(args.config)
    overrides |= parse_key_values(args.overrides)
    run = train(args.task, **{key.replace(".", "__"): value for key, value in overrides.items()})
    if is_main_process():
        _print_metrics(run.metrics)
        print(f"model: {run.out / 'model.pt'}")
    return 0


def run_eval(args: argparse.Namespace) -> int:
    overrides = parse_key_values(args.overrides)
    data = overrides.pop("data", None)
    overrides = {key.removeprefix("data."): value for key, value in overrides.items()}
    if args.video:
        metrics = evaluate_video(
            args.checkpoint,
            data=data,
            split=args.split,
            keyframe_interval=args.keyframe_interval,
            **overrides,
        )
    else:
        metrics = evaluate(args.checkpoint, data=data, split=args.split, **overrides)
    _print_metrics(metrics)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(metrics, indent=2))
    return 0


def run_predict(args: argparse.Namespace) -> int:
    # pansight.video needs the optional av package
    from pansight.video import is_video_file

    if args.video or any(is_video_file(path) for path in args.inputs):
        return run_predict_videos(args)
    written = predict_files(
        args.checkpoint,
        args.inputs,
        args.out,
        args.batch_size,
        channels=args.channels,
        prototypes=args.show_prototypes,
    )
    print(f"wrote {len(written)} pictures and {args.out / 'results.json'}")
    return 0


def run_predict_videos(args: argparse.Namespace) -> int:
    # video prediction needs the optional av package
    from pansight.predict_video import predict_videos

    if args.channels or args.show_prototypes:
        option = "--channels" if args.channels else "--show-prototypes"
        raise ConfigError(f"{option} applies to images, not to videos")
    if args.fps is not None and args.fps <= 0:
        raise ConfigError(f"--fps {args.fps} must be positive")
    written = predict_videos(
        args.checkpoint,
        args.inputs,
        args.out,
        args.batch_size,
        fps=args.fps,
        frame_folders=args.video,
    )
    for path in written:
        print(f"wrote {path}")
    return 0


def run_export(args: argparse.Namespace) -> int:
    # pansight.export needs the optional onnx and onnxruntime packages
    from pansight.export import export_checkpoint

    int8_flags = (
        args.calibration
        or args.keep_fp32_outputs is not None
        or args.exclude_nodes
        or args.weight_bits != "auto"
    )
    if int8_flags and not args.int8:
        raise ConfigError(
            "--calibration, --weight-bits, --keep-fp32-outputs and --exclude-nodes need --int8"
        )
    int8 = _int8_options(args) if args.int8 else None
    path = export_checkpoint(args.checkpoint, args.out, dynamic=args.dynamic, int8=int8)
    print(f"wrote {path}" + (f" (int8, {int8.weight_bits}-bit weights)" if int8 else ""))
    return 0


def _int8_options(args: argparse.Namespace) -> Any:
    """The :class:`~pansight.export.quantize.Int8Options` the export flags describe."""
    # pansight.export needs the optional onnx and onnxruntime packages
    from pansight.export.quantize import Int8Options

    keep = args.keep_fp32_outputs
    return Int8Options(
        calibration=_calibration_data(args.checkpoint, args.calibration or []),
        num_images=args.calibration_images,
        keep_fp32_outputs=None if keep is None else tuple(keep),
        exclude_nodes=tuple(args.exclude_nodes),
        reduce_range=None if args.weight_bits == "auto" else args.weight_bits == "7",
    )


def _calibration_data(checkpoint: Path, items: list[str]) -> Any:
    """The DataConfig of ``--calibration`` items (``NAME``, ``data=NAME``, ``data.KEY=VALUE``)
    over the one ``checkpoint`` was trained on; ``None`` (that data set) without items."""
    if not items:
        return None
    pairs = parse_key_values([item if "=" in item else f"data={item}" for item in items])
    overrides = {
        ("name" if key == "data" else key.removeprefix("data.")): value
        for key, value in pairs.items()
    }
    return apply_overrides(open_weights(checkpoint).trained_on, overrides, "data.")


def run_models(args: argparse.Namespace) -> int:
    for name, entry in MODELS.items():
        if args.task in (None, entry.task):
            print(f"{entry.task:10s} {name:24s} {entry.description}")
    return 0


def run_data(args: argparse.Namespace) -> int:
    for split, count in (("train", args.num_train), ("val", args.num_val)):
        dataset = ShapesDataset(
            split=split,
            mode=args.mode,
            num_images=count,
            image_size=args.image_size,
            seed=args.seed,
        )
        write_coco(dataset, args.out, split)
    print(f"wrote {args.num_train} + {args.num_val} images as COCO under {args.out}")
    return 0


def run_demo(args: argparse.Namespace) -> int:
    demo(args.out, quick=args.quick)
    return 0


def run_serve(args: argparse.Namespace) -> int:
    # pansight.serve needs the optional starlette and uvicorn packages
    from pansight.serve import ServeLimits, serve

    if args.queue_size < 1 or args.max_upload_mb <= 0:
        raise ConfigError("--queue-size must be at least 1 and --max-upload-mb positive")
    limits = ServeLimits(
        max_upload_bytes=int(args.max_upload_mb * 2**20), queue_size=args.queue_size
    )
    print(f"serving {len(args.checkpoints)} model(s) on http://{args.host}:{args.port}/")
    serve(args.checkpoints, args.host, args.port, limits)
    return 0


def _yaml_overrides(path: Path) -> dict[str, Any]:
    import yaml

    try:
        values = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as error:
        raise ConfigError(f"{path}: cannot read config: {error}") from None
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: a config file must hold a mapping of keys to values")
    return _flatten(values)


def _flatten(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in values.items():
        if isinstance(value, dict):
            flat |= _flatten(value, f"{prefix}{key}.")
        else:
            flat[prefix + key] = value
    return flat


def _print_metrics(metrics: dict[str, float]) -> None:
    for key, value in metrics.items():
        print(f"{key:>16s}: {value:.4f}" if isinstance(value, float) else f"{key:>16s}: {value}")


if __name__ == "__main__":
    sys.exit(main())
