"""The model pool evicts least recently used idle models and unloads after the keep-alive."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from threading import Event

import pytest

from edgefleet.agent.inference.decoding import Piece
from edgefleet.agent.inference.model_io import ChatBackend, Generation, Prompt, SamplingParams
from edgefleet.agent.inference.pool import ModelPool, PoolSettings
from edgefleet.errors import HashMismatchError, ResourceError
from edgefleet.memory import MIB
from edgefleet.trust.metadata import ModelManifest
from tests.edgefleet.trustkit import manifest


class Backend:
    failure = ""  # it never dies

    def __init__(self) -> None:
        self.closed = Event()

    def generate(
        self, prompt: Prompt, params: SamplingParams, cancel: Event
    ) -> Iterator[tuple[Piece, Generation]]:
        yield Piece(), Generation()

    @property
    def dimensions(self) -> int:  # no embeddings from this fake
        return 0

    def embedding_tokens(self, text: str) -> list[int]:
        raise NotImplementedError

    def embed(self, inputs: list[list[int]]) -> list[list[float]]:
        raise NotImplementedError

    def close(self) -> None:
        self.closed.set()


def _pool(
    budget_mib: int, keep_alive: float = 300, backends: dict[str, Backend] | None = None
) -> tuple[ModelPool, list[Path]]:
    loaded: list[Path] = []

    def factory(path: Path, slots: int) -> list[ChatBackend]:
        loaded.append(path)
        backend = Backend()
        if backends is not None:
            backends[path.name] = backend
        return [backend] * slots

    settings = PoolSettings(
        budget_mib * MIB, context=1024, slots=1, keep_alive_seconds=keep_alive, max_queued=4
    )
    return ModelPool(factory, settings), loaded


def _model(name: str, mib: int) -> ModelManifest:
    """Names are single hex letters so that the name can double as the digest."""
    return manifest(name, "1", sha=name * 64, length=mib * MIB)


async def _use(pool: ModelPool, name: str, mib: int) -> None:
    async with pool.slot(_model(name, mib), Path(f"/blobs/{name}")):
        pass


def test_least_recently_used_idle_model_is_evicted() -> None:
    """With room for two models, loading a third unloads the one used longest ago, and
    frees its memory (its backend is closed, on its own thread)."""
    backends: dict[str, Backend] = {}
    pool, loaded = _pool(budget_mib=480, backends=backends)  # two of 209 MiB fit, not three

    async def scenario() -> list[str]:
        await _use(pool, "a", 100)
        await _use(pool, "b", 100)
        await _use(pool, "a", 100)  # a is now more recent than b
        await _use(pool, "c", 100)
        return sorted(m.manifest.name for m in pool.loaded())

    assert asyncio.run(scenario()) == ["a", "c"]
    assert [p.name for p in loaded] == ["a", "b", "c"]
    assert backends["b"].closed.wait(5)
    assert not backends["a"].closed.is_set() and not backends["c"].closed.is_set()


def test_model_larger_than_the_budget_is_refused_with_numbers() -> None:
    """A model that can never fit is refused before its backend is created."""
    pool, loaded = _pool(budget_mib=100)
    with pytest.raises(
        ResourceError, match=r"weights 200 MiB .* over the memory budget of 100 MiB"
    ):
        asyncio.run(_use(pool, "a", 200))
    assert loaded == []


def test_keep_alive_unloads_idle_models() -> None:
    """After the keep-alive an idle model is unloaded; a model serving a request never is."""
    pool, _ = _pool(budget_mib=1000, keep_alive=0.05)

    async def scenario() -> tuple[list[str], list[str]]:
        await _use(pool, "a", 10)
        async with pool.slot(_model("b", 10), Path("/blobs/b")):
            await asyncio.sleep(0.1)
            unloaded = pool.unload_idle()
            remaining = [m.manifest.name for m in pool.loaded()]
        return unloaded, remaining

    unloaded, remaining = asyncio.run(scenario())
    assert unloaded == ["a"] and remaining == ["b"]


def test_a_model_failing_its_check_before_load_is_never_loaded() -> None:
    """The pool asks the registry to check the file first; a refusal keeps what is loaded."""
    loaded: list[Path] = []

    def factory(path: Path, slots: int) -> list[ChatBackend]:
        loaded.append(path)
        return [Backend() for _ in range(slots)]

    def verify(manifest: ModelManifest) -> None:
        if manifest.name == "b":
            raise HashMismatchError("b failed its check before loading")

    settings = PoolSettings(400 * MIB, context=1024, slots=1, keep_alive_seconds=300, max_queued=4)
    pool = ModelPool(factory, settings, verify)

    async def scenario() -> None:
        await _use(pool, "a", 100)
        with pytest.raises(HashMismatchError, match="before loading"):
            await _use(pool, "b", 100)

    asyncio.run(scenario())
    assert loaded == [Path("/blobs/a")] and [m.manifest.name for m in pool.loaded()] == ["a"]


def test_a_quarantined_blob_is_never_served_from_memory(tmp_path: Path) -> None:
    """Review hole M2: a loaded model kept serving its mapping of a blob that verify had
    quarantined. Once the file is moved away it is unloaded (at the next request or the
    next idle sweep) and loaded again from the repaired file."""
    blob = tmp_path / "blob"
    blob.write_bytes(b"verified")
    refuse = Event()
    loaded: list[Path] = []

    def factory(path: Path, slots: int) -> list[ChatBackend]:
        loaded.append(path)
        return [Backend() for _ in range(slots)]

    def verify(_: ModelManifest) -> None:
        if refuse.is_set():
            raise HashMismatchError("blob is quarantined")

    settings = PoolSettings(400 * MIB, context=1024, slots=1, keep_alive_seconds=300, max_queued=4)
    pool = ModelPool(factory, settings, verify=verify)
    model = _model("a", 10)

    async def use() -> None:
        async with pool.slot(model, blob):
            pass

    async def scenario() -> None:
        await use()
        blob.rename(tmp_path / "quarantined")  # what verify does with a damaged blob
        refuse.set()
        assert pool.unload_idle() == ["a"]  # the sweep drops it: its file is gone
        with pytest.raises(HashMismatchError):
            await use()
        assert pool.loaded() == []
        blob.write_bytes(b"repaired")  # a new file (a new inode) at the same path
        refuse.clear()
        await use()
        await use()

    asyncio.run(scenario())
    assert loaded == [blob, blob]  # loaded once before and once after the repair


def test_a_model_whose_blob_changes_while_busy_finishes_then_reloads(tmp_path: Path) -> None:
    """A request in flight keeps its worker; the next request gets a fresh load."""
    blob = tmp_path / "blob"
    blob.write_bytes(b"one")
    pool, loaded = _pool(budget_mib=400)
    model = _model("a", 10)

    async def scenario() -> None:
        async with pool.slot(model, blob):
            blob.rename(tmp_path / "quarantined")
            blob.write_bytes(b"two")
            async with pool.slot(model, blob):  # a second slot request reloads
                pass
        assert len(pool.loaded()) == 1

    asyncio.run(scenario())
    assert len(loaded) == 2


def test_a_request_goes_to_the_free_slot_holding_its_prefix() -> None:
    """Of several free slots, the one whose last prompt shares the longest start."""
    settings = PoolSettings(400 * MIB, context=1024, slots=3, keep_alive_seconds=300, max_queued=4)
    pool = ModelPool(lambda path, slots: [Backend() for _ in range(slots)], settings)
    m = _model("a", 10)

    async def scenario() -> tuple[int, int, int]:
        async def slot_for(prefix: str) -> int:
            async with pool.slot(m, Path("/blobs/a"), prefix) as worker:
                return id(worker)

        system = "You are a careful assistant. " * 20
        first = await slot_for(system + "question one")
        await slot_for("something else entirely")  # first in line would now be a third slot
        again = await slot_for(system + "question two")
        other = await slot_for("something else, again")
        return first, again, other

    first, again, other = asyncio.run(scenario())
    assert again == first  # the slot whose cache holds the system prompt
    assert other != first
