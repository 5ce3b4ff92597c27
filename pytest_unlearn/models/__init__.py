"""The models under test: loading them safely, their content fingerprints, and where they run.

:func:`load_model` reads a Hugging Face model folder (safetensors), a ``.gguf`` file or a PEFT
adapter folder and returns a :class:`ModelHandle` (model, tokenizer, fingerprint).  The pieces:

* :mod:`.handle`: :class:`ModelHandle` and :func:`check_same_tokenizer`;
* :mod:`.loading`: :func:`load_model`, :func:`handle_from_objects` (pickle and remote code
  refused unless opted in; every foreseeable failure a ``ModelLoadError`` naming the path);
* :mod:`.fingerprints`: content fingerprints of files and of weights in memory, with the
  memo of large files' digests;
* :mod:`.devices`: devices, dtypes and spreading a model over GPUs (``device_map="auto"``);
* :mod:`.placement`: which GPU each model of a suite goes to, planned once.

Every public name is importable from here (``from pytest_unlearn.models import load_model``).
Importing this package imports no torch.
"""

from __future__ import annotations

from ..errors import ConfigError, ModelLoadError, ModelMismatchError  # noqa: F401  importable from here as before
from .devices import (DEVICE_MAP_FRACTION, DEVICE_SPECS, ONE_DEVICE_HINT, device_map_kwargs, device_map_of,
                      needs_device_map, require_in_memory, require_one_device, resolve_device, resolve_dtype,
                      spread_over_devices, weights_bytes)
from .fingerprints import FINGERPRINT_VERSION, clear_digest_memo, hub_blob_sha256, weights_fingerprint
from .handle import ModelHandle, check_same_tokenizer
from .loading import (ADAPTER_HINT, NOT_WEIGHTS, PICKLE_HINT, PICKLE_SUFFIXES, SIDECAR_SUFFIXES, SMOLLM2_GGUF,
                      TOKENIZER_FILES, handle_from_objects, load_model, smollm2_gguf_path)
from .placement import PLACEMENT_ROLES, checkpoint_bytes, gpu_free_bytes, plan_placement

__all__ = ["ADAPTER_HINT", "DEVICE_MAP_FRACTION", "DEVICE_SPECS", "FINGERPRINT_VERSION", "NOT_WEIGHTS",
           "ONE_DEVICE_HINT", "PICKLE_HINT", "PICKLE_SUFFIXES", "PLACEMENT_ROLES", "SIDECAR_SUFFIXES",
           "SMOLLM2_GGUF", "TOKENIZER_FILES", "ModelHandle", "check_same_tokenizer", "checkpoint_bytes",
           "clear_digest_memo", "device_map_kwargs", "device_map_of", "gpu_free_bytes", "handle_from_objects",
           "hub_blob_sha256", "load_model", "needs_device_map", "plan_placement", "require_in_memory",
           "require_one_device", "resolve_device", "resolve_dtype", "smollm2_gguf_path", "spread_over_devices",
           "weights_bytes", "weights_fingerprint"]
