"""End to end on plain tensors: towers + each loss learn a clustered synthetic corpus (recall well above an
untrained model), the way the trainer will call them."""
import pytest
import torch
from torch import nn

from dynarec.retrieval.data import CSR
from dynarec.retrieval.gramian import SAGram, SOGram
from dynarec.retrieval.losses import inbatch_loss, sagram_loss, sampled_loss, sogram_loss
from dynarec.retrieval.metrics import retrieval_metrics
from dynarec.retrieval.sampling import NegativeSampler, StreamingFrequency
from dynarec.retrieval.score import prepare
from dynarec.retrieval.towers import Tower, TwoTower

N_U, N_I, C, DIM = 40, 60, 4, 8


def _corpus():
    g = torch.Generator().manual_seed(0)
    users, items = [], []
    for u in range(N_U):
        own = torch.arange(u % C, N_I, C)                      # the 15 items of the user's cluster
        pick = own[torch.randperm(len(own), generator=g)[:12]]
        users += [u] * 12
        items += pick.tolist()
    users, items = torch.tensor(users), torch.tensor(items)
    test = torch.zeros(len(users), dtype=torch.bool)
    test[torch.arange(len(users)) % 12 < 2] = True             # 2 held-out positives per user
    return users[~test], items[~test], users[test], items[test]


class _Model(nn.Module):
    def __init__(self, metric, temperature):
        super().__init__()
        self.metric, self.temperature = metric, temperature
        self.ue, self.ie = nn.Embedding(N_U, DIM), nn.Embedding(N_I, DIM)
        self.towers = TwoTower(Tower(DIM, [16], DIM), Tower(DIM, [16], DIM))

    def forward(self, u, i):
        return prepare(*self.towers(self.ue(u), self.ie(i)), metric=self.metric, temperature=self.temperature)


def _recall(model, tr_u, tr_i, te_u, te_i):
    with torch.no_grad():
        q, v = model(torch.arange(N_U), torch.arange(N_I))
    return retrieval_metrics(q, v, CSR.from_pairs(te_u, te_i, N_U), CSR.from_pairs(tr_u, tr_i, N_U))["recall@10"]["all"]


@pytest.mark.parametrize("loss", ["inbatch", "sampled", "sogram", "sagram"])
def test_each_loss_learns_the_clusters(loss):
    torch.manual_seed(0)
    tr_u, tr_i, te_u, te_i = _corpus()
    # softmax losses: cosine / temperature (Yi et al.); Gramian losses: the paper's plain dot product
    model = _Model("cosine", 0.2) if loss in ("inbatch", "sampled") else _Model("dot", 1.0)
    before = _recall(model, tr_u, tr_i, te_u, te_i)
    opt = torch.optim.Adam(model.parameters(), lr=0.03)
    g = torch.Generator().manual_seed(1)
    freq, sampler = StreamingFrequency(1024, alpha=0.05), NegativeSampler(N_I)
    so = (SOGram(DIM, alpha=0.5), SOGram(DIM, alpha=0.5))
    sa = (SAGram(N_U, DIM, beta=1.0), SAGram(N_I, DIM, beta=1.0))
    for _ in range(150):
        b, b_gram = torch.randint(0, len(tr_u), (64,), generator=g), torch.randint(0, len(tr_u), (64,), generator=g)
        u, v = model(tr_u[b], tr_i[b])
        if loss == "inbatch":
            freq.update(tr_i[b])
            out = inbatch_loss(u, v, freq.log_q(tr_i[b]), item_ids=tr_i[b])
        elif loss == "sampled":
            neg, lq = sampler.sample(32, g)
            out = sampled_loss(u, v, model(tr_u[:1], neg)[1], lq, pos_ids=tr_i[b], neg_ids=neg)
        else:
            with torch.no_grad():                                # the Gram batch B, separate from B′
                ug, vg = model(tr_u[b_gram], tr_i[b_gram])
            if loss == "sogram":
                out = sogram_loss(u, v, ug, vg, *so, lam=1.0)
            else:
                out = sagram_loss(u, v, ug, vg, tr_u[b_gram], tr_i[b_gram], *sa, lam=1.0)
        opt.zero_grad()
        out.backward()
        opt.step()
    after = _recall(model, tr_u, tr_i, te_u, te_i)
    assert after > 0.8 and after > before + 0.3, (before, after)
