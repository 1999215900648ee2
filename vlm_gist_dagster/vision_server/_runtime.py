"""Where and how models run: the optional extra, the device, the dtype and the weights of a flavour.

Nothing here imports torch at module level: :func:`require_vision_extra` does, and says which
package of the ``vision`` extra is missing.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "DTYPES",
    "DeviceUnavailableError",
    "MissingExtraError",
    "Runtime",
    "WeightsError",
    "require_vision_extra",
]

#: ``--dtype`` choices; ``auto`` is bf16 on CUDA (fp16 where the GPU has no bf16) and fp32 elsewhere.
DTYPES: tuple[str, ...] = ("auto", "bf16", "fp16", "fp32")
_MIN_TRANSFORMERS_MAJOR = 5


class MissingExtraError(RuntimeError):
    """torch or transformers (the ``vision`` extra) is not installed, or transformers is too old."""


class DeviceUnavailableError(RuntimeError):
    """The requested device (``cuda``, ``cuda:N``, ``mps``) does not exist on this machine."""


class WeightsError(RuntimeError):
    """A flavour's weights could not be found, downloaded or read."""


def require_vision_extra() -> tuple[Any, Any]:
    """Import torch and transformers, or raise :class:`MissingExtraError` naming what is missing.

    >>> torch, transformers = require_vision_extra()  # doctest: +SKIP
    """
    missing = []
    modules = {}
    for name in ("torch", "transformers"):
        try:
            modules[name] = importlib.import_module(name)
        except ImportError as exc:
            missing.append(f"{name} ({exc})")
    if missing:
        raise MissingExtraError(
            "vlm-gist vision-serve needs the optional extra 'vision' (torch and transformers): "
            f"pip install -e '.[vision]' — missing: {', '.join(missing)}"
        )
    version = getattr(modules["transformers"], "__version__", "0")
    if int(version.split(".")[0]) < _MIN_TRANSFORMERS_MAJOR:
        raise MissingExtraError(
            f"vlm-gist vision-serve needs transformers >= {_MIN_TRANSFORMERS_MAJOR} (the 'vision' extra), "
            f"found {version}: pip install -e '.[vision]'"
        )
    return modules["torch"], modules["transformers"]


@dataclass(frozen=True)
class Runtime:
    """Device, dtype and weights of one server process.

    ``weights`` replaces the Hugging Face model id of ``weights_flavor`` (a local directory or another
    hub id); ``random_weights`` builds each flavour's architecture from a tiny config with random
    weights (tests only: the server says so in ``/status`` and on every log line that loads).
    """

    device: str = "auto"
    dtype: str = "auto"
    random_weights: bool = False
    #: ``tiny`` (tests) or ``full`` (the real architecture's size with random weights, for GPU benchmarks)
    random_size: str = "tiny"
    weights: str | None = None
    weights_flavor: str | None = None
    seed: int = 0

    def torch_device(self) -> Any:
        """The ``torch.device`` to run on; raises :class:`DeviceUnavailableError` when it is not there."""
        torch, _ = require_vision_extra()
        requested = self.device
        if requested == "auto":
            if torch.cuda.is_available():
                return torch.device("cuda")
            return torch.device("cpu")
        try:
            device = torch.device(requested)
        except RuntimeError as exc:
            raise DeviceUnavailableError(f"--device {requested!r} is not a torch device ({exc})") from None
        if device.type == "cuda":
            if not torch.cuda.is_available():
                build = "built without CUDA" if torch.version.cuda is None else f"CUDA {torch.version.cuda}"
                raise DeviceUnavailableError(
                    f"device {requested!r} was requested but CUDA is not available on this machine "
                    f"(torch {torch.__version__}, {build}); start the server with --device cpu"
                )
            if device.index is not None and device.index >= torch.cuda.device_count():
                raise DeviceUnavailableError(
                    f"device {requested!r} was requested but this machine has "
                    f"{torch.cuda.device_count()} CUDA device(s)"
                )
        elif device.type == "mps":
            if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
                raise DeviceUnavailableError(
                    f"device {requested!r} was requested but MPS (Apple GPU) is not available on this "
                    "machine; start the server with --device cpu"
                )
        elif device.type != "cpu":
            raise DeviceUnavailableError(f"device {requested!r}: use cuda, cuda:N, mps or cpu")
        return device

    def device_available(self) -> bool:
        """Whether the configured device can be used (what ``/health`` reports as ``cuda_available``)."""
        try:
            self.torch_device()
        except (DeviceUnavailableError, MissingExtraError):
            return False
        return True

    def torch_dtype(self, device: Any) -> Any:
        """The dtype models are cast to on ``device`` (``--dtype``; ``auto`` = bf16 on CUDA, else fp32)."""
        torch, _ = require_vision_extra()
        name = self.dtype
        if name == "auto":
            if device.type == "cuda":
                name = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
            else:
                name = "fp32"
        return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[name]

    def weights_source(self, flavor: str, hub_id: str) -> str:
        """Where ``flavor``'s weights come from: ``--weights`` for its flavour, else the hub id."""
        if self.weights is not None and (self.weights_flavor in (None, flavor)):
            path = Path(self.weights).expanduser()
            if path.exists() or self.weights.startswith((".", "/", "~")):
                if not path.is_dir():
                    raise WeightsError(f"--weights {self.weights!r}: no such directory")
                return str(path)
            return self.weights
        return hub_id

    def describe(self) -> str:
        weights = f"random ({self.random_size} architecture)" if self.random_weights else "pretrained"
        return f"device={self.device} dtype={self.dtype} weights={weights}"


def from_pretrained(cls: Any, source: str, *, flavor: str, **kwargs: Any) -> Any:
    """``cls.from_pretrained(source)`` with an error that names the flavour, the source and what to do."""
    try:
        return cls.from_pretrained(source, **kwargs)
    except (OSError, ValueError) as exc:
        hint = (
            "the directory does not hold this model's files"
            if Path(source).is_dir()
            else "it is downloaded from the Hugging Face Hub on first use (internet needed once; "
            "HF_HOME sets the cache), or pass a local copy with --weights DIR"
        )
        raise WeightsError(
            f"cannot load the weights of flavor {flavor!r} from {source!r} ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}): {hint}"
        ) from None
