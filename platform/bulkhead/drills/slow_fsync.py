"""A disk whose fsync is slow (February 2012): a FUSE passthrough over one directory that delays fsync.

`python -m bulkhead.drills.slow_fsync DIRECTORY --delay S` mounts itself over DIRECTORY and serves what
was there (it opens the directory before mounting and works relative to that handle), every fsync taking
S seconds more. The boot-storm drill runs it inside a dyno host's mount namespace over the apps'
directory, so that each app process's boot, which syncs a marker to disk, is slow as on a sick volume.
Unmounting (or killing it) ends the fault. tmpfs would sync for free, hence FUSE.
"""

from __future__ import annotations

import argparse
import errno
import os
import stat
import time

import mfusepy as fuse

ATTRIBUTES = ("st_atime", "st_ctime", "st_gid", "st_mode", "st_mtime", "st_nlink", "st_size", "st_uid")


class SlowFsync(fuse.Operations):
    """Passthrough to the directory behind `root_fd`; fsync waits `delay` s first."""

    use_ns = True

    def __init__(self, root_fd: int, delay: float) -> None:
        self.root_fd, self.delay = root_fd, delay

    @staticmethod
    def _rel(path: str) -> str:
        return path.lstrip("/") or "."

    def getattr(self, path, fh=None):
        try:
            found = os.stat(self._rel(path), dir_fd=self.root_fd, follow_symlinks=False)
        except FileNotFoundError:
            raise fuse.FuseOSError(errno.ENOENT) from None
        attributes = {k: getattr(found, k) for k in ATTRIBUTES}
        attributes.update(st_atime=found.st_atime_ns, st_mtime=found.st_mtime_ns, st_ctime=found.st_ctime_ns)
        return attributes

    def readdir(self, path, fh):
        fd = os.open(self._rel(path), os.O_RDONLY | os.O_DIRECTORY, dir_fd=self.root_fd)
        try:
            return [".", "..", *os.listdir(fd)]
        finally:
            os.close(fd)

    def access(self, path, amode):
        return 0

    def open(self, path, flags):
        return os.open(self._rel(path), flags, dir_fd=self.root_fd)

    def create(self, path, mode, fi=None):
        fd = os.open(self._rel(path), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode, dir_fd=self.root_fd)
        uid, gid, _ = fuse.fuse_get_context()
        os.fchown(fd, uid, gid)  # the caller's, not this daemon's (root)
        return fd

    def mkdir(self, path, mode):
        os.mkdir(self._rel(path), mode, dir_fd=self.root_fd)
        uid, gid, _ = fuse.fuse_get_context()
        os.chown(self._rel(path), uid, gid, dir_fd=self.root_fd)

    def read(self, path, size, offset, fh):
        return os.pread(fh, size, offset)

    def write(self, path, data, offset, fh):
        return os.pwrite(fh, data, offset)

    def truncate(self, path, length, fh=None):
        if fh is not None:
            os.ftruncate(fh, length)
            return
        fd = os.open(self._rel(path), os.O_WRONLY, dir_fd=self.root_fd)
        try:
            os.ftruncate(fd, length)
        finally:
            os.close(fd)

    def unlink(self, path):
        os.unlink(self._rel(path), dir_fd=self.root_fd)

    def utimens(self, path, times=None):
        os.utime(self._rel(path), ns=times, dir_fd=self.root_fd) if times else None

    def chmod(self, path, mode):
        os.chmod(self._rel(path), stat.S_IMODE(mode), dir_fd=self.root_fd)

    def flush(self, path, fh):
        return 0

    def fsync(self, path, datasync, fh):
        time.sleep(self.delay)
        os.fsync(fh)
        return 0

    def release(self, path, fh):
        os.close(fh)
        return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("directory")
    parser.add_argument("--delay", type=float, default=12.0, help="seconds each fsync waits (default 12)")
    args = parser.parse_args()
    root_fd = os.open(args.directory, os.O_RDONLY | os.O_DIRECTORY)
    fuse.FUSE(SlowFsync(root_fd, args.delay), args.directory, foreground=True, allow_other=True,
              default_permissions=True, nonempty=True)  # fmt: skip


if __name__ == "__main__":
    main()
