"""Pretrained weights for ``model.weights``: a local file, a file on shared storage, or a URL
(``http(s)://``, ``s3://``, ``gs://`` … through fsspec), fetched once per node.

A URL is copied to a per-node cache (``$MSLC_WEIGHTS_CACHE``, default
``~/.cache/mslc/weights``) under an advisory lock, so the workers of one node download it
once; the file appears there whole or not at all. The driver checks, before Ray starts,
that the weights can be had (:func:`check_weights`), so a node without internet is a
clear line, not a worker traceback.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import urllib.request
from pathlib import Path

from pipeline.errors import ConfigError
from pipeline.storage import atomic_path, is_url, open_read

# torchvision's ImageNet ResNet-50 (ResNet50_Weights.IMAGENET1K_V2): where the clothing1m and folder presets look
TORCHVISION_RESNET50 = "https://download.pytorch.org/models/resnet50-11ad3fa6.pth"


def cache_dir() -> Path:
    return Path(os.environ.get("MSLC_WEIGHTS_CACHE") or Path.home() / ".cache" / "mslc" / "weights")


def cached_path(source: str) -> Path:
    """Where this node keeps a URL's copy: the cache directory, a digest of the URL, its file name."""
    digest = hashlib.sha256(source.encode()).hexdigest()[:16]
    return cache_dir() / f"{digest}-{source.rstrip('/').rsplit('/', 1)[-1] or 'weights.pt'}"


def _open_url(source: str, *, timeout: float = 60.0):
    if source.startswith(("http://", "https://")):
        return urllib.request.urlopen(source, timeout=timeout)  # noqa: S310 - a URL the user configured
    return open_read(source)


def fetch(source: str) -> Path:
    """A local path to the weights ``source`` names: the path itself, or this node's cached
    copy of a URL (downloaded first, once per node). Raises :class:`ConfigError` naming
    ``model.weights`` when it cannot be had."""
    if not is_url(source):
        path = Path(source).expanduser()
        if not path.is_file():
            raise ConfigError(f"model.weights={source}: no such file (on this node)")
        return path
    dst = cached_path(source)
    dst.parent.mkdir(parents=True, exist_ok=True)
    with open(dst.parent / f".{dst.name}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # the other workers of this node wait, then find it
        if not dst.is_file():
            try:
                with _open_url(source) as src, atomic_path(dst) as tmp, open(tmp, "wb") as out:
                    for chunk in iter(lambda: src.read(1 << 20), b""):
                        out.write(chunk)
            except ConfigError:
                raise
            except Exception as e:  # no route, 404, no credentials, no fsspec driver …
                raise ConfigError(
                    f"model.weights={source}: cannot be downloaded on this node "
                    f"({type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}); "
                    "put the file on shared storage (or each node) and set model.weights=PATH"
                ) from None
    return dst


def load_state_dict(source: str) -> dict:
    """The tensors in the weights file (only tensors are loaded: ``weights_only``)."""
    import torch

    path = fetch(source)
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ConfigError(f"model.weights={source}: {path} is not a readable state dict ({type(e).__name__})") from None
    if isinstance(sd, dict) and isinstance(sd.get("state_dict"), dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict) or not sd:
        raise ConfigError(f"model.weights={source}: {path} holds no state dict")
    return sd


def load_into(model, source: str) -> None:
    """Load ``source`` into ``model``, all but its classifier layer (``fc``); a file whose
    parameters do not fit the model is a :class:`ConfigError` saying which."""
    sd = {k: v for k, v in load_state_dict(source).items() if not k.startswith("fc.")}
    own = model.state_dict()
    missing = sorted(k for k in own if not k.startswith("fc.") and k not in sd)
    wrong = sorted(k for k, v in sd.items() if k in own and tuple(v.shape) != tuple(own[k].shape))
    if missing or wrong or not set(sd) & set(own):
        what = (
            f"{len(missing)} of the model's parameters missing, e.g. {missing[0]!r}"
            if missing
            else f"{wrong[0]!r} has shape {tuple(sd[wrong[0]].shape)}, the model's {tuple(own[wrong[0]].shape)}"
            if wrong
            else "none of its names is the model's"
        )
        raise ConfigError(f"model.weights={source}: does not fit model.arch ({what})")
    model.load_state_dict(sd, strict=False)


def weights_source(model_cfg) -> str:
    """What ``model.weights`` names, or torchvision's ResNet-50 for ``model.pretrained=true``
    without one; empty: no pretrained weights."""
    return (model_cfg.weights or TORCHVISION_RESNET50) if model_cfg.pretrained else ""
