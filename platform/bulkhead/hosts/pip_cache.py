"""The fabric's PyPI cache: proxpi, with one download per file however many hosts ask for it at once.

proxpi 1.3.1 registers a file's download thread before starting it. A second request for the same file in
that moment joins the unstarted thread, gets `RuntimeError: cannot join thread before it is started`, gives
up, and is answered with a redirect to PyPI itself, which a sandbox cannot reach: pip fails, and so does the
host's first boot. Two requests can also both find the file missing and download it into the same partial
file. Hosts that boot together through a cold cache ask for the same wheels within milliseconds, so that is
how one first boot in five failed on a fresh machine. Here, finding a file missing and starting its download
is one step under a lock; everything else is proxpi's own.

Run as `python -m bulkhead.hosts.pip_cache --port N` with proxpi's PROXPI_* settings in the environment.
"""

from __future__ import annotations

import argparse
import threading

from proxpi import _cache


class OneDownloadPerFile(_cache._FileCache):
    """proxpi's file cache, whose check for a download and start of one cannot interleave."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._starting = threading.Lock()

    def get(self, url: str) -> str:
        if self.max_size == 0:
            return url
        key = self._get_key(url)
        started = False
        with self._starting:
            if key not in self._files:
                self._start_downloading(url)  # registered and started before any other request can look
                started = True
        if started:
            with self._evict_lock:
                self._evict_lfu(url)
        return super().get(url)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    _cache.Cache._file_cache_cls = OneDownloadPerFile
    from proxpi import server  # builds its cache from the class above

    server.app.run(host=args.host, port=args.port, threaded=True)


if __name__ == "__main__":
    main()
