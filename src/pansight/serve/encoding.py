"""Bytes in, JSON out: decoding uploaded images and turning results into the page's JSON.

:func:`decode_image` reads an uploaded image; :func:`result_payload` turns a result into the
``result`` of ``POST /api/predict``, with one JSON layout per result type. Boxes are ``xyxy`` in
original-image pixels, masks COCO compressed RLEs, and maps PNG data URLs
(:func:`map_data_url`) whose pixels hold ``R + 256 G + 65536 B``.

See docs/serving.md for the JSON of each result type.
"""

from __future__ import annotations

import base64
import io
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from pycocotools import mask as mask_utils
from torch import Tensor

from pansight.data.images import image_from_array
from pansight.structures import (
    Classification,
    Detections,
    Localization,
    PanopticMap,
    Result,
    SemanticMap,
)

IMAGE_CONTENT_TYPES = (
    "image/png",
    "image/jpeg",
    "image/bmp",
    "image/gif",
    "image/webp",
    "image/tiff",
)
"""Upload content types the server decodes."""

TOP_CLASSES = 5
"""Classes listed, best first, in a classification's or localization's ``top``."""


class ImageError(ValueError):
    """An upload that is not a decodable image of an allowed size (the message says why)."""


def decode_image(data: bytes, max_pixels: int) -> Tensor:
    """``data`` decoded as a ``(3, H, W)`` float RGB image in ``[0, 1]``.

    Raises:
        ImageError: ``data`` is empty, not an image, corrupt or truncated, or has more than
            ``max_pixels`` pixels (checked from the header, before decoding).
    """
    if not data:
        raise ImageError("the upload is empty; send the image file's bytes as the body")
    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
            if width * height > max_pixels:
                raise ImageError(
                    f"the image is {width}x{height} pixels; at most {max_pixels} pixels are "
                    "accepted"
                )
            image.load()
            array = np.asarray(image.convert("RGB"))
    except ImageError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise ImageError(
            f"cannot decode the upload as an image (corrupt or truncated?): {error}"
        ) from None
    except Image.DecompressionBombError as error:
        raise ImageError(f"the image is too large to decode: {error}") from None
    return image_from_array(array)


def encode_png(image: Tensor) -> bytes:
    """A ``(3, H, W)`` float image in ``[0, 1]`` as PNG bytes."""
    array = image.clamp(0, 1).mul(255).round().byte().permute(1, 2, 0).numpy()
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def result_payload(result: Result, class_names: list[str]) -> dict[str, Any]:
    """The JSON of ``result`` (docs/serving.md lists it per result type), class names from
    ``class_names``."""
    if isinstance(result, Localization):
        return {
            **_classification_payload(result, class_names),
            "kind": "localization",
            "box": [float(v) for v in result.box],
        }
    if isinstance(result, Classification):
        return _classification_payload(result, class_names)
    if isinstance(result, Detections):
        return _detections_payload(result, class_names)
    if isinstance(result, SemanticMap):
        return _semantic_payload(result, class_names)
    if isinstance(result, PanopticMap):
        return _panoptic_payload(result, class_names)
    raise TypeError(f"cannot encode a {type(result).__name__}")


def map_data_url(values: Tensor) -> str:
    """An ``(H, W)`` map of integers in ``[0, 2**24)`` as a PNG data URL, value
    ``R + 256 G + 65536 B`` per pixel."""
    codes = values.cpu().numpy().astype(np.uint32)
    rgb = np.stack([codes & 0xFF, (codes >> 8) & 0xFF, (codes >> 16) & 0xFF], axis=-1)
    buffer = io.BytesIO()
    Image.fromarray(rgb.astype(np.uint8)).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _class_name(class_names: list[str], label: int) -> str:
    return class_names[label] if 0 <= label < len(class_names) else f"class {label}"


def _classification_payload(result: Classification, class_names: list[str]) -> dict[str, Any]:
    scores, labels = result.scores.float().topk(min(TOP_CLASSES, result.scores.numel()))
    top = [
        {"label": int(label), "class_name": _class_name(class_names, int(label)), "score": float(s)}
        for s, label in zip(scores, labels)
    ]
    return {
        "kind": "classification",
        "label": int(result.label),
        "class_name": _class_name(class_names, int(result.label)),
        "score": float(result.score),
        "top": top,
    }


def _detections_payload(result: Detections, class_names: list[str]) -> dict[str, Any]:
    masks = mask_rles(result.masks) if result.masks is not None else [None] * len(result)
    detections = []
    for box, label, score, mask in zip(
        result.boxes.tolist(), result.labels.tolist(), result.scores.tolist(), masks
    ):
        detection = {
            "box": box,
            "label": int(label),
            "class_name": _class_name(class_names, int(label)),
            "score": float(score),
        }
        if mask is not None:
            detection["mask"] = mask
        detections.append(detection)
    return {"kind": "detections", "detections": detections}


def mask_rles(masks: Tensor) -> list[dict[str, Any]]:
    """``(N, H, W)`` bool masks as COCO compressed RLEs ``{"size": [H, W], "counts": str}``."""
    if len(masks) == 0:
        return []
    columns = np.asfortranarray(masks.permute(1, 2, 0).numpy().astype(np.uint8))
    return [
        {"size": [int(side) for side in rle["size"]], "counts": rle["counts"].decode("ascii")}
        for rle in mask_utils.encode(columns)
    ]


def _semantic_payload(result: SemanticMap, class_names: list[str]) -> dict[str, Any]:
    labels, counts = torch.unique(result.labels, return_counts=True)
    classes = [
        {"label": int(label), "class_name": _class_name(class_names, int(label)), "pixels": int(n)}
        for label, n in zip(labels, counts)
    ]
    return {"kind": "semantic", "labels_png": map_data_url(result.labels), "classes": classes}


def _panoptic_payload(result: PanopticMap, class_names: list[str]) -> dict[str, Any]:
    segments = [
        {
            "id": int(segment.id),
            "label": int(segment.label),
            "class_name": _class_name(class_names, int(segment.label)),
            "is_thing": bool(segment.is_thing),
            "area": int(segment.area),
            "score": float(segment.score),
        }
        for segment in result.segments
    ]
    return {"kind": "panoptic", "ids_png": map_data_url(result.ids), "segments": segments}
