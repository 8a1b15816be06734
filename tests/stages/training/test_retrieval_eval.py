"""Leave-last-out retrieval metrics equal a brute-force per-user, per-item computation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from stages.model.lum import ModelConfig, build_model
from stages.model.vocab import Vocab
from stages.training.retrieval_eval import evaluate, ndcg_at, split_leave_last_out


def test_split_leave_last_out():
    items = [np.array([1, 2, 3, 4]), np.array([5, 6]), np.array([7])]
    conds = [x + 100 for x in items]
    s = split_leave_last_out(items, conds)
    assert s[0][0][0].tolist() == [1, 2] and s[0][1][2] == 3 and s[0][2][2] == 4
    assert s[0][2][0].tolist() == [1, 2, 3] and s[0][2][3] == 104
    assert s[1][1] is None and s[1][2] is None and s[1][0][0].tolist() == [5, 6]
    assert s[2][0][0].tolist() == [7]


@pytest.mark.parametrize("prior,filter_seen", [("frequency", True), ("learned", True), ("learned", False)])
def test_metrics_match_brute_force(prior, filter_seen):
    vocab = Vocab.build(range(1, 26), [f"g{i % 3}" for i in range(25)])
    torch.manual_seed(0)
    model = build_model(ModelConfig(d_model=16, n_heads=2, n_layers=1, d_ff=32, dropout=0.0, max_len=8,
                                    d_item=8, d_feature=4), vocab).eval()
    if prior == "learned":  # a random head is near uniform; sharpen it so the prior really moves the ranking
        with torch.no_grad():
            model.cond_heads[0].weight.mul_(200.0)
    rng = np.random.default_rng(0)
    icond = vocab.item_conditions()
    cases = []
    for n in [3, 7, 1, 5, 12, 2]:  # 12 > history_len = 7: only the last 7 are read (and filtered)
        hist = rng.integers(1, 26, size=n)
        target = int(rng.integers(1, 26))
        cases.append((hist, icond[hist], target, int(icond[target])))
    # a target that is in its own history window: a miss when seen items are filtered
    cases.append((np.array([4, 9, 4, 2]), icond[[4, 9, 4, 2]], 9, int(icond[9])))
    got = evaluate(model, vocab, cases, k=10, chunk_users=4, prior=prior, filter_seen=filter_seen)
    assert got["prior"] == prior
    E = model.item_embeddings().detach()
    hr = nd = thr = tnd = rhr = rnd = uhr = und = 0.0
    with torch.no_grad():
        for hist, hc, target, tc in cases:
            hist, hc = hist[-7:], hc[-7:]  # + the query behaviour: one max_len = 8 training sequence

            def rank_of(scores, target=target, hist=hist, filt=filter_seen):
                if filt:  # items of the history window cannot be recommended (the target too, if seen)
                    scores = scores.clone()
                    scores[torch.from_numpy(hist).long() - 1] = float("-inf")
                return int((scores >= scores[target - 1]).sum()) - 1

            def o_for(cond, hist=hist, hc=hc):
                it = torch.from_numpy(np.append(hist, 1)).long()
                cd = torch.from_numpy(np.append(hc, cond)).long()
                return model.encode_packed(it, cd, torch.tensor([0, it.numel()], dtype=torch.int32))[-1]

            scores = torch.stack([o_for(int(icond[i])) @ E[i] for i in range(1, 26)])
            rank = rank_of(scores)
            rhr += rank < 10
            rnd += ndcg_at(rank)
            # calibrated: log p(c | history) (add-1 category counts) + log softmax over items under c
            conds = sorted(set(icond[1:].tolist()))
            logp = {c: torch.log_softmax(model.logit_scale * (E[1:] @ o_for(c)), 0) for c in conds}
            cnt = {c: sum(int(icond[h]) == c for h in hist) for c in conds}
            prior = {c: math.log((cnt[c] + 1) / (len(hist) + len(conds))) for c in conds}
            if got["prior"] == "learned":  # head at the last history item token, softmax over the categories
                it, cd = torch.from_numpy(hist).long(), torch.from_numpy(hc).long()
                _, h_items = model.encode_packed(it, cd, torch.tensor([0, it.numel()], dtype=torch.int32),
                                                 with_item_hidden=True)
                logits = model.cond_logits(h_items[-1:])[0][0]                # over category values
                fvals = [int(model.cond_features[c, 0]) for c in conds]
                lp = torch.log_softmax(logits[fvals], 0)
                prior = {c: float(lp[j]) for j, c in enumerate(conds)}
            cal = torch.stack([prior[int(icond[i])] + logp[int(icond[i])][i - 1] for i in range(1, 26)])
            crank = rank_of(cal)
            hr += crank < 10
            nd += ndcg_at(crank)
            urank = rank_of(cal, filt=False)
            uhr += urank < 10
            und += ndcg_at(urank)
            ts = E[1:] @ o_for(tc)
            trank = rank_of(ts)
            thr += trank < 10
            tnd += ndcg_at(trank)
    n = len(cases)
    assert got["users"] == n
    assert math.isclose(got["hr@10"], round(hr / n, 4))
    assert math.isclose(got["ndcg@10"], round(nd / n, 4), abs_tol=1e-4)
    assert math.isclose(got["target_cond_hr@10"], round(thr / n, 4))
    assert math.isclose(got["target_cond_ndcg@10"], round(tnd / n, 4), abs_tol=1e-4)
    assert math.isclose(got["raw_own_cond_hr@10"], round(rhr / n, 4))
    assert math.isclose(got["raw_own_cond_ndcg@10"], round(rnd / n, 4), abs_tol=1e-4)
    assert math.isclose(got["unfiltered_hr@10"], round(uhr / n, 4))
    assert math.isclose(got["unfiltered_ndcg@10"], round(und / n, 4), abs_tol=1e-4)
    if filter_seen:  # 25 items, histories up to 8: the filter must change some ranks
        assert (got["hr@10"], got["ndcg@10"]) != (got["unfiltered_hr@10"], got["unfiltered_ndcg@10"])
    else:
        assert (got["hr@10"], got["ndcg@10"]) == (got["unfiltered_hr@10"], got["unfiltered_ndcg@10"])


def test_candidate_rows_restrict_the_ranking():
    vocab = Vocab.build(range(1, 26), [f"g{i % 3}" for i in range(25)])
    torch.manual_seed(1)
    model = build_model(ModelConfig(d_model=16, n_heads=2, n_layers=1, d_ff=32, dropout=0.0, max_len=8,
                                    d_item=8, d_feature=4), vocab).eval()
    icond = vocab.item_conditions()
    rng = np.random.default_rng(1)
    cases = [(h, icond[h], int(t), int(icond[t])) for h, t in
             ((rng.integers(1, 26, size=4), rng.integers(1, 9)) for _ in range(12))]  # targets in 1..8
    full = evaluate(model, vocab, cases, filter_seen=False)   # random histories may hold their target
    only = evaluate(model, vocab, cases, candidate_rows=np.unique([c[2] for c in cases]), filter_seen=False)
    assert full["users"] == only["users"] == 12
    # fewer competitors: every target ranks at least as high
    assert only["hr@10"] >= full["hr@10"] and only["ndcg@10"] >= full["ndcg@10"]
    assert only["hr@10"] == 1.0  # <= 8 candidates: every target is in the top 10
    assert full["hr@10"] < 1.0


def test_learned_prior_differs_and_old_models_fall_back():
    """The learned head changes the comparable ranking; a model without a head (cond_loss_weight 0) uses
    the frequency prior under "auto" and refuses "learned"."""
    vocab = Vocab.build(range(1, 26), [f"g{i % 3}" for i in range(25)])
    icond = vocab.item_conditions()
    rng = np.random.default_rng(2)
    cases = [(h, icond[h], int(t), int(icond[t])) for h, t in
             ((rng.integers(1, 26, size=5), rng.integers(1, 26)) for _ in range(16))]
    cfg = dict(d_model=16, n_heads=2, n_layers=1, d_ff=32, dropout=0.0, max_len=8, d_item=8, d_feature=4)
    torch.manual_seed(3)
    model = build_model(ModelConfig(**cfg), vocab).eval()
    with torch.no_grad():
        model.cond_heads[0].weight.mul_(500.0)
    learned, freq = evaluate(model, vocab, cases), evaluate(model, vocab, cases, prior="frequency")
    assert learned["prior"] == "learned" and freq["prior"] == "frequency"
    assert learned["target_cond_hr@10"] == freq["target_cond_hr@10"]
    assert (learned["hr@10"], learned["ndcg@10"]) != (freq["hr@10"], freq["ndcg@10"])
    # the learned run also ranks under the frequency prior in the same pass
    assert (learned["frequency_prior_hr@10"], learned["frequency_prior_ndcg@10"]) == (freq["hr@10"], freq["ndcg@10"])
    old = build_model(ModelConfig(**cfg, cond_loss_weight=0.0), vocab).eval()
    assert not old.has_cond_head
    assert evaluate(old, vocab, cases)["prior"] == "frequency"
    with pytest.raises(ValueError, match="next-condition head"):
        evaluate(old, vocab, cases, prior="learned")
