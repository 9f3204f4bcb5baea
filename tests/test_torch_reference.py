"""Sanity tests for the independent PyTorch reference (tests/torch_reference.py)."""

import math

import pytest

torch = pytest.importorskip("torch")

from tests import torch_reference as R  # noqa: E402

TINY = dict(
    trans_dim=32, depth=1, num_heads=2, mlp_ratio=4.0, num_group=8, group_size=4, rank=4,
    num_classes=5,
)


# ------------------------------------------------------------------ parameter counts (SPEC §4)

@pytest.mark.parametrize(
    "variant,total,trainable",
    [
        ("obj_bg", 22_912_795, 1_087_771),
        ("obj_only", 22_814_491, 989_467),
        ("pb_t50_rs", 22_912_795, 1_087_771),
        ("modelnet40", 22_894_740, 1_069_716),
    ],
)
def test_param_counts_match_spec(variant, total, trainable):
    torch.manual_seed(0)
    model = R.TorchDAPT(**R.VARIANTS[variant])
    assert R.count_params(model) == total
    assert R.count_params(model, trainable_only=True) == trainable
    names = set(R.trainable_names(model))
    assert sum(p.numel() for n, p in model.named_parameters() if n in names) == trainable
    R.set_release_trainable(model)
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == trainable
    # The scale-shift pairs alone are 112,128 parameters (SPEC §2).
    assert sum(p.numel() for n, p in model.named_parameters() if "tfts" in n) == 112_128


def test_variant_settings():
    assert R.VARIANTS["obj_only"]["head_tokens"] == ("cls", "prompt")
    assert R.VARIANTS["modelnet40"]["head_tokens"] == ("cls", "patch")
    assert R.VARIANTS["modelnet40"]["rank"] == 72
    m = R.TorchDAPT(**R.VARIANTS["modelnet40"])
    assert m.cls_head_finetune[0].weight.shape == (256, 768)
    assert m.cls_head_finetune[8].weight.shape == (40, 256)
    assert m.blocks.blocks[0].Adapter_MLP.down_proj.weight.shape == (72, 384)


# ------------------------------------------------------------------ FPS (SPEC §1)

def _fps_naive(xyz, num):
    """Literal per-point transcription of the kernel's rule (slow; for cross-checking)."""
    B, N, _ = xyz.shape
    out = []
    for b in range(B):
        pts = xyz[b].tolist()
        temp = [1e10] * N
        idx = [0]
        old = 0
        for _ in range(1, num):
            x1, y1, z1 = pts[old]
            best, besti = -1.0, 0
            for k in range(N):
                x2, y2, z2 = pts[k]
                if x2 * x2 + y2 * y2 + z2 * z2 <= 1e-3:
                    continue
                d = (x2 - x1) ** 2 + (y2 - y1) ** 2 + (z2 - z1) ** 2
                temp[k] = min(temp[k], d)
                if temp[k] > best:
                    best, besti = temp[k], k
            old = besti
            idx.append(besti)
        out.append(idx)
    return out


def test_fps_hand_made_clouds():
    # Cloud A: point 1 is near the origin (|p|^2 = 8e-4) and would be the farthest from point 0
    # if it were eligible.  Points 2 and 3 tie exactly (distance^2 5 from point 0).
    #   pick 0; then d = [0, -, 5, 5, 0.25]  -> 2 (first of the tie)
    #   after 2: d3 = min(5, 4) = 4, d4 = min(0.25, 4.25) = 0.25 -> 3
    #   after 3: d = [0, -, 0, 0, 0.25] -> 4;   then all eligible are 0 -> 0 (first eligible).
    a = [[2.0, 0.0, 0.0], [0.02, 0.0, 0.02], [0.0, 0.0, 1.0], [0.0, 0.0, -1.0], [2.0, 0.0, 0.5]]
    # Cloud B: point 0 is the origin, so it is the first centre but never eligible again;
    # points 3 and 4 are near the origin and never chosen.
    #   pick 0; d = [-, 1, 1, -, -] -> 1 (tie); after 1: d2 = min(1, 4) = 1 -> 2;
    #   then eligible {1, 2} both 0 -> 1, and again 1.
    b = [[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [-1.0, 0.0, 0.0], [0.01, 0.0, 0.0], [0.0, 0.02, 0.0]]
    # Cloud C: nothing eligible -> always index 0.
    c = [[0.0, 0.0, 0.0], [0.01, 0.01, 0.01], [-0.02, 0.0, 0.0], [0.0, 0.0, 0.03], [0.0, 0.0, 0.0]]
    xyz = torch.tensor([a, b, c], dtype=torch.float32)
    idx = R.torch_fps(xyz, 5)
    assert idx.dtype == torch.long and idx.shape == (3, 5)
    assert idx.tolist() == [[0, 2, 3, 4, 0], [0, 1, 2, 1, 1], [0, 0, 0, 0, 0]]
    assert idx.tolist() == _fps_naive(xyz.double(), 5)
    assert R.torch_fps(xyz, 1).tolist() == [[0], [0], [0]]


def test_fps_matches_naive_on_random_clouds():
    g = torch.Generator().manual_seed(1)
    xyz = torch.randn(2, 40, 3, generator=g, dtype=torch.float64)
    xyz[:, 5:9] = 0.015 * torch.rand(2, 4, 3, generator=g, dtype=torch.float64)  # |p|^2 < 1e-3
    xyz[:, 20] = xyz[:, 30]  # duplicates -> exact ties
    idx = R.torch_fps(xyz, 40)  # more picks than eligible distinct points: exercises the tails
    assert idx.tolist() == _fps_naive(xyz, 40)
    assert not set(idx[:, 1:].flatten().tolist()) & {5, 6, 7, 8}


# ------------------------------------------------------------------ kNN grouping

def test_knn_group_relative_coordinates_and_order():
    xs = [0.0, 1.0, 3.0, 6.0, 10.0, 2.0]
    xyz = torch.tensor([[[x, 0.0, 0.0] for x in xs]])
    centers = xyz[:, [2, 4]]  # x = 3 and x = 10
    nb, idx = R.torch_knn_group(xyz, centers, 3)
    # centre x=3: itself, x=2 (d^2 1), x=1 (d^2 4); x=6 (d^2 9) is next.
    # centre x=10: itself, x=6 (d^2 16), x=3 (d^2 49).
    assert idx.tolist() == [[[2, 5, 1], [4, 3, 2]]]
    assert nb.shape == (1, 2, 3, 3)
    assert torch.equal(nb[0, 0, :, 0], torch.tensor([0.0, -1.0, -2.0]))
    assert torch.equal(nb[0, 1, :, 0], torch.tensor([0.0, -4.0, -7.0]))
    # exact tie (x=2 and x=4 around centre x=3): lower index first
    xyz2 = torch.tensor([[[4.0, 0, 0], [3.0, 0, 0], [2.0, 0, 0]]])
    _, idx2 = R.torch_knn_group(xyz2, xyz2[:, [1]], 2)
    assert idx2.tolist() == [[[1, 0]]]


# ------------------------------------------------------------------ model structure

EXPECTED_DEPTH1_KEYS = {
    "cls_token", "cls_pos",
    "tfts_gamma_1", "tfts_beta_1", "tfts_gamma_2", "tfts_beta_2",
    "encoder.first_conv.0.weight", "encoder.first_conv.0.bias",
    "encoder.first_conv.1.weight", "encoder.first_conv.1.bias",
    "encoder.first_conv.1.running_mean", "encoder.first_conv.1.running_var",
    "encoder.first_conv.1.num_batches_tracked",
    "encoder.first_conv.3.weight", "encoder.first_conv.3.bias",
    "encoder.second_conv.0.weight", "encoder.second_conv.0.bias",
    "encoder.second_conv.1.weight", "encoder.second_conv.1.bias",
    "encoder.second_conv.1.running_mean", "encoder.second_conv.1.running_var",
    "encoder.second_conv.1.num_batches_tracked",
    "encoder.second_conv.3.weight", "encoder.second_conv.3.bias",
    "pos_embed.0.weight", "pos_embed.0.bias", "pos_embed.2.weight", "pos_embed.2.bias",
    "blocks.blocks.0.norm1.weight", "blocks.blocks.0.norm1.bias",
    "blocks.blocks.0.tfts_gamma_1", "blocks.blocks.0.tfts_beta_1",
    "blocks.blocks.0.attn.qkv.weight",
    "blocks.blocks.0.attn.tfts_gamma_1", "blocks.blocks.0.attn.tfts_beta_1",
    "blocks.blocks.0.attn.proj.weight", "blocks.blocks.0.attn.proj.bias",
    "blocks.blocks.0.attn.tfts_gamma_2", "blocks.blocks.0.attn.tfts_beta_2",
    "blocks.blocks.0.norm2.weight", "blocks.blocks.0.norm2.bias",
    "blocks.blocks.0.tfts_gamma_2", "blocks.blocks.0.tfts_beta_2",
    "blocks.blocks.0.mlp.fc1.weight", "blocks.blocks.0.mlp.fc1.bias",
    "blocks.blocks.0.mlp.tfts_gamma_1", "blocks.blocks.0.mlp.tfts_beta_1",
    "blocks.blocks.0.mlp.fc2.weight", "blocks.blocks.0.mlp.fc2.bias",
    "blocks.blocks.0.mlp.tfts_gamma_2", "blocks.blocks.0.mlp.tfts_beta_2",
    "blocks.blocks.0.Adapter_MLP.adapter_layer_norm_before.weight",
    "blocks.blocks.0.Adapter_MLP.adapter_layer_norm_before.bias",
    "blocks.blocks.0.Adapter_MLP.scale.weight", "blocks.blocks.0.Adapter_MLP.scale.bias",
    "blocks.blocks.0.Adapter_MLP.down_proj.weight", "blocks.blocks.0.Adapter_MLP.down_proj.bias",
    "blocks.blocks.0.Adapter_MLP.up_proj.weight", "blocks.blocks.0.Adapter_MLP.up_proj.bias",
    "blocks.blocks.0.tfts_gamma_3", "blocks.blocks.0.tfts_beta_3",
    "norm.weight", "norm.bias",
    "cls_head_finetune.0.weight", "cls_head_finetune.0.bias",
    "cls_head_finetune.1.weight", "cls_head_finetune.1.bias",
    "cls_head_finetune.1.running_mean", "cls_head_finetune.1.running_var",
    "cls_head_finetune.1.num_batches_tracked",
    "cls_head_finetune.4.weight", "cls_head_finetune.4.bias",
    "cls_head_finetune.5.weight", "cls_head_finetune.5.bias",
    "cls_head_finetune.5.running_mean", "cls_head_finetune.5.running_var",
    "cls_head_finetune.5.num_batches_tracked",
    "cls_head_finetune.8.weight", "cls_head_finetune.8.bias",
}


def test_state_dict_keys_depth1():
    m = R.TorchDAPT(**TINY)
    sd = m.state_dict()
    assert set(sd) == EXPECTED_DEPTH1_KEYS
    C = TINY["trans_dim"]
    assert sd["encoder.first_conv.0.weight"].shape == (128, 3, 1)
    assert sd["encoder.second_conv.0.weight"].shape == (512, 512, 1)
    assert sd["encoder.second_conv.3.weight"].shape == (C, 512, 1)
    assert sd["cls_token"].shape == (1, 1, C) and sd["cls_pos"].shape == (1, 1, C)
    assert sd["blocks.blocks.0.attn.qkv.weight"].shape == (3 * C, C)
    assert sd["blocks.blocks.0.attn.tfts_gamma_1"].shape == (3 * C,)
    assert sd["blocks.blocks.0.mlp.tfts_gamma_1"].shape == (4 * C,)
    assert sd["blocks.blocks.0.Adapter_MLP.scale.weight"].shape == (1, C)
    assert sd["blocks.blocks.0.Adapter_MLP.up_proj.weight"].shape == (C, TINY["rank"])
    assert sd["cls_head_finetune.0.weight"].shape == (256, 3 * C)
    assert sd["encoder.first_conv.1.num_batches_tracked"].dtype == torch.int64
    assert set(R.trainable_names(m)) == {
        k for k in EXPECTED_DEPTH1_KEYS
        if ("cls" in k or "tfts" in k or "Adapter" in k)
        and not k.endswith(("running_mean", "running_var", "num_batches_tracked"))
    }


def test_init_values():
    torch.manual_seed(0)
    m = R.TorchDAPT()  # full size: enough samples for loose moment checks
    ad = m.blocks.blocks[0].Adapter_MLP
    assert torch.count_nonzero(ad.up_proj.weight) == 0 and torch.count_nonzero(ad.up_proj.bias) == 0
    assert torch.count_nonzero(ad.down_proj.bias) == 0 and torch.count_nonzero(ad.scale.bias) == 0
    bound = 1.0 / math.sqrt(384)
    assert ad.down_proj.weight.abs().max() <= bound and ad.down_proj.weight.abs().max() > 0.9 * bound
    gam = torch.cat([p.detach().flatten() for n, p in m.named_parameters() if "tfts_gamma" in n])
    bet = torch.cat([p.detach().flatten() for n, p in m.named_parameters() if "tfts_beta" in n])
    assert abs(gam.mean().item() - 1.0) < 1e-3 and abs(gam.std().item() - 0.02) < 1e-3
    assert abs(bet.mean().item()) < 1e-3 and abs(bet.std().item() - 0.02) < 1e-3
    assert 0.005 < m.cls_token.std().item() < 0.05 and m.cls_pos.abs().max() < 0.1


def test_bad_config_rejected():
    with pytest.raises(ValueError):
        R.TorchDAPT(**dict(TINY, head_tokens=()))
    with pytest.raises(ValueError):
        R.TorchDAPT(**dict(TINY, head_tokens=("cls", "mean")))
    with pytest.raises(ValueError):
        R.TorchDAPT(**dict(TINY, encoder_dims=64))
    # any order is accepted and canonicalised
    assert R.TorchDAPT(**dict(TINY, head_tokens=("patch", "cls"))).head_tokens == ("cls", "patch")


# ------------------------------------------------------------------ forward

def _tiny_points(B=3, N=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, N, 3, generator=g)


def test_tiny_forward_train_and_eval():
    torch.manual_seed(0)
    m = R.TorchDAPT(**dict(TINY, drop_path_rate=0.3, drop_adapter_rate=0.5))
    pts = _tiny_points()
    m.train()
    out = m(pts)
    assert out.shape == (3, TINY["num_classes"]) and torch.isfinite(out).all()
    assert int(m.encoder.first_conv[1].num_batches_tracked) == 1
    out.sum().backward()
    m.eval()
    with torch.no_grad():
        e1, e2 = m(pts), m(pts)
    assert e1.shape == (3, TINY["num_classes"]) and torch.equal(e1, e2)  # eval is deterministic


def test_sequence_layout_and_initial_prompt():
    torch.manual_seed(0)
    cfg = dict(TINY, depth=3)
    m = R.TorchDAPT(**cfg).eval()
    nb, center = m.group(_tiny_points())
    assert nb.shape == (3, 8, 4, 3) and center.shape == (3, 8, 3)
    # centres are their own nearest neighbours
    assert torch.equal(nb[:, :, 0], torch.zeros(3, 8, 3))
    x = m.forward_features(nb, center)
    assert x.shape == (3, 1 + 3 + 8, TINY["trans_dim"])
    # At init the adapter is the zero function, so each block's prompt is exactly its beta_3
    # (GELU(0) = 0) before the blocks after it touch the sequence.
    blk = m.blocks.blocks[0]
    seq = torch.randn(2, 5, TINY["trans_dim"])
    y = blk(seq)
    assert y.shape == (2, 6, TINY["trans_dim"])
    assert torch.equal(y[:, 1], blk.tfts_beta_3.detach().expand(2, -1))
    assert torch.allclose(m.forward_from_groups(nb, center), m(_tiny_points()))


def test_release_trainable_gradients_and_bn_stats():
    torch.manual_seed(0)
    # float64, so the statistics checks below hold to float64 rounding on any CPU: each is a mean
    # over n = 128 values of size O(1), off by at most n * 2**-53 = 1.4e-14 between two summation
    # orders; 1e-12 leaves a margin and is still 1e6 times below a wrong momentum or bias term.
    m = R.set_release_trainable(R.TorchDAPT(**TINY)).double().train()
    pts = _tiny_points(B=4, N=64, seed=3).double()
    nb, center = m.group(pts)
    # Running-var update uses the unbiased batch variance (n = B*G*K for the encoder's bn1).
    with torch.no_grad():
        h = m.encoder.first_conv[0](nb.reshape(-1, 4, 3).transpose(1, 2))  # [BG, 128, K]
        flat = h.transpose(0, 1).reshape(128, -1)
    logits = m.forward_from_groups(nb, center)
    bn = m.encoder.first_conv[1]
    assert torch.allclose(bn.running_mean, 0.1 * flat.mean(1), atol=1e-12, rtol=0)
    assert torch.allclose(bn.running_var, 0.9 + 0.1 * flat.var(1, unbiased=True), atol=1e-12,
                          rtol=0)
    logits.logsumexp(-1).sum().backward()
    train = set(R.trainable_names(m))
    for n, p in m.named_parameters():
        if n in train:
            assert p.grad is not None, n
        else:
            assert p.grad is None, n
    # up_proj is zero at init but still receives gradient; down_proj does not yet (up is zero).
    assert m.blocks.blocks[0].Adapter_MLP.up_proj.weight.grad.abs().sum() > 0


def test_full_size_forward_batch2():
    torch.manual_seed(0)
    m = R.TorchDAPT(**R.VARIANTS["pb_t50_rs"]).train()
    pts = torch.randn(2, 2048, 3, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = m(pts)
    assert out.shape == (2, 15) and torch.isfinite(out).all()
