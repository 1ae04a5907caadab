"""Parallel WAL archiving: ship a server's ready segments ahead of PostgreSQL's one-at-a-time archive_command.

PostgreSQL calls `archive_command` once per segment, in order, and waits for each. One barman-cloud
process per call (an interpreter and boto3 to start, then gzip) shipped about 24 MiB/s here, a quarter
of what a bulk load writes. So the work is split in two:

- The **shipper**, a Python process holding `shipper.lock` in the server's ledger, watches
  `pg_wal/archive_status/*.ready` and ships up to `max_parallel` segments at once with the barman-cloud
  library (its naming, its compression, its S3 interface). After S3 has the object (the PUT returned, and
  a HEAD then shows it) it writes the segment's **marker**: a small JSON file with the object's key, ETag
  and size. Nothing is marked before S3 has it, so a shipper killed mid-batch loses nothing: what it had not
  marked is shipped again. It stays while there is work and `linger` seconds after, then exits.
- `archive_command` is a few lines of shell (`settings.archive_command`): the segment's marker exists, so
  it returns at once; a shipper is running, so it waits for the marker (or its failure); no shipper, so it
  runs `bulkhead db archive-wal`, which checks an old marker against S3, starts a shipper and waits.

Two archivers may ship the same segment (a failover, when both nodes see it, or a shipper and a restarted
one). Uploads never overwrite: the PUT is conditional (If-None-Match), and a segment already in the archive
counts as shipped only when its content there is the same as on disk.

The ledger lives in the data directory (`bulkhead_archived/<server>-<hash of the archive>/`), where
archive_command runs, so a restored or moved server never trusts markers of another archive.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import signal
import struct
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass
from pathlib import Path

from barman import xlog

from bulkhead.backup.settings import (
    DEFAULT_MAX_PARALLEL,
    WAL_COMPRESSION,
    WAL_COMPRESSION_LEVEL,
    Archive,
    BackupError,
    tool_environment,
)
from bulkhead.backup.store import decompress_wal

log = logging.getLogger("bulkhead.db.archive")

LEDGER_ROOT = "bulkhead_archived"
LOCK_NAME = "shipper.lock"
STATUS_DIR = Path("pg_wal") / "archive_status"
# Seconds a shipper with nothing to do stays for the next segment: at least archive_timeout, so that a
# server archiving steadily keeps one shipper instead of starting an interpreter for every segment.
DEFAULT_LINGER = 90
# How often the shipper looks for new .ready files; a segment waits at most this long to start shipping.
POLL_SECONDS = 0.05
# After a failed upload, a segment is tried again after this long, doubling up to the cap.
RETRY_SECONDS, RETRY_CAP_SECONDS = 1.0, 8.0
# Shippers one archive_command call starts before it gives up (each one that dies is replaced).
SHIPPER_STARTS = 3
# The WAL page header (access/xlog_internal.h): the long header opening each segment carries the segment
# size; its page address is where the segment starts in the WAL stream.
_PAGE_HEADER = struct.Struct("=HHIQI")  # xlp_magic, xlp_info, xlp_tli, xlp_pageaddr, xlp_rem_len
_LONG_HEADER_AT = 24  # MAXALIGN(sizeof(XLogPageHeaderData))
_LONG_HEADER = struct.Struct("=QII")  # xlp_sysid, xlp_seg_size, xlp_xlog_blcksz
_XLP_LONG_HEADER = 0x0002


class ArchiveConflict(BackupError):
    """The archive already holds this segment with other content: two servers wrote the same WAL name."""


def ledger_name(archive: Archive) -> str:
    """The ledger's directory for one archive: readable, and different for every bucket, prefix and server."""
    digest = hashlib.sha256(f"{archive.bucket}\n{archive.prefix}".encode()).hexdigest()[:10]
    return f"{archive.server}-{digest}"


def segment_problem(path: Path) -> str | None:
    """Why the file at `path` is not a whole WAL segment, or None. Only plain segment names are checked
    (history, backup label and .partial files have no fixed size): the file must be as long as the segment
    size its own first page header states, and that page must say it starts where the name says."""
    name = path.name
    if not xlog.is_wal_file(name):
        return None
    try:
        with path.open("rb") as file:
            head = file.read(_LONG_HEADER_AT + _LONG_HEADER.size)
            size = os.fstat(file.fileno()).st_size
    except FileNotFoundError:
        return f"pg_wal/{name} does not exist"
    if len(head) < _LONG_HEADER_AT + _LONG_HEADER.size:
        return f"pg_wal/{name} is {size} bytes, too short to be a WAL segment: it is partial"
    _, info, _, page_address, _ = _PAGE_HEADER.unpack_from(head)
    _, segment_size, _ = _LONG_HEADER.unpack_from(head, _LONG_HEADER_AT)
    if not info & _XLP_LONG_HEADER or segment_size == 0 or segment_size & (segment_size - 1):
        return f"pg_wal/{name} does not begin with a WAL segment header: it is corrupt"
    if size != segment_size:
        return f"pg_wal/{name} is {size} bytes but its header says segments are {segment_size}: it is partial"
    _, log_id, segment = xlog.decode_segment_name(name)
    start = (log_id * (2**32 // segment_size) + segment) * segment_size
    if page_address != start:
        return f"pg_wal/{name} holds WAL from {page_address:X}, not {start:X}: it is a recycled or corrupt file"
    return None


@dataclass(frozen=True)
class Shipped:
    """A segment that S3 has: what the marker records."""

    name: str
    key: str
    etag: str
    size: int
    source_bytes: int
    seconds: float


class Ledger:
    """One server's markers for one archive, and the shipper's lock, under PGDATA/bulkhead_archived."""

    def __init__(self, data_dir: Path, archive: Archive) -> None:
        self.data_dir = data_dir
        self.directory = data_dir / LEDGER_ROOT / ledger_name(archive)

    def ensure(self) -> None:
        """Make the ledger's directories inside the data directory, never the data directory itself: a shipper
        still running when the volume is lost must not leave a non-empty PGDATA behind, which Patroni would
        then never rebuild."""
        try:
            (self.data_dir / LEDGER_ROOT).mkdir(exist_ok=True)
            self.directory.mkdir(exist_ok=True)
        except FileNotFoundError:
            raise BackupError(f"the data directory {self.data_dir} is gone; nothing there to archive") from None

    @property
    def lock_path(self) -> Path:
        return self.directory / LOCK_NAME

    def marker(self, name: str) -> dict | None:
        try:
            return json.loads((self.directory / name).read_text())
        except (FileNotFoundError, ValueError):
            return None

    def record(self, shipped: Shipped) -> None:
        """Write the marker durably (temporary file, fsync, rename, fsync of the directory): the shell's
        `test -f` must never see a marker whose content is not on disk."""
        self._write(shipped.name, json.dumps(asdict(shipped)))
        with contextlib.suppress(FileNotFoundError):
            (self.directory / f"{shipped.name}.failed").unlink()

    def fail(self, name: str, message: str) -> None:
        self._write(f"{name}.failed", message + "\n")

    def failure(self, name: str) -> str | None:
        try:
            return (self.directory / f"{name}.failed").read_text().strip()
        except FileNotFoundError:
            return None

    def clear(self, name: str) -> None:
        for stale in (self.directory / name, self.directory / f"{name}.failed"):
            with contextlib.suppress(FileNotFoundError):
                stale.unlink()

    def _write(self, name: str, text: str) -> None:
        temporary = self.directory / f".{name}.{os.getpid()}.{threading.get_ident()}"
        with temporary.open("w") as file:
            file.write(text)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, self.directory / name)
        directory = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)

    def prune(self) -> int:
        """Drop the markers PostgreSQL will not ask about again: the segment is archived (.done) or gone."""
        status = self.data_dir / STATUS_DIR
        dropped = 0
        for entry in os.scandir(self.directory):
            name = entry.name.removesuffix(".failed")
            if name.startswith(".") or name == LOCK_NAME:
                continue
            if (status / f"{name}.ready").exists():
                continue
            if (status / f"{name}.done").exists() or not (self.data_dir / "pg_wal" / name).exists():
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.path)
                    dropped += 1
        return dropped


def ready_segments(data_dir: Path, on_junk: Callable[[str], None] | None = None) -> list[str]:
    """The WAL files PostgreSQL has marked ready, in the order it archives them: timeline history files
    first, then oldest first. A .ready entry that names no WAL file is passed to `on_junk` and skipped."""
    names = []
    try:
        entries = os.listdir(data_dir / STATUS_DIR)
    except FileNotFoundError:
        return []
    for entry in entries:
        if not entry.endswith(".ready"):
            continue
        name = entry.removesuffix(".ready")
        if xlog.is_any_xlog_file(name):
            names.append(name)
        elif on_junk:
            on_junk(entry)
    return sorted(names, key=lambda n: (not xlog.is_history_file(n), n))


class Uploader:
    """Ships one WAL file with the barman-cloud library: its object names, its compression, its S3 interface
    (one per thread: a boto3 session is not shared between threads)."""

    def __init__(self, archive: Archive, compression: str) -> None:
        from barman.clients import cloud_walarchive
        from barman.cloud_providers import get_cloud_interface

        level = ["--compression-level", WAL_COMPRESSION_LEVEL] if compression == WAL_COMPRESSION else []
        arguments = [*archive.tool_args(), f"--{compression}", *level, archive.url, archive.server]
        self.config = cloud_walarchive.parse_arguments(arguments)
        self.cloud = get_cloud_interface(self.config)
        self.barman = cloud_walarchive.CloudWalUploader(
            self.cloud, archive.server, self.config.compression, self.config.compression_level
        )

    def key(self, path: Path) -> str:
        name = self.barman.retrieve_wal_name(str(path))
        return os.path.join(self.cloud.path, self.barman.server_name, "wals", xlog.hash_dir(str(path)), name)

    def head(self, key: str) -> dict | None:
        from botocore.exceptions import ClientError

        try:
            return self.cloud.s3.meta.client.head_object(Bucket=self.cloud.bucket_name, Key=key)
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return None
            raise

    def confirms(self, marker: dict) -> bool:
        """S3 still holds the object a marker records: same key, ETag and size."""
        found = self.head(marker["key"])
        return bool(found) and found["ETag"] == marker["etag"] and found["ContentLength"] == marker["size"]

    def ship(self, path: Path) -> Shipped:
        """Upload `path` unless the archive already has it with the same content; return what S3 holds."""
        from barman.cloud_providers import ObjectKeyAlreadyExists

        started = time.monotonic()
        problem = segment_problem(path)
        if problem:
            raise BackupError(f"{problem}; it was not archived (see the server's log and disk)")
        key = self.key(path)
        source_bytes = path.stat().st_size
        body = self.barman.retrieve_file_obj(str(path))
        tags = self.config.history_tags if xlog.is_history_file(path.name) else None
        try:
            with contextlib.closing(body):
                self.cloud.upload_fileobj(body, key, override_tags=tags, fail_if_exists=True)
        except ObjectKeyAlreadyExists:
            self._same_as_archived(path, key)
        found = self.head(key)
        if found is None:
            raise BackupError(f"S3 accepted {key} but does not show it; it will be shipped again")
        return Shipped(path.name, key, found["ETag"], found["ContentLength"], source_bytes,
                       round(time.monotonic() - started, 3))  # fmt: skip

    def _same_as_archived(self, path: Path, key: str) -> None:
        """Another archiver shipped this name first: fine if it is the same WAL, a conflict otherwise."""
        with self.cloud.remote_open(key) as stream:
            archived = stream.read()
        if decompress_wal(key, archived) != path.read_bytes():
            raise ArchiveConflict(
                f"{key} is already in the archive with other content: two servers wrote WAL {path.name}; "
                "find which is on the wrong timeline before archiving resumes"
            )
        log.info("segment already archived by another archiver", extra={"wal": path.name, "key": key})


class Shipper:
    """Ships every ready segment of one server, `max_parallel` at a time, until idle for `linger` seconds."""

    def __init__(self, data_dir: Path, archive: Archive, compression: str, max_parallel: int, linger: float) -> None:
        self.data_dir = data_dir
        self.archive = archive
        self.compression = compression
        self.max_parallel = max_parallel
        self.linger = linger
        self.ledger = Ledger(data_dir, archive)
        self._local = threading.local()
        self._retry_at: dict[str, tuple[float, float]] = {}
        self._junk_seen: set[str] = set()
        self._stopping = False

    def _uploader(self) -> Uploader:
        if not hasattr(self._local, "uploader"):
            self._local.uploader = Uploader(self.archive, self.compression)
        return self._local.uploader

    def _ship(self, name: str) -> Shipped:
        return self._uploader().ship(self.data_dir / "pg_wal" / name)

    def _junk(self, entry: str) -> None:
        if entry not in self._junk_seen:
            self._junk_seen.add(entry)
            log.warning("a .ready entry names no WAL file; skipped", extra={"entry": f"{STATUS_DIR}/{entry}"})

    def run(self) -> int:
        """Ship until nothing has moved for `linger` seconds (no new segment, no upload done); return how many
        segments were shipped. A shipper that only fails (S3 down) exits too: PostgreSQL's next retry starts
        another, so none is left behind by a server that went away."""
        signal.signal(signal.SIGTERM, self._stop)
        shipped = 0
        progress = time.monotonic()
        last_prune = 0.0
        seen: set[str] = set()
        in_flight: dict[Future, str] = {}
        with ThreadPoolExecutor(self.max_parallel, thread_name_prefix="ship") as pool:
            while True:
                if not (self.data_dir / "pg_wal").is_dir():
                    log.info("the data directory is gone; the shipper stops", extra={"data_dir": str(self.data_dir)})
                    break
                now = time.monotonic()
                busy = set(in_flight.values())
                ready = ready_segments(self.data_dir, self._junk)
                if not seen.issuperset(ready):
                    progress = now
                    seen = set(ready)
                for name in ready:
                    if len(in_flight) >= self.max_parallel or self._stopping:
                        break
                    if name in busy or self.ledger.marker(name) or self._retry_at.get(name, (0, 0))[0] > now:
                        continue
                    in_flight[pool.submit(self._ship, name)] = name
                if in_flight:
                    done, _ = wait(in_flight, timeout=POLL_SECONDS, return_when=FIRST_COMPLETED)
                    for future in done:
                        if self._settle(in_flight.pop(future), future):
                            shipped += 1
                            progress = time.monotonic()
                    continue
                if self._stopping or time.monotonic() - progress > self.linger:
                    break
                if time.monotonic() - last_prune > 10:
                    self.ledger.prune()
                    last_prune = time.monotonic()
                time.sleep(POLL_SECONDS)
        return shipped

    def _settle(self, name: str, future: Future) -> int:
        error = future.exception()
        if error is None:
            result: Shipped = future.result()
            self.ledger.record(result)
            self._retry_at.pop(name, None)
            log.info("segment archived", extra={"wal": name, "bytes": result.source_bytes,
                                                "stored_bytes": result.size, "seconds": result.seconds})  # fmt: skip
            return 1
        message = str(error) if isinstance(error, BackupError) else f"upload of {name} failed: {error}"
        _, delay = self._retry_at.get(name, (0.0, RETRY_SECONDS / 2))
        delay = min(delay * 2, RETRY_CAP_SECONDS)
        self._retry_at[name] = (time.monotonic() + delay, delay)
        self.ledger.fail(name, message)
        log.error("segment not archived; will retry", extra={"wal": name, "error": message, "in_seconds": delay})
        return 0

    def _stop(self, *_: object) -> None:
        self._stopping = True


def _lock(ledger: Ledger, timeout: float) -> int | None:
    """Take the shipper's lock; None if another shipper holds it. A shell's brief shared lock (its check
    whether a shipper runs) is waited out."""
    ledger.ensure()
    descriptor = os.open(ledger.lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    deadline = time.monotonic() + timeout
    while True:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.ftruncate(descriptor, 0)
            os.write(descriptor, f"{os.getpid()}\n".encode())
            return descriptor
        except OSError as error:
            if error.errno not in (errno.EAGAIN, errno.EACCES) or time.monotonic() > deadline:
                os.close(descriptor)
                return None
            time.sleep(0.01)


def shipper_running(ledger: Ledger) -> bool:
    """A shipper holds the lock (the same test the shell makes with flock -s -n)."""
    try:
        descriptor = os.open(ledger.lock_path, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(descriptor, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except OSError:
        return True
    finally:
        os.close(descriptor)


def shipper_pid(ledger: Ledger) -> int | None:
    """The running shipper's process id (it writes it into its lock file), or None when none runs."""
    if not shipper_running(ledger):
        return None
    try:
        return int(ledger.lock_path.read_text().split()[0])
    except (FileNotFoundError, ValueError, IndexError):
        return None


def start_shipper(data_dir: Path, archive: Archive, compression: str, max_parallel: int, linger: float) -> bool:
    """Fork a detached shipper (its own session: PostgreSQL's signals to the archiver do not reach it).
    Returns True when one is running afterwards, started here or already there."""
    ledger = Ledger(data_dir, archive)
    ledger.ensure()
    reader, writer = os.pipe()
    pid = os.fork()
    if pid == 0:  # the shipper
        os.close(reader)
        os.setsid()
        code = 0
        try:
            descriptor = _lock(ledger, timeout=2.0)
            os.write(writer, b"L" if descriptor is not None else b"B")
            os.close(writer)
            if descriptor is not None:
                devnull = os.open(os.devnull, os.O_RDONLY)
                os.dup2(devnull, 0)
                shipped = Shipper(data_dir, archive, compression, max_parallel, linger).run()
                log.info("shipper idle; exiting", extra={"shipped": shipped, "data_dir": str(data_dir)})
        except BaseException:  # a forked child must never return into its parent's code
            log.exception("the WAL shipper failed")
            code = 1
        finally:
            sys.stderr.flush()
            os._exit(code)
    os.close(writer)
    answer = b""
    with contextlib.suppress(OSError):
        answer = os.read(reader, 1)
    os.close(reader)
    return answer in (b"L", b"B") and (answer == b"L" or shipper_running(ledger))


def archive_wal(wal_path: str, archive: Archive, compression: str, max_parallel: int = DEFAULT_MAX_PARALLEL,
                linger: float = DEFAULT_LINGER, timeout: float = 300) -> Shipped | dict:  # fmt: skip
    """What archive_command does when the shell could not answer: return once S3 has `wal_path`'s WAL file,
    or raise BackupError (PostgreSQL then tries again). Runs in the data directory, as archive_command does."""
    os.environ.update(tool_environment(archive))
    data_dir = Path.cwd()
    name = Path(wal_path).name
    if not xlog.is_any_xlog_file(name):
        raise BackupError(f"{wal_path} is not a WAL file name; archive_command passes %p")
    ledger = Ledger(data_dir, archive)
    ledger.ensure()
    marker = ledger.marker(name)
    if marker:
        if Uploader(archive, compression).confirms(marker):
            return marker
        log.warning("a marker's object is not in S3 as recorded; shipping again", extra={"wal": name})
    ledger.clear(name)
    if not (data_dir / STATUS_DIR / f"{name}.ready").exists():
        # Not PostgreSQL asking (it only archives what it marked ready): ship this one file here and now.
        shipped = Uploader(archive, compression).ship(data_dir / wal_path)
        ledger.record(shipped)
        return shipped
    deadline = time.monotonic() + timeout
    starts = 0
    while time.monotonic() < deadline:
        marker = ledger.marker(name)
        if marker:
            return marker
        failure = ledger.failure(name)
        if failure:
            raise BackupError(failure)
        if not shipper_running(ledger):
            # None yet, or one ran and stopped without shipping this segment (killed): start one.
            if starts == SHIPPER_STARTS:
                raise BackupError(f"the WAL shipper stopped {starts} times without archiving {name}; see its lines "
                                  "in the server's log")  # fmt: skip
            if not start_shipper(data_dir, archive, compression, max_parallel, linger):
                raise BackupError(f"could not start the WAL shipper in {data_dir}; see the server's log")
            starts += 1
            continue
        time.sleep(POLL_SECONDS)
    raise BackupError(f"{name} was not archived within {timeout:.0f} s; see the shipper's lines in the server log")
