"""Environment workers on Ray (issue 42 item 5): scaling over worker nodes, Ray's overhead against `-j`, and the
per-step environment costs behind docs/scale.md's projection of a paper-size run.

    nice -n 10 .venv/bin/python bench/bench_ray.py scaling [--nodes 1,2,4] [--cpus 2] [-n 160] [--sleep 0.02]
    .venv/bin/python bench/bench_ray.py overhead [--env alfworld] [-n 60] [--workers 2] [--repeat 3]
    nice -n 10 .venv/bin/python bench/bench_ray.py costs [--shop 200]

1. scaling: `eexp rollout --ray=ADDRESS` over the branch records of `sleepwalk`, an environment whose step is a
   sleep (no CPU: the figure is Ray's and eexp's, not the cores'), defined below and registered by entry point as a
   plugin is (a package folder this script writes, put on PYTHONPATH), on a head (no CPUs) and 1, then 2, then 4
   worker nodes of --cpus CPUs each on loopback, one environment worker per CPU. Baseline, in the same run: the run
   on 1 node. Target: throughput >= 0.8 x nodes x that (>= 0.8x linear). Each run's records are compared with a
   serial run's (made with the sleep off: the records do not depend on it).
2. overhead: `eexp rollout --ray=ADDRESS --env-workers W` on a one-node cluster of W CPUs against `eexp rollout -j W`
   on the same machine, same input: the branch records (K=8 admissible alternatives) of a real environment's expert
   trajectories (ALFWorld's games written by tests/alfworld_games.py; `--env shop` for the cheapest step), repeated
   under new ids to make -n trajectories. The runs alternate, --repeat of each; each one's best wall time (process
   start to exit: joining the cluster and starting the actors, or spawning the workers, included). Target: within
   10% of -j. Starting the cluster is not in the figure (it is started once for many runs); its time is printed.
3. costs: one core's CPU seconds per environment step, in this process (time.process_time, so a busy machine does
   not inflate them): an environment's start (made, first reset), the expert's steps (each task's reset and game
   load included) and rollout's executed steps with K=8 admissible alternatives (restores, each trajectory's
   reset and one start included); shop and ALFWorld; and the size of the training examples the data stages make of
   them. docs/scale.md projects a paper-size run from them.

Every Ray process started here is set as eexp's local cluster is (eexp.workers_ray.local_env: nothing leaves the
machine) and stopped at the end. --save FILE writes the figures as JSON. Results: docs/results/ray.md.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from eexp.envs.base import Env

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
EEXP = [sys.executable, "-m", "eexp"]
SLEEP_VAR = "EEXP_BENCH_STEP_SLEEP"  # seconds each sleepwalk step sleeps (unset: none)
MOVES = {"left": -1, "right": 1, "stay": 0, "jump": 2}


class SleepWalkEnv(Env):
    """Walk LENGTH steps right along a line; each step sleeps $EEXP_BENCH_STEP_SLEEP seconds first, standing in for a
    simulator's step without taking a CPU. Snapshots, so rollout executes K + 1 steps a state."""

    name = "sleepwalk"
    version = "1"
    splits = ("train",)
    can_snapshot = True
    action_format = "left | right | stay | jump"
    LENGTH = 10
    TASKS = 1000

    def tasks(self, split):
        return [
            {"id": f"{split}-{i:04d}", "split": split, "goal": f"walk {self.LENGTH} steps right"}
            for i in range(self.TASKS)
        ]

    def reset(self, task):
        self.task_id, self.pos, self.moves = task["id"], 0, 0
        return self._observation()

    def _observation(self):
        return f"{self.task_id}: at {self.pos} after {self.moves} moves"

    def step(self, action):
        pause = float(os.environ.get(SLEEP_VAR) or 0)
        if pause:
            time.sleep(pause)
        self.pos += MOVES.get(action, 0)
        self.moves += 1
        done = self.pos >= self.LENGTH
        return self._observation(), float(done), done, {"valid": action in MOVES}

    def admissible(self):
        return list(MOVES)

    def expert(self, task):
        return ["right"] * self.LENGTH

    def success(self):
        return self.pos >= self.LENGTH

    def snapshot(self):
        return (self.pos, self.moves)

    def restore(self, snap):
        self.pos, self.moves = snap


def plugin_site(root: Path) -> Path:
    """A folder holding what `pip install` of a plugin package leaves: a dist-info whose entry_points.txt registers
    `sleepwalk` in the `eexp.envs` group (the class is this module's: bench/ goes on PYTHONPATH too)."""
    site = root / "site"
    info = site / "eexp_bench_sleepwalk-1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: eexp-bench-sleepwalk\nVersion: 1\n")
    (info / "entry_points.txt").write_text("[eexp.envs]\nsleepwalk = bench_ray:SleepWalkEnv\n")
    return site


# --- Ray nodes on loopback ---------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _children() -> dict[int, int]:
    """pid -> parent pid of every process (Linux /proc)."""
    found = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                text = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            found[int(entry)] = int(text[text.rindex(")") + 2 :].split()[1])
    return found


def _below(root: int) -> list[int]:
    table, found, frontier = _children(), [], [root]
    while frontier:
        pid = frontier.pop()
        for child, parent in table.items():
            if parent == pid and child not in found:
                found.append(child)
                frontier.append(child)
    return found


class Nodes:
    """A Ray head (no CPUs) and worker nodes on 127.0.0.x, each a `ray start --block` child of this process, started
    one at a time (as tests/test_ray.py does: two joining at once on one machine time out)."""

    def __init__(self, root: Path, env: dict):
        self.root, self.env = root, env
        self.port = _free_port()
        self.address = f"127.0.0.2:{self.port}"
        self.procs: list[subprocess.Popen] = []
        self.base_port = random.Random().randrange(20000, 60000, 1000)

    def add(self, cpus: int, head: bool = False) -> float:
        """Start one node; the seconds it took."""
        n = len(self.procs)
        ports = self.base_port + 100 * n
        ip = f"127.0.0.{2 + n}"
        args = [
            shutil.which("ray", path=os.path.dirname(sys.executable)) or "ray",
            "start",
            "--block",
            f"--node-ip-address={ip}",
            "--disable-usage-stats",
            f"--num-cpus={cpus}",
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
        args += (
            ["--head", f"--port={self.port}", "--include-dashboard=false", f"--temp-dir={self.root / 'tmp'}"]
            if head
            else [f"--address={self.address}"]
        )
        log_path = self.root / f"node{n}.log"
        started = time.perf_counter()
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(args, env=self.env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self.procs.append(proc)
        deadline = time.monotonic() + 180
        while b"will now block forever" not in log_path.read_bytes():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"ray node {n} did not start: {log_path.read_text()[-2000:]}")
            time.sleep(0.1)
        return time.perf_counter() - started

    def stop(self) -> None:
        below = [pid for proc in self.procs for pid in _below(proc.pid)]
        for proc in reversed(self.procs):
            proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for pid in below:  # Ray's agents outlive their raylet
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        self.procs = []


def ray_env(root: Path, extra_path: list[Path] = (), **more: str) -> dict:
    from eexp.workers_ray import local_env, private_home

    path = os.pathsep.join(str(p) for p in [*extra_path, BENCH, ROOT])
    return {**os.environ, **local_env(private_home(str(root))), "PYTHONPATH": path, **more}


# --- runs --------------------------------------------------------------------------------------------------------


def untimed(record):
    if isinstance(record, dict):
        return {k: untimed(v) for k, v in record.items() if k != "created_utc"}
    if isinstance(record, list):
        return [untimed(v) for v in record]
    return record


def read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_bytes().splitlines() if line.strip()]


def timed(args: list[str], env: dict, out: Path) -> dict:
    """One eexp process writing -o `out`: its wall time, and when its first and last records appeared (the file's
    lines, polled every 20 ms), so the steady rate leaves the start-up out."""
    seen: list[tuple[float, int]] = []
    stop = threading.Event()
    started = time.perf_counter()

    def watch():
        while not stop.wait(0.02):
            try:
                lines = out.read_bytes().count(b"\n")
            except OSError:
                continue
            if lines and (not seen or lines != seen[-1][1]):
                seen.append((time.perf_counter() - started, lines))

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    done = subprocess.run(EEXP + args + ["-o", str(out)], env=env, capture_output=True)
    wall = time.perf_counter() - started
    stop.set()
    watcher.join()
    if done.returncode:
        raise RuntimeError(f"eexp {' '.join(args)} failed: {done.stderr.decode()[-2000:]}")
    lines = out.read_bytes().count(b"\n")
    first = seen[0] if seen else (wall, lines)
    steady = (lines - first[1]) / (wall - first[0]) if wall > first[0] and lines > first[1] else None
    return {
        "wall_s": wall,
        "first_record_s": first[0],
        "records": lines,
        "steady_rps": steady,
        "stderr": done.stderr.decode(),
    }


def make_branches(root: Path, env: dict, env_name: str, n: int | None, k: int, env_args: list[str] = ()) -> Path:
    """Expert trajectories (every train task, or -n of them), then branch --propose admissible -k K."""
    expert, branches = root / f"{env_name}.expert.jsonl", root / f"{env_name}.branches.jsonl"
    subprocess.run(
        EEXP + ["expert", "--env", env_name, *env_args, "-q", "-o", str(expert)] + (["-n", str(n)] if n else []),
        env=env,
        check=True,
    )
    subprocess.run(
        EEXP + ["branch", "--propose", "admissible", "-k", str(k), "-q", "-o", str(branches), str(expert)],
        env=env,
        check=True,
    )
    return branches


def repeat_trajectories(branches: Path, n: int, out: Path) -> int:
    """The branch records of `branches`, their trajectories taken in turn until there are n, copy c under the ids
    `<trajectory id>~c` (rollout groups by trajectory id: each copy is a trajectory of its own)."""
    groups: dict[str, list[dict]] = {}
    for record in read(branches):
        groups.setdefault(record["trajectory_id"], []).append(record)
    order, lines = list(groups), []
    for i in range(n):
        tid, copy = order[i % len(order)], i // len(order)
        for record in groups[tid]:
            new = f"{tid}~{copy}"
            lines.append(
                json.dumps({**record, "id": f"{new}#{record['step']}", "source_id": new, "trajectory_id": new})
            )
    out.write_text("\n".join(lines) + "\n")
    return len(lines)


def scaling(nodes: list[int], cpus: int, n: int, sleep: float, k: int = 3) -> dict:
    root = Path(tempfile.mkdtemp(prefix="eexp-bs-"))  # short: Ray's socket paths must fit 107 bytes
    try:
        site = plugin_site(root)
        quiet = ray_env(root, [site])
        quiet.pop(SLEEP_VAR, None)
        branches = make_branches(root, quiet, "sleepwalk", n, k)
        serial = timed(
            ["rollout", "-q", str(branches), "--stats", str(root / "serial.json")], quiet, root / "serial.jsonl"
        )
        reference = [untimed(r) for r in read(root / "serial.jsonl")]
        env_steps = json.loads((root / "serial.json").read_text())["env_steps"]
        env = {**quiet, SLEEP_VAR: str(sleep)}
        cluster = Nodes(root, env)
        result = {
            "trajectories": n,
            "states": len(reference),
            "k": k,
            "env_steps": env_steps,
            "sleep_s": sleep,
            "cpus_per_node": cpus,
            "serial_no_sleep_s": serial["wall_s"],
            "runs": [],
        }
        try:
            result["head_start_s"] = cluster.add(0, head=True)
            starts = []
            for count in nodes:
                while len(cluster.procs) - 1 < count:
                    starts.append(cluster.add(cpus))
                workers = count * cpus
                out = root / f"ray{count}.jsonl"
                run = timed(
                    ["rollout", "-q", str(branches), f"--ray={cluster.address}", "--env-workers", str(workers)],
                    env,
                    out,
                )
                run.update(
                    nodes=count,
                    workers=workers,
                    identical=[untimed(r) for r in read(out)] == reference,
                    sleep_bound_s=env_steps * sleep / workers,
                )
                print(
                    f"  {count} node(s), {workers} workers: {run['wall_s']:.1f} s, steady "
                    f"{run['steady_rps'] or 0:.1f} rec/s, sleep alone {run['sleep_bound_s']:.1f} s, identical "
                    f"{run['identical']}",
                    file=sys.stderr,
                    flush=True,
                )
                result["runs"].append(run)
            result["worker_node_start_s"] = starts
        finally:
            cluster.stop()
        one = result["runs"][0]
        for run in result["runs"]:
            scale = run["nodes"] / one["nodes"]
            run["speedup"] = one["wall_s"] / run["wall_s"]
            run["efficiency"] = run["speedup"] / scale
            run["steady_efficiency"] = (
                run["steady_rps"] / one["steady_rps"] / scale if run["steady_rps"] and one["steady_rps"] else None
            )
        return result
    finally:
        shutil.rmtree(root, ignore_errors=True)


def alfworld_data(root: Path) -> Path:
    """$ALFWORLD_DATA when it is set, else tests/alfworld_games.py's games written under root."""
    if os.environ.get("ALFWORLD_DATA"):
        return Path(os.environ["ALFWORLD_DATA"])
    sys.path.insert(0, str(ROOT / "tests"))
    from alfworld_games import write_games

    write_games(root / "alfworld")
    return root / "alfworld"


def overhead(env_name: str, n: int, workers: int, repeat: int, k: int = 8) -> dict:
    root = Path(tempfile.mkdtemp(prefix="eexp-bo-"))
    try:
        extra = {"ALFWORLD_DATA": str(alfworld_data(root))} if env_name == "alfworld" else {}
        env = ray_env(root, **extra)
        branches = root / "branches.jsonl"
        records = repeat_trajectories(
            make_branches(root, env, env_name, None if env_name == "alfworld" else n, k), n, branches
        )
        cluster = Nodes(root, env)
        result = {
            "env": env_name,
            "trajectories": n,
            "records": records,
            "k": k,
            "workers": workers,
            "repeat": repeat,
            "jobs": [],
            "ray": [],
        }
        try:
            result["cluster_start_s"] = cluster.add(workers, head=True)
            outs = {}
            for r in range(repeat):
                for kind, args in (
                    ("jobs", ["-j", str(workers)]),
                    ("ray", [f"--ray={cluster.address}", "--env-workers", str(workers)]),
                ):
                    outs[kind] = root / f"{kind}{r}.jsonl"
                    run = timed(["rollout", "-q", str(branches), *args], env, outs[kind])
                    run.pop("stderr")
                    result[kind].append(run)
                    print(f"  {kind} {r}: {run['wall_s']:.2f} s", file=sys.stderr, flush=True)
            result["identical"] = [untimed(x) for x in read(outs["jobs"])] == [untimed(x) for x in read(outs["ray"])]
        finally:
            cluster.stop()
        best = {kind: min(run["wall_s"] for run in result[kind]) for kind in ("jobs", "ray")}
        result.update(best_jobs_s=best["jobs"], best_ray_s=best["ray"], ratio=best["ray"] / best["jobs"])
        return result
    finally:
        shutil.rmtree(root, ignore_errors=True)


def env_costs(name: str, n: int | None, k: int = 8) -> dict:
    """CPU seconds (this process) of one environment's start, expert steps and rollout's executed steps."""
    import collections

    from eexp.envs.base import make_env, pick_tasks
    from eexp.stages.branch import Brancher
    from eexp.stages.expert import expert_trajectory
    from eexp.stages.rollout import Rollout

    cpu = time.process_time
    tasks = pick_tasks(make_env(name), "train", n, 0)
    t0 = cpu()
    env = make_env(name)
    env.reset(tasks[0])
    start = cpu() - t0
    t0 = cpu()
    trajectories = [expert_trajectory(env, task) for task in tasks]
    expert = cpu() - t0
    env.close()
    steps = sum(len(t["steps"]) for t in trajectories)
    brancher = Brancher("admissible", k)
    records = [r for t in trajectories for r in brancher(t)] + list(brancher.finish())
    brancher.close()
    counts: collections.Counter = collections.Counter()
    stage = Rollout(count=lambda what, c=1: counts.update({what: c}))
    t0 = cpu()
    outs = [o for r in records for o in stage(r)] + list(stage.finish())
    stage.close()
    rollout = cpu() - t0  # one start of its environment included
    return {
        "env": name,
        "trajectories": len(trajectories),
        "succeeded": sum(t["success"] for t in trajectories),
        "expert_steps": steps,
        "steps_per_trajectory": steps / len(trajectories),
        "states": len(outs),
        "k": k,
        "rollout_env_steps": counts["env_steps"],
        "errors": counts["errors"],
        "start_cpu_s": start,
        "expert_cpu_s_per_step": expert / steps,
        "expert_cpu_s_per_trajectory": expert / len(trajectories),
        "rollout_cpu_s_per_step": rollout / counts["env_steps"],
        "rollout_cpu_s_per_state": rollout / len(outs),
        "rollout_steps_per_state": counts["env_steps"] / len(outs),
        "data": {
            "imitation-data": example_sizes("imitation-data", trajectories),
            "world-model-data": example_sizes("world-model-data", outs),
        },
    }


def example_sizes(stage: str, records: list[dict]) -> dict:
    """The training examples `eexp STAGE` makes of `records` (its defaults): how many a record, and their characters
    (every message), for the training side of the projection."""
    with tempfile.TemporaryDirectory() as d:
        source, made = Path(d) / "in.jsonl", Path(d) / "out.jsonl"
        source.write_text("".join(json.dumps(r) + "\n" for r in records))
        subprocess.run(EEXP + [stage, "-q", str(source), "-o", str(made)], check=True)
        examples = read(made)
    chars = [sum(len(m["content"]) for m in e["messages"]) for e in examples]
    return {
        "examples": len(examples),
        "per_record": len(examples) / len(records),
        "chars_per_example": sum(chars) / len(chars),
    }


def costs(shop_n: int) -> dict:
    root = Path(tempfile.mkdtemp(prefix="eexp-bc-"))
    try:
        os.environ["ALFWORLD_DATA"] = str(alfworld_data(root))  # (importing alfworld sets its own default)
        return {"shop": env_costs("shop", shop_n), "alfworld": env_costs("alfworld", None)}
    finally:
        shutil.rmtree(root, ignore_errors=True)


# --- output ------------------------------------------------------------------------------------------------------


def report_scaling(r: dict) -> None:
    print(
        f"scaling: rollout --ray over {r['trajectories']} sleepwalk trajectories ({r['states']} states, K={r['k']},"
        f" {r['env_steps']} env steps of {r['sleep_s'] * 1000:.0f} ms sleep), {r['cpus_per_node']} workers a node"
    )
    print(
        f"  head started in {r['head_start_s']:.1f} s, worker nodes in "
        f"{', '.join(f'{s:.1f}' for s in r['worker_node_start_s'])} s; serial run without the sleep "
        f"{r['serial_no_sleep_s']:.1f} s"
    )
    print(
        "  nodes  workers  wall s  sleep alone s  first record s  steady rec/s  speed-up  x linear  steady x "
        "linear  records"
    )
    for run in r["runs"]:
        steady = run["steady_efficiency"]
        print(
            f"  {run['nodes']:5d}  {run['workers']:7d}  {run['wall_s']:6.1f}  {run['sleep_bound_s']:13.1f}  "
            f"{run['first_record_s']:14.1f}  {run['steady_rps'] or 0:12.1f}  {run['speedup']:7.2f}x  "
            f"{run['efficiency']:7.2f}x  {'' if steady is None else f'{steady:.2f}x':>15}  "
            f"{'identical' if run['identical'] else 'DIFFER'}"
        )
    print("  target: >= 0.80x linear (the 1-node run is the baseline)")


def report_overhead(r: dict) -> None:
    print(
        f"overhead: rollout on {r['env']}, {r['trajectories']} trajectories ({r['records']} states, K={r['k']}), "
        f"{r['workers']} workers, best of {r['repeat']}"
    )
    print(
        f"  -j {r['workers']}: {r['best_jobs_s']:.2f} s   --ray (one node, started in {r['cluster_start_s']:.1f} s):"
        f" {r['best_ray_s']:.2f} s   ratio {r['ratio']:.3f} (target <= 1.10)   records "
        f"{'identical' if r['identical'] else 'DIFFER'}"
    )
    for kind in ("jobs", "ray"):
        walls = ", ".join(f"{x['wall_s']:.2f}" for x in r[kind])
        firsts = ", ".join(f"{x['first_record_s']:.2f}" for x in r[kind])
        print(f"  {kind:4} runs: {walls} s; first record at {firsts} s")


def report_costs(r: dict) -> None:
    print("costs: CPU seconds of one core (this process), per environment step")
    print(
        "  env       trajectories  steps/traj  start s  expert ms/step  expert s/traj  rollout ms/step  "
        "rollout steps/state  rollout s/state"
    )
    for c in r.values():
        print(
            f"  {c['env']:8}  {c['trajectories']:12d}  {c['steps_per_trajectory']:10.1f}  {c['start_cpu_s']:7.2f}  "
            f"{c['expert_cpu_s_per_step'] * 1000:14.2f}  {c['expert_cpu_s_per_trajectory']:13.3g}  "
            f"{c['rollout_cpu_s_per_step'] * 1000:15.2f}  {c['rollout_steps_per_state']:19.2f}  "
            f"{c['rollout_cpu_s_per_state']:15.3g}"
        )
    print("  training examples (the stages' defaults): per input record, characters each")
    for c in r.values():
        for stage, d in c["data"].items():
            print(f"  {c['env']:8}  {stage:16}  {d['per_record']:5.2f} a record  {d['chars_per_example']:8.0f} chars")


def project(c: dict, trajectories: int, steps: float) -> dict:
    """A paper-size run of environment `c` (costs' figures, at their K) from its measured costs: `trajectories`
    expert trajectories of `steps` steps, every state branched. Environment CPU-hours on one core: the expert at the
    measured cost of a trajectory (mostly its game's load), rollout at the measured cost of a state. Model calls and
    training examples are counted, with their characters as measured (a token is about 4 characters here)."""
    states = trajectories * steps
    iwm, il = c["data"]["world-model-data"], c["data"]["imitation-data"]
    return {
        "trajectories": trajectories,
        "steps": steps,
        "states": states,
        "k": c["k"],
        "expert_cpu_h": trajectories * c["expert_cpu_s_per_trajectory"] / 3600,
        "rollout_cpu_h": states * c["rollout_cpu_s_per_state"] / 3600,
        "rollout_env_steps": states * c["rollout_steps_per_state"],
        "policy_samples": states * c["k"],
        "il_examples": states,
        "il_tokens": states * il["chars_per_example"] / 4,
        "iwm_examples": states * iwm["per_record"],
        "iwm_tokens": states * iwm["per_record"] * iwm["chars_per_example"] / 4,
    }


def report_projection(p: dict) -> None:
    print(
        f"projection: {p['trajectories']:,} trajectories of {p['steps']:g} steps ({p['states']:,.0f} states), "
        f"K={p['k']}"
    )
    print(
        f"  environment, CPU-hours of one core: expert {p['expert_cpu_h']:.2f}, rollout {p['rollout_cpu_h']:.2f} "
        f"({p['rollout_env_steps']:,.0f} env steps)"
    )
    print(f"  policy samples if the K alternatives are proposed by the model: {p['policy_samples']:,.0f}")
    print(
        f"  training examples: imitation {p['il_examples']:,.0f} (~{p['il_tokens'] / 1e6:.0f}M tokens), world "
        f"model {p['iwm_examples']:,.0f} (~{p['iwm_tokens'] / 1e6:.0f}M tokens), an epoch"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="what", required=True)
    s = sub.add_parser("scaling", help="rollout --ray on 1, 2, 4 worker nodes, a sleep-step environment")
    s.add_argument("--nodes", default="1,2,4", help="worker node counts, increasing (default 1,2,4)")
    s.add_argument("--cpus", type=int, default=2, help="CPUs (environment workers) a node (default 2)")
    s.add_argument("-n", type=int, default=160, help="trajectories (default 160)")
    s.add_argument("--sleep", type=float, default=0.02, help="seconds a step sleeps (default 0.02)")
    o = sub.add_parser("overhead", help="rollout --ray on one node against -j, a real environment")
    o.add_argument("--env", default="alfworld", choices=("alfworld", "shop"))
    o.add_argument("-n", type=int, default=60, help="trajectories (default 60)")
    o.add_argument("--workers", type=int, default=2, help="-j N and --env-workers N (default 2)")
    o.add_argument("--repeat", type=int, default=3, help="runs of each (default 3)")
    c = sub.add_parser("costs", help="CPU seconds per environment step, shop and ALFWorld")
    c.add_argument("--shop", type=int, default=200, help="shop trajectories (default 200)")
    c.add_argument(
        "--project",
        type=int,
        default=3500,
        metavar="N",
        help="project a run of N ALFWorld expert trajectories from the costs (default 3500)",
    )
    c.add_argument("--steps", type=float, default=10.0, help="... of this many steps each (default 10)")
    c.add_argument("--load", metavar="FILE", help="project from the costs saved in FILE (--save) instead of measuring")
    for p in (s, o, c):
        p.add_argument("--save", metavar="FILE", help="also write the figures to FILE as JSON")
    args = ap.parse_args()
    if args.what == "scaling":
        result = scaling([int(x) for x in args.nodes.split(",")], args.cpus, args.n, args.sleep)
        for run in result["runs"]:
            run.pop("stderr")
        report_scaling(result)
    elif args.what == "overhead":
        result = overhead(args.env, args.n, args.workers, args.repeat)
        report_overhead(result)
    else:
        result = json.loads(Path(args.load).read_text()) if args.load else costs(args.shop)
        report_costs(result)
        report_projection(project(result["alfworld"], args.project, args.steps))
    if args.save:
        result["run"] = {
            "argv": sys.argv[1:],
            "load_average": os.getloadavg(),
            "cores": os.cpu_count(),
            "date_utc": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        }
        Path(args.save).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
