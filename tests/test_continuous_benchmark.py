"""The continuous-world benchmark end to end in a few seconds: its rows, settings and report."""

import json

import pytest
import torch

from _scripts import load_benchmark


@pytest.fixture(scope="module")
def bench():
    return load_benchmark("continuous_world")


def test_one_tiny_seed_gives_every_row_and_the_report(bench, tmp_path):
    run = bench.run_seed(0, pairs=4, steps=3, train_steps=2, codes=4, refine_steps=2)
    assert set(run["rows"]) == {"independent", "network", "codebook", "exact_ratio"}
    for row in run["rows"].values():
        assert set(row) == set(bench.METRICS)
        assert all(0.0 <= value <= 1.0 for value in row.values())
    settings = run["settings"]
    assert settings["world"] == "continuous" and settings["use_dlsm"] is False
    assert settings["guidance_scale_audio"] == settings["guidance_scale_video"] == bench.SCALE
    assert settings["discriminator"] == "SharedLatentDiscriminator"
    assert [c["noise_level"] for c in run["calibration"]] == list(bench.NOISE_LEVELS)
    report = bench.aggregate([json.loads(json.dumps(run))])
    text = bench.markdown(report)
    for row in bench.ROWS:
        assert f"| {row} |" in text
    bench.figure(report, tmp_path / "report.png")
    assert (tmp_path / "report.png").stat().st_size > 1000


def test_the_trained_base_models_rows_and_table(bench, tmp_path):
    """``--base trained``: the same four rows sample the shipped base models; the exact ratio
    (the world's) aligns them nearly as it aligns the ideal ones, even in 5 steps; the
    network comes from the ideal run's cache."""
    cache = tmp_path / "networks" / "seed_0"
    ideal = bench.run_seed(0, pairs=4, steps=3, train_steps=2, codes=4, refine_steps=2, cache=cache)
    run = bench.run_seed(0, 8, 5, 2, codes=4, cache=cache, base="trained", refine_steps=2)
    assert set(run["rows"]) == set(bench.ROWS)
    assert run["settings"]["base_models"] == bench.BASE_MODELS["trained"]
    assert run["train_seconds"] == ideal["train_seconds"]  # read back, not trained again
    assert run["rows"]["exact_ratio"]["semantic"] >= 0.75
    assert run["rows"]["independent"]["validity_audio"] >= 0.75
    report = bench.aggregate([json.loads(json.dumps(run))] * 2)
    assert report["rows_std"]["exact_ratio"]["semantic"] == 0.0
    text = bench.markdown(report)
    assert bench.BASE_MODELS["trained"] in text
    for row in bench.ROWS:
        assert f"| {row} |" in text


def test_a_seeds_network_is_saved_and_reused_only_with_the_same_settings(tmp_path):
    import torch

    from mmdisco.world.continuous import ContinuousWorldConfig
    from mmdisco.world.continuous_eval import RECIPES, TRAINING_RECORD, train_network
    from mmdisco.world.continuous_ratio import ContinuousWorldTerms
    from mmdisco.world.continuous_training import ContinuousTrainConfig, training_data

    terms = ContinuousWorldTerms(ContinuousWorldConfig())
    recipe = RECIPES["conv"].to_dict()
    cfg = ContinuousTrainConfig(
        **{**recipe, "seed": 3, "steps": 2, "batch_size": 16, "refine_steps": 0}
    )
    data = training_data(terms.config, cfg)
    cache = tmp_path / "seed_3"
    trained, seconds = train_network(terms, *data, cfg, "conv", cache)
    assert json.loads((cache / TRAINING_RECORD).read_text())["train_seconds"] == seconds
    loaded, loaded_seconds = train_network(terms, *data, cfg, "conv", cache)
    assert loaded is not trained and loaded_seconds == seconds
    a, v = data[0][0][:4], data[0][1][:4]
    log_snr = torch.full((4,), 1.0)
    torch.testing.assert_close(
        loaded(a, v, log_snr, log_snr), trained(a, v, log_snr, log_snr), atol=1e-6, rtol=0
    )
    changed = ContinuousTrainConfig(**{**cfg.to_dict(), "steps": 3})
    train_network(terms, *data, changed, "conv", cache)  # retrained, and the record replaced
    assert json.loads((cache / TRAINING_RECORD).read_text())["training"]["steps"] == 3


def test_guidance_window_benchmark_rows_and_table():
    window = load_benchmark("guidance_window")
    report = window.run(pairs=2, steps=3, windows=((0.0, 0.5),), modalities=("video",))
    assert [(row["window"], row["guided"]) for row in report["rows"]] == [
        (None, "both"),
        ([0.0, 0.5], "both"),
        ([0.0, 1.0], "video"),
    ]
    text = window.markdown(report)
    assert "| none (independent) |" in text and "| [0, 0.5] | both |" in text
    assert "| [0, 1] | video |" in text


def test_guidance_scale_benchmark_reuses_the_saved_networks(bench, tmp_path):
    """The scale sweep samples a seed's saved network with the report's seeds, so its
    scale-2 row with the ideal base models is the report's ``network`` row; without a saved
    network it says which command trains one."""
    sweep = load_benchmark("guidance_scale")
    networks = tmp_path / "networks"
    run = bench.run_seed(
        0, pairs=4, steps=3, train_steps=2, codes=4, refine_steps=2, cache=networks / "seed_0"
    )
    swept = sweep.run_seed(networks, 0, pairs=4, steps=3, scales=(0.5, bench.SCALE))
    assert set(swept["rows"]) == {"ideal", "trained"}
    assert list(swept["rows"]["ideal"]) == ["0.5", f"{bench.SCALE:g}"]
    assert swept["rows"]["ideal"][f"{bench.SCALE:g}"] == pytest.approx(run["rows"]["network"])
    (tmp_path / "report.json").write_text(json.dumps(bench.aggregate([run])))
    reports = {"ideal": tmp_path / "report.json", "trained": tmp_path / "absent.json"}
    report = sweep.aggregate([swept, swept], reports)
    assert report["rows"]["trained"]["0.5"]["semantic"]["std"] == 0.0
    assert report["exact_ratio"] == {"ideal": pytest.approx(run["rows"]["exact_ratio"])}
    text = sweep.markdown(report)
    assert "| ideal | 0.5 |" in text and "| trained | 2 |" in text
    assert "| ideal | exact ratio, 1 |" in text and "| trained | exact ratio" not in text
    sweep.figure(report, tmp_path / "scale.png")
    assert (tmp_path / "scale.png").stat().st_size > 1000
    with pytest.raises(SystemExit, match=r"continuous_world.py --seed 1"):
        sweep.run_seed(networks, 1, pairs=4, steps=3, scales=(1.0,))


def test_memorisation_benchmark_compares_training_and_held_out_clips(bench, tmp_path):
    """The copy-rate check samples a seed's saved network with the report's seeds and the
    trained base models, so its ``training`` column is the trained-base report's copy rate;
    the held-out column uses other clips, and without a saved network it says which command
    trains one."""
    mem = load_benchmark("memorisation")
    networks = tmp_path / "networks"
    cache = networks / "seed_0"
    run = bench.run_seed(
        0, pairs=4, steps=3, train_steps=2, codes=4, refine_steps=2, cache=cache, base="trained"
    )
    out = mem.run_seed(networks, 0, pairs=4, steps=3)
    assert list(out["rows"]) == ["independent", "network", "exact_ratio"]
    for name, row in out["rows"].items():
        assert row["training"] == pytest.approx(run["rows"][name]["copy_rate"]), name
        assert row["difference"] == pytest.approx(row["training"] - row["held_out"])
    report = mem.aggregate([out, out])
    assert report["rows"]["network"]["held_out"]["std"] == 0.0
    assert report["rows"]["network"]["training"]["mean"] == pytest.approx(
        out["rows"]["network"]["training"]
    )
    assert "| network |" in mem.markdown(report) and "| exact_ratio |" in mem.markdown(report)
    with pytest.raises(SystemExit, match=r"continuous_world.py --seed 1"):
        mem.run_seed(networks, 1, pairs=4, steps=3)


def test_sliding_window_benchmark_scores_the_parts_of_long_clips(bench, tmp_path):
    """Long clips cut back into their parts exactly; windows on the parts (overlap 0) guide as
    each part alone; the report tabulates every row against ``alone``."""
    from mmdisco.world.continuous_sampling import join_clips, split_clips

    x = torch.arange(2 * 3 * 12, dtype=torch.float64).view(2, 3, 12)
    parts = split_clips(x, 3)
    assert parts.shape == (6, 3, 4) and torch.equal(parts[1], x[1, :, :4])
    assert torch.equal(parts[2], x[0, :, 4:8]) and torch.equal(join_clips(parts, 3), x)

    sliding = load_benchmark("sliding_window")
    networks = tmp_path / "networks"
    bench.run_seed(
        0, pairs=4, steps=3, train_steps=2, codes=4, refine_steps=2, cache=networks / "seed_0"
    )
    run = sliding.run_seed(networks, 0, clips=2, steps=3, overlaps=(0.0, 0.5), bases=("trained",))
    rows = run["rows"]["trained"]
    assert list(rows) == ["independent", "alone", "overlap 0", "overlap 0.5"]
    assert rows["overlap 0"] == pytest.approx(rows["alone"])
    report = sliding.aggregate([run, run])
    assert report["rows"]["trained"]["alone"]["semantic"]["std"] == 0.0
    text = sliding.markdown(report)
    assert "| trained | overlap 0 |" in text and "+0.000 / +0.000" in text
    assert text.index("| trained | independent |") < text.index("| trained | alone |")
    # report.json is written with sorted keys; the table keeps its order read back
    assert sliding.markdown(json.loads(json.dumps(report, sort_keys=True))) == text
    sliding.figure(report, tmp_path / "sliding.png")
    assert (tmp_path / "sliding.png").stat().st_size > 1000
    with pytest.raises(SystemExit, match=r"continuous_world.py --seed 1"):
        sliding.run_seed(networks, 1, clips=2, steps=3)


def test_a_refined_network_is_cached_next_to_the_one_it_refined(tmp_path):
    import torch

    from mmdisco.world.continuous import ContinuousWorldConfig
    from mmdisco.world.continuous_eval import RECIPES, REFINED, TRAINING_RECORD, train_network
    from mmdisco.world.continuous_ratio import ContinuousWorldTerms
    from mmdisco.world.continuous_training import ContinuousTrainConfig, training_data

    terms = ContinuousWorldTerms(ContinuousWorldConfig())
    recipe = {**RECIPES["conv"].to_dict(), "seed": 3, "steps": 2, "batch_size": 16}
    recipe["refine_steps"] = 0  # the first phase alone
    fields = {"refine_steps": 2, "refine_anchors": 4, "refine_pool": 8, "refine_draws": 3}
    cfg = ContinuousTrainConfig(**{**recipe, **fields})
    data = training_data(terms.config, cfg)
    cache = tmp_path / "seed_3"
    refined, seconds = train_network(terms, *data, cfg, "conv", cache)
    before = json.loads((cache / TRAINING_RECORD).read_text())
    assert before["training"]["refine_steps"] == 0
    after = json.loads((cache / REFINED / TRAINING_RECORD).read_text())
    assert after["training"]["refine_steps"] == 2
    # a record from before the refinement existed (no refine_* fields) still names its network
    before["training"] = {k: v for k, v in before["training"].items() if not k.startswith("refine")}
    (cache / TRAINING_RECORD).write_text(json.dumps(before))
    loaded, loaded_seconds = train_network(terms, *data, cfg, "conv", cache)
    assert loaded_seconds == pytest.approx(seconds)  # both loaded, neither trained again
    a, v = data[0][0][:4], data[0][1][:4]
    lam = torch.full((4,), 1.0)
    torch.testing.assert_close(loaded(a, v, lam, lam), refined(a, v, lam, lam), atol=1e-6, rtol=0)
    unrefined, _ = train_network(terms, *data, ContinuousTrainConfig(**recipe), "conv", cache)
    assert (unrefined(a, v, lam, lam) - refined(a, v, lam, lam)).abs().max() > 1e-4
