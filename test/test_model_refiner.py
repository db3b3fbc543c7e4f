"""The full-resolution refinement head: identity at start, part of a checkpoint, refused when corrupt;
with its view set's context it denoises from several views."""

from __future__ import annotations

import pytest
import torch

from sirdiff_ros.model.encoders import SpaceToDepthEncoder
from sirdiff_ros.model.pipeline import DEBLURRED_REFINER_FOLDER, REFINER_FOLDER, CheckpointError, Parametrization, SirDiffPipeline, make_scheduler
from sirdiff_ros.model.presets import build_model
from sirdiff_ros.model.refiner import PixelRefiner, view_set_context


def _pipe(refiner: PixelRefiner | None) -> SirDiffPipeline:
    torch.manual_seed(0)
    unet = build_model("tiny", in_channels=48, cond_channels=48, out_channels=48)
    return SirDiffPipeline(unet, make_scheduler("ddim"), SpaceToDepthEncoder(4),
                           Parametrization(residual=True, residual_scale=0.1), refiner=refiner)


def _trained_looking_head() -> PixelRefiner:
    torch.manual_seed(1)
    head = PixelRefiner(channels=8, num_blocks=1)
    torch.nn.init.normal_(head.conv_out.weight, std=0.05)  # as if trained: no longer the identity
    return head


def test_an_untrained_head_is_the_identity_and_checks_shapes() -> None:
    head = PixelRefiner(channels=8, num_blocks=2)
    x, y = torch.rand(2, 3, 20, 24) * 2 - 1, torch.rand(2, 3, 20, 24) * 2 - 1
    torch.testing.assert_close(head(x, y), x, atol=0, rtol=0)
    with pytest.raises(ValueError, match="two \\(M, 3, H, W\\) tensors of one shape"):
        head(x, y[:, :, :10])
    with pytest.raises(ValueError, match="num_blocks >= 0"):
        PixelRefiner(channels=8, num_blocks=-1)


def test_the_head_changes_the_output_and_round_trips_with_the_checkpoint(tmp_path) -> None:
    plain, refined = _pipe(None), _pipe(_trained_looking_head())
    x = torch.rand(1, 2, 3, 32, 32) * 2 - 1

    def run(p: SirDiffPipeline) -> torch.Tensor:
        return p(x, num_inference_steps=2, generator=torch.Generator().manual_seed(0)).images

    a, b = run(plain), run(refined)
    assert (a - b).abs().max() > 1e-3  # the head is applied (same UNet, same noise)
    folder = refined.save_checkpoint(tmp_path / "ckpt", default_steps=2)
    assert (folder / REFINER_FOLDER / "config.json").is_file()
    loaded = SirDiffPipeline.from_checkpoint(folder)
    assert isinstance(loaded.refiner, PixelRefiner) and loaded.refiner.config.num_blocks == 1
    torch.testing.assert_close(run(loaded), b, atol=1e-6, rtol=0)
    # A checkpoint without a head still loads as before.
    assert SirDiffPipeline.from_checkpoint(plain.save_checkpoint(tmp_path / "plain")).refiner is None


def test_a_head_for_deblurred_views_serves_only_calls_that_say_so_and_round_trips(tmp_path) -> None:
    general = _trained_looking_head()
    torch.manual_seed(2)
    deblurred_head = PixelRefiner(channels=8, num_blocks=1)
    torch.nn.init.normal_(deblurred_head.conv_out.weight, std=0.05)
    both = _pipe(general)
    both.deblurred_refiner = deblurred_head
    only_general, only_deblurred = _pipe(general), _pipe(deblurred_head)
    x = torch.rand(1, 2, 3, 32, 32) * 2 - 1

    def run(p: SirDiffPipeline, deblurred: bool) -> torch.Tensor:
        return p(x, num_inference_steps=1, generator=torch.Generator().manual_seed(0), deblurred=deblurred).images

    torch.testing.assert_close(run(both, False), run(only_general, False), atol=0, rtol=0)
    torch.testing.assert_close(run(both, True), run(only_deblurred, False), atol=0, rtol=0)
    torch.testing.assert_close(run(only_general, True), run(only_general, False), atol=0, rtol=0)  # none: the general one
    folder = both.save_checkpoint(tmp_path / "both", default_steps=1)
    assert (folder / DEBLURRED_REFINER_FOLDER / "config.json").is_file()
    loaded = SirDiffPipeline.from_checkpoint(folder)
    torch.testing.assert_close(run(loaded, True), run(both, True), atol=1e-6, rtol=0)
    torch.testing.assert_close(run(loaded, False), run(both, False), atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="general head"):
        _pipe(None).__class__(both.unet, both.scheduler, both.encoder, deblurred_refiner=deblurred_head)


def test_a_corrupt_or_missing_head_is_refused(tmp_path) -> None:
    folder = _pipe(_trained_looking_head()).save_checkpoint(tmp_path / "ckpt")
    weights = folder / REFINER_FOLDER / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match="cannot load the refiner"):
        SirDiffPipeline.from_checkpoint(folder)
    weights.unlink()
    (folder / REFINER_FOLDER / "config.json").unlink()
    with pytest.raises(CheckpointError, match="cannot load the refiner"):
        SirDiffPipeline.from_checkpoint(folder)


def test_output_views_decode_and_refine_only_the_views_asked_for() -> None:
    pipe = _pipe(_trained_looking_head())
    x = torch.rand(2, 3, 3, 32, 32) * 2 - 1

    def run(**kw) -> torch.Tensor:
        return pipe(x, num_inference_steps=1, generator=torch.Generator().manual_seed(0), **kw).images

    full = run()
    assert full.shape == (2, 3, 3, 32, 32)
    torch.testing.assert_close(run(output_views=[2, 0]), full[:, [2, 0]], atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="output_views"):
        run(output_views=[3])


def test_view_set_context_is_the_sets_mean_and_spread_in_any_order() -> None:
    torch.manual_seed(2)
    sets = torch.rand(2, 3, 3, 8, 10) * 2 - 1
    ctx = view_set_context(sets)
    assert ctx.shape == (2, 4, 8, 10)
    torch.testing.assert_close(ctx[:, :3], sets.mean(dim=1))
    manual = sum((sets[:, i] - sets.mean(dim=1)).abs().mean(dim=1) for i in range(3)) / 3
    torch.testing.assert_close(ctx[:, 3], manual)
    torch.testing.assert_close(view_set_context(sets[:, [2, 0, 1]]), ctx)  # no view order
    single = view_set_context(sets[:, :1])  # one view: its own image, no spread
    torch.testing.assert_close(single[:, :3], sets[:, 0], atol=0, rtol=0)
    assert float(single[:, 3].abs().max()) == 0.0
    with pytest.raises(ValueError, match="view sets"):
        view_set_context(sets[0])


def test_a_context_head_starts_as_the_identity_and_insists_on_its_context(tmp_path) -> None:
    head = PixelRefiner(channels=8, num_blocks=1, set_context=True)
    x, y = torch.rand(2, 3, 16, 16) * 2 - 1, torch.rand(2, 3, 16, 16) * 2 - 1
    ctx = view_set_context(torch.stack([y, x], dim=1))
    torch.testing.assert_close(head(x, y, ctx), x, atol=0, rtol=0)
    with pytest.raises(ValueError, match="view set's context"):
        head(x, y)
    with pytest.raises(ValueError, match="view set's context"):
        head(x, y, ctx[:, :3])
    with pytest.raises(ValueError, match="takes no context"):
        PixelRefiner(channels=8, num_blocks=1)(x, y, ctx)
    head.save_pretrained(str(tmp_path / "head"))
    assert PixelRefiner.from_pretrained(str(tmp_path / "head")).config.set_context is True


def test_a_mean_gate_head_starts_halfway_to_the_sets_mean_and_learns_where_to_trust_it(tmp_path) -> None:
    torch.manual_seed(5)
    x, y, z = (torch.rand(2, 3, 16, 16) * 2 - 1 for _ in range(3))
    ctx = view_set_context(torch.stack([y, z], dim=1))
    head = PixelRefiner(channels=8, num_blocks=1, set_context=True, mean_gate=True)
    torch.testing.assert_close(head(x, y, ctx), 0.5 * (x + (y + z) / 2), atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="mean_gate .* needs set_context"):
        PixelRefiner(channels=8, num_blocks=1, mean_gate=True)
    head.save_pretrained(str(tmp_path / "gated"))
    again = PixelRefiner.from_pretrained(str(tmp_path / "gated"))
    assert again.config.mean_gate is True
    torch.testing.assert_close(again(x, y, ctx), head(x, y, ctx), atol=0, rtol=0)
    # Where the mean is the truth (noisy views, an unhelpful restoration), the gate opens towards it.
    truth = torch.rand(8, 3, 16, 16) * 2 - 1
    views = truth[:, None] + 0.3 * torch.randn(8, 4, 3, 16, 16)
    restored = views[:, 0]
    c = view_set_context(views)
    opt = torch.optim.Adam(head.gate_out.parameters(), lr=0.05)
    before = torch.nn.functional.mse_loss(head(restored, views[:, 0], c), truth).item()
    for _ in range(60):
        opt.zero_grad()
        torch.nn.functional.mse_loss(head(restored, views[:, 0], c), truth).backward()
        opt.step()
    after = torch.nn.functional.mse_loss(head(restored, views[:, 0], c), truth).item()
    mean_err = torch.nn.functional.mse_loss(c[:, :3], truth).item()
    assert after < 0.8 * before and after < 1.2 * mean_err


def test_the_pipeline_gives_each_output_view_its_own_sets_context() -> None:
    torch.manual_seed(3)
    head = PixelRefiner(channels=8, num_blocks=1, set_context=True)
    torch.nn.init.normal_(head.conv_out.weight, std=0.05)
    pipe = _pipe(head)
    x = torch.rand(2, 3, 3, 32, 32) * 2 - 1
    decoded = torch.rand(2 * 2, 3, 32, 32) * 2 - 1  # stands for the decoded views 2 and 0 of both sets
    with torch.no_grad():
        got = pipe.refine(decoded, x, keep=[2, 0])
        want = torch.cat([head(decoded[i : i + 1], x[i // 2, [2, 0][i % 2]][None],
                               view_set_context(x[i // 2 : i // 2 + 1])) for i in range(4)]).clamp(-1, 1)
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)
    # Another partner in set 0 changes set 0's refined views only.
    y = x.clone()
    y[0, 1] = -y[0, 1]
    with torch.no_grad():
        moved = pipe.refine(decoded, y, keep=[2, 0])
    assert (moved[:2] - got[:2]).abs().max() > 1e-3
    torch.testing.assert_close(moved[2:], got[2:], atol=0, rtol=0)


def test_a_restored_context_also_summarises_the_restored_views() -> None:
    torch.manual_seed(4)
    degraded, restored = torch.rand(2, 3, 3, 8, 10) * 2 - 1, torch.rand(2, 3, 3, 8, 10) * 2 - 1
    ctx = view_set_context(degraded, restored)
    assert ctx.shape == (2, 8, 8, 10)
    torch.testing.assert_close(ctx[:, :4], view_set_context(degraded), atol=0, rtol=0)
    torch.testing.assert_close(ctx[:, 4:], view_set_context(restored), atol=0, rtol=0)
    with pytest.raises(ValueError, match="do not match"):
        view_set_context(degraded, restored[:, :2])
    with pytest.raises(ValueError, match="restored view sets"):
        view_set_context(degraded, restored[0])
    with pytest.raises(ValueError, match="needs set_context"):
        PixelRefiner(channels=8, num_blocks=1, restored_context=True)
    head = PixelRefiner(channels=8, num_blocks=1, set_context=True, restored_context=True)
    x, y = restored[:, 0], degraded[:, 0]
    torch.testing.assert_close(head(x, y, ctx), x, atol=0, rtol=0)  # identity at start
    with pytest.raises(ValueError, match=r"context \(2, 8, 8, 10\)"):
        head(x, y, ctx[:, :4])  # the degraded summary alone is not enough


def test_the_pipeline_decodes_every_view_for_a_restored_context_head(tmp_path) -> None:
    torch.manual_seed(5)
    head = PixelRefiner(channels=8, num_blocks=1, set_context=True, restored_context=True)
    torch.nn.init.normal_(head.conv_out.weight, std=0.05)
    pipe = _pipe(head)
    x = torch.rand(2, 3, 3, 32, 32) * 2 - 1

    def run(p: SirDiffPipeline, **kw) -> torch.Tensor:
        return p(x, num_inference_steps=1, generator=torch.Generator().manual_seed(0), **kw).images

    full = run(pipe)
    # The target alone is refined with the whole restored set's summary, as in the full output.
    torch.testing.assert_close(run(pipe, output_views=[0]), full[:, [0]], atol=1e-6, rtol=0)
    # The restored summary is used: the same weights without it give another output.
    plain = PixelRefiner(channels=8, num_blocks=1, set_context=True)
    with torch.no_grad():
        plain.conv_in.weight.copy_(head.conv_in.weight[:, :10])
    plain.load_state_dict({k: v for k, v in head.state_dict().items() if k != "conv_in.weight"}, strict=False)
    assert (run(_pipe(plain)) - full).abs().max() > 1e-3
    with pytest.raises(ValueError, match="summarises the restored views"):
        pipe.refine(full[:, 0], x, keep=[0])
    loaded = SirDiffPipeline.from_checkpoint(pipe.save_checkpoint(tmp_path / "ckpt", default_steps=1))
    assert loaded.refiner.config.restored_context is True
    torch.testing.assert_close(run(loaded), full, atol=1e-6, rtol=0)


def test_with_its_set_the_head_learns_to_denoise_beyond_one_view() -> None:
    # Four views of one scene with independent noise: trained alike, the context head ends
    # far below the single-view head (the set's mean holds a quarter of the noise variance;
    # one view's head can only smooth).
    gen = torch.Generator().manual_seed(4)

    def batch() -> tuple[torch.Tensor, torch.Tensor]:
        clean = torch.nn.functional.avg_pool2d(torch.rand(8, 3, 40, 40, generator=gen) * 2 - 1, 3, 1, 1)
        noisy = clean[:, None] + 0.15 * torch.randn(8, 4, 3, 40, 40, generator=gen)  # (B, N=4, 3, H, W)
        return clean, noisy

    def train(set_context: bool) -> float:
        torch.manual_seed(5)
        head = PixelRefiner(channels=16, num_blocks=1, set_context=set_context)
        opt = torch.optim.Adam(head.parameters(), lr=3e-3)

        def loss(clean: torch.Tensor, noisy: torch.Tensor) -> torch.Tensor:
            ctx = view_set_context(noisy) if set_context else None
            return torch.nn.functional.mse_loss(head(noisy[:, 0], noisy[:, 0], ctx), clean)

        for _ in range(150):
            opt.zero_grad()
            loss(*batch()).backward()
            opt.step()
        with torch.no_grad():
            return float(loss(*batch()))

    single, multi = train(False), train(True)
    assert single < 0.15**2  # both learn something ...
    assert multi < 0.6 * single, (multi, single)  # ... the set's head far more
