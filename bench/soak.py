"""Reliability soaks: nothing lost, nothing run twice, nothing let in.

    python bench/soak.py                       # all three, full size
    python bench/soak.py --quick               # what the test suite runs
    python bench/soak.py --only kill9 --kills 20

kill9       a real run (preset tiny, policy auto, real lm-eval) is killed with
            SIGKILL --kills times, at start-up, mid-stretch and mid-evaluation
            in turn, and resumed each time; at the end its schedule,
            measurements, proposals and final weights are compared with an
            uninterrupted run of the same config.
concurrent  --writers processes decide pending proposals (approve, edit,
            reject), set manual mixtures and switch the policy for --seconds
            while the worker trains a human-policy run; counts lock errors,
            proposals decided twice, applied mixtures that did not train
            exactly once, and decisions that the audit log and the schedule
            disagree on.
fuzz        --schedules mutated schedules and --configs mutated configs
            (bench/fuzz.py) go through the real entry points; each must be
            refused naming a field or accepted, and a refusal must leave the
            database byte-identical.

Each prints its figures; the last line is the summary, `soak: OK` or
`soak: FAILED (...)`, and the exit status is 0 only when every soak held.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import random
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from backend.store import Store  # noqa: E402


def cli(*args, db, env=None, timeout=900) -> dict:
    """`python -m backend ARGS --db DB --json` in a fresh process; its JSON."""
    cmd = [sys.executable, "-m", "backend", *map(str, args), "--db", str(db), "--json"]
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                       env={**os.environ, **(env or {})})
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({p.returncode}): {p.stderr[-2000:]}")
    return json.loads(p.stdout)


def wait_for(predicate, timeout: float = 600, every: float = 0.01):
    end = time.time() + timeout
    while time.time() < end:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise TimeoutError("timed out waiting")


def _dead(pid: int) -> bool:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def run_outcome(store: Store, run_id: int) -> dict:
    """What a run produced, in a comparable form."""
    from safetensors.torch import load_file

    last = store.checkpoints(run_id)[-1]
    weights = load_file(str(Path(last["path"]) / "model.safetensors"))
    return {
        "schedule": [(s["from_step"], s["weights"], s["source"]) for s in store.schedule(run_id)],
        "measurements": {(m["step"], m["task"], m["metric"], m["prompt_variant"]): m["value"]
                         for m in store.measurements(run_id)},
        "proposals": [(p["step"], p["status"], p["final_weights"]) for p in store.proposals(run_id)],
        "model": weights,
    }


def compare_outcomes(a: dict, b: dict) -> dict:
    """Differences between two run outcomes (all zero when identical)."""
    max_dw = max(float((a["model"][k] - b["model"][k]).abs().max()) for k in a["model"])
    return {
        "schedule_equal": a["schedule"] == b["schedule"],
        "measurements_differing": sum(a["measurements"].get(k) != v for k, v in b["measurements"].items())
        + len(set(a["measurements"]) ^ set(b["measurements"])),
        "proposals_equal": a["proposals"] == b["proposals"],
        "max_abs_dw": max_dw,
    }


# -- kill -9 -------------------------------------------------------------------


def soak_kill9(kills: int, steps: int, workdir: Path) -> dict:
    """SIGKILL the worker `kills` times (start-up, mid-stretch,
    mid-evaluation in turn), resume each time, compare with a run never killed."""
    env = {"CLOSED_LOOP_POLL_S": "0.05"}
    ref_db = workdir / "reference.db"
    ref = cli("run", "--preset", "tiny", "--policy", "auto", "--steps", steps, db=ref_db, env=env)
    db = workdir / "killed.db"
    started = cli("run", "--preset", "tiny", "--policy", "auto", "--steps", steps, "--detach", db=db, env=env)
    run_id, pid = started["run"], started["pid"]
    store = Store(db)
    phases = ("start-up", "training", "evaluation")
    done_kills, by_phase, t0 = 0, {p: 0 for p in phases}, time.time()
    for k in range(kills):
        phase = phases[k % len(phases)]
        run = store.run(run_id)
        if run["status"] == "finished":
            break
        step0 = run["step"]
        cks0 = len(store.checkpoints(run_id))
        try:
            if phase == "start-up":
                time.sleep(random.Random(k).uniform(0.2, 2.0))
            elif phase == "training":
                wait_for(lambda: store.run(run_id)["step"] != step0 or store.run(run_id)["status"] == "finished",
                         timeout=300)
            else:  # a new checkpoint row, not yet evaluated
                wait_for(lambda: len(store.checkpoints(run_id)) > cks0
                         and not store.checkpoints(run_id)[-1]["evaluated"]
                         or store.run(run_id)["status"] == "finished", timeout=300, every=0.002)
        except TimeoutError:
            pass
        if store.run(run_id)["status"] == "finished":
            break
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        wait_for(lambda: _dead(pid), timeout=60)
        done_kills += 1
        by_phase[phase] += 1
        pid = cli("run", "--resume", run_id, "--detach", db=db, env=env)["pid"]
    wait_for(lambda: store.run(run_id)["status"] in ("finished", "failed"), timeout=1800, every=0.2)
    diff = compare_outcomes(run_outcome(Store(ref_db), ref["run"]), run_outcome(store, run_id))
    ok = (store.run(run_id)["status"] == "finished" and diff["schedule_equal"] and diff["proposals_equal"]
          and diff["measurements_differing"] == 0 and diff["max_abs_dw"] == 0.0)
    return {"kills": done_kills, "by_phase": by_phase, "status": store.run(run_id)["status"],
            "resumes": sum(e["kind"] == "resumed" for e in store.events(run_id)),
            "wall_s": round(time.time() - t0, 1), **diff, "ok": ok}


# -- concurrent writers ----------------------------------------------------------------


def _writer(db: str, run_id: int, seconds: float, seed: int, out) -> None:
    """One person at the dashboard: decide, set mixtures, switch policy."""
    from backend import decisions
    from backend.store import StoreError

    rng = random.Random(seed)
    store = Store(db)
    counts = {"decided": 0, "refused": 0, "manual": 0, "policy": 0, "lock_errors": 0, "other_errors": []}
    domains = [d["name"] for d in store.domains(run_id)]
    end = time.time() + seconds
    while time.time() < end:
        try:
            r = rng.random()
            if r < 0.6:
                pending = store.proposals(run_id, status="pending")
                if pending:
                    p = rng.choice(pending)
                    action = rng.choice(["approve", "approve", "edit", "reject"])
                    weights = {d: rng.random() + 0.01 for d in domains} if action == "edit" else None
                    decisions.decide(store, p["id"], action, weights=weights, by=f"writer{seed}")
                    counts["decided"] += 1
            elif r < 0.8:
                decisions.set_mixture(store, run_id, {d: rng.random() + 0.01 for d in domains},
                                      by=f"writer{seed}")
                counts["manual"] += 1
            else:
                decisions.set_policy(store, run_id, rng.choice(["auto", "human"]), by=f"writer{seed}")
                counts["policy"] += 1
        except sqlite3.OperationalError as e:
            counts["lock_errors"] += "locked" in str(e) or "busy" in str(e)
            if "locked" not in str(e) and "busy" not in str(e):
                counts["other_errors"].append(repr(e))
        except StoreError:
            counts["refused"] += 1  # lost a race (decided by someone else): expected
        except Exception as e:  # noqa: BLE001 - the soak counts every surprise
            if type(e).__name__ in ("DecisionError", "CommandError"):
                counts["refused"] += 1
            else:
                counts["other_errors"].append(repr(e))
        time.sleep(rng.uniform(0.0, 0.05))
    out.put(counts)


def check_trained_once(store: Store, run_id: int) -> dict:
    """Every applied proposal has exactly one schedule row, that row's
    weights are what the next checkpoint says trained, and no proposal was
    decided twice (audit log)."""
    schedule = store.schedule(run_id)
    rows_by_pid: dict[int, int] = {}
    for s in schedule:
        if s["proposal_id"] is not None:
            rows_by_pid[s["proposal_id"]] = rows_by_pid.get(s["proposal_id"], 0) + 1
    applied = [p for p in store.proposals(run_id) if p["status"] == "applied"]
    not_once = [p["id"] for p in applied if rows_by_pid.get(p["id"]) != 1]
    stray = [pid for pid in rows_by_pid if store.proposal(pid)["status"] != "applied"]
    decided: dict[int, int] = {}
    for e in store.events(run_id):
        if e["kind"] in ("approved", "edited", "rejected") and e["proposal_id"] is not None:
            decided[e["proposal_id"]] = decided.get(e["proposal_id"], 0) + 1
    twice = [pid for pid, n in decided.items() if n > 1]
    cks = {c["step"]: c for c in store.checkpoints(run_id)}
    untrained = []
    for i, s in enumerate(schedule):
        end = schedule[i + 1]["from_step"] if i + 1 < len(schedule) else None
        nxt = min((st for st in cks if st > s["from_step"]), default=None)
        if nxt is not None and (end is None or nxt <= end) and cks[nxt]["weights"] != s["weights"]:
            untrained.append(s["from_step"])
    return {"applied": len(applied), "applied_not_once": not_once, "stray_rows": stray,
            "decided_twice": twice, "segments_not_trained": untrained}


def soak_concurrent(writers: int, seconds: float, steps: int, workdir: Path) -> dict:
    """`writers` processes write for `seconds` while the worker trains."""
    db = workdir / "concurrent.db"
    env = {"CLOSED_LOOP_POLL_S": "0.2"}
    started = cli("run", "--preset", "tiny", "--policy", "human", "--steps", steps, "--detach", db=db, env=env)
    run_id = started["run"]
    store = Store(db)
    wait_for(lambda: store.schedule(run_id), timeout=300, every=0.1)
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    procs = [ctx.Process(target=_writer, args=(str(db), run_id, seconds, i, q)) for i in range(writers)]
    for p in procs:
        p.start()
    results = [q.get(timeout=seconds + 300) for _ in procs]
    for p in procs:
        p.join()
    wait_for(lambda: store.run(run_id)["status"] in ("finished", "failed", "stopped"), timeout=1800, every=0.5)
    checks = check_trained_once(store, run_id)
    totals = {k: sum(r[k] for r in results) for k in ("decided", "refused", "manual", "policy", "lock_errors")}
    errors = [e for r in results for e in r["other_errors"]]
    ok = (store.run(run_id)["status"] == "finished" and totals["lock_errors"] == 0 and not errors
          and not any(checks[k] for k in ("applied_not_once", "stray_rows", "decided_twice",
                                          "segments_not_trained")))
    return {"writers": writers, "seconds": seconds, **totals, "unexpected_errors": errors[:5],
            "run_status": store.run(run_id)["status"], **checks, "ok": ok}


# -- fuzz -------------------------------------------------------------------------


def soak_fuzz(n_schedules: int, n_configs: int, seed: int, workdir: Path) -> dict:
    """Mutated inputs through the real entry points (bench/fuzz.py)."""
    sys.path.insert(0, str(ROOT / "bench"))
    import fuzz

    return fuzz.soak(n_schedules=n_schedules, n_configs=n_configs, seed=seed, workdir=workdir)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", choices=("kill9", "concurrent", "fuzz"), action="append")
    ap.add_argument("--quick", action="store_true", help="short versions (the test suite's)")
    ap.add_argument("--kills", type=int, default=20)
    ap.add_argument("--kill-steps", type=int, default=120, help="steps of the killed run")
    ap.add_argument("--writers", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--concurrent-steps", type=int, default=200)
    ap.add_argument("--schedules", type=int, default=1000)
    ap.add_argument("--configs", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if args.quick:
        args.kills, args.kill_steps = 3, 30
        args.writers, args.seconds, args.concurrent_steps = 4, 10, 40
        args.schedules, args.configs = 100, 50
    only = args.only or ["kill9", "concurrent", "fuzz"]
    results = {}
    with tempfile.TemporaryDirectory(prefix="soak-") as tmp:
        work = Path(tmp)
        if "kill9" in only:
            results["kill9"] = r = soak_kill9(args.kills, args.kill_steps, work)
            print(f"kill9: {r['kills']} SIGKILLs {r['by_phase']}, {r['resumes']} resumes, status {r['status']}, "
                  f"schedule equal {r['schedule_equal']}, proposals equal {r['proposals_equal']}, "
                  f"{r['measurements_differing']} measurements differ, max |dw| {r['max_abs_dw']:g} "
                  f"({r['wall_s']} s)")
        if "concurrent" in only:
            results["concurrent"] = r = soak_concurrent(args.writers, args.seconds, args.concurrent_steps, work)
            print(f"concurrent: {r['writers']} writers x {r['seconds']:g} s: {r['decided']} decisions, "
                  f"{r['refused']} refused (lost races), {r['manual']} manual mixtures, {r['policy']} policy "
                  f"switches; {r['lock_errors']} lock errors, {len(r['unexpected_errors'])} unexpected errors; "
                  f"{r['applied']} applied, {len(r['applied_not_once'])} not trained exactly once, "
                  f"{len(r['decided_twice'])} decided twice, {len(r['stray_rows'])} stray schedule rows, "
                  f"{len(r['segments_not_trained'])} segments not trained; run {r['run_status']}")
        if "fuzz" in only:
            results["fuzz"] = r = soak_fuzz(args.schedules, args.configs, args.seed, work)
            print(f"fuzz: {r['schedules']} schedules, {r['configs']} configs: {r['refused']} refused naming a "
                  f"field, {r['accepted']} accepted, {r['unexpected']} unexpected exceptions, "
                  f"{r['db_changed_on_refusal']} database changes on refusal")
    failed = [k for k, r in results.items() if not r["ok"]]
    print(f"soak: {'OK' if not failed else 'FAILED (' + ', '.join(failed) + ')'} "
          + " ".join(f"{k}={'ok' if r['ok'] else 'FAIL'}" for k, r in results.items()))
    if failed:
        print(json.dumps({k: {kk: vv for kk, vv in results[k].items() if kk != 'model'} for k in failed},
                         indent=2, default=str), file=sys.stderr)
    return 0 if not failed else 1


if __name__ == "__main__":
    sys.exit(main())
