"""End-to-end: a run steered on the example lm-eval tasks (examples/tasks,
configs/own-evals.toml shrunk to a tiny model): real lm-eval through the
loop, a multiple-choice group scored by acc_norm, a generated answer with a
regex filter, held-out twins, and a perplexity where lower is better."""

import json

import pytest
from conftest import ROOT, cli, cli_json

from backend.config import load
from backend.store import Store


@pytest.fixture(scope="module")
def own_evals_run(tmp_path_factory):
    cfg = load(ROOT / "configs" / "own-evals.toml").to_dict()
    cfg["model"] = {**cfg["model"], "hidden_size": 64, "num_layers": 2, "num_heads": 4, "intermediate_size": 128}
    cfg["train"] = {**cfg["train"], "steps": 20, "checkpoint_every": 10, "batch_size": 8}
    cfg["data"] = {**cfg["data"], "tokenizer_vocab": 400}
    cfg["evaluation"] = {**cfg["evaluation"], "items_per_skill": 8, "heldout_loss_sequences": 2}
    for t in cfg["evaluation"]["tasks"]:
        t["items_per_checkpoint"] = 12
    path = tmp_path_factory.mktemp("own") / "own.json"
    path.write_text(json.dumps(cfg))
    db = path.with_suffix(".db")
    res = cli_json("run", "--config", path, "--policy", "auto", db=db)
    assert res["status"] == "finished"
    return db, res["run"]


@pytest.mark.slow
def test_every_task_is_measured_at_every_checkpoint_with_its_noise(own_evals_run):
    db, run_id = own_evals_run
    store = Store(db)
    skills = {s["name"]: s for s in store.skills(run_id)}
    assert {"addition", "addition_holdout", "echo", "echo_holdout", "sonnets", "add2", "add2_holdout"} <= set(skills)
    assert skills["addition"]["metric"] == "acc_norm" and skills["addition"]["higher_is_better"] == 1
    assert skills["addition"]["chance"] == pytest.approx(0.25)
    assert skills["addition"]["tasks"] == ["ex_addition", "ex_addition_alt"]  # the group's facets
    assert skills["sonnets"]["metric"] == "bits_per_byte" and skills["sonnets"]["higher_is_better"] == 0
    assert skills["addition"]["domains"] == ["arithmetic"]
    steps = [c["step"] for c in store.checkpoints(run_id)]
    assert steps == [0, 10, 20]
    ms = store.measurements(run_id)
    for skill, metric, tasks in (("addition", "acc_norm", {"ex_addition", "ex_addition_alt"}),
                                 ("addition_holdout", "acc_norm", {"ex_addition_holdout"}),
                                 ("echo", "exact_match", {"ex_copy"}), ("sonnets", "bits_per_byte", {"ex_verse"})):
        for step in steps:
            rows = [m for m in ms if m["skill"] == skill and m["step"] == step and m["metric"] == metric]
            assert {m["task"] for m in rows} == tasks, (skill, step)
            assert all(m["n"] == 12 and m["stderr"] is not None for m in rows), (skill, step)
    # the per-item answers are kept, and each checkpoint asks other documents
    first = {s["doc_id"] for s in store.samples(run_id, 0, "ex_addition")}
    second = {s["doc_id"] for s in store.samples(run_id, 10, "ex_addition")}
    assert len(first) == len(second) == 12 and first != second
    # a perplexity is lower-is-better: its estimate says so, and no controller steers it
    cap = {c["skill"]: c for c in store.capability(run_id) if c["step"] == 20}
    assert {"addition", "echo", "sonnets"} <= set(cap)
    assert cap["sonnets"]["score"] > 0
    last = store.proposals(run_id)[-1]
    assert last["forecast"]["sonnets"]["basis"].startswith("not steered: its metric bits_per_byte")
    assert "addition" in last["forecast"] and not last["forecast"]["addition"]["basis"].startswith("not steered")


@pytest.mark.slow
def test_show_and_export_read_a_task_run(own_evals_run, tmp_path):
    db, run_id = own_evals_run
    out = cli_json("show", run_id, db=db)
    assert out["run"]["status"] == "finished" and out["run"]["phase"] == "finished"
    assert {"addition", "sonnets"} <= set(out["skills"])
    assert cli("export-schedule", run_id, "-o", tmp_path / "s.json", db=db).returncode == 0


@pytest.mark.slow
def test_the_capabilities_page_shows_task_skills_with_intervals_and_drill_down(own_evals_run, monkeypatch):
    import json as _json

    from conftest_dashboard import APP
    from streamlit.testing.v1 import AppTest

    db, run_id = own_evals_run
    monkeypatch.setenv("CLOSED_LOOP_DB", str(db))
    at = AppTest.from_file(APP, default_timeout=120).run()
    assert not at.exception, at.exception
    at.switch_page("pages/capabilities.py").run()
    assert not at.exception, at.exception
    spec = _json.loads(at.get("plotly_chart")[0].proto.spec)
    names = {t.get("name") for t in spec["data"]}
    assert {"addition", "echo", "sonnets"} <= {n.split(" ")[0] for n in names if n}
    for skill in ("addition", "sonnets"):
        at.selectbox(key=f"cap_drill_{run_id}").select(skill).run()
        assert not at.exception, at.exception
        facets = _json.loads(at.get("plotly_chart")[-1].proto.spec) if skill == "sonnets" else None
        table = next(df.value for df in at.dataframe if "prompt_variant" in df.value.columns)
        assert len(table) > 0 and table["stderr"].notna().all()
    # the perplexity's facet chart is on its own scale, not clipped to [0, 1]
    assert facets is not None and "range" not in facets["layout"].get("yaxis", {})
