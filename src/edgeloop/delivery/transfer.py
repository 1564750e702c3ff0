"""Chunked, resumable, verified artifact transfer from a list of sources (peers first, then the coordinator).

Every chunk is checked against the manifest's per-chunk sha256 whatever its source.  A bad chunk is
fetched again alone (from the next source; if that fails too, the stream restarts at that chunk and
nothing before it is re-sent) up to a limit.  Hashing a chunk overlaps receiving the next.  The resume
point is the count of written chunks, in ``<part>.verified`` after each chunk; a resume hashes them
again from disk, so a killed and restarted edge re-fetches at most the one chunk that was in flight.
"""
from __future__ import annotations

import hashlib
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from edgeloop.protocol import mesh_pb2

log = logging.getLogger("edgeloop.delivery.transfer")

MAX_BAD_CHUNKS = 3
#: written chunks are flushed to disk in the background every this many, so the fsync at the end
#: only waits for the tail (it was ~13% of a 128 MiB fetch when it flushed everything)
FLUSH_EVERY_CHUNKS = 16
FETCH_TIMEOUT_S = 300.0
_STATE_WIDTH = 12


class TransferError(Exception):
    """The artifact could not be fetched and verified from any source; the message says why."""


@dataclass
class Source:
    """Somewhere ``FetchArtifact`` can be called: a peer edge's ``Peer`` stub or the coordinator's stub."""

    name: str
    stub: object
    kind: str = "peer"   # "peer" or "coordinator"

    def open(self, sha: str, offset: int, chunk_bytes: int, timeout_s: float, max_chunks: int = 0):
        return self.stub.FetchArtifact(mesh_pb2.FetchArtifactRequest(sha256=sha, offset=offset, chunk_size=chunk_bytes,
                                                                     max_chunks=max_chunks), timeout=timeout_s)


@dataclass
class TransferStats:
    """What one fetch did: chunks received (good or bad) and bytes per source."""

    resumed_at_chunk: int = 0
    chunks_received: int = 0
    bad_chunks: int = 0
    bytes_by_source: dict = field(default_factory=dict)
    chunks_by_source: dict = field(default_factory=dict)


def _read_state(path: Path, sha: str) -> int:
    try:
        text = path.read_text()
    except OSError:
        return 0
    got_sha, _, count = text.partition(":")
    return int(count) if got_sha == sha and count.strip().isdigit() else 0


def _verified_prefix(part: Path, chunks: list[str], cb: int, count: int) -> int:
    """How many of the first ``count`` chunks on disk still match the manifest."""
    if not count:
        return 0
    with open(part, "rb") as fh:
        for i in range(count):
            if hashlib.sha256(fh.read(cb)).hexdigest() != chunks[i]:
                return i
    return count


def _sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def fetch(manifest: dict, part: Path, sources: list[Source], *, max_bad_chunks: int = MAX_BAD_CHUNKS,
          timeout_s: float = FETCH_TIMEOUT_S, stats: TransferStats | None = None) -> TransferStats:
    """Fill ``part`` with the manifest's artifact; returns the stats.  Raises TransferError, or the last
    ``grpc.RpcError`` from the coordinator when every source failed with a transient error (retry later).

    Each chunk is written as it arrives and hashed on a second thread while the next one is received
    (hashlib releases the GIL), so hashing costs no wall time; the resume point counts written chunks
    (a resume hashes them again from disk), so a kill loses at most the one chunk received, not written.
    A chunk whose hash turns out wrong one step later is fetched again alone and rewritten in place."""
    stats = stats or TransferStats()
    sha, size, cb, chunks = manifest["sha256"], manifest["size"], manifest["chunk_bytes"], manifest["chunks"]
    part = Path(part)
    part.parent.mkdir(parents=True, exist_ok=True)
    state_path = part.with_name(part.name + ".verified")
    on_disk = part.stat().st_size if part.exists() else 0
    done = min(_read_state(state_path, sha), on_disk // cb if on_disk < size else len(chunks), len(chunks))
    done = _verified_prefix(part, chunks, cb, done)  # what is on disk is checked again, never trusted
    stats.resumed_at_chunk = done
    state_fd = os.open(state_path, os.O_RDWR | os.O_CREAT, 0o600)
    errors: list[str] = []
    last_rpc_error = None

    def mark(count: int) -> None:
        os.pwrite(state_fd, f"{sha}:{count:0{_STATE_WIDTH}d}".encode(), 0)

    try:
        with open(part, "r+b" if part.exists() else "w+b") as fh, ThreadPoolExecutor(1) as hasher, \
                ThreadPoolExecutor(1) as flusher:
            fh.truncate(done * cb)
            fd = fh.fileno()
            flushed = None  # the background fdatasync in progress (one at a time)
            pending = None  # (index, source index, hash future) of the written chunk being hashed
            i, bad, src_index = done, 0, 0

            def settle() -> bool:
                """Check the chunk being hashed; a bad one is fetched again alone.  False: it must be re-streamed."""
                nonlocal pending
                if pending is None:
                    return True
                j, from_index, digest = pending
                pending = None
                if digest.result() == chunks[j]:
                    return True
                return repair(j, from_index, f"{cb if j < len(chunks) - 1 else size - j * cb} bytes at offset {j * cb}")

            def repair(j: int, from_index: int, what: str) -> bool:
                nonlocal bad
                bad += 1
                stats.bad_chunks += 1
                name = sources[from_index].name
                log.warning("artifact %s: chunk %d from %s failed verification (%s; bad chunks so far: %d)",
                            sha[:12], j, name, what, bad)
                if bad > max_bad_chunks:
                    raise TransferError(f"artifact {sha}: {bad} chunks failed their sha256 check (last: chunk {j} "
                                        f"from {name}); expected at most {max_bad_chunks}")
                expected_len = min(cb, size - j * cb)
                data = _refetch(sources, from_index, bad, sha, j, cb, expected_len, chunks[j], timeout_s, stats)
                if data is None:
                    return False
                os.pwrite(fd, data, j * cb)
                return True

            while i < len(chunks):
                if src_index >= len(sources):
                    if not settle():
                        continue
                    if last_rpc_error is not None:
                        raise last_rpc_error
                    raise TransferError(f"artifact {sha}: chunk {i} of {len(chunks)} could not be fetched from any "
                                        f"source ({'; '.join(errors)[:600]})")
                source = sources[src_index]
                call = source.open(sha, i * cb, cb, timeout_s)
                restart = False
                try:
                    for msg in call:
                        expected_len = min(cb, size - i * cb)
                        data = msg.data
                        stats.chunks_received += 1
                        stats.chunks_by_source[source.name] = stats.chunks_by_source.get(source.name, 0) + 1
                        stats.bytes_by_source[source.name] = stats.bytes_by_source.get(source.name, 0) + len(data)
                        if msg.offset == i * cb and len(data) == expected_len:
                            os.pwrite(fd, data, i * cb)
                            digest = hasher.submit(_sha256_hex, data)
                            if not settle():  # the previous chunk was bad and could not be had alone
                                i -= 1
                                restart = True
                                break
                            pending = (i, src_index, digest)
                        else:
                            if not settle():
                                i -= 1
                                restart = True
                                break
                            if not repair(i, src_index, f"{len(data)} bytes at offset {msg.offset}"):
                                restart = True  # not good from another source either: retry from this one
                                break
                        i += 1
                        mark(i)
                        if i % FLUSH_EVERY_CHUNKS == 0 and (flushed is None or flushed.done()):
                            flushed = flusher.submit(os.fdatasync, fd)
                        if i >= len(chunks):
                            break
                except grpc.RpcError as exc:
                    errors.append(f"{source.name}: {exc.code().name}: {(exc.details() or '')[:120]}")
                    if source.kind == "coordinator":
                        last_rpc_error = exc
                    src_index += 1
                    continue
                finally:
                    call.cancel()
                if restart:
                    mark(i)
                    continue
                if i >= len(chunks) and not settle():  # the last chunk was bad and could not be had alone
                    i -= 1
                    mark(i)
                    continue
                if i < len(chunks):  # the source ended early: it has no more
                    errors.append(f"{source.name}: the stream ended at chunk {i}")
                    src_index += 1
            if flushed is not None:
                flushed.result()
            os.fsync(fd)
    finally:
        os.close(state_fd)
    return stats


def _refetch(sources, src_index, attempt, sha, i, cb, expected_len, digest, timeout_s, stats) -> bytes | None:
    """Chunk ``i`` alone from the next source in turn (one message, then the stream is cancelled)."""
    source = sources[(src_index + attempt) % len(sources)]
    call = source.open(sha, i * cb, cb, timeout_s, 1)
    try:
        msg = next(iter(call), None)
    except grpc.RpcError:
        return None
    finally:
        call.cancel()
    if msg is None:
        return None
    stats.chunks_received += 1
    stats.chunks_by_source[source.name] = stats.chunks_by_source.get(source.name, 0) + 1
    stats.bytes_by_source[source.name] = stats.bytes_by_source.get(source.name, 0) + len(msg.data)
    if msg.offset != i * cb or len(msg.data) != expected_len or hashlib.sha256(msg.data).hexdigest() != digest:
        stats.bad_chunks += 1
        return None
    return msg.data


def finish_path(part: Path, manifest: dict) -> Path:
    """Rename a complete ``part`` to ``<name>.bin`` after checking its size.

    Every chunk was checked against the manifest's per-chunk sha256 as it arrived (and again on a resume),
    so the file is the one the manifest describes; reading it all again for the whole-file sha256 would
    only halve the throughput."""
    part = Path(part)
    size = part.stat().st_size
    if size != manifest["size"]:
        discard(part)
        raise TransferError(f"artifact {manifest['sha256']}: assembled {size} bytes; expected {manifest['size']}")
    done = part.with_suffix(".bin")
    os.replace(part, done)
    discard(part)
    return done


def finish(part: Path, manifest: dict) -> bytes:
    """The verified bytes of a complete ``part``; removes the files.  The whole-file sha256 is checked
    here because the bytes are in memory anyway (the model is loaded from them)."""
    done = finish_path(part, manifest)
    data = done.read_bytes()
    done.unlink()
    digest = hashlib.sha256(data).hexdigest()
    if digest != manifest["sha256"]:
        raise TransferError(f"artifact {manifest['sha256']}: assembled bytes have sha256 {digest}")
    return data


def discard(part: Path) -> None:
    for path in (Path(part), Path(part).with_name(Path(part).name + ".verified")):
        try:
            path.unlink()
        except FileNotFoundError:
            pass
