"""The command line: documented, and its errors name what is wrong."""

import re
from pathlib import Path

import pytest
from conftest import ROOT, cli
from test_data_cache import BROKEN, broken_folder

from backend.__main__ import build_parser
from backend.store import Store


def subcommands() -> list[str]:
    parser = build_parser()
    action = next(a for a in parser._actions if a.dest == "command")
    return list(action.choices)


def test_every_command_is_in_the_readme():
    readme = (ROOT / "README.md").read_text()
    documented = set(re.findall(r"python -m backend ([a-z-]+)", readme)) | set(
        re.findall(r"`(pause|resume|stop) RUN`", readme))
    missing = [c for c in subcommands() if c not in documented]
    assert not missing, f"commands missing from README.md: {missing}"


@pytest.mark.parametrize("command", ["run", "replay"])
def test_preset_help_lists_every_preset(command, capsys, monkeypatch):
    from backend.config.presets import PRESETS

    monkeypatch.setenv("COLUMNS", "400")  # no wrapping (argparse breaks lines at hyphens)
    with pytest.raises(SystemExit):
        build_parser().parse_args([command, "--help"])
    shown = capsys.readouterr().out
    assert all(name in shown.split() for name in PRESETS), (sorted(PRESETS), shown)


def test_bad_config_file_names_the_field(tmp_path):
    cfg = tmp_path / "bad.toml"
    cfg.write_text('preset = "tiny"\n[train]\nlr = -1.0\n')
    p = cli("run", "--config", cfg, db=tmp_path / "x.db", check=False)
    assert p.returncode == 2 and "train.lr: must be > 0" in p.stderr
    cfg.write_text('preset = "tiny"\n[model]\nhidden_sise = 64\n')
    p = cli("validate-config", cfg, db=tmp_path / "x.db", check=False)
    assert p.returncode == 2 and "model.hidden_sise: unknown key" in p.stderr


def test_shipped_configs_validate():
    for path in sorted(Path(ROOT / "configs").glob("*.toml")):
        assert cli("validate-config", path, db=":memory:").returncode == 0, path


def test_unknown_run_and_proposal_are_named(tmp_path):
    db = tmp_path / "x.db"
    Store(db).close()
    p = cli("show", 7, db=db, check=False)
    assert p.returncode == 2 and "no run 7" in p.stderr
    p = cli("decide", 3, "approve", db=db, check=False)
    assert p.returncode == 2 and "no proposal 3" in p.stderr


@pytest.mark.parametrize("argv", [["runs"], ["show", "1"], ["decide", "1", "approve"], ["run", "--resume", "1"]])
def test_a_database_that_is_not_there_is_named_not_created(argv, tmp_path, capsys):
    """A mistyped --db: commands that read a run name the path instead of
    creating an empty database (and its folder) and reporting no runs."""
    from backend.__main__ import main

    db = tmp_path / "typo" / "x.db"
    assert main([*argv, "--db", str(db)]) == 2
    assert f"error: --db: no database at '{db}'" in capsys.readouterr().err
    assert not db.parent.exists()


def test_replay_refuses_a_broken_schedule(tmp_path):
    bad = tmp_path / "s.json"
    bad.write_text('{"format": "closed-loop-schedule", "version": 2}')
    p = cli("replay", bad, db=tmp_path / "x.db", check=False)
    assert p.returncode != 0 and "version: expected 1" in p.stderr


def test_refusals_exit_2_naming_the_flag(tmp_path):
    """Every refusal exits 2 (the docstring's promise) with the flag named
    and no traceback: conflicting flags, unreadable @files, bad JSON."""
    db = tmp_path / "x.db"
    cases = [
        (("run", "--resume", 1, "--preset", "tiny"), "--resume"),
        (("decide", 1, "edit"), "--weights"),
        (("decide", 1, "approve", "--weights", "{}"), "--weights"),
        (("decide", 1, "edit", "--weights", "@" + str(tmp_path / "missing.json")), "missing.json"),
        (("set-mixture", 1, "--weights", "{not json"), "--weights"),
        (("set-mixture", 1, "--weights", "[" * 100_000), "--weights"),
        (("set-mixture", 1, "--weights", "9" * 4_301), "--weights"),  # past Python's int-digit limit
        (("replay", tmp_path / "nope.json"), "no such file"),
    ]
    for args, words in cases:
        p = cli(*args, db=db, check=False)
        assert p.returncode == 2, (args, p.returncode, p.stderr[-500:])
        assert words in p.stderr and "Traceback" not in p.stderr, (args, p.stderr[-500:])


def test_text_that_is_not_utf8_is_refused_naming_the_option(tmp_path):
    """Bytes that are not UTF-8 (--by $'\\xff') reach Python as a lone
    surrogate; the flag is refused before anything is stored."""
    from test_decisions import UNIFORM, propose

    from backend.config import preset
    from backend.store import Store

    db = tmp_path / "x.db"
    store = Store(db)
    run = store.create_run(preset("tiny").to_dict())
    store.add_segment(run, from_step=0, tokens_at=0, weights=UNIFORM, source="initial")
    pid = propose(store, run, step=10)
    store.close()
    bad = "\udcff"  # what the byte 0xff in argv decodes to (os.fsencode gives 0xff back)
    for args, flag in [(("decide", pid, "approve", "--by", bad), "--by"),
                       (("decide", pid, "reject", "--reason", "why" + bad), "--reason"),
                       (("set-mixture", run, "--weights", "{}", "--reason", bad), "--reason"),
                       (("ack-alert", run, "sort", "--note", bad), "--note")]:
        p = cli(*args, db=db, check=False)
        assert p.returncode == 2 and f"argument {flag}: not valid UTF-8 text" in p.stderr, (args, p.stderr[-500:])
        assert "Traceback" not in p.stderr
    store = Store(db)
    assert store.proposal(pid)["status"] == "pending"
    store.close()


def test_affinity_prints_the_latest_matrix_with_intervals(tmp_path, capsys):
    import json

    from test_affinity import client_run

    from backend.__main__ import main
    from backend.store import Store

    db = tmp_path / "a.db"
    store = Store(db)
    run = client_run(store).run_id
    store.add_alignment(run, 30, [{"skill": "copy", "domain": d, "value": v, "stderr": 0.01, "n": 8}
                                  for d, v in (("strings", -0.4), ("code", 0.1))])
    assert main(["affinity", str(run), "--db", str(db)]) == 0
    text = capsys.readouterr().out
    assert f"run {run}: affinity at step 30" in text
    copy = next(line for line in text.splitlines() if line.strip().startswith("copy "))
    assert re.search(r"strings \d\.\d\d \[\d\.\d\d, \d\.\d\d\] (prior|learned)", copy)
    out = json.loads(cli("affinity", run, "--json", db=db).stdout)
    assert out["step"] == 30 and set(out["affinity"]) == {"copy", "add2"}
    assert set(out["affinity"]["copy"]["strings"]) == {"mean", "lo", "hi", "prior", "source"}
    # the gradient alignment measured at that step, the most aligned domain first
    assert "copy  code +0.100 +- 0.010; strings -0.400 +- 0.010" in text
    assert out["alignment"] == {"copy": {"strings": {"value": -0.4, "stderr": 0.01},
                                         "code": {"value": 0.1, "stderr": 0.01}}}
    p = cli("affinity", 99, db=db, check=False)
    assert p.returncode == 2 and "no run 99" in p.stderr


def test_resume_with_a_policy_when_nothing_is_left_to_steer_says_so_and_goes_on(tmp_path):
    """set_policy refuses a run with no checkpoint left to steer; `run
    --resume --policy` says the policy was not applied and goes on with the
    resume (here: refused, the run is finished), without a traceback."""
    from backend.client import RunClient
    from backend.config import preset

    store = Store(tmp_path / "x.db")
    client = RunClient.register(store, preset("tiny").replace(policy="human"))
    client.finish(0)
    p = cli("run", "--resume", client.run_id, "--policy", "auto", db=tmp_path / "x.db", check=False)
    assert "--policy not applied: policy auto refused: run 1 is finished" in p.stderr, p.stderr
    assert "error: run 1 is finished" in p.stderr and "Traceback" not in p.stderr
    assert store.run(client.run_id)["policy"] == "human"


@pytest.mark.parametrize("kind", BROKEN)
def test_run_refuses_a_broken_data_file_before_creating_the_run(kind, tmp_path, capsys):
    """`run --config` with a folder domain holding a file the worker cannot
    read: exit 2 naming the domain, the file and (where it applies) the line
    and field; no run row is written."""
    import json

    from backend.__main__ import main
    from backend.config import preset

    folder, said = broken_folder(tmp_path, kind)
    cfg = preset("tiny").to_dict()
    cfg["data"]["domains"].append({"name": "mine", "source": "folder", "path": folder})
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    db = tmp_path / "x.db"
    assert main(["run", "--config", str(tmp_path / "cfg.json"), "--db", str(db)]) == 2
    err = capsys.readouterr().err
    assert f"error: data.domains[6]: {said}" in err, err
    assert Store(db).runs() == []
    # validate-config checks what a run start checks, and opens no database
    other = tmp_path / "other.db"
    assert main(["validate-config", str(tmp_path / "cfg.json"), "--db", str(other)]) == 2
    assert f"error: data.domains[6]: {said}" in capsys.readouterr().err
    assert not other.exists()


@pytest.mark.parametrize("command", [["report"], ["export-schedule", "--format", "megatron"]])
def test_an_output_that_cannot_be_written_is_named(command, tiny_run, tmp_path, capsys):
    """-o naming a folder (or a path with no permission): exit 2 naming -o, no traceback."""
    from backend.__main__ import main

    db, run_id = tiny_run
    assert main([command[0], str(run_id), *command[1:], "-o", str(tmp_path), "--db", str(db)]) == 2
    assert f"error: -o: cannot write '{tmp_path}': Is a directory" in capsys.readouterr().err
