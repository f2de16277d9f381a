"""ONNX export of a saved tagger: uint8 images in, per-task probabilities out.

The graph holds everything a consumer needs (normalisation, every stage's pooling, the colour
histograms, the heads, softmax/sigmoid), so any ONNX runtime reproduces ``predict_proba``
from decoded images. A JSON sidecar names the inputs and outputs and lists each task's
classes in output order.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch
from torch import nn

from multitag.core.io import atomic_path, write_json
from multitag.multitask.heads import probabilities


class _ExportedTagger(nn.Module):
    """TaggerNet with tuple outputs: probabilities of each task, features, ImageNet logits."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        features, imagenet = self.net.encoder(images)
        logits = self.net.heads(features)
        probs = [probabilities(t, logits[t.name].float()) for t in self.net.tasks]
        extra = [] if imagenet is None else [imagenet.float()]
        return (*probs, features, *extra)


def output_names(tagger) -> list[str]:
    names = [f"proba_{t.name}" for t in tagger.tasks_] + ["features"]
    if tagger.net_.encoder.with_imagenet:
        names.append("imagenet_logits")
    return names


def export_onnx(tagger, path: str | Path, *, opset: int = 18) -> Path:
    """Write ``path`` (.onnx) and ``path.json`` (inputs, outputs, classes); return ``path``.

    Only hard-sharing taggers (one encoder + heads) export; the graph runs in fp32.
    """
    path = Path(path)
    if path.suffix != ".onnx":
        raise ValueError(f"{path}: the ONNX file name must end in .onnx")
    if hasattr(tagger, "members"):
        raise ValueError(
            "a TaggerEnsemble exports member by member: export each of its member-i "
            "directories and average their probabilities"
        )
    if not hasattr(tagger, "net_"):
        raise RuntimeError("this tagger is not fitted: call fit() or load() first")
    net = tagger.net_
    if not hasattr(net, "from_features"):
        raise ValueError(
            "only hard-sharing taggers export to ONNX; soft / cross-stitch models have per-task "
            "columns"
        )
    module = _ExportedTagger(net.float().eval()).eval()
    size = net.encoder.preprocessing.image_size
    framing = net.encoder.preprocessing.framing
    detail = net.encoder.preprocessing.detail
    example = torch.zeros(2, 3, size, size, dtype=torch.uint8)
    names = output_names(tagger)
    with atomic_path(path) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            module,
            (example,),
            input_names=["images"],
            output_names=names,
            dynamic_shapes=({0: torch.export.Dim("batch", min=1)},),
            opset_version=opset,
            dynamo=True,
            external_data=False,
            verbose=False,
        )
        program.save(str(tmp))
    write_json(
        path.with_suffix(".json"),
        {
            "model": path.name,
            "input": {
                "name": "images",
                "dtype": "uint8",
                "shape": ["batch", 3, size, size],
                "layout": "RGB, NCHW, 0-255; resize the whole image to size x size (bicubic, "
                "no crop); normalisation happens inside the graph",
                "framing": None
                if framing is None
                else {
                    **framing.to_dict(),
                    "apply": "first: multitag.data.framing.reframe(image, Framing(**these))",
                },
                "detail": None
                if detail is None
                else {
                    "framed": detail.framed,
                    "photo": detail.photo,
                    "floor": detail.floor,
                    "apply": "then multitag.data.detail.match_detail(framed_image, "
                    "Detail(framed, photo, floor), photo_pixels) with photo_pixels the decoded "
                    "photo's pixel count before framing (a Lanczos downscale, aspect kept, to "
                    "Detail.target pixels when the framed image has more)",
                },
            },
            "outputs": names,
            "tasks": [
                {
                    "name": t.name,
                    "kind": t.kind,
                    "output": f"proba_{t.name}",
                    "classes": list(t.classes),
                }
                for t in tagger.tasks_
            ],  # fmt: skip
            "source_config": json.loads(json.dumps(getattr(tagger, "config_", {}), default=str)),
        },
    )
    return path
