"""Where models live: write-once JSON artefacts in the blob store
(`models/harmonize/sha256-<hex>.json`) and the current model's version in the state store."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from harmonize_service.combat import CombatModel
from harmonize_service.model import content_version, from_json, to_json, version_of
from services.blobstore import FileBlobStore, PutResult
from services.state import StateStore

CURRENT_KEY = "harmonize:model:current"
MODEL_PREFIX = "models/harmonize"
MODEL_LOCK = "lock:harmonize:model"  # held while the current model is read and replaced


def model_key(version: str) -> str:
    return f"{MODEL_PREFIX}/{version.replace(':', '-')}.json"


def put_artifact(blobs: FileBlobStore, text: str, *, model: CombatModel | None = None) -> str:
    """Store a model artefact (validated unless `model` is its parsed form) write-once in
    the blob store; returns its version. Needs no state store (`harmonet harmonize install`
    beside a running `harmonet up`)."""
    if model is None:
        from_json(text)
    version = version_of(text)
    if blobs.put_new(model_key(version), text.encode()) is PutResult.CONFLICT:
        pass  # same content hash, different bytes: only `created` can differ; keep the first
    return version


@dataclass(frozen=True)
class ModelStore:
    blobs: FileBlobStore
    state: StateStore
    _cache: dict[str, CombatModel] = field(default_factory=dict, repr=False, compare=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def put(self, text: str) -> str:
        """Store an artefact (validated first); returns its version. Idempotent."""
        model = from_json(text)
        version = put_artifact(self.blobs, text, model=model)
        with self._lock:
            self._cache[version] = model
        return version

    def put_model(self, model: CombatModel) -> str:
        """Store a model built in this process (e.g. with a batch added)."""
        version = content_version(model)
        if not self.blobs.exists(model_key(version)):
            self.put(to_json(model))
        with self._lock:
            self._cache[version] = model
        return version

    def install(self, text: str) -> str:
        """Store an artefact and make it the current model."""
        version = self.put(text)
        self.state.set(CURRENT_KEY, version.encode())
        return version

    def make_current(self, version: str) -> None:
        self.state.set(CURRENT_KEY, version.encode())

    def current_version(self) -> str | None:
        raw = self.state.get(CURRENT_KEY)
        return raw.decode() if raw else None

    def load(self, version: str) -> CombatModel:
        with self._lock:
            cached = self._cache.get(version)
        if cached is not None:
            return cached
        model = from_json(self.blobs.get(model_key(version)).decode())
        with self._lock:
            self._cache[version] = model
        return model
