"""Claims and cache locks: one holder at a time, stale holders taken over, artifacts built once."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from qcore_bench.claims import Claim, ClaimLost, claim_timeout, file_lock, read_claim
from qcore_bench.store import Store


def fake_claim(path: Path, *, host: str = "elsewhere", pid: int = 1, age: float = 0.0, owner: str = "x") -> None:
    """A claim file as another process would have left it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    now = time.time()
    path.write_text(json.dumps({"host": host, "pid": pid, "owner": owner, "token": f"t{now}",
                                "started": now - age, "heartbeat": now - age}))


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_one_holder_at_a_time_and_release_frees_it(tmp_path: Path) -> None:
    path = tmp_path / "c" / "claim.json"
    first = Claim.acquire(path, timeout=60)
    assert first is not None
    info = read_claim(path)
    assert info["host"] == socket.gethostname() and info["pid"] == os.getpid() and info["token"] == first.token
    assert Claim.acquire(path, timeout=60) is None
    first.release()
    assert not path.exists()
    second = Claim.acquire(path, timeout=60)
    assert second is not None and second.token != first.token
    second.release()


def test_live_holder_elsewhere_is_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "claim.json"
    fake_claim(path, host="node7", age=5)
    assert Claim.acquire(path, timeout=60) is None
    assert read_claim(path)["host"] == "node7"


def test_stale_heartbeat_is_taken_over_and_the_old_holder_notices(tmp_path: Path) -> None:
    path = tmp_path / "claim.json"
    old = Claim.acquire(path, timeout=0.5)
    assert old is not None
    path.write_text(json.dumps(dict(old.info, heartbeat=time.time() - 10)))  # its heartbeat stalled
    new = Claim.acquire(path, timeout=0.5, owner="another")
    assert new is not None and read_claim(path)["token"] == new.token
    with pytest.raises(ClaimLost, match="taken over"):
        old.beat()
    old.release()  # never removes the new holder's file
    assert read_claim(path)["token"] == new.token
    new.release()


def test_dead_process_on_this_host_is_taken_over_at_once(tmp_path: Path) -> None:
    path = tmp_path / "claim.json"
    fake_claim(path, host=socket.gethostname(), pid=dead_pid(), age=0)
    claim = Claim.acquire(path, timeout=3600)
    assert claim is not None
    claim.release()


def test_requeued_slurm_task_takes_over_its_own_claim(tmp_path: Path) -> None:
    path = tmp_path / "claim.json"
    fake_claim(path, host="node3", pid=4242, owner="slurm:77_3", age=1)
    assert Claim.acquire(path, timeout=3600, owner="slurm:77_4") is None  # another task: hands off
    claim = Claim.acquire(path, timeout=3600, owner="slurm:77_3")  # the same task, requeued elsewhere
    assert claim is not None
    claim.release()


def test_heartbeat_thread_keeps_a_long_step_alive(tmp_path: Path) -> None:
    path = tmp_path / "claim.json"
    claim = Claim.acquire(path, timeout=2.0)  # 40 beats per timeout: a busy CI runner's stalls stay inside it
    assert claim is not None
    claim.start_heartbeat(interval=0.05)
    time.sleep(2.5)  # longer than the timeout, with no call from the "training loop"
    assert time.time() - read_claim(path)["heartbeat"] < 2.0
    assert Claim.acquire(path, timeout=2.0, owner="someone-else") is None
    claim.release()
    assert not path.exists()


def _race(path: str, timeout: float, start: float, queue: "mp.Queue[bool]") -> None:
    time.sleep(max(0.0, start - time.time()))
    claim = Claim.acquire(Path(path), timeout=timeout)
    queue.put(claim is not None)
    time.sleep(0.3)  # hold it while the others try


@pytest.mark.parametrize("stale", [False, True])
def test_racing_processes_exactly_one_wins(tmp_path: Path, stale: bool) -> None:
    ctx = mp.get_context("fork")
    for round_ in range(3):
        path = tmp_path / f"r{round_}" / "claim.json"
        if stale:
            fake_claim(path, host="node9", age=100)
        queue = ctx.Queue()
        start = time.time() + 0.3
        procs = [ctx.Process(target=_race, args=(str(path), 5.0, start, queue)) for _ in range(6)]
        for p in procs:
            p.start()
        wins = [queue.get(timeout=30) for _ in procs]
        for p in procs:
            p.join()
        assert sum(wins) == 1, wins


def _build(target: str, log: str, start: float) -> None:
    time.sleep(max(0.0, start - time.time()))
    path = Path(target)
    if not path.exists():
        with file_lock(path, poll=0.02):
            if not path.exists():
                with open(log, "a") as f:
                    f.write(f"{os.getpid()}\n")
                time.sleep(0.3)
                tmp = path.with_suffix(".tmp")
                tmp.write_text("artifact")
                os.replace(tmp, path)
    assert path.read_text() == "artifact"


def test_cache_artifact_is_built_once_while_others_wait(tmp_path: Path) -> None:
    ctx = mp.get_context("fork")
    target, log = tmp_path / "cache" / "teacher.pt", tmp_path / "builds.log"
    target.parent.mkdir()
    start = time.time() + 0.3
    procs = [ctx.Process(target=_build, args=(str(target), str(log), start)) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    assert [p.exitcode for p in procs] == [0, 0, 0, 0]
    assert len(log.read_text().splitlines()) == 1
    assert not (target.parent / "teacher.pt.lock").exists()


def test_lock_left_by_a_dead_builder_is_taken_over(tmp_path: Path) -> None:
    target = tmp_path / "proxy.pt"
    fake_claim(target.parent / "proxy.pt.lock", host=socket.gethostname(), pid=dead_pid())
    start = time.perf_counter()
    with file_lock(target, timeout=3600):
        target.write_text("x")
    assert time.perf_counter() - start < 5


def test_timeout_from_env_and_bad_values(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QCORE_CLAIM_TIMEOUT", "2.5")
    assert claim_timeout() == 2.5 and claim_timeout(7) == 7
    monkeypatch.setenv("QCORE_CLAIM_TIMEOUT", "soon")
    with pytest.raises(ValueError, match="QCORE_CLAIM_TIMEOUT='soon': expected a number of seconds"):
        claim_timeout()
    with pytest.raises(ValueError, match="must be > 0"):
        claim_timeout(0)


def test_store_status_follows_the_claim(tmp_path: Path) -> None:
    store = Store(tmp_path, claim_timeout_s=60)
    assert store.status("abc") == "pending"
    claim = store.claim("abc")
    assert claim is not None and store.status("abc") == "running"
    assert store.claim("abc") is None  # the same cell is never claimed twice
    log = (store.dir("abc") / "claims.log").read_text().splitlines()
    assert len(log) == 1 and json.loads(log[0])["pid"] == os.getpid()
    store.release("abc")
    assert store.status("abc") == "pending"
    fake_claim(store.dir("abc") / "claim.json", host=socket.gethostname(), pid=dead_pid())
    assert store.status("abc") == "interrupted"  # a holder that died: resumable
    store.fail("abc", "ValueError: x", "Traceback ...")
    (store.dir("abc") / "claim.json").unlink()
    assert store.status("abc") == "failed"


def test_store_refuses_to_write_a_cell_it_lost(tmp_path: Path) -> None:
    store = Store(tmp_path, claim_timeout_s=60)
    assert store.claim("abc") is not None
    path = store.dir("abc") / "claim.json"
    path.unlink()
    fake_claim(path, host="node2")  # taken over by node2
    with pytest.raises(ClaimLost, match="node2"):
        store.heartbeat("abc")
    with pytest.raises(ClaimLost, match="node2"):
        store.save_checkpoint("abc", {"history": []}, {"epoch": 0})
    assert not (store.dir("abc") / "ckpt.pt").exists()
    store.release("abc")
    assert read_claim(path)["host"] == "node2"
