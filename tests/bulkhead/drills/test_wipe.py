"""The ebs-loss drill's fault: a data directory removed while a server keeps writing into it, and the
server stopped from acknowledging anything once its volume is lost."""

import subprocess
import sys
import threading
import time
from pathlib import Path

from bulkhead.drills.common import lose_volume, server_processes, wipe
from bulkhead.hosts.sandbox import process_running


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


SERVER = r"""
import os, sys, time
data, log = sys.argv[1], sys.argv[2]
with open(os.path.join(data, "postmaster.pid"), "w") as pid_file:
    pid_file.write(f"{os.getpid()}\n{data}\n")
for n in range(3):
    if os.fork() == 0:
        break
# As PostgreSQL does, each process keeps its WAL file open: writes into it go on succeeding after the file
# is unlinked, so only stopping the processes keeps them from acknowledging more.
with open(os.path.join(data, f"wal-{os.getpid()}"), "a") as wal, open(log, "a", buffering=1) as acks:
    while True:
        wal.write("x")
        wal.flush()
        os.fsync(wal.fileno())
        acks.write(f"{time.time()}\n")  # acknowledged once the write is durable
        time.sleep(0.001)
"""


def test_lose_volume__nothing_is_acknowledged_after_the_fault_and_every_server_process_is_gone(tmp_path: Path) -> None:
    data, log = tmp_path / "main", tmp_path / "acks.log"
    data.mkdir()
    server = subprocess.Popen([sys.executable, "-c", SERVER, str(data), str(log)])
    deadline = time.monotonic() + 10
    while len(log.read_text().split() if log.exists() else []) < 200 and time.monotonic() < deadline:
        time.sleep(0.05)
    postmaster = int((data / "postmaster.pid").read_text().split()[0])
    processes = server_processes(postmaster)
    assert len(processes) == 4, processes  # the server and the three it forked
    fault_at = lose_volume(data)
    server.wait(timeout=10)
    assert not data.exists()
    assert not [pid for pid in processes if process_running(pid)]
    acks = [float(line) for line in log.read_text().split()]
    assert len(acks) >= 200 and max(acks) <= fault_at
