"""The `.okm` container: one file, a fixed header, 64-byte-aligned members, a JSON manifest.

The container is uncompressed so the weights member (a safetensors blob) can
be memory-mapped and read in place; every byte is covered by a checksum so a
damaged file is refused before anything is built from it. `docs/okm.md`
describes the layout byte for byte. This module needs no torch.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import mmap
import os
import re
import stat
import struct
import tempfile
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from okto.errors import EXIT_RUN_FAILED, OktoError, UsageError
from okto.package.weights import WeightsError, read_index, tensors_in_place

MAGIC = b"\x89OKM\r\n\x1a\n"
FORMAT_VERSION = 1
HEADER_SIZE = 128
ALIGN = 64
# magic, format version, header size, file length, manifest offset, manifest length, manifest sha256
_HEADER = struct.Struct("<8sIIQQQ32s")
_CRC_AT = HEADER_SIZE - 4

CONFIG = "config.json"
WEIGHTS = "model.safetensors"
REQUIRED_MEMBERS = (CONFIG, WEIGHTS)
ROLES = ("config", "weights", "tokenizer", "generation_config")
_MEMBER_NAME = re.compile(r"^[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)*$")
_CHUNK = 1 << 20


class PackageError(OktoError):
    """An `.okm` file is damaged, tampered with, or from a format this okto cannot read."""

    exit_code = EXIT_RUN_FAILED

    def __init__(self, path: Path | str, problem: str):
        super().__init__(f"{path}: {problem}")
        self.problem = problem


def _safe_name(name) -> bool:
    """Whether a member name is a relative path of [A-Za-z0-9._-] parts, none of them . or ..:
    a tokenizer member is written into a folder by its name, so 'tokenizer/../../x' would
    write outside it."""
    if not isinstance(name, str) or not _MEMBER_NAME.match(name):
        return False
    return not any(part in (".", "..") for part in name.split("/"))


@dataclass(frozen=True)
class Member:
    """One stored file: its name, role, and where its bytes lie in the package."""

    name: str
    role: str
    offset: int
    length: int
    sha256: str


def _pad(n: int) -> int:
    return -n % ALIGN


def _header_bytes(file_length: int, manifest_offset: int, manifest: bytes) -> bytes:
    head = _HEADER.pack(
        MAGIC,
        FORMAT_VERSION,
        HEADER_SIZE,
        file_length,
        manifest_offset,
        len(manifest),
        hashlib.sha256(manifest).digest(),
    )
    head = head.ljust(_CRC_AT, b"\0")
    return head + struct.pack("<I", zlib.crc32(head))


def _umask() -> int:
    """The process's umask (reading it means setting it; it is put back at once)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _mode_for(path: Path) -> int:
    """The file mode `path` gets: the one of the file it replaces (a package kept private with
    chmod 600 stays private when exported again), else the user's default for a new file."""
    try:
        return stat.S_IMODE(path.stat().st_mode)
    except OSError:
        return 0o666 & ~_umask()


def make_folder(folder: Path) -> None:
    """`folder` and its parents, or a UsageError saying why not (it lies under a file, ...)."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        reason = "a file has that name" if isinstance(e, FileExistsError) else e.strerror or e
        raise UsageError(
            f"cannot make the folder {folder}: {reason}; choose another place"
        ) from None


@contextlib.contextmanager
def _temporary(path: Path) -> Iterator[tuple[BinaryIO, str]]:
    """A temporary file beside `path` to write it into, flushed to disk and given the mode of
    the file it replaces (or the user's default) when the block ends. On any error it is removed, and an OSError (a full disk, a
    source file gone) is reported as an OktoError saying that `path` is left as it was."""
    if path.is_dir():
        raise UsageError(f"cannot write {path}: it is a folder; name a file")
    make_folder(path.parent)
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise UsageError(f"cannot write {path}: {e.strerror or e}; choose another place") from None
    try:
        with os.fdopen(fd, "wb") as out:
            yield out, tmp_name
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp_name, _mode_for(path))  # mkstemp makes it private (0600)
    except BaseException as e:
        _discard(tmp_name, path, e)


def _discard(tmp_name: str, path: Path, error: BaseException):
    """Remove a temporary file after `error`, and raise it (an OSError as an OktoError)."""
    Path(tmp_name).unlink(missing_ok=True)
    if isinstance(error, OSError):
        where = f": {error.filename}" if error.filename else ""
        raise OktoError(
            f"writing {path} failed ({error.strerror or error}{where}); it is left as it was"
        ) from None
    raise error


def _replace(tmp_name: str, path: Path) -> None:
    try:
        os.replace(tmp_name, path)
    except OSError as e:
        _discard(tmp_name, path, e)


@contextlib.contextmanager
def atomic_file(path: Path | str) -> Iterator[BinaryIO]:
    """Open `path` for writing so that it appears under its name only once complete.

    The data goes to a temporary file in the same folder, is flushed to disk and
    renamed over `path`; on any error the temporary file is removed and whatever
    was at `path` before is left as it was.
    """
    path = Path(path)
    with _temporary(path) as (out, tmp_name):
        yield out
    _replace(tmp_name, path)


def write_file(path: Path | str, data: bytes | memoryview | Path) -> Path:
    """Write bytes (or a copy of a file, streamed) to `path` through `atomic_file`."""
    with atomic_file(path) as out:
        _stream(out, data)  # no checksum: these files carry none
    return Path(path)


def write_files(folder: Path, files: dict[str, bytes | memoryview | Path]) -> None:
    """Write each file into `folder`, every one to a temporary name first and all renamed
    once all are written: a failure while writing (a full disk at the weights) leaves the
    folder as it was, not a new config beside the old weights."""
    staged: list[tuple[str, Path]] = []
    try:
        for name, data in files.items():
            with _temporary(folder / name) as (out, tmp_name):
                _stream(out, data)
            staged.append((tmp_name, folder / name))
    except BaseException:
        for tmp_name, _ in staged:
            Path(tmp_name).unlink(missing_ok=True)
        raise
    for tmp_name, path in staged:
        _replace(tmp_name, path)


def write_package(
    path: Path | str, members: Iterable[tuple[str, str, bytes | Path]], manifest: dict
) -> Path:
    """Write members (name, role, bytes or a file to stream) and the manifest to `path`,
    through `atomic_file`. `manifest` gets the `format`, `format_version` and `members`
    keys filled in.
    """
    with atomic_file(path) as out:
        out.write(b"\0" * HEADER_SIZE)
        entries = []
        for name, role, data in members:
            offset = out.tell()
            digest, length = _write_member(out, data)
            entries.append(
                {"name": name, "role": role, "offset": offset, "length": length, "sha256": digest}
            )
            out.write(b"\0" * _pad(out.tell()))
        body = {"format": "okm", "format_version": FORMAT_VERSION, **manifest}
        body["members"] = entries
        blob = json.dumps(body, indent=1, sort_keys=True).encode()
        manifest_offset = out.tell()
        out.write(blob)
        out.seek(0)
        out.write(_header_bytes(manifest_offset + len(blob), manifest_offset, blob))
    return Path(path)


def _write_member(out, data: bytes | Path) -> tuple[str, int]:
    """Copy one member into the package, hashing as it goes: (sha256, length)."""
    digest = hashlib.sha256()
    length = _stream(out, data, digest)
    return digest.hexdigest(), length


def _stream(out, data: bytes | memoryview | Path, digest=None) -> int:
    """Write bytes, or a file streamed in chunks (not loaded), to `out`, feeding `digest`
    when given; the number of bytes written."""
    if isinstance(data, bytes | bytearray | memoryview):
        out.write(data)
        if digest is not None:
            digest.update(data)
        return len(data)
    length = 0
    with open(data, "rb") as src:
        while chunk := src.read(_CHUNK):
            if digest is not None:
                digest.update(chunk)
            out.write(chunk)
            length += len(chunk)
    return length


class Package:
    """A verified `.okm` file, memory-mapped; members are read in place.

    Opening checks the header, the manifest and every member's SHA-256, so an
    object of this class only exists for a package that is whole.
    """

    def __init__(self, path: Path | str):
        self.path = Path(path)
        if not self.path.exists():
            raise UsageError(f"{self.path}: no such file")
        if not self.path.is_file():
            raise UsageError(f"{self.path}: not a file")
        size = self.path.stat().st_size
        if size == 0:
            raise self._error("the file is empty, not an .okm package")
        try:
            with open(self.path, "rb") as f:
                # ACCESS_COPY: a private, writable mapping, so tensors can be built over it
                # without touching the file (torch.frombuffer wants a writable buffer).
                self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
        except OSError as e:
            raise UsageError(f"{self.path}: cannot be read ({e.strerror or e})") from None
        self._view = memoryview(self._map)
        self.manifest = self._read_manifest(size)
        self.members = self._read_members()
        for member in self.members.values():
            self._verify(member)
        self.weights_start, self.tensor_index = self._check_tensor_index()

    def _error(self, problem: str) -> PackageError:
        return PackageError(self.path, problem)

    def _read_manifest(self, size: int) -> dict:
        view = self._view
        if bytes(view[: min(size, len(MAGIC))]) != MAGIC[: min(size, len(MAGIC))]:
            raise self._error("not an .okm package (wrong magic bytes at the start of the file)")
        if size < HEADER_SIZE:
            raise self._error(
                f"truncated: the file has {size} bytes, fewer than its {HEADER_SIZE}-byte header"
            )
        _, version, header_size, length, m_offset, m_length, m_sha = _HEADER.unpack_from(view)
        if version > FORMAT_VERSION:
            raise self._error(
                f"written in .okm format version {version}, newer than this okto reads "
                f"(version {FORMAT_VERSION}); upgrade okto to load it"
            )
        if version < 1:
            raise self._error(f"unknown .okm format version {version}")
        (crc,) = struct.unpack_from("<I", view, _CRC_AT)
        if zlib.crc32(view[:_CRC_AT]) != crc or header_size != HEADER_SIZE:
            raise self._error("the header is corrupt (its checksum does not match)")
        if size < length:
            raise self._error(
                f"truncated: the file has {size} bytes but its header says {length}; "
                "it was cut short (an interrupted copy or download?)"
            )
        if size > length:
            raise self._error(
                f"{size - length} unexpected bytes after the end of the package "
                f"(its header says {length} bytes)"
            )
        if m_offset < HEADER_SIZE or m_offset + m_length != length:
            raise self._error("the header points the manifest outside the file")
        blob = view[m_offset : m_offset + m_length]
        if hashlib.sha256(blob).digest() != m_sha:
            raise self._error(
                "the manifest is corrupt or was edited (its SHA-256 does not match the header)"
            )
        try:
            manifest = json.loads(bytes(blob))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise self._error(f"the manifest is not valid JSON ({e})") from None
        if not isinstance(manifest, dict) or manifest.get("format") != "okm":
            raise self._error("the manifest does not describe an .okm package")
        if manifest.get("format_version") != version:
            raise self._error(
                f"the manifest says format version {manifest.get('format_version')!r} "
                f"but the header says {version}"
            )
        self._manifest_offset = m_offset
        return manifest

    def _read_members(self) -> dict[str, Member]:
        entries = self.manifest.get("members")
        if not isinstance(entries, list):
            raise self._error("the manifest has no member list")
        members: dict[str, Member] = {}
        end = HEADER_SIZE
        for entry in entries:
            try:
                member = Member(**entry)
            except TypeError:
                raise self._error(f"a manifest member entry is malformed: {entry!r}") from None
            if not _safe_name(member.name):
                raise self._error(f"a member has an unsafe or invalid name: {member.name!r}")
            if member.role not in ROLES:
                raise self._error(f"member {member.name!r} has an unknown role {member.role!r}")
            if member.name in members:
                raise self._error(f"member {member.name!r} is listed twice")
            if (
                not isinstance(member.offset, int)
                or not isinstance(member.length, int)
                or member.offset % ALIGN
                or member.offset < end
                or member.length < 0
                or member.offset + member.length > self._manifest_offset
            ):
                raise self._error(
                    f"member {member.name!r} lies outside its place in the file "
                    f"(offset {member.offset}, length {member.length})"
                )
            end = member.offset + member.length
            members[member.name] = member
        for name in REQUIRED_MEMBERS:
            if name not in members:
                raise self._error(f"the package has no {name!r} member; it is incomplete")
        return members

    def _verify(self, member: Member) -> None:
        data = self.member(member.name)
        if hashlib.sha256(data).hexdigest() != member.sha256:
            what = "the weights" if member.role == "weights" else f"member {member.name!r}"
            raise self._error(
                f"{what} failed the SHA-256 check: the file is corrupt or was tampered with"
            )

    def _check_tensor_index(self) -> tuple[int, dict[str, dict]]:
        """The weights' safetensors header, checked against the manifest's tensor index."""
        try:
            start, index = read_index(self.member(WEIGHTS))
        except WeightsError as e:
            raise self._error(f"the weights member is not a valid safetensors file: {e}") from None
        listed = self.manifest.get("tensors")
        if not isinstance(listed, dict):
            raise self._error("the manifest has no tensor index")
        for name in sorted(set(listed) | set(index)):
            if name not in index:
                problem = f"lists tensor {name!r}, which the weights do not hold"
            elif name not in listed:
                problem = f"does not list tensor {name!r}, which the weights hold"
            elif listed[name] != index[name]:
                problem = (
                    f"describes tensor {name!r} as {listed[name]}, the weights hold {index[name]}"
                )
            else:
                continue
            raise self._error(f"the manifest's tensor index {problem}")
        return start, index

    def tensors(self) -> dict:
        """The weights as torch tensors built over the mapped file (copy-on-write, no copy now)."""
        offset = self.members[WEIGHTS].offset + self.weights_start
        return tensors_in_place(self._map, offset, self.tensor_index)

    def member(self, name: str) -> memoryview:
        """The member's bytes, in place (no copy)."""
        m = self.members[name]
        return self._view[m.offset : m.offset + m.length]

    def names(self, role: str) -> list[str]:
        return [m.name for m in self.members.values() if m.role == role]
