"""sirdiff-train: shards, random-N batches, loss goes down, exact resume, export."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from sirdiff_ros.model.pipeline import tensor_to_images
from sirdiff_ros.training.cli import main as train_main
from sirdiff_ros.training.data import BatchSampler, DataError, ShardStore, degrade_sr4, write_shards
from sirdiff_ros.training.trainer import TrainConfig, Trainer


def photo_view_sets(count: int, views: int = 3, size: int = 32, seed: int = 0):
    """View sets cut from a real photograph: shifted windows (overlapping views),
    each blurred horizontally by a different length (blur varies across views)."""
    from skimage import data

    photo = data.astronaut()  # (512, 512, 3) uint8, bundled with scikit-image
    rng = np.random.default_rng(seed)
    for _ in range(count):
        y, x = rng.integers(0, 512 - size - 8 * views, size=2)
        sharp, blurred = [], []
        for v in range(views):
            win = np.ascontiguousarray(photo[y + 2 * v : y + 2 * v + size, x + 3 * v : x + 3 * v + size])
            k = 1 + 2 * int(rng.integers(0, 4))
            sharp.append(win)
            blurred.append(cv2.blur(win, (k, 1)))
        yield np.stack(sharp), np.stack(blurred)


@pytest.fixture()
def cache(tmp_path: Path) -> Path:
    write_shards(photo_view_sets(6), tmp_path / "cache", sets_per_shard=4, progress=False)
    return tmp_path / "cache"


def tiny_config(cache: Path, **kw) -> TrainConfig:
    base = dict(cache=str(cache), preset="tiny", encoder_factor=2, batch_size=2, n_views=(1, 3), lr=1e-3,
                warmup_steps=1, save_every=3, log_every=1, max_steps=6, ema_decay=0.9)
    base.update(kw)
    return TrainConfig(**base)


def test_shards_round_trip_and_reject_bad_input(cache: Path, tmp_path: Path) -> None:
    store = ShardStore(cache)
    assert len(store) == 6 and store.views == 3 and store.size == (32, 32)
    assert len(list(cache.glob("shard_*.npz"))) == 2
    with pytest.raises(DataError, match="no shard_"):
        ShardStore(tmp_path)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "shard_00000.npz").write_bytes(b"garbage")
    with pytest.raises(DataError, match="corrupt shard"):
        ShardStore(tmp_path / "bad")


def test_several_cache_folders_concatenate_in_order(cache: Path, tmp_path: Path) -> None:
    write_shards(photo_view_sets(3, seed=7), tmp_path / "more", sets_per_shard=2, progress=False)
    one, more = ShardStore(cache), ShardStore(tmp_path / "more")
    both = ShardStore([cache, tmp_path / "more"])
    assert len(both) == 9
    np.testing.assert_array_equal(both.sharp, np.concatenate([one.sharp, more.sharp]))
    np.testing.assert_array_equal(both.blurred[6:], more.blurred)
    write_shards(photo_view_sets(2, views=2), tmp_path / "two_views", progress=False)
    with pytest.raises(DataError, match="different view-set shapes"):
        ShardStore([cache, tmp_path / "two_views"])
    # The CLI takes several folders and records them in run.json.
    run = tmp_path / "run"
    assert train_main(["train", "--run", str(run), "--cache", str(cache), str(tmp_path / "more"), "--preset", "tiny",
                       "--steps", "1", "--batch-size", "1", "--views", "1-2", "--save-every", "1"]) == 0
    assert json.loads((run / "run.json").read_text())["cache"] == [str(cache), str(tmp_path / "more")]


def test_batches_draw_random_view_counts_and_orders(cache: Path) -> None:
    store = ShardStore(cache)
    sampler = BatchSampler(store, batch_size=1, crop=None, n_views=(1, 3), seed=0)
    counts, orders = set(), set()
    for _ in range(40):
        b = sampler.next()
        n = b.sharp.shape[1]
        counts.add(n)
        # Identify which cached views were drawn, in which order.
        got = ((b.sharp[0].permute(0, 2, 3, 1) + 1) * 127.5).round().byte().numpy()
        for i in range(len(store)):
            for flip in (False, True):
                ref = store.sharp[i][:, :, ::-1] if flip else store.sharp[i]
                idx = [next((j for j in range(3) if np.array_equal(ref[j], g)), None) for g in got]
                if None not in idx:
                    orders.add(tuple(idx))
    assert counts == {1, 2, 3}
    assert len([o for o in orders if len(o) == 3]) >= 3  # several permutations of 3 views


def test_softened_sets_filter_sharp_and_blurred_views_alike(cache: Path) -> None:
    store = ShardStore(cache)
    plain = BatchSampler(store, batch_size=1, crop=None, n_views=(3, 3), seed=3)
    soft = BatchSampler(store, batch_size=1, crop=None, n_views=(3, 3), seed=3,
                        soften_fraction=1.0, soften_sigma=(1.5, 1.5))

    def detail(views: np.ndarray) -> float:  # mean horizontal gradient
        return float(np.abs(np.diff(views.astype(float), axis=2)).mean())

    a, b = plain.next(), soft.next()  # same set, order, crop and flip: the soften draws come last
    for side in ("sharp", "degraded"):
        before = tensor_to_images(getattr(a, side)[0])  # (N, H, W, 3) uint8
        got = tensor_to_images(getattr(b, side)[0])
        want = np.stack([cv2.GaussianBlur(v, (0, 0), 1.5) for v in before])
        assert np.abs(got.astype(int) - want).max() <= 1, side  # float round trip: rounding only
        assert detail(got) < detail(before), side
    with pytest.raises(DataError, match="soften_fraction"):
        BatchSampler(store, batch_size=1, crop=None, n_views=(1, 3), soften_fraction=1.5)


def test_sr4_degradation_keeps_size_and_loses_detail() -> None:
    sharp = next(photo_view_sets(1, views=2, size=64))[0]
    low = degrade_sr4(sharp)
    assert low.shape == sharp.shape and low.dtype == np.uint8
    lap = lambda a: float(np.var(cv2.Laplacian(a[0], cv2.CV_64F)))  # noqa: E731
    assert lap(low) < 0.5 * lap(sharp)


def test_loss_decreases_on_a_fixed_batch(cache: Path, tmp_path: Path) -> None:
    cfg = tiny_config(cache, max_steps=40, n_views=(3, 3), save_every=1000, log_every=10, batch_size=6)
    trainer = Trainer(tmp_path / "run", cfg, progress=False)
    store = trainer.store
    sharp = torch.from_numpy(store.sharp).permute(0, 1, 4, 2, 3).float() / 127.5 - 1
    blur = torch.from_numpy(store.blurred).permute(0, 1, 4, 2, 3).float() / 127.5 - 1

    def fixed_loss() -> float:
        torch.manual_seed(1234)  # same noise and timesteps each time
        with torch.no_grad():
            return float(np.mean([trainer.loss_on(sharp, blur)[0].item() for _ in range(4)]))

    before = fixed_loss()
    trainer.fit()
    after = fixed_loss()
    assert after < 0.8 * before, (before, after)
    log = [json.loads(line) for line in (tmp_path / "run" / "loss.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [10, 20, 30, 40]


def _state(trainer: Trainer) -> dict[str, torch.Tensor]:
    model = trainer.accelerator.unwrap_model(trainer.unet)
    out = {f"m.{k}": v.clone() for k, v in model.state_dict().items()}
    out.update({f"ema.{i}": p.clone() for i, p in enumerate(trainer.ema.shadow_params)})
    return out


def test_resume_after_stop_matches_an_uninterrupted_run(cache: Path, tmp_path: Path) -> None:
    whole = Trainer(tmp_path / "whole", tiny_config(cache), progress=False)
    assert whole.fit() == 6

    first = Trainer(tmp_path / "split", tiny_config(cache), progress=False)
    assert first.fit(stop_after=3) == 3
    with (tmp_path / "split" / "loss.jsonl").open("a") as fh:  # logged by a process killed before saving
        fh.write(json.dumps({"step": 4, "loss": 9.9}) + "\n")
    del first  # "killed": only the checkpoint on disk survives
    resumed = Trainer(tmp_path / "split", progress=False)
    assert resumed.step == 3
    assert resumed.fit() == 6

    a, b = _state(whole), _state(resumed)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=0, rtol=0, msg=k)
    assert [p.name for p in resumed.checkpoints()] == ["step_0000003", "step_0000006"]
    steps = [json.loads(line)["step"] for line in (tmp_path / "split" / "loss.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]


def test_init_from_starts_a_new_run_at_another_runs_ema_weights(cache: Path, tmp_path: Path) -> None:
    from sirdiff_ros.training.trainer import load_run_weights

    source = Trainer(tmp_path / "source", tiny_config(cache), progress=False)
    source.fit()
    ema = [p.clone() for p in source.ema.shadow_params]
    raw = [p.clone() for p in source.accelerator.unwrap_model(source.unet).parameters()]
    assert any(not torch.equal(a, b) for a, b in zip(ema, raw))  # EMA differs from the raw weights

    tuned = Trainer(tmp_path / "tuned", tiny_config(cache, init_from=str(tmp_path / "source"),
                                                    high_t_fraction=1.0, high_t_start=0.99), progress=False)
    for p, e in zip(tuned.accelerator.unwrap_model(tuned.unet).parameters(), ema):
        torch.testing.assert_close(p, e, atol=0, rtol=0)
    assert tuned.fit(stop_after=2) == 2
    # Resuming the fine-tuned run loads its own checkpoint, not the source's weights again.
    resumed = Trainer(tmp_path / "tuned", progress=False)
    assert resumed.config.init_from == str(tmp_path / "source") and resumed.step == 2
    assert resumed.config.measured["init_checkpoint"] == str(source.checkpoints()[-1])
    for p, q in zip(resumed.accelerator.unwrap_model(resumed.unet).parameters(),
                    tuned.accelerator.unwrap_model(tuned.unet).parameters()):
        torch.testing.assert_close(p, q, atol=0, rtol=0)
    with pytest.raises(FileNotFoundError, match="no checkpoints"):
        load_run_weights(tmp_path / "nothing", tuned.accelerator.unwrap_model(tuned.unet))


def test_cosine_schedule_decays_to_zero_and_survives_a_resume(cache: Path, tmp_path: Path) -> None:
    cfg = tiny_config(cache, lr_schedule="cosine", warmup_steps=2, max_steps=8, save_every=4)
    first = Trainer(tmp_path / "run", cfg, progress=False)
    assert first.fit(stop_after=4) == 4
    del first
    resumed = Trainer(tmp_path / "run", progress=False)  # run.json, not the caller, holds the schedule
    assert resumed.config.lr_schedule == "cosine" and resumed.fit() == 8
    lrs = [json.loads(line)["lr"] for line in (tmp_path / "run" / "loss.jsonl").read_text().splitlines()]
    # The lr logged after step k is the one step k+1 uses: warmup 2 steps, then
    # 0.5 * (1 + cos(pi * (k - 2) / 6)) of 1e-3, reaching 0 at step 8.
    expected = [1e-3 * (min(1.0, (k + 1) / 2) if k < 2 else 0.5 * (1 + np.cos(np.pi * (k - 2) / 6)))
                for k in range(1, 9)]
    np.testing.assert_allclose(lrs, expected, atol=1e-12)
    assert lrs[-1] == pytest.approx(0.0, abs=1e-12) and all(a >= b for a, b in zip(lrs[1:], lrs[2:]))
    with pytest.raises(ValueError, match="unknown lr_schedule 'linear'"):
        tiny_config(cache, lr_schedule="linear")


def test_high_t_start_confines_the_high_share_of_timesteps(cache: Path, tmp_path: Path) -> None:
    trainer = Trainer(tmp_path / "run", tiny_config(cache, high_t_fraction=1.0, high_t_start=0.95), progress=False)
    seen: list[int] = []
    real_forward = trainer.unet.forward

    def spy(noisy, t, cond):  # records the timesteps the loss draws, then runs the real model
        seen.extend(int(v) for v in t)
        return real_forward(noisy, t, cond)

    trainer.unet.forward = spy
    batch = trainer.sampler.next()
    for _ in range(10):
        trainer.loss_on(batch.sharp, batch.degraded)
    assert len(seen) == 20 and min(seen) >= 950 and max(seen) <= 999


def test_cli_trains_exports_and_the_backend_loads_it(cache: Path, tmp_path: Path) -> None:
    from sirdiff_ros.core.frame import Frame
    from sirdiff_ros.core.geometry import CameraIntrinsics
    from sirdiff_ros.core.restorers.base import RestoreRequest, create_restorer

    run, out = tmp_path / "run", tmp_path / "export"
    rc = train_main(["train", "--run", str(run), "--cache", str(cache), "--preset", "tiny", "--steps", "2",
                     "--batch-size", "1", "--views", "1-2", "--save-every", "1"])
    assert rc == 0 and (run / "run.json").is_file()
    # The CLI trains the space-to-depth factor-4 encoder by default; 32x32 views fit the tiny preset.
    assert train_main(["export", "--run", str(run), "--out", str(out), "--default-steps", "2"]) == 0
    restorer = create_restorer("sirdiff", checkpoint=str(out))
    img = next(photo_view_sets(1, views=2, size=32))[1]
    k = CameraIntrinsics(fx=30.0, fy=30.0, cx=16.0, cy=16.0, width=32, height=32)
    frames = [Frame(image=im, stamp_ns=i, intrinsics=k) for i, im in enumerate(img)]
    res = restorer.restore(RestoreRequest(views=frames, targets=[0]))
    assert res.views[0].image.shape == (32, 32, 3) and res.backend == "sirdiff"


def test_dataset_view_sets_from_a_synthetic_sequence_folder(tmp_path: Path) -> None:
    from sirdiff_ros.data.cli import main as synth_main
    from sirdiff_ros.training.data import dataset_view_sets

    seq = tmp_path / "seq"
    assert synth_main([str(seq), "--frames", "5", "--width", "48", "--height", "32", "--no-progress"]) == 0
    sets = list(dataset_view_sets(seq, n_views=3, stride=2))
    assert len(sets) == 2  # frames 0-2 and 2-4
    sharp, blurred = sets[0]
    assert sharp.shape == blurred.shape == (3, 32, 48, 3)
    assert not np.array_equal(sharp, blurred)


def test_dataset_view_sets_blur_real_frames(shared_data: Path) -> None:
    from sirdiff_ros.training.data import dataset_view_sets

    sharp, blurred = next(dataset_view_sets(shared_data / "slambook2_rgbd", n_views=2, stride=2, max_angular_speed=3.0))
    assert sharp.shape == (2, 480, 640, 3) and sharp.dtype == np.uint8
    lap = lambda a: float(np.var(cv2.Laplacian(a, cv2.CV_64F)))  # noqa: E731
    assert sum(lap(b) < lap(s) for s, b in zip(sharp, blurred)) >= 1


def test_register_cli_resamples_sets_into_a_target_grid_and_the_backend_follows(tmp_path: Path) -> None:
    """`sirdiff-train register` stores each set in one view's grid; a run on it records that, its export
    tells the backend, and the backend then feeds each target with registered partners."""
    from sirdiff_ros.core.frame import Frame
    from sirdiff_ros.core.geometry import CameraIntrinsics
    from sirdiff_ros.core.registration import REGISTRATION
    from sirdiff_ros.core.restorers.base import RestoreRequest, create_restorer

    write_shards(photo_view_sets(4, views=3, size=96, seed=3), tmp_path / "plain", sets_per_shard=2, progress=False)
    plain = ShardStore(tmp_path / "plain")
    assert plain.registration == "none"
    assert train_main(["register", "--cache", str(tmp_path / "plain"), "--out", str(tmp_path / "reg")]) == 0
    reg = ShardStore(tmp_path / "reg")
    assert reg.registration == REGISTRATION and len(reg) == 4 and reg.sharp.shape == plain.sharp.shape
    for i in range(4):
        # View 0 is one of the set's own views, untouched; the partners are that view's grid.
        t = [v for v in range(3) if np.array_equal(plain.blurred[i, v], reg.blurred[i, 0])]
        assert len(t) == 1 and np.array_equal(plain.sharp[i, t[0]], reg.sharp[i, 0])
        others = [v for v in range(3) if v != t[0]]
        # The windows are shifted by a few pixels: registered partners sit closer to the target than raw ones.
        for k, v in enumerate(others, start=1):
            d_reg = np.abs(reg.sharp[i, k].astype(float) - reg.sharp[i, 0]).mean()
            d_raw = np.abs(plain.sharp[i, v].astype(float) - reg.sharp[i, 0]).mean()
            assert d_reg < d_raw
    assert train_main(["register", "--cache", str(tmp_path / "reg"), "--out", str(tmp_path / "again")]) == 2
    with pytest.raises(DataError, match="mix registered and unregistered"):
        ShardStore([tmp_path / "plain", tmp_path / "reg"])

    run, out = tmp_path / "run", tmp_path / "export"
    assert train_main(["train", "--run", str(run), "--cache", str(tmp_path / "reg"), "--preset", "tiny", "--steps", "1",
                       "--batch-size", "1", "--views", "1-3", "--crop", "32x32", "--save-every", "1"]) == 0
    assert json.loads((run / "run.json").read_text())["measured"]["view_registration"] == REGISTRATION
    assert train_main(["export", "--run", str(run), "--out", str(out)]) == 0
    assert json.loads((out / "sirdiff_pipeline.json").read_text())["view_registration"] == REGISTRATION
    k = CameraIntrinsics(fx=96.0, fy=96.0, cx=48.0, cy=48.0, width=96, height=96)
    frames = [Frame(image=im, stamp_ns=i, intrinsics=k) for i, im in enumerate(plain.blurred[0])]
    res = create_restorer("sirdiff", checkpoint=str(out)).restore(RestoreRequest(views=frames, targets=[0, 2]))
    assert [v.info["registration"] for v in res.views] == [REGISTRATION] * 2
    assert all(v.image.shape == (96, 96, 3) for v in res.views)


def test_init_from_keeps_the_source_runs_residual_scale(cache: Path, tmp_path: Path) -> None:
    from sirdiff_ros.model.encoders import SpaceToDepthEncoder
    from sirdiff_ros.training.trainer import measure_residual_scale

    source = Trainer(tmp_path / "source", tiny_config(cache), progress=False)
    source.fit(stop_after=1)
    # A cache with much stronger blur has a larger residual of its own.
    strong = [(s, np.stack([cv2.blur(v, (9, 9)) for v in s])) for s, _ in photo_view_sets(4, seed=5)]
    write_shards(strong, tmp_path / "strong", progress=False)
    own = measure_residual_scale(ShardStore(tmp_path / "strong"), SpaceToDepthEncoder(2))
    assert own > 1.2 * source.config.measured["residual_scale"]
    tuned = Trainer(tmp_path / "tuned", tiny_config(tmp_path / "strong", init_from=str(tmp_path / "source")),
                    progress=False)
    assert tuned.config.measured["residual_scale"] == source.config.measured["residual_scale"]
    fresh = Trainer(tmp_path / "fresh", tiny_config(tmp_path / "strong"), progress=False)
    assert fresh.config.measured["residual_scale"] == pytest.approx(own)


def test_registered_sets_can_target_the_blurriest_view(tmp_path: Path) -> None:
    from sirdiff_ros.core.blur import sharpness
    from sirdiff_ros.training.data import registered_view_sets, shard_frames

    write_shards(photo_view_sets(6, views=3, size=96, seed=4), tmp_path / "plain", progress=False)
    store = ShardStore(tmp_path / "plain")
    blurriest = [int(np.argmin([sharpness(v) for v in s])) for s in store.blurred]
    assert len(set(blurriest)) > 1  # the blurriest view is not always the same position
    for fraction, expect_all in ((1.0, True), (0.0, False)):
        chosen = []
        for (_, deg), i in zip(registered_view_sets(shard_frames(store), seed=1, blurriest_fraction=fraction),
                                   range(len(store))):
            chosen.append(int(np.flatnonzero([np.array_equal(deg[0], v) for v in store.blurred[i]])[0]))
        assert (chosen == blurriest) == expect_all, (fraction, chosen, blurriest)


def test_sequence_sets_are_the_online_cores_keyframe_sets(tmp_path: Path) -> None:
    """`sirdiff-train cache --sequences` stores one registered set per keyframe of a training-seed sequence,
    that keyframe as the target with its sharp render, as the pipeline would restore it."""
    import dataclasses

    from sirdiff_ros.core.pipeline import PipelineConfig, RestorationPipeline
    from sirdiff_ros.core.registration import REGISTRATION
    from sirdiff_ros.data.synth import generate_sequence
    from sirdiff_ros.training.data import sequence_view_sets

    args = ["cache", "--sequences", "1", "--first-seed", "12", "--frames", "30", "--views", "3", "--size", "96x72",
            "--flow-fraction", "0", "--shard-size", "4"]
    assert train_main([*args, "--out", str(tmp_path / "all")]) == 0
    assert train_main([*args, "--targets-only", "--out", str(tmp_path / "targets")]) == 0
    store, targets = ShardStore(tmp_path / "all"), ShardStore(tmp_path / "targets")
    assert store.registration == REGISTRATION and store.sharp.shape[1:] == (3, 72, 96, 3)

    frames = list(generate_sequence(12, 30, 96, 72))
    pipeline = RestorationPipeline(dataclasses.replace(PipelineConfig(), num_views=3))
    decisions = [pipeline.ingest(f) for f in frames]
    keyframes = [i for i, d in enumerate(decisions) if d.is_keyframe]
    assert 0 < len(targets) < len(store) <= len(keyframes)
    # Every set's view 0 is a keyframe's own blurred image and its sharp render, in stream order.
    chosen = [next(i for i in keyframes if np.array_equal(frames[i].image, b)) for b in store.blurred[:, 0]]
    assert chosen == sorted(chosen)
    for i, sharp in zip(chosen, store.sharp[:, 0]):
        assert np.array_equal(frames[i].extras["sharp"], sharp)
    gated = [next(i for i in keyframes if np.array_equal(frames[i].image, b)) for b in targets.blurred[:, 0]]
    assert set(gated) <= set(chosen) and all(decisions[i].is_target for i in gated)
    # Partners are registered into the target's grid: closer to it than the raw neighbouring keyframe.
    for s in range(len(store)):
        raw = frames[keyframes[keyframes.index(chosen[s]) - 1]].extras["sharp"].astype(float)
        d_reg = min(np.abs(store.sharp[s, k].astype(float) - store.sharp[s, 0]).mean() for k in (1, 2))
        assert d_reg < np.abs(raw - store.sharp[s, 0]).mean()
    with pytest.raises(DataError, match="held-out"):
        next(sequence_view_sets([1_000_000], 5, 3, 96, 72))
    assert train_main([*args, "--dataset", str(tmp_path), "--out", str(tmp_path / "both")]) == 2


def test_refine_head_lowers_the_frozen_pipelines_error_resumes_exactly_and_exports(cache: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    from sirdiff_ros.core.frame import Frame
    from sirdiff_ros.core.geometry import CameraIntrinsics
    from sirdiff_ros.core.restorers.base import RestoreRequest, create_restorer
    from sirdiff_ros.model.pipeline import SirDiffPipeline
    from sirdiff_ros.training.refine import RefineConfig, RefinerTrainer

    base = tmp_path / "base"
    assert train_main(["train", "--run", str(tmp_path / "unet"), "--cache", str(cache), "--preset", "tiny",
                       "--steps", "2", "--batch-size", "1", "--views", "1-3", "--save-every", "1"]) == 0
    assert train_main(["export", "--run", str(tmp_path / "unet"), "--out", str(base), "--default-steps", "1"]) == 0

    # Stopped and resumed = uninterrupted (sampler, RNG for the pipeline's noise, optimizer, schedule).
    args = ["refine", "--base", str(base), "--cache", str(cache), "--crop", "32x32", "--batch-size", "2",
            "--views", "1-3", "--channels", "8", "--blocks", "1", "--save-every", "3", "--steps", "6"]
    assert train_main([*args, "--run", str(tmp_path / "whole")]) == 0
    assert train_main([*args, "--run", str(tmp_path / "split"), "--stop-after", "3"]) == 0
    assert train_main(["refine", "--run", str(tmp_path / "split"), "--steps", "6"]) == 0
    a = load_file(str(tmp_path / "whole" / "checkpoints" / "step_0000006" / "model.safetensors"))
    b = load_file(str(tmp_path / "split" / "checkpoints" / "step_0000006" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    # Trained longer, the head lowers the frozen pipeline's error on the cached sets.
    cfg = RefineConfig(base=str(base), cache=str(cache), max_steps=200, batch_size=4, crop=(32, 32), n_views=(1, 3), lr=1e-2,
                       channels=8, blocks=1, save_every=1000, warmup_steps=5)
    trainer = RefinerTrainer(tmp_path / "long", cfg, progress=False)
    sharp = torch.from_numpy(trainer.store.sharp).permute(0, 1, 4, 2, 3).float() / 127.5 - 1
    blur = torch.from_numpy(trainer.store.blurred).permute(0, 1, 4, 2, 3).float() / 127.5 - 1

    def errors() -> tuple[float, float]:
        torch.manual_seed(7)
        with torch.no_grad():
            head, frozen = trainer.losses(sharp, blur)
        return float(head), frozen

    head0, frozen0 = errors()
    assert head0 == pytest.approx(frozen0, rel=1e-6)  # an untrained head is the identity
    trainer.fit()
    head1, frozen1 = errors()
    assert frozen1 == pytest.approx(frozen0, rel=1e-6)  # the UNet stayed frozen
    assert head1 < 0.85 * frozen1, (head1, frozen1)  # measured 0.77

    out = tmp_path / "export"
    assert train_main(["export", "--run", str(tmp_path / "long"), "--out", str(out)]) == 0
    loaded = SirDiffPipeline.from_checkpoint(out)
    assert loaded.refiner is not None and loaded.default_steps == 1
    img = next(photo_view_sets(1, views=2, size=32))[1]
    k = CameraIntrinsics(fx=30.0, fy=30.0, cx=16.0, cy=16.0, width=32, height=32)
    frames = [Frame(image=im, stamp_ns=i, intrinsics=k) for i, im in enumerate(img)]
    with_head = create_restorer("sirdiff", checkpoint=str(out)).restore(RestoreRequest(views=frames, targets=[0]))
    without = create_restorer("sirdiff", checkpoint=str(base)).restore(RestoreRequest(views=frames, targets=[0]))
    assert not np.array_equal(with_head.views[0].image, without.views[0].image)
    with pytest.raises(ValueError, match="already has a refiner"):
        RefinerTrainer(tmp_path / "again", RefineConfig(base=str(out), cache=str(cache)), progress=False)

    # --set-context: the head also sees its set; it trains, exports and runs in the backend.
    assert train_main([*args, "--run", str(tmp_path / "ctx"), "--set-context", "--steps", "2"]) == 0
    assert RefineConfig.from_json(tmp_path / "ctx" / "run.json").set_context is True
    assert train_main(["export", "--run", str(tmp_path / "ctx"), "--out", str(tmp_path / "ctx_out")]) == 0
    ctx_pipe = SirDiffPipeline.from_checkpoint(tmp_path / "ctx_out")
    assert ctx_pipe.refiner is not None and ctx_pipe.refiner.config.set_context is True
    ctx = create_restorer("sirdiff", checkpoint=str(tmp_path / "ctx_out"), dtype="float32").restore(RestoreRequest(views=frames, targets=[0]))
    assert ctx.views[0].image.shape == frames[0].image.shape
    # --restored-context: the context also summarises the set's restored views.
    assert train_main([*args, "--run", str(tmp_path / "rctx"), "--restored-context", "--steps", "2"]) == 0
    rcfg = RefineConfig.from_json(tmp_path / "rctx" / "run.json")
    assert rcfg.set_context is True and rcfg.restored_context is True
    assert train_main(["export", "--run", str(tmp_path / "rctx"), "--out", str(tmp_path / "rctx_out")]) == 0
    assert SirDiffPipeline.from_checkpoint(tmp_path / "rctx_out").refiner.config.restored_context is True
    rctx = create_restorer("sirdiff", checkpoint=str(tmp_path / "rctx_out"), dtype="float32").restore(RestoreRequest(views=frames, targets=[0]))
    assert rctx.views[0].image.shape == frames[0].image.shape
    assert not np.array_equal(rctx.views[0].image, ctx.views[0].image)
    # --init-head: a new run fine-tunes a saved head (its weights at step 0); another architecture is refused.
    fine = RefinerTrainer(tmp_path / "fine", RefineConfig(base=str(base), cache=str(cache), channels=8, blocks=1, n_views=(1, 3), crop=(32, 32),
                                                          set_context=True, restored_context=True,
                                                          init_head=str(tmp_path / "rctx_out" / "refiner")),
                          progress=False)
    saved = load_file(str(tmp_path / "rctx_out" / "refiner" / "diffusion_pytorch_model.safetensors"))
    state = fine.accelerator.unwrap_model(fine.refiner).state_dict()
    assert saved.keys() == state.keys() and all(torch.equal(saved[k], state[k].cpu()) for k in saved)
    # --deblurred-head-for: the run's head joins a checkpoint of the same UNet as its head for deblurred views.
    assert train_main(["export", "--run", str(tmp_path / "rctx"), "--out", str(tmp_path / "two_heads"),
                       "--deblurred-head-for", str(tmp_path / "rctx_out")]) == 0
    two = SirDiffPipeline.from_checkpoint(tmp_path / "two_heads")
    assert two.refiner is not None and two.deblurred_refiner is not None
    assert json.loads((tmp_path / "two_heads" / "sirdiff_pipeline.json").read_text())["training"]["deblurred_refiner"]["step"] == 2
    from sirdiff_ros.model.presets import build_model
    from sirdiff_ros.training.refine import export_refined_run

    other = SirDiffPipeline(build_model("tiny", in_channels=48, cond_channels=48, out_channels=48), two.scheduler,
                            two.encoder, refiner=two.refiner)
    with pytest.raises(ValueError, match="must hold the UNet"):
        export_refined_run(tmp_path / "rctx", tmp_path / "mismatch",
                           deblurred_head_for=other.save_checkpoint(tmp_path / "other_unet", default_steps=1))
    # A head without the gate starts a gated one (--mean-gate): its weights, the gate at one half.
    gated = RefinerTrainer(tmp_path / "gated", RefineConfig(base=str(base), cache=str(cache), channels=8, blocks=1, n_views=(1, 3),
                                                            crop=(32, 32), set_context=True, restored_context=True, mean_gate=True,
                                                            init_head=str(tmp_path / "rctx_out" / "refiner")),
                           progress=False)
    gstate = gated.accelerator.unwrap_model(gated.refiner).state_dict()
    assert set(gstate) - set(saved) == {"gate_out.weight", "gate_out.bias"}
    assert all(torch.equal(saved[k], gstate[k].cpu()) for k in saved)
    assert not gstate["gate_out.weight"].any() and not gstate["gate_out.bias"].any()
    with pytest.raises(ValueError, match="architecture"):
        RefinerTrainer(tmp_path / "other", RefineConfig(base=str(base), cache=str(cache), channels=8, blocks=2, n_views=(1, 3), crop=(32, 32),
                                                        init_head=str(tmp_path / "rctx_out" / "refiner")),
                       progress=False)


def test_cli_help_builds_without_torch() -> None:
    """`sirdiff-train <command> --help` answers without importing torch or diffusers (the options' defaults
    come from the torch-free run configurations), and shows those defaults."""
    import subprocess
    import sys

    code = (
        "import sys, contextlib, io\n"
        "from sirdiff_ros.training.cli import build_parser\n"
        "out = io.StringIO()\n"
        "with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):\n"
        "    build_parser().parse_args(['train', '--help'])\n"
        "print(out.getvalue())\n"
        "print('heavy imported:', sorted(m for m in ('torch', 'diffusers', 'accelerate') if m in sys.modules))\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "heavy imported: []" in res.stdout, res.stdout[-2000:]
    assert f"(default: {TrainConfig.__dataclass_fields__['max_steps'].default})" in res.stdout
