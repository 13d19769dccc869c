"""Local paths and Cloud Storage URLs (`gs://bucket/...`) behind one small set of functions.

Every reader and writer of the library that takes a user's path goes through here, so that a TPU job
reads its data from a bucket and writes its output dir there (orbax writes checkpoints to the bucket
itself). Local paths keep plain `os` semantics; a URL goes to `etils.epath` (orbax's path type) with
`gcsfs` as its gs:// backend.

Guarantees on a bucket, which has neither rename nor exclusive create:
  - a single object is written whole or not at all (a JSON file is one object);
  - `create_new` is create-if-absent (`ifGenerationMatch=0`), the bucket's O_EXCL (a run dir's lock);
  - `replace_dir` writes the folder locally, then uploads it under a `.writing` marker object that is
    removed last: `local_copy` (every reader) refuses a folder that holds the marker, so a reader gets
    the old folder, the new one, or a one-line refusal, never half of one.
  - readers that need local files (safetensors, tokenizers, onnxruntime, LiteRT, ArrayRecord) get a
    copy in a temporary folder (`local_copy`), removed when the process exits.

Credentials: `STORAGE_EMULATOR_HOST` (an emulator such as fake-gcs-server, anonymous), else Google's
application default credentials (`gcloud auth application-default login`,
`GOOGLE_APPLICATION_CREDENTIALS`, or a GCP VM's metadata server). Without any, the first gs:// access
fails at once with one line saying so (gcsfs alone would retry for about 50 s).
"""

from __future__ import annotations

import atexit
import builtins
import contextlib
import json
import os
import shutil
import socket
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from typing import IO, Any

WRITING = ".writing"  # marker object of a folder being uploaded (`replace_dir`)
TMP_PREFIX = ".tmp-"  # local folders and files being written beside their final name
_checked: set[str] = set()


class StorageError(OSError):
    """A URL that cannot be reached (no credentials) or a folder caught half-written."""


def is_url(path: str | os.PathLike) -> bool:
    """`scheme://...` (gs://); everything else is a local path."""
    return "://" in os.fspath(path)


def join(base: str | os.PathLike, *parts: str) -> str:
    """`os.path.join` for a local path or a URL."""
    base = os.fspath(base)
    if is_url(base):
        return "/".join([base.rstrip("/"), *(p.strip("/") for p in parts if p)])
    return os.path.join(base, *parts)


def abspath(path: str | os.PathLike) -> str:
    """The absolute local path, or the URL as it is (never `./gs:/...`)."""
    path = os.fspath(path)
    return path.rstrip("/") if is_url(path) else os.path.abspath(path)


def basename(path: str | os.PathLike) -> str:
    return os.path.basename(os.fspath(path).rstrip("/"))


def dirname(path: str | os.PathLike) -> str:
    path = os.fspath(path)
    return path.rstrip("/").rsplit("/", 1)[0] if is_url(path) else os.path.dirname(os.path.abspath(path))


# ---------------------------------------------------------------------------------------------------
# Access: the credentials check, and the fs behind a URL
# ---------------------------------------------------------------------------------------------------
def _metadata_server_answers(timeout: float = 1.0) -> bool:
    """A GCP VM's (a TPU VM's) metadata server, which serves its credentials, answers."""
    host = os.environ.get("GCE_METADATA_HOST") or os.environ.get("GCE_METADATA_IP") or "169.254.169.254"
    req = urllib.request.Request(f"http://{host}/computeMetadata/v1/", headers={"Metadata-Flavor": "Google"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.headers.get("Metadata-Flavor") == "Google"
    except OSError:
        return False


def check_access(url: str) -> None:
    """Raises `StorageError` (one line) when a gs:// URL cannot be reached: no emulator
    (`STORAGE_EMULATOR_HOST`) and no Google credentials. Checked once per process and scheme."""
    scheme = url.split("://", 1)[0]
    if scheme in _checked:
        return
    if scheme != "gs":
        raise StorageError(f"{url}: only local paths and gs:// URLs are supported")
    emulator = os.environ.get("STORAGE_EMULATOR_HOST", "")
    if emulator:
        # an emulator has no storage-control gRPC API: gcsfs's bucket-type lookup would wait 60 s per call
        os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")
        # tensorstore (orbax's array store) reads its own variable
        url_of = emulator if "://" in emulator else f"http://{emulator}"
        os.environ.setdefault("TENSORSTORE_GCS_HTTP_URL", url_of)
    else:
        adc = os.path.join(
            os.environ.get("CLOUDSDK_CONFIG") or os.path.expanduser("~/.config/gcloud"),
            "application_default_credentials.json",
        )
        if not (
            os.environ.get("GOOGLE_APPLICATION_CREDENTIALS")
            or os.path.isfile(adc)
            or _metadata_server_answers()
        ):
            raise StorageError(
                f"{url}: no Google Cloud credentials: run `gcloud auth application-default login`, set "
                "GOOGLE_APPLICATION_CREDENTIALS, run on a GCP/TPU VM, or set STORAGE_EMULATOR_HOST to an emulator"
            )
    _checked.add(scheme)


def _fs(url: str) -> Any:
    """The fsspec filesystem (gcsfs) serving `url`, after `check_access`."""
    check_access(url)
    import fsspec

    # no listings cache: other processes (the hosts of a pod, a rerun, a reader) write the same bucket
    return fsspec.filesystem(url.split("://", 1)[0], use_listings_cache=False)


def path(p: str | os.PathLike) -> Any:
    """An `etils.epath.Path` (what orbax takes) for a local path or a URL."""
    from etils import epath

    if is_url(p):
        check_access(os.fspath(p))
    return epath.Path(p)


# ---------------------------------------------------------------------------------------------------
# File operations
# ---------------------------------------------------------------------------------------------------
def exists(p: str | os.PathLike) -> bool:
    return _fs(p).exists(p) if is_url(p) else os.path.exists(p)


def isdir(p: str | os.PathLike) -> bool:
    return _fs(p).isdir(p) if is_url(p) else os.path.isdir(p)


def isfile(p: str | os.PathLike) -> bool:
    return _fs(p).isfile(p) if is_url(p) else os.path.isfile(p)


def getsize(p: str | os.PathLike) -> int:
    return int(_fs(p).size(p)) if is_url(p) else os.path.getsize(p)


def listdir(p: str | os.PathLike) -> list[str]:
    """Names in a folder (a URL's "folder": the names under its prefix)."""
    if not is_url(p):
        return os.listdir(p)
    try:
        return sorted({basename(x) for x in _fs(p).ls(p, detail=False)} - {""})
    except FileNotFoundError:
        return []


def files_under(p: str | os.PathLike) -> list[str]:
    """Relative paths of every file below a folder (sorted)."""
    p = os.fspath(p)
    if is_url(p):
        base = p.rstrip("/").split("://", 1)[1] + "/"
        return sorted(f[len(base) :] for f in _fs(p).find(p) if f.startswith(base))
    return sorted(os.path.relpath(os.path.join(root, f), p) for root, _, files in os.walk(p) for f in files)


def makedirs(p: str | os.PathLike) -> None:
    """A local folder (a bucket has no folders: nothing to do for a URL)."""
    if not is_url(p):
        os.makedirs(p, exist_ok=True)


def open(
    p: str | os.PathLike, mode: str = "r", encoding: str | None = None, newline: str | None = None
) -> IO:  # noqa: A001
    """`open` for a local path or a URL (a URL opened for writing becomes one object when closed)."""
    kw = {} if "b" in mode else {"encoding": encoding or "utf-8", "newline": newline}
    return _fs(p).open(p, mode, **kw) if is_url(p) else builtins.open(p, mode, **kw)


def read_text(p: str | os.PathLike) -> str:
    with open(p, encoding="utf-8") as f:
        return f.read()


def write_text(p: str | os.PathLike, text: str) -> None:
    """Writes `text` whole or not at all: one object on a bucket; locally a temporary file renamed over."""
    p = os.fspath(p)
    if is_url(p):
        _fs(p).pipe_file(p, text.encode("utf-8"))
        return
    parent, name = os.path.split(p)
    tmp = os.path.join(parent, f"{TMP_PREFIX}{name}-{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, p)


def write_json(p: str | os.PathLike, obj: Any, **dump: Any) -> None:
    """`obj` as indented JSON through `write_text` (never half a file)."""
    write_text(p, json.dumps(obj, indent=dump.pop("indent", 2), **dump) + "\n")


def create_new(p: str | os.PathLike, text: str) -> bool:
    """Creates `p` holding `text` only if it does not exist (O_EXCL; on a bucket `ifGenerationMatch=0`);
    False when it exists."""
    p = os.fspath(p)
    try:
        if is_url(p):
            _fs(p).pipe_file(p, text.encode("utf-8"), mode="create")
            return True
        fd = os.open(p, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    return True


def remove(p: str | os.PathLike) -> None:
    """Removes a file (absent: nothing to do)."""
    with contextlib.suppress(FileNotFoundError):
        _fs(p).rm_file(p) if is_url(p) else os.remove(p)


def rmtree(p: str | os.PathLike) -> None:
    """Removes a folder and everything below it (absent: nothing to do)."""
    if not is_url(p):
        if os.path.islink(p) or os.path.isfile(p):
            os.remove(p)
        else:
            shutil.rmtree(p, ignore_errors=True)
        return
    with contextlib.suppress(FileNotFoundError):
        if _fs(p).find(p):
            _fs(p).rm(p, recursive=True)


def rename_dir(src: str, dst: str) -> None:
    """Renames a folder; on a bucket every object is copied, then the source removed (a crash between
    leaves both: nothing is lost)."""
    if not is_url(src):
        os.rename(src, dst)
        return
    fs = _fs(src)
    for rel in files_under(src):
        fs.copy(join(src, rel), join(dst, rel))
    rmtree(src)


# ---------------------------------------------------------------------------------------------------
# Folders: local copies for readers, whole-folder writes for writers
# ---------------------------------------------------------------------------------------------------
_copies: dict[str, str] = {}  # URL -> its local copy (dropped when this process writes the URL)


@atexit.register
def _remove_copies() -> None:
    for local in _copies.values():
        shutil.rmtree(os.path.dirname(local), ignore_errors=True)


def _forget(url: str) -> None:
    for u in [u for u in _copies if u == url or u.startswith(url.rstrip("/") + "/")]:
        shutil.rmtree(os.path.dirname(_copies.pop(u)), ignore_errors=True)


def local_copy(p: str | os.PathLike) -> str:
    """A local path holding what `p` holds: `p` itself when local; for a URL a copy of the file or
    folder (below it) in a temporary folder removed at exit, made once per process. A folder being
    written (`replace_dir`) is refused."""
    p = os.fspath(p)
    if not is_url(p):
        return p
    p = p.rstrip("/")
    if p in _copies:
        return _copies[p]
    fs = _fs(p)
    if not fs.exists(p):
        raise FileNotFoundError(f"{p}: no such file or folder")
    if fs.exists(join(p, WRITING)):
        raise StorageError(
            f"{p} is being written, or its writer stopped mid-upload: rerun the job that writes it"
        )
    target = os.path.join(tempfile.mkdtemp(prefix="mobilebert-jax-copy-"), basename(p) or "root")
    if fs.isfile(p):
        fs.get_file(p, target)
    else:
        os.makedirs(target)
        for rel in files_under(p):
            os.makedirs(os.path.dirname(os.path.join(target, rel)), exist_ok=True)
            fs.get_file(join(p, rel), os.path.join(target, rel))
    _copies[p] = target
    return target


def upload_dir(local: str, url: str) -> None:
    """Uploads a local folder's files to `url/` (each file one object)."""
    fs = _fs(url)
    for rel in files_under(local):
        fs.put_file(os.path.join(local, rel), join(url, rel))


def replace_dir(p: str | os.PathLike, write: Callable[[str], None]) -> None:
    """`write(folder)` into a temporary folder, then put in place at `p`: a reader sees the old folder or
    the new one (a bucket: or a refusal while the `.writing` marker is there), never half of one. A
    `write` that fails leaves `p` as it was."""
    p = os.fspath(p)
    if is_url(p):
        with tempfile.TemporaryDirectory(prefix="mobilebert-jax-out-") as tmp:
            staged = os.path.join(tmp, basename(p))
            write(staged)
            _forget(p)
            marker = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "time": time.time()})
            write_text(join(p, WRITING), marker)
            new = set(files_under(staged))
            for rel in set(files_under(p)) - new - {WRITING}:
                remove(join(p, rel))
            upload_dir(staged, p)
            remove(join(p, WRITING))
        return
    parent, name = os.path.split(os.path.abspath(p))
    tmp, old = (os.path.join(parent, f"{TMP_PREFIX}{name}-{tag}-{os.getpid()}") for tag in ("new", "old"))
    for q in (tmp, old):
        shutil.rmtree(q, ignore_errors=True)
    try:
        write(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if os.path.lexists(p):
        os.rename(p, old)
    os.rename(tmp, p)
    shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def staged_file(p: str | os.PathLike) -> Iterator[str]:
    """A local path to write a file to; for a URL uploaded to `p` when the block ends without error."""
    p = os.fspath(p)
    if not is_url(p):
        yield p
        return
    with tempfile.TemporaryDirectory(prefix="mobilebert-jax-out-") as tmp:
        local = os.path.join(tmp, basename(p))
        yield local
        _fs(p).put_file(local, p)
