"""What a training process tells the world while it runs: the run's status.json (with a heartbeat), the cancel
request it obeys, and one-line error messages for the status and the log."""

from __future__ import annotations

import os
import signal
import socket
import sys
import threading
import time
from typing import Any

from histo_core.procs import proc_start_time
from histo_core.runs import RunDir

HEARTBEAT_S = 3.0


class StatusWriter:
    """The run's status, kept in memory and written atomically; a daemon thread refreshes the heartbeat
    every few seconds, so even one slow batch (ResNet-50 on CPU) never looks like a dead process.
    Only rank 0 writes (`enabled`)."""

    def __init__(self, run: RunDir, enabled: bool):
        self.run, self.enabled = run, enabled
        self.status = run.status()
        self.lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def update(self, **changes: Any) -> None:
        if not self.enabled:
            return
        with self.lock:
            for k, v in changes.items():
                setattr(self.status, k, v)
            self.status.heartbeat = time.time()
            self.run.write_status(self.status)

    def start_heartbeat(self) -> None:
        if self.enabled and self._thread is None:
            self._thread = threading.Thread(target=self._beat, name="heartbeat", daemon=True)
            self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                self.update()
            except OSError:
                pass  # a full disk is reported by the main thread

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)


class RunFolderGone(Exception):
    """The run folder disappeared while training: the trainer stops and writes nothing."""


class CancelFlag:
    """Set by SIGTERM/SIGINT or by the run's `cancel` file; checked at batch boundaries."""

    def __init__(self, run: RunDir):
        self.run = run
        self.signalled = False
        self._last_check = 0.0
        self._file = False
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        self._previous = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._on_signal)

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}

    def _on_signal(self, signum: int, frame: Any) -> None:
        if signum == signal.SIGINT and self.signalled:
            raise KeyboardInterrupt  # a second Ctrl-C does not wait for the batch to end
        self.signalled = True

    def requested(self) -> bool:
        """Checked at every batch (and while queued); raises RunFolderGone when the run folder was deleted."""
        now = time.monotonic()
        if now - self._last_check > 0.25:
            self._last_check = now
            if not self.run.path.is_dir():
                raise RunFolderGone(str(self.run.path))
            self._file = self._file or self.run.cancel_requested()
        return self.signalled or self._file


def own_start_time() -> int | None:
    """This process's start time as `procs.proc_start_time` reads it (with the pid, it names the process)."""
    return proc_start_time(os.getpid())


def say(text: str, rank: int = 0) -> None:
    """A progress line on stderr, from rank 0 only."""
    if rank == 0:
        print(text, file=sys.stderr, flush=True)


def append_log(run: RunDir, text: str) -> None:
    try:
        with open(run.log_path, "a", encoding="utf-8") as fh:
            fh.write(text if text.endswith("\n") else text + "\n")
    except OSError:
        pass


PEER_SILENCE_S = 120.0  # a torchrun peer whose heartbeat file stops for this long is taken for dead
PEER_GRACE_S = 30.0  # after a peer died, how long rank 0 waits for its blocked collective to fail on its own


class RankBeacon:
    """Under torchrun, how rank 0 learns that a peer died (a collective would otherwise wait for the process
    group's timeout: NCCL never notices a dead peer by itself). Every rank keeps its own file,
    `<run>/ranks/rank<R>.json` (pid, host, heartbeat, and its error line once it failed), refreshed every
    HEARTBEAT_S by a daemon thread. Rank 0's thread also reads its peers' files: a peer that wrote an error, whose
    process is gone (same host), or whose heartbeat stopped for PEER_SILENCE_S (once seen: a peer on another node
    with its own copy of the run folder is never called dead) is reported once through `on_death(rank, reason)`.
    `token` (rank 0's, broadcast at the start) tells this start's files from an earlier attempt's."""

    def __init__(self, run: RunDir, rank: int, world: int, token: str, on_death: Any = None):
        self.run, self.rank, self.world, self.token = run, rank, world, token
        self.on_death = on_death
        self.death: str | None = None  # "rank R died: ..." once a peer died
        self.started = time.time()
        self.seen: dict[int, float] = {}  # peer -> when its heartbeat was last seen to change
        self.heartbeats: dict[int, float] = {}
        self.error: str | None = None
        self.done = False
        self.grace: threading.Timer | None = None  # rank 0, after a peer died: ends a process stuck in a collective
        self.before_exit: Any = None  # called before that end (saves this rank's state)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.folder = run.ranks_dir

    def path(self, rank: int) -> Any:
        return self.folder / f"rank{rank}.json"

    def start(self) -> None:
        self.beat()
        self._thread = threading.Thread(target=self._loop, name="rank-beacon", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """The run is over in this process (run_training returns): a last beat that says so (rank 0 never takes a
        peer that finished and exited for a dead one), then no more beats and no forced end."""
        self._stop.set()
        if self.grace is not None:
            self.grace.cancel()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
        self.done = True
        self.beat()

    def beat(self) -> None:
        from histo_core.fsutil import write_json_atomic

        try:
            self.folder.mkdir(exist_ok=True)  # never the run folder itself (a deleted run stays deleted)
            doc = {"token": self.token, "pid": os.getpid(), "host": socket.gethostname(), "heartbeat": time.time()}
            write_json_atomic(self.path(self.rank), {**doc, "error": self.error, "done": self.done})
        except OSError:
            pass

    def failed(self, line: str) -> None:
        """This rank failed: its error line goes into its file at once, for rank 0 to quote."""
        self.error = line
        self.beat()

    def _loop(self) -> None:
        while not self._stop.wait(min(HEARTBEAT_S, 1.0) if self.rank == 0 else HEARTBEAT_S):
            self.beat()
            if self.rank == 0 and self.death is None:
                self.check_peers()

    def check_peers(self) -> str | None:
        """Rank 0: "rank R died: ..." for the first peer found dead (also kept in `death`), else None."""
        from histo_core.fsutil import read_json
        from histo_core.procs import pid_alive

        now = time.time()
        for peer in range(1, self.world):
            doc = read_json(self.path(peer))
            if not isinstance(doc, dict) or doc.get("token") != self.token:
                continue  # not started yet, or an earlier attempt's file
            reason = None
            if doc.get("done") and not doc.get("error"):
                continue  # finished its part and may have exited
            if doc.get("error"):
                reason = str(doc["error"])
            elif doc.get("host") == socket.gethostname() and not pid_alive(int(doc.get("pid") or 0)):
                reason = f"its process (pid {doc.get('pid')}) ended without a word (killed, e.g. out of memory?)"
            else:
                beat = float(doc.get("heartbeat") or 0)
                if self.heartbeats.get(peer) != beat:
                    self.heartbeats[peer], self.seen[peer] = beat, now
                elif now - self.seen[peer] > PEER_SILENCE_S:
                    reason = f"no heartbeat for {now - self.seen[peer]:.0f} s (hung, or its node is gone)"
            if reason is not None:
                self.death = f"rank {peer} died: {reason}"
                if self.on_death is not None:
                    self.on_death(self.death)
                return self.death
        return None


def start_beacon(run: RunDir, writer: StatusWriter, rank: int, world: int) -> RankBeacon | None:
    """Under torchrun every rank's heartbeat file (status.RankBeacon); rank 0 watches its peers'. When a peer
    dies, rank 0 writes "rank R died: ..." to the status and the log at once, then gives a collective it may be
    blocked in PEER_GRACE_S to fail (gloo fails at once, NCCL waits for its timeout) before it ends the process."""
    import torch.distributed as dist  # torch only in a training process

    from histo_core.distributed import broadcast

    if world <= 1 or not dist.is_initialized():  # the token is agreed through the process group
        return None
    import uuid

    def on_death(line: str) -> None:
        append_log(run, line)
        try:
            writer.update(state="failed", error=line, finished_at=time.time(), phase="")
        except OSError:
            pass
        say(f"{run.id}: failed: {line}")

        def end() -> None:  # still blocked in a collective: keep this rank's state, then stop
            if beacon.before_exit is not None:
                beacon.before_exit()
            os._exit(1)

        timer = threading.Timer(PEER_GRACE_S, end)
        timer.daemon = True
        timer.start()
        beacon.grace = timer

    token = broadcast(uuid.uuid4().hex if rank == 0 else None, world)
    beacon = RankBeacon(run, rank, world, token, on_death if rank == 0 else None)
    beacon.start()
    return beacon


def peer_death(beacon: RankBeacon | None) -> str | None:
    """Rank 0: "rank R died: ..." when a peer died (looked at once more now: a broken collective may come before
    the watch's next look); None otherwise and on other ranks."""
    if beacon is None or beacon.rank != 0:
        return None
    return beacon.death or beacon.check_peers()
