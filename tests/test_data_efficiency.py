"""bench/data_efficiency.py: the arithmetic of its table on hand-made curves,
and one real --quick run (every method, real training and lm-eval) checked
for the table's shape, not its numbers."""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
import data_efficiency as de  # noqa: E402


def test_tokens_to_reach_interpolates_between_checkpoints():
    tokens = [0, 100, 200, 300]
    assert de.tokens_to_reach(tokens, [0.0, 0.2, 0.6, 0.7], 0.4) == pytest.approx(150)
    assert de.tokens_to_reach(tokens, [0.0, 0.2, 0.6, 0.7], 0.7) == pytest.approx(300)
    assert de.tokens_to_reach(tokens, [0.0, 0.2, 0.6, 0.7], 0.71) is None
    # the first crossing counts, not a later dip
    assert de.tokens_to_reach(tokens, [0.0, 0.5, 0.3, 0.6], 0.5) == pytest.approx(100)
    # reached before any training: 0 (no speedup is defined then)
    assert de.tokens_to_reach(tokens, [0.3, 0.3, 0.3, 0.3], 0.3) == 0.0


def run_of(steer, seconds=10.0, holdout=None, skills=("a", "b")):
    return {"seconds": seconds, "curve": {
        "tokens": [0, 100, 200, 300, 400], "steer": steer, "holdout": holdout or [0.0] * len(steer),
        "per_skill": [{s: v * (i + 1) / len(skills) for i, s in enumerate(skills)} for v in steer]}}


def test_summary_speedup_counts_the_reference_run():
    runs = {
        "natural": {0: run_of([0.0, 0.1, 0.2, 0.3, 0.4]), 1: run_of([0.0, 0.1, 0.2, 0.3, 0.4])},
        "uniform": {0: run_of([0.0, 0.2, 0.4, 0.5, 0.6], seconds=20), 1: run_of([0.0, 0.2, 0.4, 0.5, 0.6])},
        "deficit": {0: run_of([0.0, 0.4, 0.5, 0.6, 0.7]), 1: run_of([0.0, 0.3, 0.5, 0.6, 0.7])},
        "doremi": {0: run_of([0.0, 0.4, 0.5, 0.6, 0.7]), 1: run_of([0.0, 0.4, 0.5, 0.6, 0.7])},
    }
    s = de.summarise(runs, budget=400)
    rows = {r["method"]: r for r in s["rows"]}
    assert s["threshold"] == pytest.approx(0.4) and s["t_natural"] == 400
    assert rows["natural"]["speedup"] == pytest.approx(1.0)
    assert rows["uniform"]["tokens_to_reach"] == pytest.approx(200)
    assert rows["uniform"]["speedup"] == pytest.approx(2.0)
    # seed-averaged deficit curve 0, 0.35, 0.5: reaches 0.4 a third of the way from 100 to 200
    assert rows["deficit"]["tokens_to_reach"] == pytest.approx(100 + 100 / 3)
    assert rows["deficit"]["speedup_per_seed"] == pytest.approx([4.0, 400 / (100 + 100 / 2)])
    # doremi reaches it at 100 tokens, but its reference (the uniform run) cost the whole budget
    assert rows["doremi"]["tokens_to_reach"] == pytest.approx(500)
    assert rows["doremi"]["speedup"] == pytest.approx(0.8)
    assert rows["doremi"]["speedup_without_overhead"] == pytest.approx(4.0)
    assert rows["doremi"]["wall_s"] == pytest.approx((10 + 20 + 10 + 10) / 2)
    assert rows["deficit"]["worst_skill"] == "a" and rows["deficit"]["worst_steer"] == pytest.approx(0.35)


@pytest.mark.slow
def test_quick_mode_runs_every_method_and_writes_the_table(tmp_path, capsys):
    out, html = tmp_path / "eff.json", tmp_path / "eff.html"
    summary = de.main(["--quick", "--db", str(tmp_path / "eff.db"), "--out", str(out), "--html", str(html)])
    printed = capsys.readouterr().out
    assert printed.strip().splitlines()[-1].startswith("deficit speedup over natural: ")
    assert [r["method"] for r in summary["rows"]] == \
        ["natural", "uniform", "deficit", "doremi", "odm", "mixing-law"]
    for r in summary["rows"]:
        assert f"\n{r['method']:<11} " in printed
        assert set(r) >= {"tokens_to_reach", "speedup", "speedup_per_seed", "at_budget", "final_steer", "worst_steer",
                          "final_holdout", "wall_s", "overhead_tokens"}
        assert len(r["speedup_per_seed"]) == 1
        assert 0.0 <= r["final_steer"] <= 1.0 and r["wall_s"] > 0
    assert {r["method"]: r["overhead_tokens"] for r in summary["rows"]}["doremi"] == summary["budget_tokens"]
    assert set(summary["ranking"]) == {"deficit", "mixing-law"}  # the methods that read links
    # the tiny model moves no skill in 40 steps: the ranking line says there is nothing to rank
    assert "declared matrix: no skill moved with an affinity recorded, nothing to rank" in printed
    for c in summary["curves"].values():
        assert len(c["tokens"]) == summary["checkpoints"] + 1 and c["tokens"][-1] == summary["budget_tokens"]
    assert json.loads(out.read_text())["rows"] == summary["rows"]
    assert "plotly" in html.read_text()[:5000].lower()


def test_unknown_method_is_refused(capsys):
    with pytest.raises(SystemExit):
        de.main(["--quick", "--methods", "natural,greedy"])
    assert "unknown ['greedy']" in capsys.readouterr().err


def test_speedup_divides_by_naturals_first_reach_of_its_own_final_score():
    # natural plateaus at 0.4 after 100 tokens: its budget (400) would make it "4x" against itself
    runs = {
        "natural": {0: run_of([0.0, 0.4, 0.4, 0.4, 0.4])},
        "uniform": {0: run_of([0.0, 0.2, 0.4, 0.5, 0.6])},
        "doremi": {0: run_of([0.0, 0.8, 0.8, 0.8, 0.8])},
    }
    s = de.summarise(runs, budget=400)
    rows = {r["method"]: r for r in s["rows"]}
    assert s["t_natural"] == pytest.approx(100)
    assert rows["natural"]["speedup"] == pytest.approx(1.0) and rows["natural"]["speedup_per_seed"] == [1.0]
    assert rows["uniform"]["speedup"] == pytest.approx(0.5)  # reaches 0.4 at 200 tokens
    # the score at equal budget: the reference run of doremi spends the whole budget
    assert rows["uniform"]["at_budget"] == pytest.approx(0.6) and rows["doremi"]["at_budget"] == 0.0
    assert de.score_at([0, 100, 200], [0.0, 0.2, 0.6], 150) == pytest.approx(0.4)


def test_reuse_takes_a_finished_run_with_the_same_config_and_links(tmp_path):
    from backend import config as config_mod
    from backend.store import Store

    suite = config_mod.load(de.ROOT / "configs" / "efficiency.toml")
    old = Store(tmp_path / "old.db")
    made = {}
    for m, links in (("natural", "declared"), ("deficit", "declared")):
        cfg = de.method_config(suite, m, 0, 900, 75, 1, links=links)
        made[m] = old.create_run(cfg.to_dict())
        old.update_run(made[m], status="finished")
    natural = de.method_config(suite, "natural", 0, 900, 75, 1, links="learned")
    assert de.reusable([old], natural)[1]["id"] == made["natural"]  # natural reads no links
    assert de.reusable([old], de.method_config(suite, "natural", 1, 900, 75, 1)) is None  # another seed
    assert de.reusable([old], de.method_config(suite, "natural", 0, 960, 80, 1)) is None  # another budget
    assert de.reusable([old], de.method_config(suite, "deficit", 0, 900, 75, 1, links="learned")) is None
    assert de.reusable([old], de.method_config(suite, "deficit", 0, 900, 75, 1))[1]["id"] == made["deficit"]
    assert de.reads_links("deficit") and de.reads_links("mixing-law") and not de.reads_links("odm")
