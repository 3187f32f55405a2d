"""The 2025-26 presets' denoisers at their real size and shapes, randomly initialised.

One guided sampling step of ``configs/{wan,wan22,hunyuan15}_stableaudio3.yaml`` and
``configs/ltx2_mmdisco.yaml`` is, per sample: every network pass the base models make (two
with CFG; LTX-2's four: conditional, unconditional, STG and modality-isolated), plus the
discriminator's forward and input-gradient (twice with CFG on the term of a discriminator
that reads text). :func:`step_passes`
lists those passes at the preset's shapes; ``sampling_overhead.py --presets`` counts their
FLOPs on the meta device (nothing allocated) or, on a GPU, times them in bfloat16.

Architectures are the published configs: diffusers' ``WanTransformer3DModel`` with Wan 2.1
T2V-1.3B's (12 x 128 heads, FFN 8960, 30 blocks) and Wan 2.2 TI2V-5B's (24 x 128, 14336, 30
blocks, 48 channels, per-patch timesteps); ``HunyuanVideo15Transformer3DModel``,
``StableAudio3DiTModel`` and ``LTX2VideoTransformer3DModel`` with diffusers' defaults, which
are HunyuanVideo 1.5's (54 blocks of 2048), Stable Audio 3 Medium's (24 blocks of 1536) and
LTX-2's (48 blocks, video 4096, audio 2048). Text inputs have the pipelines' padded lengths.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils._python_dispatch import TorchDispatchMode

from mmdisco.base_models.base import BaseModel

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
SA3_RATE, SA3_HOP = 44100, 4096  # SAME-L: 44.1 kHz, patch 256 x stride 16


@dataclass
class Pass:
    """One network call of a sampling step: ``module(**inputs(device, dtype))``."""

    label: str
    module: nn.Module
    inputs: Callable[[Any, torch.dtype], dict[str, Any]]


def sa3_latent_frames(seconds: float) -> int:
    return math.ceil(seconds * SA3_RATE / SA3_HOP)


def wan(variant: str) -> tuple[nn.Module, tuple[int, ...], Callable]:
    """Wan 2.1 T2V-1.3B at 480 x 832 x 81, or Wan 2.2 TI2V-5B at 704 x 1280 x 121."""
    from diffusers import WanTransformer3DModel

    if variant == "2.1-1.3b":
        net = WanTransformer3DModel(num_attention_heads=12, ffn_dim=8960, num_layers=30)
        shape = (16, 21, 60, 104)
    else:
        net = WanTransformer3DModel(
            num_attention_heads=24, ffn_dim=14336, num_layers=30, in_channels=48, out_channels=48
        )
        shape = (48, 31, 44, 80)
    per_patch = variant != "2.1-1.3b"

    def inputs(device: Any, dtype: torch.dtype) -> dict[str, Any]:
        tokens = shape[1] * (shape[2] // 2) * (shape[3] // 2)
        t = torch.full((1, tokens) if per_patch else (1,), 500.0, device=device)
        return {
            "hidden_states": torch.zeros(1, *shape, device=device, dtype=dtype),
            "timestep": t,
            "encoder_hidden_states": torch.zeros(1, 512, 4096, device=device, dtype=dtype),
            "return_dict": False,
        }

    return net, shape, inputs


def hunyuan15() -> tuple[nn.Module, tuple[int, ...], Callable]:
    """HunyuanVideo 1.5 480p text-to-video: 480 x 848 x 121 frames.

    Its forward reorders the 1000 Qwen + 256 ByT5 + 729 image tokens by their masks (valid
    first, padding after; all 1985 stay in the sequence). On the meta device a boolean
    selection keeps every element (:func:`meta_counting`), so the valid part and the padding
    part would each hold all tokens: on meta the text inputs are given at half length, which
    makes the joint sequence the real 1985 tokens long (the two text refiner blocks then see
    500 Qwen tokens instead of 1000, under 0.1 % of the pass).
    """
    from diffusers import HunyuanVideo15Transformer3DModel

    net = HunyuanVideo15Transformer3DModel(task_type="t2v")
    shape = (32, 31, 30, 53)

    def inputs(device: Any, dtype: torch.dtype) -> dict[str, Any]:
        zeros = {"device": device, "dtype": dtype}
        halve = 2 if torch.device(device).type == "meta" else 1
        qwen, byt5, image = 1000 // halve, 256 // halve, math.ceil(729 / halve)
        return {
            "hidden_states": torch.zeros(1, 2 * shape[0] + 1, *shape[1:], **zeros),
            "image_embeds": torch.zeros(1, image, 1152, **zeros),
            "timestep": torch.full((1,), 500.0, **zeros),
            "encoder_hidden_states": torch.zeros(1, qwen, 3584, **zeros),
            "encoder_attention_mask": torch.ones(1, qwen, device=device),
            "encoder_hidden_states_2": torch.zeros(1, byt5, 1472, **zeros),
            "encoder_attention_mask_2": torch.ones(1, byt5, device=device),
            "return_dict": False,
        }

    return net, shape, inputs


def stable_audio3(seconds: float) -> tuple[nn.Module, tuple[int, ...], Callable]:
    """Stable Audio 3 Medium(-base)'s DiT for a clip of ``seconds``."""
    from diffusers import StableAudio3DiTModel

    net = StableAudio3DiTModel()
    shape = (256, sa3_latent_frames(seconds))

    def inputs(device: Any, dtype: torch.dtype) -> dict[str, Any]:
        return {
            "hidden_states": torch.zeros(1, *shape, device=device, dtype=dtype),
            "timestep": torch.full((1,), 0.5, device=device),
            "encoder_hidden_states": torch.zeros(1, 257, 768, device=device, dtype=dtype),
            "global_hidden_states": torch.zeros(1, 768, device=device, dtype=dtype),
            "encoder_attention_mask": torch.ones(1, 257, device=device),
            "return_dict": False,
        }

    return net, shape, inputs


def ltx2() -> tuple[nn.Module, dict[str, tuple[int, ...]], Callable]:
    """LTX-2 at its pipeline's defaults: 512 x 768 x 121 frames at 24 fps, 5.04 s of audio."""
    from diffusers import LTX2VideoTransformer3DModel

    net = LTX2VideoTransformer3DModel(perturbed_attn=True)
    shapes = {"video": (128, 16, 16, 24), "audio": (8, 126, 16)}

    def inputs(device: Any, dtype: torch.dtype) -> dict[str, Any]:
        (cv, f, h, w), (ca, length, mels) = shapes["video"], shapes["audio"]
        zeros = {"device": device, "dtype": dtype}
        return {
            "hidden_states": torch.zeros(1, f * h * w, cv, **zeros),
            "audio_hidden_states": torch.zeros(1, length, ca * mels, **zeros),
            "encoder_hidden_states": torch.zeros(1, 1024, 3840, **zeros),
            "audio_encoder_hidden_states": torch.zeros(1, 1024, 3840, **zeros),
            "timestep": torch.full((1,), 500.0, device=device),
            "sigma": torch.full((1,), 500.0, device=device),
            "encoder_attention_mask": torch.ones(1, 1024, device=device),
            "audio_encoder_attention_mask": torch.ones(1, 1024, device=device),
            "num_frames": f,
            "height": h,
            "width": w,
            "fps": 24.0,
            "audio_num_frames": length,
            "use_cross_timestep": True,
            "return_dict": False,
        }

    return net, shapes, inputs


@contextmanager
def meta_counting() -> Iterator[None]:
    """Let HunyuanVideo 1.5's data-dependent steps run on the meta device: its text-to-video
    test ``torch.all(image_embeds == 0)`` is answered True (its inputs are all zero) and a
    boolean selection keeps every element (see :func:`hunyuan15`)."""
    import torch.fx.experimental._config as fx_config

    original, flag = torch.all, fx_config.meta_nonzero_assume_all_nonzero

    def all_(x: Tensor, *args: Any, **kwargs: Any) -> Any:
        return True if x.is_meta and not args and not kwargs else original(x, *args, **kwargs)

    torch.all, fx_config.meta_nonzero_assume_all_nonzero = all_, True
    try:
        yield
    finally:
        torch.all, fx_config.meta_nonzero_assume_all_nonzero = original, flag


@contextmanager
def flash_attention_memory() -> Iterator[None]:
    """On the meta device, attention as a fused kernel (flash / memory-efficient SDPA, what a
    GPU runs these transformers with) holds it: its output only. PyTorch's meta fallback is
    the math kernel, whose ``(B, heads, L, L)`` scores alone would be 26 GB for one Wan 2.1
    1.3B attention at 480p and dwarf everything else in a memory estimate."""
    import torch.nn.functional as F

    original = F.scaled_dot_product_attention

    def fused(query: Tensor, key: Tensor, value: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        if not query.is_meta:
            return original(query, key, value, *args, **kwargs)
        return query.new_empty(*query.shape[:-1], value.shape[-1])

    F.scaled_dot_product_attention = fused
    try:
        yield
    finally:
        F.scaled_dot_product_attention = original


def with_kwargs(inputs: Callable, **extra: Any) -> Callable:
    return lambda device, dtype: {**inputs(device, dtype), **extra}


def step_passes(preset: str) -> tuple[list[Pass], dict[str, tuple[int, ...]]]:
    """Every base-model pass of one unguided sampling step of ``preset`` (batch 1, CFG on),
    and the latent shapes the discriminator sees."""
    if preset == "ltx2_mmdisco":
        net, shapes, inputs = ltx2()
        passes = [
            Pass("ltx2 conditional", net, inputs),
            Pass("ltx2 unconditional", net, inputs),
            Pass("ltx2 STG", net, with_kwargs(inputs, spatio_temporal_guidance_blocks=[28])),
            Pass("ltx2 modality-isolated", net, with_kwargs(inputs, isolate_modalities=True)),
        ]
        return passes, shapes
    video = {
        "wan_stableaudio3": lambda: wan("2.1-1.3b"),
        "wan22_stableaudio3": lambda: wan("2.2-ti2v-5b"),
        "hunyuan15_stableaudio3": hunyuan15,
    }[preset]()
    seconds = {"wan_stableaudio3": 81 / 16}.get(preset, 121 / 24)
    audio = stable_audio3(seconds)
    passes = [
        Pass(f"{name} {kind}", net, inputs)
        for name, (net, _, inputs) in (("video", video), ("audio", audio))
        for kind in ("conditional", "unconditional")
    ]
    return passes, {"audio": audio[1], "video": video[1]}


PRESETS = ("wan_stableaudio3", "wan22_stableaudio3", "hunyuan15_stableaudio3", "ltx2_mmdisco")


def discriminator_passes(preset: str, shapes: dict[str, tuple[int, ...]], device: Any) -> Callable:
    """The discriminator term of one guided step of ``preset`` (its config as in the YAML): a
    forward and an input-gradient, in float32; twice (conditional and unconditional text)
    when the preset puts CFG on the term of a discriminator that reads text."""
    from mmdisco.config import load_experiment
    from mmdisco.discriminator import build_discriminator, text_dims
    from mmdisco.guidance import discriminator_gradients

    experiment = load_experiment(CONFIGS / f"{preset}.yaml")
    config = experiment.discriminator_config_for_shapes(shapes["audio"], shapes["video"])
    with torch.device(device):
        disc = build_discriminator(config).eval()
    text = {
        key: torch.zeros(1, dim, device=device)
        for key, dim in zip(("text_audio", "text_video"), text_dims(config), strict=True)
        if dim
    }
    corrections = 2 if text and experiment.sampling.cfg_on_discriminator else 1

    def run() -> None:
        a = torch.zeros(1, *shapes["audio"], device=device)
        v = torch.zeros(1, *shapes["video"], device=device)
        log_snr = torch.zeros(1, device=device)
        # guidance_correction without its finiteness check (meta tensors have no values)
        for _ in range(corrections):
            discriminator_gradients(disc, a, v, log_snr, log_snr, **text)

    run.parameters = sum(p.numel() for p in disc.parameters())  # type: ignore[attr-defined]
    run.corrections = corrections  # type: ignore[attr-defined]
    return run


class FlopCount(TorchDispatchMode):
    """FLOPs of the matmuls, convolutions and attention dispatched under it (the formulas of
    ``torch.utils.flop_counter``, without its module hooks, which autograd.grad trips on)."""

    def __init__(self) -> None:
        super().__init__()
        self.total = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        from torch.utils.flop_counter import flop_registry

        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        formula = flop_registry.get(func._overloadpacket)
        if formula is not None:
            self.total += formula(*args, **kwargs, out_val=out)
        return out


def count_flops(fn: Callable[[], Any]) -> int:
    with FlopCount() as counter:
        fn()
    return counter.total


def preset_step_cost(preset: str, device: Any = "meta") -> dict[str, Any]:
    """FLOPs (meta device) or seconds (a GPU, bfloat16 base models) of one unguided step of
    ``preset`` and of its discriminator term; their ratio is the guided step's cost."""
    device = torch.device(device)
    with torch.device(device):
        passes, shapes = step_passes(preset)
    for module in {id(p.module): p.module for p in passes}.values():
        module.to(torch.bfloat16).eval().requires_grad_(False)
    disc = discriminator_passes(preset, shapes, device)
    measure = count_flops if device.type == "meta" else _seconds
    with meta_counting(), torch.no_grad():
        base = {
            p.label: measure(lambda p=p: p.module(**p.inputs(device, torch.bfloat16)))
            for p in passes
        }
    guidance = measure(disc)
    unguided = sum(base.values())
    params = {id(p.module): sum(x.numel() for x in p.module.parameters()) for p in passes}
    return {
        "unit": "flop" if device.type == "meta" else "second",
        "passes": base,
        "unguided": unguided,
        "discriminator_term": guidance,
        "ratio": (unguided + guidance) / unguided,
        "shapes": {k: list(v) for k, v in shapes.items()},
        "base_parameters": sum(params.values()),
        "discriminator_parameters": disc.parameters,
    }


def _seconds(fn: Callable[[], Any]) -> float:
    import time

    fn()  # warm-up: kernels and allocator
    torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    return time.perf_counter() - start


class DiTBase(BaseModel):
    """A real-size transformer as an mmdisco base model, for the training-memory estimate:
    ``predict`` runs the network on ``x_t`` with the pass's other inputs (text of the real
    lengths) repeated over the batch. Conditioning values do not change memory or cost, so
    ``cond`` is a pooled text vector of the real width (the discriminator's text input)."""

    def __init__(
        self,
        net: nn.Module | None,
        modality: str,
        shape: tuple[int, ...],
        inputs: Callable | None,
        text_dim: int,
        num_train_timesteps: int = 1000,
    ) -> None:
        self.net, self.modality, self.shape, self.inputs = net, modality, shape, inputs
        self.text_dim = text_dim
        self.scheduler_config = {
            "_class_name": "FlowMatchEulerDiscreteScheduler",
            "num_train_timesteps": num_train_timesteps,
            "shift": 1.0,
        }

    @property
    def device(self) -> torch.device:
        return next(self.net.parameters()).device if self.net is not None else torch.device("meta")

    def to(self, device: Any) -> DiTBase:
        if self.net is not None:
            self.net.to(device)
        return self

    def modules(self) -> dict[str, nn.Module]:
        return {} if self.net is None else {"transformer": self.net}

    def latent_shape(self) -> tuple[int, ...]:
        return self.shape

    def encode_prompt(self, prompts: list[str]) -> Tensor:
        return torch.zeros(len(prompts), self.text_dim, device=self.device)

    def pooled_text_embedding(self, cond: Tensor) -> Tensor:
        return cond.float()

    def predict(self, x_t: Tensor, t: Tensor, cond: Any = None) -> Tensor:
        if self.net is None:
            raise NotImplementedError("a joint model's second view predicts through the first")
        b, dtype = x_t.shape[0], next(self.net.parameters()).dtype
        kwargs = self.inputs(self.device, dtype)
        for key, value in kwargs.items():
            if torch.is_tensor(value) and value.ndim and value.shape[0] == 1:
                kwargs[key] = value.expand(b, *value.shape[1:])
        x = x_t.to(dtype)
        if kwargs["hidden_states"].shape[1] != x.shape[1]:  # HunyuanVideo: + condition, mask
            x = torch.cat([x, torch.zeros_like(x), x[:, :1] * 0], dim=1)
        kwargs["hidden_states"] = x
        given = kwargs["timestep"]
        t = torch.as_tensor(t, device=self.device).to(given.dtype).reshape(-1).expand(b)
        kwargs["timestep"] = t[:, None].expand_as(given) if given.ndim == 2 else t
        return self.net(**kwargs)[0].float()


TEXT_DIMS = {  # the pooled text the presets' discriminators take (audio, video)
    "wan_stableaudio3": (768, 4096),
    "wan22_stableaudio3": (768, 4096),
    "hunyuan15_stableaudio3": (768, 3584),
    "ltx2_mmdisco": (3840, 3840),
}


def base_models(preset: str, device: Any = "meta") -> tuple[DiTBase, DiTBase]:
    """(audio, video) of ``preset`` at real size in bfloat16. LTX-2's are one network: the
    video view holds it and the audio view only its shape (training it uses L_D alone, so
    neither view predicts; the weights are counted once)."""
    dims = TEXT_DIMS[preset]
    with torch.device(device):
        if preset == "ltx2_mmdisco":
            net, shapes, inputs = ltx2()
            net.to(torch.bfloat16)
            video = DiTBase(net, "video", shapes["video"], inputs, dims[1])
            return DiTBase(None, "audio", shapes["audio"], None, dims[0]), video
        passes, shapes = step_passes(preset)
    nets = {p.label.split()[0]: p for p in passes}
    audio, video = nets["audio"], nets["video"]
    for p in (audio, video):
        p.module.to(torch.bfloat16)
    return (
        DiTBase(audio.module, "audio", shapes["audio"], audio.inputs, dims[0], 1),
        DiTBase(video.module, "video", shapes["video"], video.inputs, dims[1]),
    )
