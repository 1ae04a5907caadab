"""The ebs-loss drill's wipe removes a data directory while a server keeps writing into it."""

import threading
import time
from pathlib import Path

from bulkhead.drills.common import wipe


def test_wipe__removes_a_directory_that_a_running_writer_keeps_adding_files_to(tmp_path: Path) -> None:
    data = tmp_path / "main"
    wal = data / "pg_wal"
    wal.mkdir(parents=True)
    for n in range(2000):  # enough that removing pg_wal takes longer than the writer's next file
        (data / f"base-{n}").write_bytes(b"x")
        (wal / f"old-{n}").write_bytes(b"x")
    stop = threading.Event()
    created = []

    def server() -> None:
        n = 0
        while not stop.is_set():
            try:
                (wal / f"{n:024X}").write_bytes(b"w")
                created.append(n)
            except OSError:  # the directory is gone: a server on a lost volume fails the same way
                pass
            n += 1
            time.sleep(0.001)  # a thousand files a second: PostgreSQL makes a few

    writer = threading.Thread(target=server)
    writer.start()
    try:
        wipe(data)
    finally:
        stop.set()
        writer.join()
    assert created, "the writer never wrote, so the test proved nothing"
    assert not data.exists()
