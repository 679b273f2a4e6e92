"""Fitted recommenders, stored where every process of a deployment can load them.

Training reads the whole interaction history; rendering must not. A fitted recommender is
therefore trained once (``postwise recommend train``, or the first process that needs one),
stored, and loaded by every worker. It is stored under its registry name and a version (a hash
of its bytes), so a worker notices a newer model with one small read:

* in **Redis** when ``redis_url`` points to a server, which workers on every machine share;
  large models are split into chunks of 32 MiB (Redis values stop at 512 MiB);
* in **data_dir/models/** with the embedded Redis stand-in, which lives inside one process and
  so cannot carry a model from ``postwise recommend train`` to a worker.

A model is a pickle, since recommenders from plugins are arbitrary Python objects. Unpickling
runs code, so every stored model is signed with HMAC-SHA256 under the deployment's token
signing key, and a model whose signature does not verify (written by someone without the key,
or truncated) is refused, never unpickled.
"""

from __future__ import annotations

import abc
import contextlib
import hashlib
import hmac
import json
import logging
import os
import pickle
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from postwise.errors import ConfigurationError
from postwise.recommend.base import Recommender

if TYPE_CHECKING:
    import redis

    from postwise.runtime import Runtime

__all__ = [
    "DEFAULT_PREFIX",
    "MODEL_FORMAT",
    "FileModelStore",
    "ModelStore",
    "RedisModelStore",
    "StoredModel",
    "model_store",
    "pack_model",
    "unpack_model",
]

#: Redis key prefix of stored models.
DEFAULT_PREFIX: Final = "postwise:recommend:model"

log = logging.getLogger(__name__)

#: The format of stored models; bumped when fitted recommenders change shape, so a model
#: written by an older postwise is refused (and retrained) instead of failing at render time.
MODEL_FORMAT: Final = 2
_MAGIC = f"postwise-model/{MODEL_FORMAT}\n".encode()
_ANY_MAGIC = re.compile(rb"^postwise-model/(\d+)\n")
_CHUNK = 32 * 1024 * 1024
#: How long the chunks of a replaced model stay readable for workers in the middle of loading.
_OLD_VERSION_GRACE_SECONDS = 300


@dataclass(frozen=True)
class StoredModel:
    """Where a stored model stands: its version, size and what training reported."""

    name: str
    version: str
    size: int
    trained_at: datetime
    info: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "size": self.size,
            "trained_at": self.trained_at.isoformat(),
            "info": dict(self.info),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> StoredModel:
        return cls(
            name=str(data["name"]),
            version=str(data["version"]),
            size=int(data["size"]),
            trained_at=datetime.fromisoformat(data["trained_at"]),
            info=dict(data.get("info") or {}),
        )


def _pointer(raw: bytes | str | None, where: str) -> StoredModel | None:
    """The model a stored pointer describes; a damaged pointer counts as no model."""
    if not raw:
        return None
    try:
        return StoredModel.from_dict(json.loads(raw))
    except (ValueError, KeyError, TypeError) as exc:
        log.warning(
            "ignoring the damaged model pointer %s (%s); it is replaced on training", where, exc
        )
        return None


def pack_model(recommender: Recommender, key: bytes) -> bytes:
    """The signed bytes of a fitted recommender."""
    body = pickle.dumps(recommender, protocol=pickle.HIGHEST_PROTOCOL)
    return _MAGIC + hmac.new(key, body, hashlib.sha256).digest() + body


def unpack_model(blob: bytes, keys: list[bytes]) -> Recommender:
    """The recommender in ``blob``, if one of ``keys`` signed it; otherwise ConfigurationError."""
    header = len(_MAGIC) + hashlib.sha256().digest_size
    older = _ANY_MAGIC.match(blob[:32])
    if older is not None and not blob.startswith(_MAGIC):
        raise ConfigurationError(
            f"the stored recommendation model has format {older.group(1).decode()}, written by "
            f"another postwise version (this one reads format {MODEL_FORMAT}); it is retrained "
            "on first use, or run `postwise recommend train`"
        )
    if not blob.startswith(_MAGIC) or len(blob) < header:
        raise ConfigurationError(
            "the stored recommendation model is not one postwise wrote; retrain it with "
            "`postwise recommend train`"
        )
    mac, body = blob[len(_MAGIC) : header], blob[header:]
    if not any(hmac.compare_digest(mac, hmac.new(k, body, hashlib.sha256).digest()) for k in keys):
        raise ConfigurationError(
            "the stored recommendation model is not signed with this deployment's secret key "
            "(was the key changed, or the model written elsewhere?); retrain it with "
            "`postwise recommend train`"
        )
    # The signature proves this deployment wrote these bytes, so unpickling them is safe.
    recommender = pickle.loads(body)  # noqa: S301
    if not isinstance(recommender, Recommender):
        raise ConfigurationError(
            f"the stored recommendation model is a {type(recommender).__name__}, not a "
            "Recommender; retrain it with `postwise recommend train`"
        )
    return recommender


class ModelStore(abc.ABC):
    """Fitted recommenders by name, signed; the latest save of a name wins."""

    def __init__(self, keys: list[bytes]) -> None:
        if not keys:
            raise ConfigurationError("storing models needs a signing key (settings.secret_key)")
        self.keys = keys

    def save(
        self,
        name: str,
        recommender: Recommender,
        *,
        trained_at: datetime,
        info: Mapping[str, Any] | None = None,
    ) -> StoredModel:
        """Store ``recommender`` as the current model of ``name``."""
        blob = pack_model(recommender, self.keys[0])
        model = StoredModel(
            name=name,
            version=hashlib.sha256(blob).hexdigest()[:16],
            size=len(blob),
            trained_at=trained_at,
            info=dict(info or {}),
        )
        self._write(model, blob)
        return model

    def load(self, name: str) -> tuple[StoredModel, Recommender] | None:
        """The current model of ``name`` and its recommender, or None when there is none."""
        # A save may replace the model between reading the pointer and its bytes: look twice.
        for _ in range(2):
            model = self.current(name)
            if model is None:
                return None
            blob = self._read(model)
            if blob is not None:
                return model, unpack_model(blob, self.keys)
        return None

    @abc.abstractmethod
    def current(self, name: str) -> StoredModel | None:
        """What the current model of ``name`` is, without loading it (one small read)."""

    @abc.abstractmethod
    def delete(self, name: str) -> None:
        """Forget the model of ``name``."""

    @abc.abstractmethod
    def _write(self, model: StoredModel, blob: bytes) -> None: ...

    @abc.abstractmethod
    def _read(self, model: StoredModel) -> bytes | None: ...


class RedisModelStore(ModelStore):
    """Models in Redis: a JSON pointer per name, the bytes in chunks per version."""

    def __init__(
        self, client: redis.Redis, keys: list[bytes], *, prefix: str = DEFAULT_PREFIX
    ) -> None:
        super().__init__(keys)
        self.client = client
        self.prefix = prefix

    def _pointer(self, name: str) -> str:
        return f"{self.prefix}:{name}"

    def current(self, name: str) -> StoredModel | None:
        key = self._pointer(name)
        return _pointer(self.client.get(key), key)

    def _chunk_keys(self, model: StoredModel) -> list[str]:
        count = max(1, -(-model.size // _CHUNK))
        return [f"{self.prefix}:{model.name}:{model.version}:{index}" for index in range(count)]

    def _write(self, model: StoredModel, blob: bytes) -> None:
        previous = self.current(model.name)
        pipe = self.client.pipeline(transaction=False)
        for index, key in enumerate(self._chunk_keys(model)):
            pipe.set(key, blob[index * _CHUNK : (index + 1) * _CHUNK])
        pipe.execute()
        # The pointer moves only once every chunk is in place.
        self.client.set(self._pointer(model.name), json.dumps(model.to_dict()))
        if previous is not None and previous.version != model.version:
            self._expire(previous, _OLD_VERSION_GRACE_SECONDS)

    def _read(self, model: StoredModel) -> bytes | None:
        parts = self.client.mget(self._chunk_keys(model))
        chunks = [part for part in parts if isinstance(part, bytes)]
        return b"".join(chunks) if len(chunks) == len(parts) else None

    def _expire(self, model: StoredModel, seconds: int) -> None:
        pipe = self.client.pipeline(transaction=False)
        for key in self._chunk_keys(model):
            pipe.expire(key, seconds)
        pipe.execute()

    def delete(self, name: str) -> None:
        model = self.current(name)
        self.client.delete(self._pointer(name))
        if model is not None:
            self.client.delete(*self._chunk_keys(model))


class FileModelStore(ModelStore):
    """Models as files in a directory: ``<name>.json`` points at ``<name>.<version>.model``."""

    def __init__(self, directory: Path, keys: list[bytes]) -> None:
        super().__init__(keys)
        self.directory = directory

    def _stem(self, name: str) -> str:
        # Registry names are free text; file names must not be.
        return re.sub(r"[^A-Za-z0-9_.-]", "_", name)

    def _pointer(self, name: str) -> Path:
        return self.directory / f"{self._stem(name)}.json"

    def _blob(self, name: str, version: str) -> Path:
        return self.directory / f"{self._stem(name)}.{version}.model"

    def current(self, name: str) -> StoredModel | None:
        path = self._pointer(name)
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return None
        return _pointer(raw, str(path))

    def _write(self, model: StoredModel, blob: bytes) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        target = self._blob(model.name, model.version)
        _atomic_write(target, blob)
        _atomic_write(self._pointer(model.name), json.dumps(model.to_dict()).encode())
        # Older versions go at once: a reader that loses the race reads the pointer again.
        for old in self.directory.glob(f"{self._stem(model.name)}.*.model"):
            if old != target:
                with contextlib.suppress(FileNotFoundError):
                    old.unlink()
        # Temporary files of runs killed while writing (other process ids) are debris.
        for debris in self.directory.glob(f".{self._stem(model.name)}*.tmp"):
            if not debris.name.endswith(f".{os.getpid()}.tmp"):
                with contextlib.suppress(FileNotFoundError):
                    debris.unlink()

    def _read(self, model: StoredModel) -> bytes | None:
        try:
            return self._blob(model.name, model.version).read_bytes()
        except FileNotFoundError:
            return None

    def delete(self, name: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._pointer(name).unlink()
        for old in self.directory.glob(f"{self._stem(name)}.*.model"):
            with contextlib.suppress(FileNotFoundError):
                old.unlink()


def _atomic_write(path: Path, data: bytes) -> None:
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    # Owner only: a model holds which contact interacted with which item.
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)


def model_store(runtime: Runtime, *, prefix: str = DEFAULT_PREFIX) -> ModelStore:
    """The store of ``runtime``: Redis when it is a server, data_dir/models otherwise."""
    settings = runtime.settings
    keys = settings.signing_keys()
    if settings.redis_url.startswith("fakeredis://"):
        return FileModelStore(Path(settings.data_dir) / "models", keys)
    return RedisModelStore(runtime.redis, keys, prefix=prefix)
