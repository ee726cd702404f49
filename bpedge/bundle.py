"""A bundle: the directory export hands to the device.

``manifest.json`` plus the ONNX files (and checkpoints), and after ``bpedge build-engines`` one
TensorRT plan per (model, GPU, TensorRT version, precision). Nothing is ever loaded from a file
whose sha256 differs from the manifest's: :meth:`Bundle.open` checks the model files, and
:meth:`Bundle.verified_path` / :meth:`Bundle.read_verified` check a file again right before use.

Engines are checked when used rather than at open, because they are a cache: a bad engine is
refused (and rebuilt by build-engines) without making the ONNX files unusable.

Every change to ``manifest.json`` is atomic (temporary file, fsync, rename), and an engine that
replaces another is unlisted before its file is overwritten, so a process killed at any moment
leaves a bundle whose manifest only lists files that match it. An engine is written only over a
file bpedge wrote there (one whose sha256 the manifest, or the journal of a writer killed while
replacing it, records: :mod:`bpedge._bundle_journal`); anything else at its name is refused,
named, and kept. A temporary file a killed writer left is removed only when that writer listed it.

``import bpedge.bundle`` needs neither torch nor TensorRT.
"""

from __future__ import annotations

import contextlib
import errno
import os
import time
from collections.abc import Iterator
from pathlib import Path

from bpedge._atomic import fsync_dir, publish
from bpedge._bundle_journal import Journal
from bpedge._engine_key import EngineKey
from bpedge._manifest import (
    MODEL_NAMES,
    ONNX_PRECISIONS,
    SCHEMA_VERSION,
    EngineEntry,
    FileRef,
    Manifest,
)
from bpedge._manifest_fields import (
    MANIFEST_NAME,
    BundleError,
    check_file_name,
    now_iso,
    sha256_bytes,
    sha256_file,
)
from bpedge._onnx_external import NotOnnx, external_data_references
from bpedge._regular_file import (
    MAX_BUNDLE_FILE_BYTES,
    MAX_MANIFEST_BYTES,
    NotARegularFile,
    read_regular_file,
    sha256_regular_file,
)

__all__ = [
    "SCHEMA_VERSION",
    "Bundle",
    "BundleError",
    "EngineEntry",
    "EngineKey",
    "FileRef",
    "Manifest",
    "file_ref",
]

_LOCK_NAME = ".bpedge.lock"
#: Reads of one bundle :meth:`Bundle.open` (and ``Segmenter.from_bundle``) start again from the
#: manifest when the bundle folder was replaced meanwhile (``bpedge export --force``).
OPEN_ATTEMPTS = 3


class Bundle:
    """A bundle directory and its validated manifest.

    Open one with :meth:`open`; create one (export) with :meth:`create`. The object follows the
    manifest it writes: after :meth:`add_engine` or :meth:`store_engine`, :attr:`manifest` is the
    new one.
    """

    def __init__(self, root: Path, manifest: Manifest) -> None:
        # Use open()/create(): they validate; this constructor trusts its arguments.
        self._root = root
        self._manifest = manifest
        # The folder the manifest was read from: (st_dev, st_ino), None when not opened.
        self._opened_folder: tuple[int, int] | None = None

    # --- opening and creating ------------------------------------------------------------------

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> Bundle:
        """Read and validate ``path/manifest.json`` and check that every ONNX and checkpoint file
        it lists exists and matches its sha256. Raises :class:`BundleError` naming the field or
        file and the fix.

        ``bpedge export --force`` publishes a new bundle by renaming a folder onto ``path``: an
        open that straddles the rename (the old manifest, the new files) starts again on the new
        bundle, up to :data:`OPEN_ATTEMPTS` times, instead of calling its files corrupted."""
        root = Path(path)
        attempt = 1
        while True:
            folder = _folder_identity(root)
            try:
                bundle = cls(root, _check_model_files(root, _read_manifest(root)))
            except BundleError:
                if attempt == OPEN_ATTEMPTS or not _folder_replaced(root, folder):
                    raise
                attempt += 1
                continue
            bundle._opened_folder = folder
            return bundle

    @classmethod
    def write(cls, path: str | os.PathLike[str], manifest: Manifest) -> Bundle:
        """(Re)write ``path/manifest.json`` atomically after checking that every file the
        manifest lists is in ``path`` and matches its sha256; returns the opened bundle."""
        root = Path(path)
        if not root.is_dir():
            raise BundleError(f"bundle directory {root} does not exist: create it and copy the "
                              "model files in first")
        if not isinstance(manifest, Manifest):
            raise BundleError(f"manifest must be a Manifest, got {type(manifest).__name__}")
        with _bundle_lock(root) as journal:
            _check_model_files(root, manifest)
            for engine in manifest.engines:
                _verify_file(root, engine.file, engine.sha256, engine=True)
            _write_manifest(root, manifest, journal)
        return cls(root, manifest)

    @classmethod
    def create(cls, path: str | os.PathLike[str], manifest: Manifest) -> Bundle:
        """Make ``path`` a new bundle: like :meth:`write`, but refuses a directory that already
        holds a manifest (so a bundle is never overwritten by accident).

        The usual export sequence is: copy the ONNX files into ``path``; build :class:`FileRef`
        values with :func:`file_ref` (which hashes them); build the :class:`Manifest`; call
        ``Bundle.create(path, manifest)``.
        """
        if (Path(path) / MANIFEST_NAME).exists():
            raise BundleError(f"{Path(path) / MANIFEST_NAME} already exists: export into a new "
                              "directory, or use Bundle.write to replace that manifest")
        return cls.write(path, manifest)

    # --- reading ----------------------------------------------------------------------------

    @property
    def root(self) -> Path:
        return self._root

    @property
    def manifest(self) -> Manifest:
        return self._manifest

    def replaced_since_open(self) -> bool:
        """Whether the folder at :attr:`root` is no longer the one :meth:`open` read (a new bundle
        was published there, e.g. by ``bpedge export --force``): a file check that failed since
        may be the new bundle's file against this manifest, not a damaged file."""
        return self._opened_folder is not None and _folder_replaced(self._root,
                                                                    self._opened_folder)

    def verified_path(self, file: str) -> Path:
        """The path of a file the manifest lists, after checking (now) that it exists and its
        sha256 matches. Raises :class:`BundleError` naming the file and the fix.

        Use :meth:`read_verified` where the consumer takes bytes: it hashes exactly the bytes it
        returns, so nothing can change the file between the check and the use.
        """
        expected = self._expected_hash(file)
        return _verify_file(self._root, file, expected, engine=self._is_engine(file))

    def read_verified(self, file: str) -> bytes:
        """The bytes of a file the manifest lists, refused with :class:`BundleError` unless their
        sha256 is the manifest's and the file is in the bundle (a symbolic link out of it is
        refused). An ONNX model that keeps tensors in other files (ONNX external data) is
        refused too: a runtime would read those files unchecked."""
        expected = self._expected_hash(file)
        path = self._root / file
        try:
            data = read_regular_file(path, MAX_BUNDLE_FILE_BYTES, inside=self._root)
        except FileNotFoundError:
            raise BundleError(_missing_message(self._root, file, self._is_engine(file))) from None
        except OSError as exc:  # not a regular file, a link out of the bundle, unreadable
            raise BundleError(_unusable_message(self._root, file, exc,
                                                self._is_engine(file))) from None
        if sha256_bytes(data) != expected:
            raise BundleError(_mismatch_message(self._root, file, expected, sha256_bytes(data),
                                                self._is_engine(file)))
        if self._is_onnx(file):
            _check_self_contained(self._root, file, data)
        return data

    def file_problem(self, file: str) -> str | None:
        """Why a listed file cannot be used (missing, or hash mismatch), None if it can."""
        try:
            self.verified_path(file)
        except BundleError as exc:
            return str(exc)
        return None

    def onnx_path(self, model: str, precision: str = "fp32") -> Path:
        """Verified path of ``model``'s ONNX file for ``precision`` (``"fp32"``, ``"fp16"``,
        ``"int8"`` or ``"int8_symmetric"``):
        its sha256 matches and it refers to no external data (see :meth:`read_verified`)."""
        file = self.onnx_ref(model, precision).file
        self.read_verified(file)
        return self._root / file

    def onnx_ref(self, model: str, precision: str = "fp32") -> FileRef:
        """The manifest's record of ``model``'s ONNX file for ``precision``."""
        _check_model(model)
        if precision not in ONNX_PRECISIONS:
            raise ValueError(f"precision must be one of {ONNX_PRECISIONS}, got {precision!r}")
        ref = self._manifest.models[model].onnx_file(precision)
        if ref is None and precision == "int8_symmetric":
            raise BundleError(
                f"bundle {self._root} has no symmetric INT8 ONNX (TensorRT's INT8 form) for the "
                f"{model}: `bpedge export --int8` writes it when the model passes its INT8 gate "
                "(the manifest's parity.int8.tensorrt says why it did not); build fp16 engines "
                "instead"
            )
        if ref is None:
            raise BundleError(
                f"bundle {self._root} has no {precision} ONNX for the {model}: re-export it with "
                f"{precision} enabled" + (" (`bpedge export --int8`; a model that failed the INT8 "
                                          "gate is not shipped, see the manifest's parity.int8)"
                                          if precision == "int8" else "") + ", or use fp32"
            )
        return ref

    def find_engine(self, model: str, key: EngineKey) -> EngineEntry | None:
        """The engine entry for ``model`` that can serve ``key`` (same GPU, compute capability,
        SM count, TensorRT version and precision, max batch >= asked), None if there is none.

        The entry's file is not hashed here: use :meth:`read_verified` to load it.
        """
        _check_model(model)
        fitting = [e for e in self._manifest.engines if e.model == model and e.key.matches(key)]
        return min(fitting, key=lambda e: e.key.max_batch, default=None)

    def engine_mismatch_reason(self, model: str, key: EngineKey) -> str:
        """A sentence for the user: which engines exist for ``model`` and why none fits ``key``
        (or which one fits)."""
        found = self.find_engine(model, key)
        if found is not None:
            return f"{found.file} fits {key.describe()}"
        engines = [e for e in self._manifest.engines if e.model == model]
        fix = f"build one here with `bpedge build-engines {self._root}`"
        if not engines:
            return f"the bundle has no {model} engine: {fix}"
        reasons = "; ".join(f"{e.file}: {', '.join(e.key.mismatches(key))}" for e in engines)
        return (f"none of the {len(engines)} {model} engine(s) fits {key.describe()} "
                f"({reasons}): {fix}")

    # --- changing ---------------------------------------------------------------------------

    def add_engine(self, entry: EngineEntry) -> None:
        """List an engine file that is already in the bundle (replacing any entry for the same
        file); its sha256 is checked first. Rewrites ``manifest.json`` atomically."""
        if not isinstance(entry, EngineEntry):
            raise BundleError(f"entry must be an EngineEntry, got {type(entry).__name__}")
        _verify_file(self._root, entry.file, entry.sha256, engine=True)
        with self._locked() as (current, journal):
            self._commit(current.with_engine(entry), journal)

    def store_engine(
        self, model: str, key: EngineKey, plan: bytes, build_seconds: float,
        math: str | None = None,
    ) -> EngineEntry:
        """Write a TensorRT plan as ``key.file_name(model)`` and list it; returns its entry.
        ``math``: what the engine computes in (e.g. fp32 with TF32 disabled), for the manifest.

        Safe against a kill at any moment: an entry for the same file is first unlisted, then
        the plan is written atomically, then the new entry is listed. Only a file bpedge wrote
        is replaced (:func:`_check_engine_slot`); anything else at the name is refused.
        """
        _check_model(model)
        data = bytes(plan)
        if not data:
            raise BundleError(f"refusing to store an empty {model} engine")
        entry = EngineEntry(
            model=model,
            precision=key.precision,
            file=key.file_name(model),
            sha256=sha256_bytes(data),
            key=key,
            built=now_iso(),
            build_seconds=float(build_seconds),
            math=math,
        )
        with self._locked() as (current, journal):
            if any(ref.file == entry.file for ref in current.model_files()):
                raise BundleError(f"{entry.file!r} is a model file of this bundle, not an engine: "
                                  "rename it and re-export")
            there = _check_engine_slot(self._root, entry.file, current, journal)
            # Recorded before the entry is unlisted: killed from here until it is listed again,
            # the next writer still knows the file at the name (old bytes or new) as its own.
            journal.begin_replacing(entry.file, [*([there] if there else []), entry.sha256])
            if current.hash_of(entry.file) is not None:
                current = current.without_engine(entry.file)
                self._commit(current, journal)
            _write_file(self._root, entry.file, data, journal, replace=there is not None)
            self._commit(current.with_engine(entry), journal)
            journal.done_replacing(entry.file)
        return entry

    def check_engine_slot(self, model: str, key: EngineKey) -> None:
        """Raise :class:`BundleError` now, before an engine is built for ``key``, when
        :meth:`store_engine` would refuse to store it (a file of someone else's at its name, or
        a model file there): a build takes minutes, and its plan was thrown away at the end.
        :meth:`store_engine` checks again, for a file that appears meanwhile."""
        _check_model(model)
        file = key.file_name(model)
        with self._locked() as (current, journal):
            if any(ref.file == file for ref in current.model_files()):
                raise BundleError(f"{file!r} is a model file of this bundle, not an engine: "
                                  "rename it and re-export")
            _check_engine_slot(self._root, file, current, journal)

    # --- internals ----------------------------------------------------------------------------

    def _expected_hash(self, file: str) -> str:
        expected = self._manifest.hash_of(file)
        if expected is None:
            raise BundleError(f"{file!r} is not a file listed in {self._root / MANIFEST_NAME}")
        return expected

    def _is_onnx(self, file: str) -> bool:
        return any(ref.file == file for entry in self._manifest.models.values()
                   for ref in entry.onnx_refs())

    def _is_engine(self, file: str) -> bool:
        return any(e.file == file for e in self._manifest.engines)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[tuple[Manifest, Journal]]:
        """Hold the bundle's lock and yield the manifest as it is on disk now, so that two
        processes adding engines do not drop each other's entries, and the writers' journal."""
        with _bundle_lock(self._root) as journal:
            journal.remove_abandoned_temporaries(_is_written_under_lock)
            current = _read_manifest(self._root)
            if current.models != self._manifest.models:
                raise BundleError(
                    f"{self._root / MANIFEST_NAME} changed its models since it was opened (was "
                    "the bundle re-exported?): run the command again"
                )
            yield current, journal

    def _commit(self, manifest: Manifest, journal: Journal) -> None:
        _write_manifest(self._root, manifest, journal)
        self._manifest = manifest

    def __repr__(self) -> str:
        return f"Bundle({str(self._root)!r}, engines={len(self._manifest.engines)})"


# --- module helpers ------------------------------------------------------------------------------


def file_ref(root: str | os.PathLike[str], file: str) -> FileRef:
    """Hash ``root/file`` now and return its :class:`FileRef`, for building a manifest."""
    check_file_name("file", file)
    path = Path(root) / file
    if not path.is_file():
        raise BundleError(f"cannot reference {file!r}: {path} is not a file")
    return FileRef(file=file, sha256=sha256_file(path))


def _check_model(model: str) -> None:
    if model not in MODEL_NAMES:
        raise ValueError(f"model must be one of {MODEL_NAMES}, got {model!r}")


def _read_manifest(root: Path) -> Manifest:
    path = root / MANIFEST_NAME
    if not root.is_dir():
        if root.exists() or root.is_symlink():
            raise BundleError(f"{root} is not a directory: a bundle is the folder `bpedge export` "
                              f"wrote ({MANIFEST_NAME} and the models); give its path")
        raise BundleError(f"bundle directory {root} does not exist (or is not a directory)")
    try:
        text = read_regular_file(path, MAX_MANIFEST_BYTES, inside=root).decode("utf-8")
    except FileNotFoundError:
        raise BundleError(f"{root} is not a bundle: it has no {MANIFEST_NAME} (export one with "
                          "`bpedge export`)") from None
    except NotARegularFile as exc:
        raise BundleError(f"{exc}: a bundle's {MANIFEST_NAME} must be a regular file in the "
                          "bundle; copy the bundle again, or re-export it") from None
    except OSError as exc:  # unreadable (permissions, a link loop...)
        raise BundleError(f"{path} cannot be read ({exc.strerror or exc}): copy the bundle "
                          "again, or re-export it") from None
    except UnicodeDecodeError as exc:
        raise BundleError(f"{path} is not UTF-8 text ({exc.reason} at byte {exc.start}): copy the "
                          "bundle again, or re-export it") from None
    try:
        return Manifest.loads(text)
    except BundleError as exc:
        raise BundleError(f"{path}: {exc}") from None


def _folder_identity(root: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(root)
    except OSError:
        return None
    return st.st_dev, st.st_ino


#: How long a bundle folder that vanished is waited for: export publishes with two renames (the
#: old bundle out, the new one in), so for a moment there is no folder at all.
_REAPPEAR_WAIT_S, _REAPPEAR_POLL_S = 0.5, 0.01


def _folder_replaced(root: Path, before: tuple[int, int] | None) -> bool:
    """Whether another folder is at ``root`` now than ``before`` (its identity then); a folder
    that is gone is waited for briefly (the moment between export's two renames)."""
    if before is None:
        return False
    deadline = time.monotonic() + _REAPPEAR_WAIT_S
    while True:
        now = _folder_identity(root)
        if now is not None:
            return now != before
        if time.monotonic() >= deadline:
            return False
        time.sleep(_REAPPEAR_POLL_S)


def _write_manifest(root: Path, manifest: Manifest, journal: Journal) -> None:
    _write_file(root, MANIFEST_NAME, manifest.dumps().encode("utf-8"), journal, replace=True)


def _write_file(root: Path, name: str, data: bytes, journal: Journal, *, replace: bool) -> None:
    """Write ``root/name`` atomically through a temporary file the journal lists (so a kill
    leaves nothing the next writer cannot tell from a file of the user's). ``replace=False``:
    a file that took the name meanwhile is kept and the write refused."""
    fd, tmp = journal.new_temporary(name)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        # mkstemp makes files 0600; a bundle is built by one user and run by another (a device
        # service), so its files are world-readable.
        os.chmod(tmp, 0o644)
        try:
            publish(tmp, root / name, replace=replace)
        except FileExistsError:
            raise BundleError(f"{root / name} appeared while bpedge was writing it; it was left "
                              "as it is: move it away and run again") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(root)


def _is_written_under_lock(name: str) -> bool:
    # The files a lock holder writes through journaled temporaries.
    return name == MANIFEST_NAME or name.endswith(".engine")


def _check_engine_slot(root: Path, file: str, manifest: Manifest, journal: Journal) -> str | None:
    """The sha256 of the engine file bpedge wrote at ``root/file`` (None when the name is free),
    or :class:`BundleError` naming what is there when it is not that: a file whose bytes are
    not the ones the manifest lists for it (nor, after a writer was killed replacing it, the
    old or new ones its journal records), a folder or a link."""
    path = root / file
    if not os.path.lexists(path):
        return None
    known = {h for h in (manifest.hash_of(file),) if h is not None} | journal.replacing_hashes(file)
    digest = None
    if path.is_file() and not path.is_symlink():
        digest = sha256_file(path)
    if digest is None or digest not in known:
        raise BundleError(f"{path} is in the way of the engine bpedge would write there: it is "
                          f"not an engine bpedge wrote (not the one {MANIFEST_NAME} lists), so "
                          "it is never overwritten: move it out of the bundle and run again")
    return digest


def _check_model_files(root: Path, manifest: Manifest) -> Manifest:
    for ref in manifest.model_files():
        _verify_file(root, ref.file, ref.sha256, engine=False)
    return manifest


def _verify_file(root: Path, file: str, expected: str, *, engine: bool) -> Path:
    path = root / file
    try:
        actual = sha256_regular_file(path, MAX_BUNDLE_FILE_BYTES, inside=root)
    except FileNotFoundError:
        raise BundleError(_missing_message(root, file, engine)) from None
    except OSError as exc:  # not a regular file, a link out of the bundle, unreadable
        raise BundleError(_unusable_message(root, file, exc, engine)) from None
    if actual != expected:
        raise BundleError(_mismatch_message(root, file, expected, actual, engine))
    return path


def _fix(root: Path, engine: bool) -> str:
    if engine:
        return f"rebuild it with `bpedge build-engines {root} --force`"
    return "copy the whole bundle directory again, or re-export it"


def _missing_message(root: Path, file: str, engine: bool) -> str:
    return (f"bundle file {file!r} listed in {MANIFEST_NAME} is missing from {root}: "
            f"{_fix(root, engine)}")


def _unusable_message(root: Path, file: str, problem: OSError, engine: bool) -> str:
    what = problem if isinstance(problem, NotARegularFile) else (problem.strerror or problem)
    return (f"bundle file {file!r} listed in {MANIFEST_NAME} cannot be used ({what}), so it "
            f"will not be loaded; {_fix(root, engine)}")


def _check_self_contained(root: Path, file: str, data: bytes) -> None:
    """Refuse an ONNX model that keeps tensors in other files (ONNX external data): a runtime
    would read those paths, outside the hash check and possibly outside the bundle."""
    try:
        references = external_data_references(data)
    except NotOnnx:
        return  # not a well-formed model: the runtime's parser refuses it, naming the file
    if references:
        name, location = references[0]
        raise BundleError(
            f"bundle file {file!r} in {root} is an ONNX model whose tensor {name!r} keeps its "
            f"values in another file ({location!r}; {len(references)} tensor(s) in all): a "
            "bundle's models must hold their own weights, so it will not be loaded; re-export "
            "the bundle with `bpedge export` (which never writes external data)")


def _mismatch_message(root: Path, file: str, expected: str, actual: str, engine: bool) -> str:
    return (
        f"bundle file {file!r} in {root} does not match its sha256 in {MANIFEST_NAME} (expected "
        f"{expected[:12]}..., found {actual[:12]}...): it was changed or corrupted, so it will not "
        f"be loaded; {_fix(root, engine)}"
    )


@contextlib.contextmanager
def _bundle_lock(root: Path) -> Iterator[Journal]:
    """Hold the bundle's lock and yield the writers' journal kept in the lock file; a block
    that completes empties the journal, one that fails leaves it for the next writer."""
    # An advisory lock (POSIX); where fcntl does not exist the re-read in _locked still narrows
    # the window in which two writers could race.
    lock = root / _LOCK_NAME
    try:
        # Never through a symbolic link: the journal is written into this file.
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644)
    except OSError as exc:
        if exc.errno != errno.ELOOP:
            raise
        raise BundleError(f"{lock} is a symbolic link, so it cannot be the bundle's lock: move "
                          "it out of the bundle and run again") from None
    try:
        try:
            import fcntl
        except ImportError:
            pass  # not POSIX: no advisory lock (see above); the journal still guards the writes
        else:
            fcntl.flock(fd, fcntl.LOCK_EX)
        journal = Journal(root, fd, lock)
        yield journal
        journal.finish()
    finally:
        os.close(fd)  # closing releases the lock
