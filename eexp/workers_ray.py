"""Environment workers on a Ray cluster (`--ray [ADDRESS]`): `RayPool`, one more `eexp.workers.WorkerPool`.

A stage that steps environments through its pool (expert, rollout, eval) gets a `RayPool` instead of a `Pool` when
it is given a `Cluster`: `--env-workers N` Ray actors of `--worker-cpus` CPUs each, placed by Ray across the
cluster's nodes. Each actor runs the stage's `setup(*args)` once and keeps its state (an environment, an environment
pool, an evaluator), as a `Pool` worker does; `submit` / `ready` / `map` hand the results back in submission order,
so the driver writes the records a serial run writes. What the driver keeps of the contract is unchanged: it alone
writes, so `-o FILE --resume`, `--shard` and `--stats` work as on one machine.

- A worker or node lost mid-run (the actor died, its node went away): the items it held are submitted again to
  another worker, and a replacement actor is started where Ray finds room. An item is only ever taken from the
  worker that finished it, and written once, in its turn. An item that loses its worker `MAX_LOSSES` times (it
  crashes whatever runs it) is an error.
- `terminate()` (Ctrl-C, an error) kills the actors at once; `close()` lets them run their `cleanup` first. The
  actors belong to this driver: Ray kills them when it exits, `kill -9` included.
- `ADDRESS` is an existing cluster's (`HOST:PORT` of its head, or `auto`). Before `ray.init` joins it, `probe`
  asks it for its cluster id with Ray's own GCS client, in a child process given `EEXP_RAY_CONNECT_TIMEOUT` seconds
  (default 20): `ray.init` retries an address that accepts TCP but is no Ray head (an HTTP server, another of Ray's
  ports) for ~14 minutes, printing a C++ log line every few seconds. The child's stderr (Ray's C++ log lines) is
  shown only with `EEXP_RAY_LOG=1`.
- Without one a local cluster is started for the run, and set so that nothing leaves the machine (`local_env`):
  Ray's usage report off and pointed at a closed loopback port, the node on 127.0.0.2, and Ray's processes given a
  home whose `ray_bootstrap_config.yaml` is `{}` (without that file the head's dashboard probes the cloud metadata
  address 169.254.169.254 to name the cloud it runs on), and told that the cluster has one node (`ONE_NODE`: else
  its runtime-env agent, which is not given the node's address, finds one by connecting a UDP socket to 8.8.8.8:53;
  no packet is sent, but it is a connect off loopback, made in C++). The actors get the user's HOME back. A local
  cluster ends with its driver, kill -9 included: `ray.shutdown` stops most of it, and a small reaper process
  started beside it stops the rest (Ray leaves its dashboard and runtime-env agents running when the raylet goes).

Ray is an optional dependency (`pip install 'eexp[ray]'`): this module imports it only when a cluster is used.
"""

from __future__ import annotations

import collections
import heapq
import itertools
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator

from eexp.errors import EexpError
from eexp.workers import sigint_ignored_by_children

INSTALL_HINT = "--ray needs Ray, which is not installed here: pip install 'eexp[ray]'"
LOCAL_NODE_IP = "127.0.0.2"  # 127.0.0.1 is rewritten by Ray to the machine's interface address
MAX_LOSSES = 3  # an item whose worker is lost this many times is an error
DEPTH = 2  # calls queued on one actor (one running, one waiting: no round trip between them)
PLACE_WAIT = 20.0  # seconds to wait for every worker before starting with those placed
START_TIMEOUT = float(os.environ.get("EEXP_RAY_START_TIMEOUT", "120"))  # seconds to wait for a first worker
CONNECT_TIMEOUT = 20.0  # seconds for a cluster's head to answer (EEXP_RAY_CONNECT_TIMEOUT)
# for a local cluster's processes: Ray's "no multi-node cluster" switch (named for Windows and macOS, where it is
# off). With it off, a process not told its node's address takes the loopback address instead of asking the
# routing table with a UDP connect to 8.8.8.8:53, as the runtime-env agent does (`ray start` of a second node
# refuses it: it is never set for the nodes of a cluster of several)
ONE_NODE = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}


def import_ray():
    try:
        import ray
    except ImportError:
        raise EexpError(INSTALL_HINT) from None
    return ray


def local_env(home: str) -> dict[str, str]:
    """The environment of Ray's processes under which nothing leaves the machine (for a local cluster, and for
    `ray start` on a test's loopback cluster); `home` holds `ray_bootstrap_config.yaml` (see `private_home`)."""
    return {"RAY_USAGE_STATS_ENABLED": "0", "RAY_USAGE_STATS_REPORT_URL": "http://127.0.0.1:9/", "HOME": home}


def private_home(root: str) -> str:
    """A home directory for Ray's processes whose `ray_bootstrap_config.yaml` says there is no cloud (`{}`)."""
    home = os.path.join(root, "home")
    os.makedirs(home, exist_ok=True)
    with open(os.path.join(home, "ray_bootstrap_config.yaml"), "w") as f:
        f.write("{}\n")
    return home


@dataclass
class Cluster:
    """Where a stage's workers run (`--ray [ADDRESS]`, `--env-workers`, `--worker-cpus`); `address` None: a local
    cluster started for the run (`local_cpus` CPUs: default all; `cpus`: each worker's)."""

    address: str | None = None
    workers: int | None = None
    cpus: float = 1.0
    local_cpus: int | None = None
    note: Callable[[str], None] = lambda message: print(message, file=sys.stderr)  # what it started (not with -q)
    warn: Callable[[str], None] = lambda message: print(message, file=sys.stderr)  # a worker lost (always)
    _started: dict = field(default_factory=dict, repr=False)

    def connect(self):
        """Start or join the cluster (once); returns the `ray` module."""
        ray = import_ray()
        if ray.is_initialized():
            return ray
        options = dict(logging_level="ERROR", log_to_driver=False, configure_logging=True)
        if self.address is None:
            root = tempfile.mkdtemp(prefix="eexp-ray-")  # short: Ray's socket paths must fit 107 bytes
            home = os.environ.get("HOME", "")
            env = {**local_env(private_home(root)), **ONE_NODE}
            self._started.update(root=root, reaper=_start_reaper(root), actor_env={"HOME": home} if home else {})
            saved = {k: os.environ.get(k) for k in env}
            os.environ.update(env)  # inherited by the processes ray.init starts (HOME and ONE_NODE only meanwhile)
            # Token auth, whatever the user's environment says: the cluster's head listens on every interface (Ray
            # has no loopback-only bind) and must refuse a client without the token Ray makes for it in the private
            # home. That is Ray 2.60's default for a new local cluster where RAY_AUTH_MODE is unset (ray.init then
            # sets it, and refreshes the config Ray read at import); set to "disabled", it is off. (Setting "token"
            # here instead is not enough: the config Ray read at import is not refreshed, and no token is made.)
            os.environ.pop("RAY_AUTH_MODE", None)
            try:
                with sigint_ignored_by_children():  # Ctrl-C is the driver's, which then stops the cluster
                    ray.init(
                        _node_ip_address=LOCAL_NODE_IP,
                        include_dashboard=False,
                        num_cpus=self.local_cpus or os.cpu_count() or 1,
                        _temp_dir=os.path.join(root, "tmp"),
                        **options,
                    )
                _register(self._started["reaper"])
            except Exception as e:
                self.disconnect()
                raise EexpError(f"cannot start a local Ray cluster: {type(e).__name__}: {e}") from None
            finally:
                for key in ("HOME", *ONE_NODE):
                    if saved[key] is None:
                        os.environ.pop(key, None)
                    else:
                        os.environ[key] = saved[key]
            where = "a local Ray cluster"
        else:
            timeout = connect_timeout()
            target = os.environ.get("RAY_ADDRESS") or self.address if self.address == "auto" else self.address
            host, _, port = target.split("://")[-1].rpartition(":")
            if port.isdigit():  # nothing there, or no Ray head: ray.init would retry for ~14 minutes
                try:
                    socket.create_connection((host, int(port)), timeout=timeout).close()
                except OSError as e:
                    raise EexpError(f"cannot connect to the Ray cluster at {target}: {e.strerror or e}") from None
                if "://" not in target:  # not ray:// (Ray Client's server, not the head's GCS)
                    probe(target, timeout)
            if host.startswith("127."):  # a loopback cluster: the driver's node is found by that address
                options["_node_ip_address"] = host
            try:
                ray.init(address=self.address, **options)
            except Exception as e:
                raise EexpError(
                    f"cannot connect to the Ray cluster at {self.address}: {type(e).__name__}: {e}"
                ) from None
            where = f"the Ray cluster at {self.address}"
        self._started["where"] = where
        return ray

    def actor_env(self) -> dict[str, str]:
        return dict(self._started.get("actor_env") or {})

    def worker_count(self, ray) -> int:
        if self.workers is not None:
            return self.workers
        total = ray.cluster_resources().get("CPU", 0)
        return max(1, int(total // self.cpus))

    def disconnect(self) -> None:
        ray = sys.modules.get("ray")
        try:
            if ray is not None and ray.is_initialized():
                ray.shutdown()  # a local cluster: stopped with it
        finally:
            reaper = self._started.pop("reaper", None)
            if reaper is not None:  # it stops what is left of a local cluster (Ray leaves its agents running)
                reaper.stdin.close()
                try:
                    reaper.wait(REAP_GRACE + 10)
                except subprocess.TimeoutExpired:
                    reaper.kill()
            self._started.pop("root", None)

    def pool(
        self, setup: Callable[..., Any], args: tuple = (), cleanup: Callable[[Any], None] | None = None
    ) -> "RayPool":
        return RayPool(self, setup, args, cleanup)


# --- joining a cluster: is a Ray head there? -------------------------------------------------------------------

_PROBE = """\
import os, sys
from ray._raylet import InnerGcsClient
print("ready", flush=True)
try:
    InnerGcsClient.standalone(sys.argv[1], None, int(sys.argv[2]))
    print("ok", flush=True)
except Exception as e:
    code = getattr(e, "rpc_code", None)   # gRPC's status: 12 UNIMPLEMENTED (a gRPC server, not the GCS), ...
    said = f"{type(e).__name__}: {e}".rstrip(" :") + (f" (gRPC status {code})" if code is not None else "")
    print(" ".join(said.split()), flush=True)
os._exit(0)
"""
PROBE_START = 120.0  # seconds for the probe's child to import Ray (not counted in the timeout: a loaded machine)


def connect_timeout() -> float:
    """`EEXP_RAY_CONNECT_TIMEOUT`: seconds for a cluster's head to answer (default `CONNECT_TIMEOUT`)."""
    text = os.environ.get("EEXP_RAY_CONNECT_TIMEOUT", "").strip()
    if not text:
        return CONNECT_TIMEOUT
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not 0 < value < float("inf"):
        raise EexpError(f"EEXP_RAY_CONNECT_TIMEOUT={text} is no number of seconds above 0")
    return value


def probe(address: str, timeout: float) -> None:
    """Ask the Ray head at `address` for its cluster id, as `ray.init` does first, with Ray's own GCS client in a
    child process, stopped if no answer comes in `timeout` seconds (counted once Ray is imported there): an error
    unless a cluster id comes back. `ray.init` itself retries an address that accepts TCP but is no Ray head for
    ~14 minutes. Ray's C++ log lines go to the child's stderr, shown with EEXP_RAY_LOG=1."""
    with tempfile.TemporaryFile() as err:
        child = subprocess.Popen(
            [sys.executable, "-c", _PROBE, address, str(int(timeout * 1000))],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=err,
            bufsize=0,
        )
        said, ended = "", False
        try:  # unbuffered: a line read leaves the next in the pipe, where select sees it
            ready = (
                bool(select.select([child.stdout], [], [], PROBE_START)[0]) and child.stdout.readline() == b"ready\n"
            )
            if ready and select.select([child.stdout], [], [], timeout)[0]:
                line = child.stdout.readline()
                said, ended = line.decode(errors="replace").strip(), not line
        finally:
            try:  # it has said what it had to say, or nothing in time (or it ended: its exit status)
                child.wait(10 if ended else 0)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
            child.stdout.close()
        err.seek(0)
        log = err.read().decode(errors="replace")
    if os.environ.get("EEXP_RAY_LOG", "") not in ("", "0"):
        sys.stderr.write(log)
        sys.stderr.flush()
    if said == "ok":
        return
    if not ready:
        why = (log.strip().splitlines() or [f"nothing in {PROBE_START:g} s"])[-1]
        raise EexpError(
            f"cannot connect to the Ray cluster at {address}: Ray could not be started here to ask it ({why[:300]})"
        )
    if ended and child.returncode != -signal.SIGKILL:  # Ray's client stopped the child (a failed check)
        fatal = [line.split("] ", 1)[-1] for line in log.splitlines() if re.match(r"\[[^]]* [CF] \d+ \d+\] ", line)]
        said = "Ray's client stopped: " + (
            fatal[0].split(": ", 1)[-1].split("Check failed: ", 1)[-1] if fatal else f"exit status {child.returncode}"
        )
    if not said or "Timed out while waiting for GCS" in said:  # no answer: stopped here, or it gave up itself
        raise EexpError(
            f"cannot connect to the Ray cluster at {address}: no Ray head answered there in "
            f"{timeout:g} s (EEXP_RAY_CONNECT_TIMEOUT sets how long to wait)"
        )
    raise EexpError(f"cannot connect to the Ray cluster at {address}: no Ray head answers there ({said[:300]})")


# --- what is left of a local cluster when its driver goes ------------------------------------------------------

REAP_GRACE = 3.0


def _start_reaper(root: str) -> subprocess.Popen:
    """A small process that waits for this one to end (its stdin closes: at `disconnect`, or when eexp is killed,
    kill -9 included), then stops the processes of the local cluster that are left (`ray.shutdown` and the
    raylet's death leave the dashboard and runtime-env agents running), as `_register` named them, and removes
    `root`. It ignores Ctrl-C, which is the driver's."""
    code = "import sys; from eexp.workers_ray import _reap; _reap(sys.argv[1])"
    return subprocess.Popen(
        [sys.executable, "-c", code, root],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        start_new_session=True,
        env={**os.environ, "PYTHONPATH": _import_path()},
    )


def _import_path() -> str:
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return os.pathsep.join(p for p in (here, os.environ.get("PYTHONPATH")) if p)


def _processes() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, start time) of every process (Linux's /proc; elsewhere none)."""
    found = {}
    if not os.path.isdir("/proc"):
        return found
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    text = f.read()
            except OSError:
                continue
            fields = text[text.rindex(")") + 2 :].split()
            found[int(entry)] = (int(fields[1]), fields[19])
    return found


def _register(reaper: subprocess.Popen) -> None:
    """Name to the reaper every process below this one (the local cluster ray.init started), with its start time
    (a pid reused later is told apart)."""
    table = _processes()
    below, frontier = {}, [os.getpid()]
    while frontier:
        pid = frontier.pop()
        for child, (parent, started) in table.items():
            if parent == pid and child not in below and child != reaper.pid:
                below[child] = started
                frontier.append(child)
    try:
        reaper.stdin.write("".join(f"{pid} {started}\n" for pid, started in below.items()).encode())
        reaper.stdin.flush()
    except OSError:
        pass


def _reap(root: str) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    named = dict(line.split() for line in sys.stdin.read().splitlines() if line.strip())  # until the driver ends

    def left() -> list[int]:
        table = _processes()
        return [int(pid) for pid, started in named.items() if table.get(int(pid), (0, None))[1] == started]

    deadline = time.monotonic() + REAP_GRACE
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in left():
            try:
                os.kill(pid, sig)
            except OSError:
                pass
        while left() and time.monotonic() < deadline:
            time.sleep(0.1)
    shutil.rmtree(root, ignore_errors=True)


class _Worker:
    """One Ray actor: the state `setup(*args)` made in it, as a `Pool` worker keeps it."""

    def __init__(self, setup, args, cleanup, env):
        os.environ.update(env)
        self.cleanup, self.state, self.error = cleanup, None, None
        try:
            self.state = setup(*args)
        except BaseException as e:  # noqa: BLE001 - raised in the driver by this worker's tasks, in their turn
            self.error = e

    def ready(self) -> int:
        return os.getpid()

    def run(self, fn, item):
        if self.error is not None:
            raise self.error
        return fn(self.state, item)

    def stop(self) -> None:
        if self.cleanup is not None and self.error is None:
            state, self.state = self.state, None
            self.cleanup(state)


class _Slot:
    __slots__ = ("seq", "fn", "item", "done", "result", "error", "losses")

    def __init__(self, seq: int, fn, item):
        self.seq, self.fn, self.item = seq, fn, item
        self.done, self.result, self.error, self.losses = False, None, None, 0

    def __lt__(self, other: "_Slot") -> bool:
        return self.seq < other.seq


class RayPool:
    """`jobs` Ray actors (of `cluster.cpus` CPUs each) with the state `setup(*args)`; see the module's docstring."""

    def __init__(
        self,
        cluster: Cluster,
        setup: Callable[..., Any],
        args: tuple = (),
        cleanup: Callable[[Any], None] | None = None,
    ):
        self.cluster = cluster
        self.pending: collections.deque[_Slot] = collections.deque()
        self._backlog: list[_Slot] = []  # a heap by submission order: the oldest is sent first
        self._running: dict = {}  # object ref -> (slot, actor key)
        self._actors: dict[int, list] = {}  # key -> [handle, calls queued on it, placed]
        self._starting: dict = {}  # ready ref -> actor key (not yet known to be placed)
        self._keys = itertools.count()
        self._seq = itertools.count()
        self._replaced = 0
        self._since = time.monotonic()  # last time a worker was known to be alive
        self.ray = ray = cluster.connect()
        try:
            self.jobs = cluster.worker_count(ray)
            self._make = ray.remote(_Worker).options(num_cpus=cluster.cpus, max_restarts=0, max_task_retries=0)
            self._spec = (setup, args, cleanup, cluster.actor_env())
            for _ in range(self.jobs):
                self._start_actor()
            free = ray.cluster_resources().get("CPU", 0)
            cluster.note(
                f"eexp: {self.jobs} environment workers of {cluster.cpus:g} CPU on "
                f"{cluster._started['where']} ({free:g} CPUs)"
            )
            # every worker placed and set up, as Pool does; or, past PLACE_WAIT, those the cluster had room for
            began = time.monotonic()
            while self._starting and not self._actors_ready():
                self._poll(timeout=1.0)
                placed = sum(1 for actor in self._actors.values() if actor[2])
                if placed and time.monotonic() - began > PLACE_WAIT:
                    cluster.warn(
                        f"eexp: {placed} of {self.jobs} Ray workers started; the others start when the "
                        f"cluster has room for them"
                    )
                    break
        except BaseException:
            self.terminate()
            raise

    # --- actors -------------------------------------------------------------------------------------------------

    def _start_actor(self) -> None:
        key = next(self._keys)
        handle = self._make.remote(*self._spec)
        self._actors[key] = [handle, 0, False]
        self._starting[handle.ready.remote()] = key

    def _actors_ready(self) -> bool:
        return bool(self._actors) and all(actor[2] for actor in self._actors.values())

    def _lose_actor(self, key: int, why: BaseException | None = None) -> None:
        """The actor is gone (or unusable): its calls go back to the backlog, and another is started."""
        actor = self._actors.pop(key, None)
        if actor is None:
            return
        try:
            self.ray.kill(actor[0], no_restart=True)
        except Exception:  # noqa: BLE001 - already gone
            pass
        for ref, (slot, owner) in list(self._running.items()):
            if owner == key:
                del self._running[ref]
                slot.losses += 1
                if slot.losses >= MAX_LOSSES:
                    slot.done, slot.error = (
                        True,
                        EexpError(
                            f"a Ray worker was lost {slot.losses} times running one item (it may crash its worker)"
                        ),
                    )
                else:
                    heapq.heappush(self._backlog, slot)
        for ref, owner in list(self._starting.items()):
            if owner == key:
                del self._starting[ref]
        self._replaced += 1
        if self._replaced > MAX_LOSSES * self.jobs:
            last = " ".join(str(why).split())[-300:] if why is not None else "unknown"
            raise EexpError(f"{self._replaced} Ray workers were lost in this run: giving up (the last: {last})")
        self.cluster.warn(f"eexp: a Ray worker was lost; its work is sent to another ({self._replaced} lost)")
        self._start_actor()

    def _dispatch(self) -> None:
        while self._backlog:
            free = [(actor[1], key) for key, actor in self._actors.items() if actor[2] and actor[1] < DEPTH]
            if not free:
                return
            _, key = min(free)
            slot = heapq.heappop(self._backlog)
            actor = self._actors[key]
            actor[1] += 1
            self._running[actor[0].run.remote(slot.fn, slot.item)] = (slot, key)

    def _poll(self, timeout: float | None) -> None:
        """Take what is done (waiting up to `timeout` seconds for something), then send what waits."""
        ray = self.ray
        refs = list(self._running) + list(self._starting)
        if not refs:
            if self._backlog or any(not s.done for s in self.pending):
                raise EexpError("no Ray worker is left to run the work (every actor was lost)")
            return
        if timeout == 0:
            done, _ = ray.wait(refs, num_returns=len(refs), timeout=0)
        else:
            done, rest = ray.wait(refs, num_returns=1, timeout=timeout)
            if done and rest:  # and whatever else is done by now
                done += ray.wait(rest, num_returns=len(rest), timeout=0)[0]
        for ref in done:
            if ref in self._starting:
                key = self._starting.pop(ref)
                try:
                    ray.get(ref)
                except ray.exceptions.RayError as e:  # it could not be placed or set up (an import error)
                    self._lose_actor(key, e)
                    continue
                if key in self._actors:
                    self._actors[key][2] = True
                    self._since = time.monotonic()
                continue
            if ref not in self._running:
                continue
            slot, key = self._running.pop(ref)
            try:
                slot.result = ray.get(ref)
            except ray.exceptions.RayTaskError as e:  # the task's own exception: raised in its turn
                slot.error = e.cause if isinstance(e.cause, BaseException) else e
            except ray.exceptions.RayError as e:  # the worker or its node is gone: run it again elsewhere
                self._running[ref] = (slot, key)
                self._lose_actor(key, e)
                continue
            slot.done = True
            if key in self._actors:
                self._actors[key][1] -= 1
                self._since = time.monotonic()
        if not any(actor[2] for actor in self._actors.values()) and time.monotonic() - self._since > START_TIMEOUT:
            raise EexpError(
                f"no Ray worker of {self.cluster.cpus:g} CPU could be started in {START_TIMEOUT:g} s: "
                f"the cluster has no room for one (--worker-cpus, --env-workers)"
            )
        self._dispatch()

    # --- the WorkerPool interface ---------------------------------------------------------------------------------

    def submit(self, fn: Callable[[Any, Any], Any], item: Any) -> None:
        slot = _Slot(next(self._seq), fn, item)
        self.pending.append(slot)
        heapq.heappush(self._backlog, slot)
        self._dispatch()

    def ready(self, block: bool = False) -> Iterator[Any]:
        if self.pending and not self.pending[0].done:
            self._poll(timeout=0)
        while self.pending and (block or len(self.pending) >= 2 * self.jobs or self.pending[0].done):
            head = self.pending[0]
            while not head.done:
                self._poll(timeout=1.0)
            self.pending.popleft()
            if head.error is not None:
                raise head.error
            yield head.result

    def map(self, fn: Callable[[Any, Any], Any], items: Iterable[Any]) -> Iterator[Any]:
        for item in items:
            self.submit(fn, item)
            yield from self.ready()
        yield from self.ready(block=True)

    def close(self) -> None:
        """Wait for what was submitted, let the actors run their cleanup, then stop them."""
        if getattr(self, "ray", None) is None:
            return
        try:
            while any(not slot.done for slot in self.pending):
                self._poll(timeout=1.0)
            self.pending.clear()
            stops = [actor[0].stop.remote() for actor in self._actors.values() if actor[2]]
            if stops:
                self.ray.wait(stops, num_returns=len(stops), timeout=30)
        finally:
            self.terminate()

    def terminate(self) -> None:
        """Kill the actors at once (what they run is dropped) and leave the cluster (a local one stops)."""
        ray, self.ray = getattr(self, "ray", None), None
        if ray is None:
            return
        self.pending.clear()
        self._backlog.clear()
        self._running.clear()
        self._starting.clear()
        for actor in self._actors.values():
            try:
                ray.kill(actor[0], no_restart=True)
            except Exception:  # noqa: BLE001 - already gone
                pass
        self._actors.clear()
        self.cluster.disconnect()

    def __enter__(self) -> "RayPool":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.terminate()
