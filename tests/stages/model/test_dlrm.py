"""The reference DLRM: shapes, masking of the history, the dense (LUM) path, and that it learns."""

from __future__ import annotations

import pytest
import torch

from stages.model.dlrm import DLRM, DINAttention, DLRMConfig


def test_forward_shapes_and_dense_path_changes_output():
    torch.manual_seed(0)
    model = DLRM(DLRMConfig(emb_dim=4, mlp_hidden=(8,)), [5, 7, 3], item_field=1, dense_dim=3)
    sparse = torch.tensor([[1, 2, 0], [4, 6, 2]])
    history = torch.tensor([[0, 1, 2], [0, 0, 0]])
    dense = torch.randn(2, 3)
    model.eval()
    out = model(sparse, history, dense)
    assert out.shape == (2,)
    assert not torch.allclose(out, model(sparse, history, -dense))
    with pytest.raises(ValueError, match="dense must be"):
        model(sparse, history, None)
    with pytest.raises(ValueError, match="sparse must be"):
        model(sparse[:, :2], history, dense)


def test_din_attention_ignores_padding_and_empty_history_pools_to_zero():
    torch.manual_seed(0)
    attn = DINAttention(4, 8)
    hist = torch.randn(2, 3, 4)
    target = torch.randn(2, 4)
    mask = torch.tensor([[False, True, True], [False, False, False]])
    out = attn(hist, target, mask)
    hist2 = hist.clone()
    hist2[0, 0] = 100.0  # a padded slot: must not matter
    assert torch.allclose(out, attn(hist2, target, mask))
    assert torch.equal(out[1], torch.zeros(4))
    assert torch.isfinite(out).all()


def test_same_seed_same_embeddings_with_and_without_dense():
    torch.manual_seed(3)
    a = DLRM(DLRMConfig(emb_dim=4), [5, 7], item_field=1, dense_dim=0)
    torch.manual_seed(3)
    b = DLRM(DLRMConfig(emb_dim=4), [5, 7], item_field=1, dense_dim=6)
    for ea, eb in zip(a.embeddings, b.embeddings):
        assert torch.equal(ea.weight, eb.weight)


def test_learns_a_dense_signal():
    torch.manual_seed(0)
    n = 2048
    dense = torch.randn(n, 2)
    y = (dense[:, 0] > 0).float()
    sparse = torch.randint(1, 5, (n, 2))
    model = DLRM(DLRMConfig(emb_dim=4, mlp_hidden=(16,), dropout=0.0), [5, 5], item_field=1, dense_dim=2,
                 use_history=False)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(100):
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model(sparse, None, dense), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    acc = ((model(sparse, None, dense) > 0).float() == y).float().mean()
    assert acc > 0.9
