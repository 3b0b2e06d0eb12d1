"""`--ray [ADDRESS]`: the environment workers of expert, rollout and eval as Ray actors (eexp.workers_ray), on a Ray
cluster of three nodes on loopback (a head and two worker nodes of one CPU each, started once for the module) and on
the local cluster eexp starts itself.

- the records are the serial run's (timestamps aside), in input order, with -o FILE --resume and --shard;
- a worker node killed mid-run loses nothing and writes nothing twice; Ctrl-C exits 130 with whole lines; kill -9
  of the driver leaves no actor behind (and, with a local cluster, no Ray process), and --resume completes the file;
- nothing leaves loopback. Two checks, because Ray has two kinds of processes: every Python process of the
  clusters and drivers (Ray's dashboard and agents, its workers, eexp) runs `guard/sitecustomize.py`, an audit
  hook that records every socket connect, sendto and name lookup to a non-loopback address. That is where Ray's
  outside traffic comes from (the usage report and the cloud-metadata probe are Python `requests` calls), and it
  sees attempts however short-lived. Ray's C++ processes (gcs_server, raylet) and the gRPC channels of the Python
  ones do not go through Python's socket module: their connections are sampled from outside (psutil's
  `net_connections`, every 0.3 s, for every process below this test session) and must all be loopback. Their
  sockets are long-lived (gRPC channels), so a sample sees them. The test cluster is started with exactly what
  eexp's local start sets (eexp.workers_ray.local_env), and the local-start test runs eexp without any of it in
  its environment, so it checks eexp's own settings. Checked by hand: a head started without those settings has its
  dashboard connect to 169.254.169.254 and look up metadata.google.internal within seconds, and the guard records
  all three. A third check sees what both miss, a socket of a C++ process that lives for microseconds (the
  runtime-env agent's UDP connect to 8.8.8.8:53, issue 51): a run with eexp's local cluster under `strace -f`;
- an address that accepts TCP but is no Ray head (an HTTP or HTTP/2 server, a silent port, another of Ray's ports)
  fails within EEXP_RAY_CONNECT_TIMEOUT with eexp's one line, none of Ray's.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

import orjson
import pytest

ROOT = Path(__file__).parent.parent
EEXP = [sys.executable, "-m", "eexp"]
STEP_SLEEP = "0.005"  # seconds added to every shop step in the clusters' workers: long enough runs to kill into

GUARD = textwrap.dedent("""\
    import ipaddress, os, socket, sys

    _log = os.environ.get("EEXP_TEST_NET_LOG")
    _LOCAL_NAMES = {"localhost", "", None}

    def _local(host):
        if host in _LOCAL_NAMES or isinstance(host, (bytes, bytearray)) and not host:
            return True
        host = host.decode() if isinstance(host, (bytes, bytearray)) else str(host)
        try:
            return ipaddress.ip_address(host.split("%")[0]).is_loopback
        except ValueError:
            return False   # a name: looking it up could leave the machine

    def _record(what):
        with open(_log, "a") as f:
            f.write(f"{os.getpid()} {sys.argv[:2]} {what}\\n")

    def _hook(event, args):
        if event in ("socket.connect", "socket.sendto"):
            sock, address = args[0], args[-1]
            if isinstance(address, tuple) and sock.family in (socket.AF_INET, socket.AF_INET6) \\
                    and not _local(address[0]):
                _record(f"{event} {address} type={sock.type}")
        elif event in ("socket.getaddrinfo", "socket.gethostbyname") and not _local(args[0]):
            _record(f"{event} {args[0]!r}")

    if _log:
        sys.addaudithook(_hook)

    if os.environ.get("EEXP_TEST_STEP_SLEEP"):
        import importlib.abc, importlib.machinery, time
        _pause = float(os.environ["EEXP_TEST_STEP_SLEEP"])

        class _SlowShop(importlib.abc.MetaPathFinder):   # patches ShopEnv.step once eexp.envs.shop is imported
            def find_spec(self, name, path, target=None):
                if name != "eexp.envs.shop":
                    return None
                sys.meta_path.remove(self)
                spec = importlib.machinery.PathFinder.find_spec(name, path)
                load = spec.loader.exec_module

                def exec_module(module):
                    load(module)
                    step = module.ShopEnv.step
                    def slow_step(self, action):
                        time.sleep(_pause)
                        return step(self, action)
                    module.ShopEnv.step = slow_step
                spec.loader.exec_module = exec_module
                return spec

        sys.meta_path.insert(0, _SlowShop())
""")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stat(pid: int):
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()
    return int(fields[1]), fields[0], fields[19]  # parent, state, start time


def descendants(root: int) -> dict[int, str]:
    table = {int(e): st for e in os.listdir("/proc") if e.isdigit() and (st := _stat(int(e))) is not None}
    found, frontier = {}, [root]
    while frontier:
        pid = frontier.pop()
        for child, (parent, _state, start) in table.items():
            if parent == pid and child not in found:
                found[child] = start
                frontier.append(child)
    return found


def running(pid: int, start: str) -> bool:
    st = _stat(pid)
    return st is not None and st[2] == start and st[1] != "Z"


def _kill_all(pids: dict[int, str]) -> None:
    for pid, start in pids.items():
        if running(pid, start):
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass


def _wait_gone(pids: dict[int, str], seconds: float) -> list[int]:
    deadline = time.monotonic() + seconds
    while True:
        left = [pid for pid, start in pids.items() if running(pid, start)]
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.2)


class Sampler(threading.Thread):
    """Every process below this test session, its inet connections every 0.3 s: those not on loopback."""

    def __init__(self):
        super().__init__(daemon=True, name="net-sampler")
        import psutil

        self.psutil, self.outside, self.samples, self.stop = psutil, set(), 0, threading.Event()

    def run(self) -> None:
        me = self.psutil.Process()
        while not self.stop.wait(0.3):
            for proc in me.children(recursive=True):
                try:
                    connections = proc.net_connections(kind="inet")
                    name = proc.name()
                except (self.psutil.Error, OSError):
                    continue
                for c in connections:
                    for address in (c.laddr, c.raddr):
                        if address and not _loopback(address.ip):
                            self.outside.add((name, c.laddr, c.raddr))
            self.samples += 1


def _loopback(ip: str) -> bool:
    """127.0.0.0/8, ::1, an IPv4 loopback address mapped into IPv6 (::ffff:127.0.0.1), or a socket listening on
    every interface (0.0.0.0, ::), which sends nothing anywhere."""
    import ipaddress

    address = ipaddress.ip_address(ip.split("%")[0])
    mapped = getattr(address, "ipv4_mapped", None)
    return address.is_loopback or (mapped is not None and mapped.is_loopback) or address.is_unspecified


class NodeGaveUp(RuntimeError):
    """`ray start` exited because its node did not register in time."""


class LoopbackCluster:
    """A Ray head (no CPUs) and two worker nodes (one CPU each) on 127.0.0.x, each a `ray start --block` child."""

    def __init__(self, root: Path):
        self.root = root
        self.guard = root / "guard"
        self.guard.mkdir()
        (self.guard / "sitecustomize.py").write_text(GUARD)
        self.net_log = root / "net.log"
        self.net_log.touch()
        from eexp.workers_ray import local_env, private_home

        self.env = {
            **os.environ,
            **local_env(private_home(str(root))),
            "PYTHONPATH": os.pathsep.join([str(self.guard), str(ROOT), str(ROOT / "tests")]),
            "EEXP_TEST_NET_LOG": str(self.net_log),
            "EEXP_TEST_STEP_SLEEP": STEP_SLEEP,
            "EEXP_CACHE": str(self._cache()),
        }
        self.port = _free_port()
        self.address = f"127.0.0.2:{self.port}"
        self.nodes: dict[str, subprocess.Popen] = {}
        self.base_port = random.Random().randrange(20000, 60000, 1000)

    def _cache(self) -> Path:
        """The clusters' EEXP_CACHE, holding tests/data/textworld's committed games (no generation: games=1)."""
        cache = self.root / "cache"
        try:
            import textworld
        except ImportError:
            return cache
        games = cache / "textworld" / textworld.__version__
        games.mkdir(parents=True)
        for f in (ROOT / "tests" / "data" / "textworld").iterdir():
            shutil.copy(f, games / f.name)
        return cache

    def _start(self, name: str, ip: str, head: bool, block: int) -> subprocess.Popen:
        ports = self.base_port + 100 * block
        args = [
            shutil.which("ray", path=os.path.dirname(sys.executable)) or "ray",
            "start",
            "--block",
            f"--node-ip-address={ip}",
            "--disable-usage-stats",
            f"--min-worker-port={ports}",
            f"--max-worker-port={ports + 49}",
            f"--node-manager-port={ports + 50}",
            f"--object-manager-port={ports + 51}",
            f"--dashboard-agent-listen-port={ports + 52}",
            f"--dashboard-agent-grpc-port={ports + 53}",
            f"--runtime-env-agent-port={ports + 54}",
            f"--metrics-export-port={ports + 55}",
            "--object-store-memory=100000000",
        ]
        if head:
            args += [
                "--head",
                f"--port={self.port}",
                "--num-cpus=0",
                "--include-dashboard=false",
                f"--temp-dir={self.root / 'tmp'}",
            ]
        else:
            args += [f"--address={self.address}", "--num-cpus=1"]
        log = open(self.root / f"{name}.log", "wb")
        proc = subprocess.Popen(args, env=self.env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self.nodes[name] = proc
        return proc

    def start(self) -> None:
        # one at a time: two nodes joining at once on one machine time out (they share the head's session folder)
        for block, (name, ip) in enumerate((("head", "127.0.0.2"), ("worker1", "127.0.0.3"), ("worker2", "127.0.0.4"))):
            self._start_node(name, ip, head=name == "head", block=block)

    def _start_node(self, name: str, ip: str, head: bool, block: int, attempts: int = 3) -> None:
        """Start a node, again if `ray start` gave up on it. `ray start` waits 30 s (a constant in Ray's
        _private/node.py) for its raylet to register with the GCS, and exits when it has not: CI's 2 cores, with
        three other test processes beside the cluster, once took longer for worker1, and the cluster's tests erred.
        A node that gave up is killed with every process it started, and starts again on ports of its own."""
        for attempt in range(attempts):
            if attempt and head:  # the head's ports are base_port's block, which tests read: move the base
                self.base_port += 5000 if self.base_port < 40000 else -5000
                self.port = _free_port()
                self.address = f"127.0.0.2:{self.port}"
            self._start(name, ip, head, block + (10 * attempt if not head else 0))  # a retry: ports no one held
            try:
                self.wait_started(name)
                return
            except NodeGaveUp:
                del self.nodes[name]
                if attempt == attempts - 1:
                    raise

    def wait_started(self, name: str, timeout: float = 90) -> None:
        """`ray start --block` says it blocks once its node is up; NodeGaveUp (its processes killed) if it exited
        after timing out, RuntimeError on any other exit."""
        log, proc = self.root / f"{name}.log", self.nodes[name]
        started: dict[int, str] = {}  # every process the node started (they outlive `ray start` when it exits)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            started.update(descendants(proc.pid))
            if b"will now block forever" in log.read_bytes():
                return
            if proc.poll() is not None:
                _kill_all(started)
                assert not _wait_gone(started, 10)
                text = log.read_text()
                gave_up = NodeGaveUp if "timed out during startup" in text else RuntimeError
                raise gave_up(f"ray node {name} exited: {text[-2000:]}")
            time.sleep(0.2)
        raise RuntimeError(f"ray node {name} did not start in {timeout} s")

    def kill_node(self, name: str) -> None:
        proc = self.nodes.pop(name)
        below = descendants(proc.pid)
        proc.kill()
        _kill_all(below)
        proc.wait()
        assert not _wait_gone(below, 10)

    def stop(self) -> None:
        below = {}
        for proc in self.nodes.values():
            below.update(descendants(proc.pid))
        for name in ("worker1", "worker2", "head"):
            if name in self.nodes:
                self.nodes[name].send_signal(signal.SIGTERM)
        for proc in self.nodes.values():
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        _kill_all(below)  # Ray's agents outlive their raylet
        left = _wait_gone(below, 10)
        assert not left, f"Ray processes left after the test cluster stopped: {left}"

    def actors(self) -> list[int]:
        """eexp's actors on the cluster now (the processes Ray named ray::_Worker)."""
        found = []
        for proc in self.nodes.values():
            for pid in descendants(proc.pid):
                try:
                    if "_Worker" in Path(f"/proc/{pid}/cmdline").read_text():
                        found.append(pid)
                except OSError:
                    pass
        return found


@pytest.fixture(scope="module")
def cluster():
    pytest.importorskip("ray")
    pytest.importorskip("psutil")
    if not os.path.isdir("/proc/self/task"):
        pytest.skip("reads the process tree from /proc")
    root = Path(tempfile.mkdtemp(prefix="eexp-rt-"))  # short: Ray's socket paths must fit 107 bytes
    sampler = Sampler()
    sampler.start()
    c = LoopbackCluster(root)
    c.sampler = sampler
    try:
        c.start()
        yield c
    finally:
        try:
            c.stop()
        finally:
            sampler.stop.set()
            shutil.rmtree(root, ignore_errors=True)


def run(args: list[str], env: dict | None = None, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(EEXP + args, env=env or {**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, **kw)


def records(path_or_bytes) -> list[dict]:
    data = path_or_bytes if isinstance(path_or_bytes, bytes) else Path(path_or_bytes).read_bytes()
    return [orjson.loads(line) for line in data.splitlines() if line.strip()]


def lines_written(path: Path) -> int:
    """The whole lines in a file that another process is writing now. A reader can see a line half written: Linux
    copies a write into the file a page at a time and the file grows with each page, so a record across a page
    boundary shows its first part before its newline is there (CI read 2,287 bytes of one). Its last line counts
    when its newline has come."""
    return path.read_bytes().count(b"\n") if path.exists() else 0


def whole_records(path: Path) -> list[dict]:
    """The records of a file's whole lines. kill -9 can stop a write between two of its pages (the kernel looks for
    a fatal signal at each), so a killed writer's file may end in part of a line, which --resume cuts off."""
    data = path.read_bytes()
    return records(data[: data.rfind(b"\n") + 1])


def untimed(record: dict) -> dict:
    """The record less its timestamps (meta.created_utc, at any depth)."""
    if isinstance(record, dict):
        return {k: untimed(v) for k, v in record.items() if k != "created_utc"}
    if isinstance(record, list):
        return [untimed(v) for v in record]
    return record


def same(a: list[dict], b: list[dict]) -> bool:
    return [untimed(r) for r in a] == [untimed(r) for r in b]


@pytest.fixture(scope="module")
def branches(tmp_path_factory) -> Path:
    """Shop branch records: 30 expert trajectories, 3 admissible alternatives per state (144 records)."""
    d = tmp_path_factory.mktemp("ray-branches")
    expert = run(
        ["expert", "--env", "shop", "-n", "30", "--seed", "2", "-q", "--stats", str(d / "expert.json")], check=True
    ).stdout
    (d / "expert.jsonl").write_bytes(expert)
    run(["branch", "--propose", "admissible", "-k", "3", "-q", "-o", str(d / "br.jsonl")], input=expert, check=True)
    run(
        ["rollout", "-q", "--stats", str(d / "serial.json"), "-o", str(d / "serial.jsonl"), str(d / "br.jsonl")],
        check=True,
    )
    return d


def test_rollout_on_the_cluster_resumes_a_file_to_the_serial_records(cluster, branches, tmp_path):
    serial = (branches / "serial.jsonl").read_bytes().splitlines(keepends=True)
    out = tmp_path / "out.jsonl"
    out.write_bytes(b"".join(serial[:40]))  # a run cut short
    done = run(
        [
            "rollout",
            str(branches / "br.jsonl"),
            f"--ray={cluster.address}",
            "--env-workers",
            "2",
            "-o",
            str(out),
            "--resume",
            "--stats",
            str(tmp_path / "stats.json"),
        ],
        env=cluster.env,
    )
    assert done.returncode == 0, done.stderr.decode()
    assert same(records(out), records(b"".join(serial)))
    stats, serial_stats = (
        orjson.loads((tmp_path / "stats.json").read_bytes()),
        orjson.loads((branches / "serial.json").read_bytes()),
    )
    assert 0 < stats["records_out"] <= len(serial) - 40 + 10  # the cut trajectory's records made again
    assert stats["env_steps"] > 0 and stats["errors"] == serial_stats["errors"] == 0
    assert b"2 environment workers" in done.stderr


def test_rollout_on_the_cluster_writes_the_serial_records_of_textworld(cluster, tmp_path):
    """A second environment, with state of its own: TextWorld's committed games (tests/data/textworld)."""
    pytest.importorskip("textworld")
    expert = run(
        ["expert", "--env", "textworld", "--env-arg", "games=1", "-n", "3", "-q"], env=cluster.env, check=True
    ).stdout
    br = tmp_path / "br.jsonl"
    run(
        ["branch", "--propose", "admissible", "-k", "2", "-q", "-o", str(br)], input=expert, env=cluster.env, check=True
    )
    serial = run(["rollout", "-q", str(br)], env=cluster.env, check=True).stdout
    ray = run(["rollout", "-q", str(br), f"--ray={cluster.address}", "--env-workers", "2"], env=cluster.env)
    assert ray.returncode == 0, ray.stderr.decode()
    assert len(records(serial)) >= 5 and same(records(ray.stdout), records(serial))


def test_expert_on_the_cluster_resumes_a_file_to_the_serial_records(cluster, branches, tmp_path):
    """expert's tasks on the cluster's two workers: the serial run's trajectories, in task order, and its counts."""
    serial = (branches / "expert.jsonl").read_bytes().splitlines(keepends=True)
    out = tmp_path / "out.jsonl"
    out.write_bytes(b"".join(serial[:8]))
    done = run(
        [
            "expert",
            "--env",
            "shop",
            "-n",
            "30",
            "--seed",
            "2",
            f"--ray={cluster.address}",
            "--env-workers",
            "2",
            "-o",
            str(out),
            "--resume",
            "--stats",
            str(tmp_path / "stats.json"),
        ],
        env=cluster.env,
    )
    assert done.returncode == 0, done.stderr.decode()
    assert len(serial) == 30 and same(records(out), records(b"".join(serial)))
    stats, serial_stats = (orjson.loads(p.read_bytes()) for p in (tmp_path / "stats.json", branches / "expert.json"))
    assert stats["resumed"] == 8 and stats["records_out"] == 22  # a trajectory is one whole line: all 8 kept
    assert (stats["unsuccessful"], stats["errors"]) == (serial_stats["unsuccessful"], serial_stats["errors"])
    assert b"2 environment workers" in done.stderr


def test_eval_on_the_cluster_writes_the_serial_episodes_of_a_shard(cluster, tmp_path):
    args = ["eval", "--policy", "random", "--env", "shop", "-n", "40", "--seed", "3", "--shard", "2/2", "-q"]
    serial = run(args + ["--summary", str(tmp_path / "serial.json")], check=True).stdout
    ray = run(
        args + [f"--ray={cluster.address}", "--env-workers", "2", "--summary", str(tmp_path / "ray.json")],
        env=cluster.env,
    )
    assert ray.returncode == 0, ray.stderr.decode()
    assert 10 < len(records(serial)) < 30 and same(records(ray.stdout), records(serial))
    assert untimed(orjson.loads((tmp_path / "ray.json").read_bytes())) == untimed(
        orjson.loads((tmp_path / "serial.json").read_bytes())
    )


def test_kill_9_of_the_driver_leaves_no_actor_and_resume_completes_the_file(cluster, tmp_path):
    args = ["eval", "--policy", "random", "--env", "shop", "--split", "train", "-n", "300", "--seed", "5", "-q"]
    serial = run(args, check=True).stdout
    out = tmp_path / "out.jsonl"
    proc = subprocess.Popen(
        EEXP + args + [f"--ray={cluster.address}", "--env-workers", "2", "-o", str(out)],
        env=cluster.env,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while proc.poll() is None and time.monotonic() < deadline and lines_written(out) < 20:
        time.sleep(0.1)
    assert proc.poll() is None, "the run ended before it could be killed"
    assert len(cluster.actors()) == 2
    proc.kill()
    proc.wait()
    deadline = time.monotonic() + 20
    while cluster.actors() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not cluster.actors(), "eexp's actors outlived their driver"
    assert len(whole_records(out)) >= 20  # what was written before the kill is there, in whole records
    done = run(args + ["-o", str(out), "--resume"])
    assert done.returncode == 0, done.stderr.decode()
    assert same(records(out), records(serial))


def _setup(base: int, fail: bool = False) -> int:
    if fail:
        raise ValueError("this worker cannot start")
    return base


def _task(base: int, item: int) -> tuple[int, int]:
    time.sleep(0.01 * (item % 4))  # finishing out of order
    if item == 7:
        raise ValueError(f"item {item} is bad")
    return item, base + item


def test_the_pool_hands_results_back_in_order_and_errors_in_their_turn(cluster):
    """RayPool itself, in this process: results in submission order whatever finishes first, a task's exception
    raised (its class and message) at its turn, a setup's error raised by every task."""
    from eexp.workers_ray import Cluster

    pool = Cluster(address=cluster.address, workers=2, note=lambda m: None).pool(_setup, (100,))
    try:
        got = []
        with pytest.raises(ValueError, match="item 7 is bad"):
            for result in pool.map(_task, range(20)):
                got.append(result)
        assert got == [(i, 100 + i) for i in range(7)]
        rest = list(pool.ready(block=True))  # what was submitted after it, in order (as a Pool does)
        assert rest and rest == [(i, 100 + i) for i in range(8, 8 + len(rest))]
    finally:
        pool.close()
    pool = Cluster(address=cluster.address, workers=1, note=lambda m: None).pool(_setup, (0, True))
    try:
        pool.submit(_task, 1)
        with pytest.raises(ValueError, match="this worker cannot start"):
            list(pool.ready(block=True))
    finally:
        pool.terminate()
    # Ray kills the actors asynchronously: each is gone within seconds (20 s allowed on loaded cores)
    deadline = time.monotonic() + 20
    while cluster.actors() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not cluster.actors()


def test_ctrl_c_exits_130_with_whole_lines_and_no_actor_left(cluster, tmp_path):
    """Ctrl-C to eexp's process group (as a terminal sends it) while its actors run episodes."""
    args = ["eval", "--policy", "random", "--env", "shop", "--split", "train", "-n", "300", "--seed", "6", "-q"]
    out = tmp_path / "out.jsonl"
    proc = subprocess.Popen(
        EEXP + args + [f"--ray={cluster.address}", "--env-workers", "2", "-o", str(out)],
        env=cluster.env,
        stderr=subprocess.PIPE,
        start_new_session=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.monotonic() + 60
    while proc.poll() is None and time.monotonic() < deadline and lines_written(out) < 10:
        time.sleep(0.1)
    assert proc.poll() is None, "the run ended before it could be interrupted"
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err.decode()
    assert b"Traceback" not in err
    assert out.read_bytes().endswith(b"\n")
    serial = records(run(args, check=True).stdout)
    written = records(out)
    assert 10 <= len(written) < 300 and same(written, serial[: len(written)])
    deadline = time.monotonic() + 20
    while cluster.actors() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not cluster.actors(), "eexp's actors outlived a Ctrl-C"


def test_a_worker_node_killed_mid_run_loses_nothing(cluster, tmp_path):
    """Last of the cluster's tests: it takes a node away. Its items are run again on the other node's worker."""
    args = ["eval", "--policy", "random", "--env", "shop", "--split", "train", "-n", "120", "--seed", "4", "-q"]
    serial = run(args, check=True).stdout
    out = tmp_path / "out.jsonl"
    err = tmp_path / "err"
    with open(err, "wb") as stderr:
        proc = subprocess.Popen(
            EEXP + args + [f"--ray={cluster.address}", "--env-workers", "2", "-o", str(out)],
            env=cluster.env,
            stderr=stderr,
        )
        deadline = time.monotonic() + 60
        while proc.poll() is None and time.monotonic() < deadline and lines_written(out) < 20:
            time.sleep(0.1)
        assert proc.poll() is None, "the run ended before a node could be killed"
        cluster.kill_node("worker2")
        proc.wait(120)
    assert proc.returncode == 0, err.read_text()
    assert "a Ray worker was lost" in err.read_text()
    written = records(out)
    assert len(written) == len(records(serial)) == 120  # nothing lost, nothing twice
    assert same(written, records(serial))


def test_local_cluster_reaches_nothing_outside_and_kill_9_leaves_no_process(cluster, branches, tmp_path):
    """`--ray` alone: eexp starts a local cluster, with nothing of the test cluster's settings in its environment
    (no RAY_USAGE_STATS_*, the real HOME) but the network guard; its head refuses a client without its token;
    kill -9 of eexp stops every process of it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    # a user who turned Ray's token auth off for their own clusters: eexp's keeps it
    env.update(PYTHONPATH=cluster.env["PYTHONPATH"], EEXP_TEST_NET_LOG=str(cluster.net_log), RAY_AUTH_MODE="disabled")
    serial = records(branches / "serial.jsonl")
    out = tmp_path / "out.jsonl"
    proc = subprocess.Popen(
        EEXP + ["rollout", "--ray", "--env-workers", "2", "-q", "-o", str(out)],
        env=env,
        stdin=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    lines = (branches / "br.jsonl").read_bytes().splitlines(keepends=True)
    proc.stdin.write(b"".join(lines[:60]))  # the rest never comes: eexp waits for it, alive, when killed
    proc.stdin.flush()
    deadline = time.monotonic() + 90
    while proc.poll() is None and time.monotonic() < deadline and lines_written(out) < 20:
        time.sleep(0.2)
    assert proc.poll() is None and lines_written(out) >= 20
    below = descendants(proc.pid)
    assert any(
        "raylet" in Path(f"/proc/{pid}/cmdline").read_text(errors="replace")
        for pid in below
        if Path(f"/proc/{pid}").exists()
    )
    # its head listens on every interface (Ray has no loopback-only bind) but answers no one without the token Ray
    # 2.60 makes for a new local cluster (its default; the token is kept in the cluster's private home)
    import psutil

    gcs = next(
        pid for pid in below if "gcs_server" in Path(f"/proc/{pid}/cmdline").read_text(errors="replace").split("\0")[0]
    )
    (port,) = {c.laddr.port for c in psutil.Process(gcs).net_connections("tcp") if c.status == psutil.CONN_LISTEN}
    asked = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from eexp.workers_ray import probe; probe(sys.argv[1], 20)",
            f"127.0.0.2:{port}",
        ],
        env={**{k: v for k, v in env.items() if not k.startswith("RAY_AUTH")}, "HOME": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert asked.returncode == 1 and "InvalidAuthToken" in asked.stderr, asked.stderr[-2000:]
    proc.kill()
    proc.wait()
    proc.stdin.close()
    assert not _wait_gone(below, 20), "processes of eexp's local Ray cluster outlived it"
    written = whole_records(out)
    assert same(written, serial[: len(written)])


# --- an address that accepts TCP but is no Ray head (issue 51, item 7) -------------------------------------------
# ray.init retried such an address for ~14 minutes (873 s measured for an HTTP server), printing Ray's C++ line
# "Failed to connect to GCS" or "Failed to get cluster ID" every few seconds (20 of them before eexp's one line for
# an HTTP/2 server that answers 404). eexp asks the address with Ray's GCS client first, EEXP_RAY_CONNECT_TIMEOUT
# seconds (default 20), and says why in one line.


def _serve(kind: str, conn: socket.socket) -> None:
    try:
        first = conn.recv(65536)
        if kind == "garbage":
            conn.sendall(b"\x00\xffnot a protocol\r\n" * 64)
        elif kind == "http2":  # a server preface (empty SETTINGS), then 404 to every request (HEADERS frame)
            conn.sendall(b"\x00\x00\x00\x04\x00\x00\x00\x00\x00")
            data = first[24:] if first.startswith(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n") else first
            while True:
                while len(data) >= 9 and len(data) >= 9 + int.from_bytes(data[:3], "big"):
                    size, kind_, flags, stream = (
                        int.from_bytes(data[:3], "big"),
                        data[3],
                        data[4],
                        int.from_bytes(data[5:9], "big") & 0x7FFFFFFF,
                    )
                    if kind_ == 4 and not flags & 1:  # SETTINGS: acknowledged
                        conn.sendall(b"\x00\x00\x00\x04\x01\x00\x00\x00\x00")
                    elif kind_ == 1:  # HEADERS: ":status: 404" (HPACK static index 13), END_STREAM | END_HEADERS
                        conn.sendall(b"\x00\x00\x01\x01\x05" + stream.to_bytes(4, "big") + b"\x8d")
                    data = data[9 + size :]
                more = conn.recv(65536)
                if not more:
                    return
                data += more
        while conn.recv(65536):  # silent: reads, says nothing
            pass
    except OSError:
        pass
    finally:
        conn.close()


class FakeHead:
    """A server on 127.0.0.2 that accepts TCP and is no Ray head: `silent` (says nothing), `garbage` (bytes of no
    protocol), `http2` (answers every HTTP/2 request 404), `http` (Python's HTTP/1.1 server)."""

    def __init__(self, kind: str):
        if kind == "http":
            import http.server

            class NotFound(http.server.BaseHTTPRequestHandler):
                protocol_version = "HTTP/1.1"

                def do_GET(self):
                    self.send_error(404)

                def log_message(self, *args):
                    pass

            self.server = http.server.ThreadingHTTPServer(("127.0.0.2", 0), NotFound)
            self.server.daemon_threads = True
            self.address = f"127.0.0.2:{self.server.server_address[1]}"
            threading.Thread(target=self.server.serve_forever, daemon=True).start()
            return
        self.server = None
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.2", 0))
        self.sock.listen(16)
        self.address = f"127.0.0.2:{self.sock.getsockname()[1]}"

        def accept():
            while True:
                try:
                    conn, _ = self.sock.accept()
                except OSError:
                    return
                threading.Thread(target=_serve, args=(kind, conn), daemon=True).start()

        threading.Thread(target=accept, daemon=True).start()

    def close(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
        else:
            self.sock.close()


# seconds allowed beyond the timeout: eexp's start and Ray's import, ~2 s on a quiet machine, up to ~100 s measured
# on these 2 cores beside two training runs; Ray's own retries took 14 minutes
SLACK = 240.0
NO_ANSWER = (
    "Error: cannot connect to the Ray cluster at {}: no Ray head answered there in {} s "
    "(EEXP_RAY_CONNECT_TIMEOUT sets how long to wait)"
)


def _ray_at(address: str, timeout: str | None = None, bound: float = 20.0, **extra: str):
    """`eexp rollout --ray=ADDRESS` on no input, with EEXP_RAY_CONNECT_TIMEOUT=timeout (and `extra` in its
    environment): what it said, and how long it took (eexp's own start counted: see SLACK)."""
    env = {k: v for k, v in os.environ.items() if k not in ("EEXP_RAY_CONNECT_TIMEOUT", "EEXP_RAY_LOG", "RAY_ADDRESS")}
    env.update(PYTHONPATH=str(ROOT), **extra)
    if timeout is not None:
        env["EEXP_RAY_CONNECT_TIMEOUT"] = timeout
    began = time.monotonic()
    try:
        done = subprocess.run(
            EEXP + ["rollout", "-q", f"--ray={address}"],
            input=b"",
            env=env,
            capture_output=True,
            timeout=bound + SLACK + 60,
        )
    except subprocess.TimeoutExpired as e:
        raise AssertionError(
            f"--ray={address} still waiting after {bound + SLACK + 60:g} s; it said: "
            f"{(e.stderr or b'').decode(errors='replace')[-2000:]}"
        ) from None
    return done, time.monotonic() - began


@pytest.mark.parametrize("kind, timeout", [("http", None), ("silent", "5"), ("garbage", "5"), ("http2", None)])
def test_an_address_that_is_no_ray_head_fails_in_the_timeout_with_one_line(kind, timeout):
    """An HTTP server (the default timeout, 20 s), a port that says nothing or garbage (5 s): no answer in time. An
    HTTP/2 server answering 404: at once, with what Ray's client said. No line of Ray's own on stderr."""
    pytest.importorskip("ray")
    head = FakeHead(kind)
    bound = 20.0 if timeout is None else float(timeout)
    try:
        done, took = _ray_at(head.address, timeout, bound)
    finally:
        head.close()
    assert done.returncode == 1
    if kind == "http2":
        assert (
            done.stderr.decode() == f"Error: cannot connect to the Ray cluster at {head.address}: no Ray head "
            f"answers there (RpcError: RPC error: Received http2 header with status: "
            f"404 (gRPC status 12))\n"
        )
    else:
        assert done.stderr.decode() == NO_ANSWER.format(head.address, f"{bound:g}") + "\n"
    assert took < bound + SLACK, f"{took:.0f} s"  # was 873 s for an HTTP server


def test_ray_s_own_lines_are_shown_when_asked_and_auto_is_ray_address_s(tmp_path):
    """EEXP_RAY_LOG=1: the lines Ray's client printed, then eexp's. --ray=auto asks the head at RAY_ADDRESS."""
    pytest.importorskip("ray")
    head = FakeHead("http2")
    try:
        shown, _ = _ray_at(head.address, EEXP_RAY_LOG="1")
        auto, _ = _ray_at("auto", RAY_ADDRESS=head.address)
    finally:
        head.close()
    said = (
        f"Error: cannot connect to the Ray cluster at {head.address}: no Ray head answers there (RpcError: RPC "
        f"error: Received http2 header with status: 404 (gRPC status 12))"
    )
    lines = shown.stderr.decode().splitlines()
    assert shown.returncode == 1 and lines[-1] == said
    assert lines[:-1] and all("Failed to get cluster ID from GCS server" in line for line in lines[:-1])
    assert auto.returncode == 1 and auto.stderr.decode() == said + "\n"


def test_a_connect_timeout_that_is_no_number_of_seconds_is_an_error():
    pytest.importorskip("ray")
    for value in ("soon", "0", "-3", "inf"):
        done, _ = _ray_at("127.0.0.2:9", value)
        assert done.returncode == 1
        assert done.stderr.decode() == f"Error: EEXP_RAY_CONNECT_TIMEOUT={value} is no number of seconds above 0\n"


def test_other_ports_of_a_ray_node_are_no_ray_head(cluster):
    """The head's runtime-env agent (HTTP: no answer in time) and raylet (gRPC without the GCS's services: at once,
    UNIMPLEMENTED)."""
    agent, raylet = (f"127.0.0.2:{cluster.base_port + offset}" for offset in (54, 50))
    done, took = _ray_at(agent, "5", 5.0)
    assert done.returncode == 1 and done.stderr.decode() == NO_ANSWER.format(agent, 5) + "\n"
    assert took < 5 + SLACK, f"{took:.0f} s"
    done, _ = _ray_at(raylet, "5", 5.0)
    assert done.returncode == 1
    assert (
        done.stderr.decode() == f"Error: cannot connect to the Ray cluster at {raylet}: no Ray head answers there "
        f"(RpcError: RPC error (gRPC status 12))\n"
    )


# --- a local cluster seen from the kernel (issue 51, item 8) ---------------------------------------------------


def _strace() -> str:
    """strace, if it can trace here (else the test is skipped: .ci/run installs it)."""
    strace = shutil.which("strace")
    if strace is None:
        pytest.skip("strace is not installed (apt-get install strace)")
    check = subprocess.run([strace, "-f", "-qq", "-e", "trace=connect", "-o", os.devnull, "true"], capture_output=True)
    if check.returncode != 0:
        pytest.skip(f"strace cannot trace here: {check.stderr.decode(errors='replace').strip()[-300:]}")
    return strace


def _addresses(log: str) -> set[str]:
    """The IPv4 and IPv6 addresses in strace's lines (connect's and sendto's destinations)."""
    import re

    return {a or b for a, b in re.findall(r'inet_addr\("([^"]+)"\)|inet_pton\(AF_INET6, "([^"]+)"', log)}


def test_local_cluster_connects_to_loopback_alone_as_the_kernel_sees_it(branches, tmp_path):
    """`--ray` alone under `strace -f`: every connect (and sendto) of eexp and of every process below it, the C++
    ones (gcs_server, raylet, gRPC channels) and sockets that live for microseconds included, which the guard and
    the sampler cannot see. Before ONE_NODE the runtime-env agent connected a UDP socket to 8.8.8.8:53. (Not
    sendmsg: gRPC's, traced, slowed the start past Ray's 30 s for a raylet on 2 loaded cores.)"""
    pytest.importorskip("ray")
    strace = _strace()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env["PYTHONPATH"] = str(ROOT)
    log = tmp_path / "strace.log"
    lines = (branches / "br.jsonl").read_bytes().splitlines(keepends=True)[:12]
    done = subprocess.run(
        [strace, "-f", "-qq", "--seccomp-bpf", "-e", "trace=connect,sendto", "-e", "signal=none", "-o", str(log)]
        + EEXP
        + ["rollout", "--ray", "--env-workers", "1", "-q"],
        input=b"".join(lines),
        env=env,
        capture_output=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr.decode()
    assert records(done.stdout)
    seen = _addresses(log.read_text(errors="replace"))
    assert "127.0.0.2" in seen, "strace saw none of Ray's connections"
    outside = sorted(ip for ip in seen if not _loopback(ip))
    assert not outside, (
        "eexp's local Ray cluster connected off loopback: "
        + ", ".join(outside)
        + "\n"
        + "\n".join(line for line in log.read_text(errors="replace").splitlines() if any(ip in line for ip in outside))[
            :3000
        ]
    )


def test_nothing_leaves_loopback(cluster):
    """Last: what the guard and the sampler saw over the module's runs (and the guard itself works)."""
    probe = subprocess.run(
        [
            sys.executable,
            "-c",
            "import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.connect(('192.0.2.1', 9))",
        ],
        env=cluster.env,
    )
    assert probe.returncode == 0
    seen = cluster.net_log.read_text().splitlines()
    assert seen and "192.0.2.1" in seen[-1], "the guard records nothing"
    assert seen[:-1] == [], "connections leaving loopback:\n" + "\n".join(seen[:-1])
    assert cluster.sampler.samples > 10
    assert not cluster.sampler.outside, "connections leaving loopback:\n" + "\n".join(
        map(str, sorted(cluster.sampler.outside, key=str)[:20])
    )


def test_without_ray_installed_ray_says_how_to_install_it(tmp_path):
    fake = tmp_path / "noray"
    (fake / "ray").mkdir(parents=True)
    (fake / "ray" / "__init__.py").write_text("raise ImportError('No module named ray')\n")
    done = run(
        ["rollout", "--ray", "-q"], env={**os.environ, "PYTHONPATH": os.pathsep.join([str(fake), str(ROOT)])}, input=b""
    )
    assert done.returncode == 1
    assert (
        done.stderr.decode().strip() == "Error: --ray needs Ray, which is not installed here: pip install 'eexp[ray]'"
    )
