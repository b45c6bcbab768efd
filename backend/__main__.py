"""Command line: python -m backend <command> ...

Every command takes --db PATH (default runs/closed_loop.db); those that
report take --json. The store is opened once, on first use, and closed when
the command ends, however it ends. Errors name the flag or field and exit
with status 2; a traceback means a bug.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path

from backend.store import DEFAULT_DB
from backend.vocab import WORKING_STATES


class UsageError(Exception):
    """Flags that do not go together, or a file named by a flag that cannot
    be read; the message names the flag."""


class Session:
    """What one command works with: its arguments and the store, opened on
    first use (validate-config never opens one) and closed by main(). Only
    a command that starts a new run (`creates_db`) creates a database that
    is not there; the others name the path (a mistyped --db)."""

    def __init__(self, args):
        self.args = args
        self._store = None

    @property
    def store(self):
        if self._store is None:
            from backend.store import Store

            args = self.args
            new_run = getattr(args, "creates_db", False) and getattr(args, "resume", None) is None
            if not new_run and args.db != ":memory:" and not Path(args.db).exists():
                raise UsageError(f"--db: no database at {str(args.db)!r} (python -m backend run creates one)")
            self._store = Store(args.db)
        return self._store

    def close(self) -> None:
        if self._store is not None:
            self._store.close()


def _print(obj, as_json: bool, text: str) -> None:
    print(json.dumps(obj, indent=2, default=str) if as_json else text)


def _load_config(args):
    from backend import config as config_mod

    if args.config and args.preset:
        raise config_mod.ConfigError("--config and --preset: give one, not both")
    cfg = config_mod.load(args.config) if args.config else config_mod.preset(args.preset or "demo")
    changes = {}
    if args.policy:
        changes["policy"] = args.policy
    if args.seed is not None:
        changes["seed"] = args.seed
    if args.steps is not None:
        changes["train"] = {**cfg.to_dict()["train"], "steps": args.steps}
    return cfg.replace(**changes) if changes else cfg


def cmd_run(s: Session) -> int:
    from backend.worker import create_run

    args = s.args
    if args.nproc > 1 and args.detach:
        raise UsageError("--nproc: runs in the foreground (--detach starts one process); "
                         "use nohup or a terminal multiplexer to leave it running")
    if args.resume is not None:
        if args.preset or args.config:
            raise UsageError("run --resume: continues an existing run; do not pass --preset/--config")
        store = s.store
        run_id = args.resume
        store.run(run_id)
        if args.policy:
            from backend.decisions import DecisionError, set_policy

            try:
                set_policy(store, run_id, args.policy, by="cli")
            except DecisionError as e:  # nothing left to steer: the resume still finishes the run
                print(f"--policy not applied: {e}", file=sys.stderr)
    else:
        cfg = _load_config(args)
        run_id = create_run(s.store, cfg)
    return _start(args, run_id, "run")


def _start(args, run_id: int, what: str) -> int:
    """Work on the run in this process (progress bar), or with --detach in
    a background worker, printing its run id."""
    from backend.worker import spawn, work

    if getattr(args, "nproc", 1) > 1:
        return _torchrun(args, run_id, what)
    if args.detach:
        pid = spawn(args.db, run_id)
        _print({"run": run_id, "pid": pid}, args.json, str(run_id))
        return 0
    status = work(args.db, run_id, progress=not args.json)
    _print({"run": run_id, "status": status}, args.json, f"{what} {run_id}: {status}")
    return 0


def _torchrun(args, run_id: int, what: str) -> int:
    """`run --nproc N`: the run's worker as N processes under torchrun
    (backend.distributed), in the foreground; torchrun's exit status is ours."""
    import subprocess

    from backend.distributed import torchrun_command
    from backend.store import Store

    # the ranks' output goes to stderr: stdout holds this command's answer (--json)
    code = subprocess.run(torchrun_command(args.nproc, ["worker", str(run_id), "--db", str(args.db)]),
                          stdout=sys.stderr).returncode
    store = Store(args.db)
    try:
        status = store.run(run_id)["status"]
    finally:
        store.close()
    _print({"run": run_id, "status": status, "nproc": args.nproc}, args.json, f"{what} {run_id}: {status}")
    return code


def cmd_worker(s: Session) -> int:
    from backend.worker import work

    args = s.args
    work(args.db, args.run, progress=False, lock_fd=args.lock_fd)
    return 0


def cmd_runs(s: Session) -> int:
    args = s.args
    rows = s.store.runs()
    out = [{k: r[k] for k in ("id", "name", "status", "policy", "step", "total_steps", "tokens_seen",
                               "pending", "heartbeat")} for r in rows]
    lines = [f"{'id':>4}  {'name':<12} {'status':<9} {'policy':<6} {'step':>11}  pending"]
    lines += [f"{r['id']:>4}  {r['name']:<12} {r['status']:<9} {r['policy']:<6} "
              f"{r['step']:>5}/{r['total_steps']:<5}  {r['pending']}" for r in out]
    _print(out, args.json, "\n".join(lines))
    return 0


def summarize(store, run_id: int) -> dict:
    """What `show` reports: the run with its phase, checkpoints, the latest
    measurement of each skill in its own metric, proposals, schedule."""
    from backend.status import eta

    run = store.run(run_id)
    metric = {s["name"]: s["metric"] or "exact_match" for s in store.skills(run_id)}
    latest: dict[str, dict] = {}
    for m in store.measurements(run_id):
        if m["skill"] is not None and m["metric"] == metric.get(m["skill"], "exact_match"):
            latest[m["skill"]] = {"step": m["step"], "metric": m["metric"], "value": m["value"],
                                  "stderr": m["stderr"], "n": m["n"], "kind": m["kind"]}
    return {
        "run": {**{k: run[k] for k in ("id", "name", "status", "policy", "step", "total_steps", "tokens_seen",
                                       "tokens_per_s", "error", "phase", "phase_started")}, **eta(store, run)},
        "checkpoints": [{k: c[k] for k in ("step", "tokens_seen", "train_loss", "wall_time")}
                        for c in store.checkpoints(run_id)],
        "skills": latest,
        "proposals": [{k: p[k] for k in ("id", "step", "strategy", "status", "decided_by",
                                         "applied_step", "final_weights")} for p in store.proposals(run_id)],
        "schedule": [{k: s[k] for k in ("from_step", "weights", "source", "proposal_id", "decided_by")}
                     for s in store.schedule(run_id)],
    }


def cmd_show(s: Session) -> int:
    args = s.args
    summary = summarize(s.store, args.run)
    r = summary["run"]
    lines = [f"run {r['id']} {r['name']}: {r['status']}, policy {r['policy']}, "
             f"step {r['step']}/{r['total_steps']}, {r['tokens_seen']:,} tokens"]
    if r["status"] in WORKING_STATES and r["phase"]:
        lines.append(f"phase: {r['phase']}; elapsed {r['elapsed_s']:.0f} s; "
                     + (f"next checkpoint in ~{r['eta_checkpoint_s']:.0f} s, end in ~{r['eta_end_s']:.0f} s"
                        if r["eta_end_s"] is not None else "no ETA yet"))
    if r["error"]:
        lines.append(f"error: {r['error']}")
    lines.append(f"checkpoints: {len(summary['checkpoints'])}" + (
        f" (last at step {summary['checkpoints'][-1]['step']}, train loss {summary['checkpoints'][-1]['train_loss']})"
        if summary["checkpoints"] else ""))
    lines.append("skills (latest measurement in the skill's metric ± stderr, n):")
    for name, m in summary["skills"].items():
        se = f"{m['stderr']:.3f}" if m["stderr"] is not None else "n/a"
        lines.append(f"  {name:<20} {m['kind']:<8} {m['metric']:<14} {m['value']:.3f} ± {se}  n={m['n']}  "
                     f"(step {m['step']})")
    lines.append("proposals:")
    for p in summary["proposals"]:
        applied = f", applied at step {p['applied_step']}" if p["applied_step"] is not None else ""
        by = f" by {p['decided_by']}" if p["decided_by"] else ""
        lines.append(f"  #{p['id']} step {p['step']} {p['strategy']}: {p['status']}{by}{applied}")
    lines.append("schedule:")
    for seg in summary["schedule"]:
        w = " ".join(f"{d}={v:.3f}" for d, v in seg["weights"].items())
        lines.append(f"  from step {seg['from_step']:>6} [{seg['source']}] {w}")
    _print(summary, args.json, "\n".join(lines))
    return 0


def _weights_arg(text: str | None):
    if text is None:
        return None
    if text.startswith("@"):
        try:
            src = Path(text[1:]).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise UsageError(f"--weights: cannot read {text[1:]!r}: {e.strerror if isinstance(e, OSError) else 'not UTF-8 text'}") from None
    else:
        src = text
    try:
        return json.loads(src)
    except (ValueError, RecursionError) as e:  # ValueError: bad JSON, or an integer past 4,300 digits
        raise UsageError(f"--weights: not valid JSON ({str(e)[:200]})") from None


def cmd_decide(s: Session) -> int:
    from backend.decisions import decide

    args = s.args
    weights = _weights_arg(args.weights)
    if args.action == "edit" and weights is None:
        raise UsageError("decide edit: needs --weights '{\"domain\": weight, ...}'")
    if args.action != "edit" and weights is not None:
        raise UsageError("decide --weights: only goes with edit")
    p = decide(s.store, args.proposal, args.action, weights=weights, by=args.by, reason=args.reason)
    _print(p, args.json, f"proposal {p['id']}: {p['status']}; {_apply_note(s.store, p['run_id'])}"
           if p["status"] != "rejected" else f"proposal {p['id']}: rejected")
    return 0


def _apply_note(store, run_id: int) -> str:
    """status.apply_note of the run: when a mixture decided now applies."""
    from backend.status import apply_note

    return apply_note(store, store.run(run_id))


def cmd_command(s: Session) -> int:
    from backend.decisions import send_command

    args = s.args
    send_command(s.store, args.run, args.command, by=args.by)
    _print({"run": args.run, "command": args.command}, args.json,
           f"{args.command} sent to run {args.run}")
    return 0


def cmd_set_mixture(s: Session) -> int:
    from backend.decisions import set_mixture

    args = s.args
    weights = _weights_arg(args.weights)  # the flag first: a bad --weights is named before the database is
    pid = set_mixture(s.store, args.run, weights, by=args.by, reason=args.reason)
    _print({"proposal": pid}, args.json, f"manual mixture stored as proposal {pid}; {_apply_note(s.store, args.run)}")
    return 0


def cmd_set_policy(s: Session) -> int:
    from backend.decisions import set_policy

    args = s.args
    set_policy(s.store, args.run, args.policy, by=args.by)
    _print({"run": args.run, "policy": args.policy}, args.json, f"run {args.run}: policy {args.policy}")
    return 0


def cmd_alerts(s: Session) -> int:
    from backend.guard import open_alerts

    args = s.args
    alerts = open_alerts(s.store, args.run)
    out = [{"skill": k, "step": e["after"].get("step"), "message": e["message"]} for k, e in alerts.items()]
    _print(out, args.json, "\n".join(f"{a['skill']} (step {a['step']}): {a['message']}" for a in out)
           or f"run {args.run}: no open Goodhart alerts")
    return 0


def cmd_affinity(s: Session) -> int:
    from backend import affinity

    args = s.args
    s.store.run(args.run)  # an unknown run: NotFound names it
    rows = s.store.affinity(args.run)
    if not rows:
        _print({"run": args.run, "step": None, "affinity": {}}, args.json,
               f"run {args.run}: no affinity estimated yet (it is estimated at each checkpoint)")
        return 0
    step = rows[-1]["step"]
    matrix = affinity.matrix([r for r in rows if r["step"] == step])
    lines = [f"run {args.run}: affinity at step {step}, domain by domain, the strongest first "
             f"(above-chance score per checkpoint per unit weight, mean [95% interval] source)"]
    width = max(len(k) for k in matrix)
    for skill, links in matrix.items():
        lines.append(f"  {skill:<{width}}  " + "; ".join(f"{d} {affinity.describe(links[d])}"
                                                       for d in affinity.ranked(links)))
    alignment: dict[str, dict[str, dict]] = {}
    for r in s.store.alignment(args.run, step):
        alignment.setdefault(r["skill"], {})[r["domain"]] = {"value": r["value"], "stderr": r["stderr"]}
    if alignment:
        lines.append(f"gradient alignment at step {step} (centred cosine of the domain's gradient with "
                     f"the skill's answer gradient, +- stderr), the most aligned first")
        for skill, cells in sorted(alignment.items()):
            order = sorted(cells, key=lambda d: -cells[d]["value"])
            lines.append(f"  {skill:<{width}}  " + "; ".join(
                f"{d} {cells[d]['value']:+.3f} +- {cells[d]['stderr'] or 0.0:.3f}" for d in order))
    _print({"run": args.run, "step": step, "affinity": matrix, "alignment": alignment}, args.json,
           "\n".join(lines))
    return 0


def cmd_ack(s: Session) -> int:
    from backend.guard import acknowledge

    args = s.args
    store = s.store
    acknowledge(store, args.run, args.skill, by=args.by, step=store.run(args.run)["step"], note=args.note)
    _print({"run": args.run, "skill": args.skill}, args.json,
           f"alert on {args.skill} acknowledged; the controller may push it again")
    return 0


def _prefixes(pairs: list[str] | None) -> dict[str, str] | None:
    """--prefix DOMAIN=PATH ... as a dict."""
    out = {}
    for pair in pairs or []:
        domain, sep, path = pair.partition("=")
        if not sep or not domain or not path:
            raise UsageError(f"--prefix: expected DOMAIN=PATH, got {pair!r}")
        out[domain] = path
    return out or None


@contextlib.contextmanager
def _writing(output: str):
    """-o OUTPUT as a Path; a file that cannot be written there (a folder,
    no permission, a full disk) is named as -o's, not a traceback."""
    try:
        yield Path(output)
    except OSError as e:
        raise UsageError(f"-o: cannot write {output!r}: {e.strerror}") from None


def cmd_export(s: Session) -> int:
    from backend.exports import export
    from backend.schedule import export_schedule

    args = s.args
    data = export_schedule(s.store, args.run)
    # document-sampling trainers get probabilities converted with the run's
    # measured tokens per document
    per_doc = {d["name"]: d["tokens_per_doc"] for d in s.store.domains(args.run) if d.get("tokens_per_doc")}
    text = export(data, args.format, prefixes=_prefixes(args.prefix), tokens_per_doc=per_doc or None)
    with _writing(args.output) as path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    _print({"file": args.output, "format": args.format, "segments": len(data["segments"])}, args.json,
           f"wrote {args.output} ({args.format}, {len(data['segments'])} segments)")
    return 0


def cmd_replay(s: Session) -> int:
    from backend import config as config_mod
    from backend.config import Limits
    from backend.schedule import ScheduleError, parse_replay
    from backend.worker import start_replay

    args = s.args
    path = Path(args.file)
    if not path.is_file():
        raise UsageError(f"replay FILE: no such file {args.file!r}")
    if args.config and args.preset:
        raise UsageError("replay --config and --preset: give one, not both")
    cfg = None  # a plain mixture needs the run it trains; a native schedule carries its own
    if args.config:
        cfg = config_mod.load(args.config)
    elif args.preset:
        cfg = config_mod.preset(args.preset)
    limit, size = Limits.from_env().max_schedule_bytes, path.stat().st_size
    if size > limit:  # before reading: a 4 GB file is refused, not loaded
        raise ScheduleError(f"{args.file}: schedule: the file is {size:,} bytes, above the limit of "
                            f"{limit:,} bytes (CLOSED_LOOP_MAX_SCHEDULE_BYTES)")
    try:
        sched = parse_replay(path.read_bytes(), cfg)
    except ScheduleError as e:
        raise ScheduleError(f"{args.file}: {e}") from None
    run_id = start_replay(args.db, sched, source=args.file, detach=False)
    return _start(args, run_id, "replay run")


def cmd_report(s: Session) -> int:
    args = s.args
    from backend.report import write_report
    with _writing(args.output) as path:
        write_report(s.store, args.run, path)
    _print({"file": args.output}, args.json, f"wrote {args.output}")
    return 0


def cmd_validate(s: Session) -> int:
    from backend import config as config_mod
    from backend.worker import check_runnable

    args = s.args
    cfg = config_mod.load(args.config)
    check_runnable(cfg, args.db)  # what `run` checks before it creates a run: data files, model, every lm-eval task
    _print(cfg.to_dict(), args.json, f"{args.config}: valid ({cfg.name}, {len(cfg.domain_names)} domains, "
           f"{len(cfg.steer_skills)} synthetic skills, {len(cfg.evaluation.tasks)} lm-eval tasks)")
    return 0


def _utf8(text: str) -> str:
    """Free text (who, why): valid UTF-8, as the store keeps it. Bytes that
    are not reach Python as lone surrogates, which SQLite cannot encode."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise argparse.ArgumentTypeError(f"not valid UTF-8 text: {text!r}"[:200]) from None
    return text


def _nproc(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected a process count >= 1, got {text!r}")
    return n


def build_parser() -> argparse.ArgumentParser:
    from backend.config.presets import PRESETS

    presets = " | ".join(PRESETS)
    ap = argparse.ArgumentParser(prog="python -m backend", description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="command", required=True)

    def add(name, func, help_):
        p = sub.add_parser(name, help=help_)
        p.add_argument("--db", default=DEFAULT_DB, help=f"run database (default {DEFAULT_DB})")
        p.add_argument("--json", action="store_true", help="machine-readable output")
        p.set_defaults(func=func)
        return p

    p = add("run", cmd_run, "start a run (foreground, or --detach), or --resume one")
    p.set_defaults(creates_db=True)
    p.add_argument("--preset", help=presets)
    p.add_argument("--config", help="run config file (.json or .toml)")
    p.add_argument("--policy", choices=("auto", "human"))
    p.add_argument("--seed", type=int)
    p.add_argument("--steps", type=int, help="override train.steps")
    p.add_argument("--resume", type=int, metavar="RUN", help="continue a stopped or crashed run")
    p.add_argument("--detach", action="store_true", help="start a background worker, print the run id")
    p.add_argument("--nproc", type=_nproc, default=1, metavar="N",
                   help="train in N processes under torchrun (DDP: one per GPU, or gloo on CPU)")

    p = add("worker", cmd_worker, "process entry of a background worker (used by --detach)")
    p.add_argument("run", type=int)
    p.add_argument("--lock-fd", type=int, help="the run's lock, taken by the process that spawned this one")

    add("runs", cmd_runs, "list runs")
    p = add("show", cmd_show, "summarise one run")
    p.add_argument("run", type=int)

    p = add("decide", cmd_decide, "approve, reject or edit a pending proposal")
    p.add_argument("proposal", type=int)
    p.add_argument("action", choices=("approve", "reject", "edit"))
    p.add_argument("--weights", help="edited weights as JSON (or @file)")
    p.add_argument("--by", type=_utf8, default="cli", help="who decides (audit log)")
    p.add_argument("--reason", type=_utf8, help="why (kept with the decision)")

    for name in ("pause", "resume", "stop"):
        p = add(name, cmd_command, f"{name} a run's worker")
        p.add_argument("run", type=int)
        p.add_argument("--by", type=_utf8, default="cli")
        p.set_defaults(command=name)

    p = add("set-mixture", cmd_set_mixture, "set a manual mixture (applies at the next checkpoint)")
    p.add_argument("run", type=int)
    p.add_argument("--weights", required=True, help="weights as JSON (or @file)")
    p.add_argument("--by", type=_utf8, default="cli")
    p.add_argument("--reason", type=_utf8)

    p = add("set-policy", cmd_set_policy, "switch a run between auto and human approval")
    p.add_argument("run", type=int)
    p.add_argument("policy", choices=("auto", "human"))
    p.add_argument("--by", type=_utf8, default="cli")

    p = add("alerts", cmd_alerts, "open Goodhart alerts of a run")
    p.add_argument("run", type=int)

    p = add("affinity", cmd_affinity, "how much each domain feeds each skill: the latest estimate with intervals")
    p.add_argument("run", type=int)

    p = add("ack-alert", cmd_ack, "acknowledge a skill's Goodhart alert (the controller may push it again)")
    p.add_argument("run", type=int)
    p.add_argument("skill")
    p.add_argument("--by", type=_utf8, default="cli")
    p.add_argument("--note", type=_utf8)

    p = add("export-schedule", cmd_export, "write a run's mixture schedule (native JSON or a trainer's format)")
    p.add_argument("run", type=int)
    p.add_argument("-o", "--output", required=True)
    p.add_argument("--format", default="native",
                   help="native | megatron | nemo | olmo-core | streaming | hf | data-juicer (docs/exports.md)")
    p.add_argument("--prefix", action="append", metavar="DOMAIN=PATH",
                   help="file prefix or path of a domain's data in the trainer's format (repeatable)")

    p = add("replay", cmd_replay, "start a run that follows an exported schedule or a {domain: weight} mixture")
    p.set_defaults(creates_db=True)
    p.add_argument("file", help="a native schedule (export-schedule) or a plain {domain: weight} JSON mixture")
    p.add_argument("--config", help="run config file for a plain mixture (.json or .toml)")
    p.add_argument("--preset", help=f"preset run for a plain mixture: {presets}")
    p.add_argument("--detach", action="store_true")

    p = add("report", cmd_report, "write a standalone HTML report of a run (charts, mixture, decisions)")
    p.add_argument("run", type=int)
    p.add_argument("-o", "--output", required=True)

    p = add("validate-config", cmd_validate, "check a config file")
    p.add_argument("config")
    return ap


def main(argv=None) -> int:
    from backend.config import ConfigError
    from backend.data.domains import DataError
    from backend.exports import ExportError
    from backend.schedule import ScheduleError
    from backend.store import StoreError
    from backend.mixture import WeightsError
    from backend.registry import RegistryError
    from backend.worker import WorkerError

    args = build_parser().parse_args(argv)  # bad flags: argparse exits 2 naming them
    session = Session(args)
    # `pause`/`resume`/`stop` carry their own name in args.command
    try:
        return args.func(session)
    except (UsageError, ConfigError, DataError, ScheduleError, StoreError, WorkerError, WeightsError,
            RegistryError, ExportError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    finally:
        session.close()


if __name__ == "__main__":
    sys.exit(main())
