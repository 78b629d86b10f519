import pytest
import torch

from oneclass import augment, create
from oneclass.errors import ConfigError

from .conftest import fast_params


def test_shift_flip_moves_masks_with_their_images():
    gen = torch.Generator().manual_seed(0)
    masks = (torch.rand(16, 1, 20, 24, generator=gen) > 0.8).float()
    masks[..., :4, :] = 0  # keep the borders empty: reflect padding then equals zero padding
    masks[..., -4:, :] = 0
    masks[..., :, :4] = 0
    masks[..., :, -4:] = 0
    x = masks.repeat(1, 3, 1, 1)  # the image is its own mask
    xa, ma = augment.shift_flip(x, masks, gen, pad=3, flip=True)
    assert xa.shape == x.shape and ma.shape == masks.shape
    assert torch.equal(xa[:, :1], ma)
    assert not torch.equal(xa, x)  # something moved
    assert torch.equal(xa.sum(dim=(1, 2, 3)), x.sum(dim=(1, 2, 3)))  # nothing left the frame


def test_a_defect_at_the_edge_is_mirrored_with_its_mask():
    # reflect padding copies a defect within `pad` pixels of the edge into the border strip;
    # its mask must be copied alike, or the pixel loss trains defect pixels as normal
    masks = torch.zeros(50, 1, 28, 28)
    masks[:, :, 10:14, 0:3] = 1
    x = masks.clone()  # the image is its own mask
    for seed in range(50):
        xa, ma = augment.apply("shift", x, masks, torch.Generator().manual_seed(seed))
        assert torch.equal(xa, ma), seed


def test_shift_flip_without_masks_and_none_is_identity():
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(4, 1, 8, 8)
    same, m = augment.apply("none", x, None, gen)
    assert same is x and m is None
    out, m = augment.apply("shift", x, None, gen)
    assert out.shape == x.shape and m is None


def test_fcdd_rejects_an_unknown_augmentation():
    with pytest.raises(ConfigError, match="augment"):
        create("fcdd", augment="rotate")


def test_fcdd_trains_with_gcn_and_augmentation(defects_train, defects_test, monkeypatch):
    from oneclass.methods import fcdd as fcdd_mod

    fed = []  # the batches the training feeds the network, and what they were made from
    member = fcdd_mod._FCDDTask._member_batch

    def spy_member(self, x, gen):
        out = member(self, x.clone(), gen)
        fed.append((x.clone(), out[0], out[1]))
        return out

    monkeypatch.setattr(fcdd_mod._FCDDTask, "_member_batch", spy_member)
    det = create("fcdd", **fast_params("fcdd"), gcn=True, augment="shift-flip")
    det.fit(defects_train)
    assert det.model_.norm.gcn
    # augmented: normal images reach the network moved or flipped, not as they were
    moved = [bool((after[lab == 0] != before[lab == 0]).any()) for before, after, lab in fed]
    assert fed and all(moved)
    # the model's input normalisation applies GCN: a copy of an image with another contrast
    # and brightness gives the same network input
    x = torch.rand(4, 1, 24, 24)
    assert torch.allclose(det.model_.norm(x), det.model_.norm(0.3 * x + 0.2), atol=1e-4)
    s = det.score(defects_test)
    assert s.shape == (len(defects_test),) and torch.isfinite(torch.as_tensor(s)).all()


def test_gcn_l1_gives_each_image_zero_mean_and_unit_mean_absolute_deviation():
    from oneclass.detector import InputNorm, gcn_l1

    x = torch.rand(5, 3, 8, 8) * torch.linspace(0.1, 2.0, 5).view(5, 1, 1, 1)
    g = gcn_l1(x)
    assert torch.allclose(g.mean(dim=(1, 2, 3)), torch.zeros(5), atol=1e-6)
    assert torch.allclose(g.abs().mean(dim=(1, 2, 3)), torch.ones(5), atol=1e-5)
    assert torch.allclose(gcn_l1(4.0 * x - 1.0), g, atol=1e-5)  # contrast and brightness go
    norm = InputNorm(3, gcn=True)
    norm.fit(x)  # then per-channel standardisation of the normalised images
    out = norm(x)
    assert torch.allclose(out.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-5)
    assert torch.allclose(out.std(dim=(0, 2, 3), unbiased=False), torch.ones(3), atol=1e-3)
    assert not torch.allclose(InputNorm(3, gcn=False)(x), gcn_l1(x))


def test_flip_mirrors_about_half_of_the_images_with_their_masks():
    x = torch.rand(64, 1, 6, 9)
    masks = (torch.rand(64, 1, 6, 9) > 0.5).float()
    y, m = augment.shift_flip(x, masks, torch.Generator().manual_seed(0), pad=0, flip=True)
    same = [torch.equal(y[i], x[i]) and torch.equal(m[i], masks[i]) for i in range(64)]
    mirrored = [torch.equal(y[i], x[i].flip(-1)) and torch.equal(m[i], masks[i].flip(-1))
                for i in range(64)]
    assert all(a or b for a, b in zip(same, mirrored))
    assert 16 <= sum(mirrored) <= 48  # about half, and both kinds occur
    # "shift-flip" flips as well as shifts: some images come out mirrored, which a shift
    # alone (on a horizontally asymmetric image) cannot produce
    ramp = torch.linspace(0, 1, 28).repeat(64, 1, 28, 1)
    out, _ = augment.apply("shift-flip", ramp, None, torch.Generator().manual_seed(1))
    falling = (out[..., 14] < out[..., 13]).flatten(1).all(1)  # centre, clear of the padding
    assert 16 <= int(falling.sum()) <= 48
