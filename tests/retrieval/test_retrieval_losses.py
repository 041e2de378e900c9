import math

import pytest
import torch
import torch.nn.functional as F

from dynarec.errors import ConfigError
from dynarec.retrieval.gramian import SAGram, SOGram, gram_penalty, gramian
from dynarec.retrieval.losses import LOSSES, gramian_loss, inbatch_loss, sagram_loss, sampled_loss, sogram_loss
from dynarec.retrieval.sampling import NegativeSampler, StreamingFrequency
from dynarec.retrieval.score import prepare


def _rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_loss_keys():
    assert set(LOSSES) == {"inbatch", "sampled", "sogram", "sagram"}


def test_inbatch_matches_reference_and_uniform_logq_is_plain():
    u, v = _rand(6, 4, seed=1), _rand(6, 4, seed=2)
    log_q = torch.tensor([0.1, 0.5, 0.05, 0.2, 0.1, 0.05], dtype=torch.float64).log()
    ref = 0.0
    for i in range(6):
        logits = [float(u[i] @ v[j]) - float(log_q[j]) for j in range(6)]
        ref += -(logits[i] - math.log(sum(math.exp(x) for x in logits))) / 6
    assert float(inbatch_loss(u, v, log_q)) == pytest.approx(ref, rel=1e-10)
    plain = inbatch_loss(u, v)
    uniform = inbatch_loss(u, v, torch.full((6,), math.log(1 / 6), dtype=torch.float64))
    assert float(uniform) == pytest.approx(float(plain), rel=1e-12)
    assert abs(float(inbatch_loss(u, v, log_q)) - float(plain)) > 1e-3


def test_inbatch_masks_duplicate_positives():
    u, v = _rand(4, 3, seed=3), _rand(4, 3, seed=4)
    v[2] = v[0]
    ids = torch.tensor([7, 1, 7, 2])
    logits = u @ v.T
    logits[0, 2] = logits[2, 0] = float("-inf")
    assert torch.allclose(inbatch_loss(u, v, item_ids=ids), F.cross_entropy(logits, torch.arange(4)))


def test_sampled_softmax_logq_and_accidental_hits():
    u, v, neg = _rand(3, 4, seed=5), _rand(3, 4, seed=6), _rand(5, 4, seed=7)
    lq = torch.tensor([0.1, 0.2, 0.3, 0.2, 0.2], dtype=torch.float64).log()
    pos_ids, neg_ids = torch.tensor([0, 1, 2]), torch.tensor([1, 5, 6, 7, 8])
    loss = sampled_loss(u, v, neg, lq, pos_ids=pos_ids, neg_ids=neg_ids)
    ref = 0.0
    for i in range(3):
        logits = [float(u[i] @ v[i])] + [float(u[i] @ neg[j]) - float(lq[j]) for j in range(5)
                                         if int(neg_ids[j]) != int(pos_ids[i])]
        ref += -(logits[0] - math.log(sum(math.exp(x) for x in logits))) / 3
    assert float(loss) == pytest.approx(ref, rel=1e-10)


def test_negative_sampler_distributions():
    counts = torch.tensor([1.0, 3.0, 0.0, 6.0])
    pop = NegativeSampler(4, "popularity", counts=counts, smoothing=0.0)
    ids, lq = pop.sample(20000, torch.Generator().manual_seed(0))
    assert 2 not in ids.tolist()
    freq = torch.bincount(ids, minlength=4).double() / 20000
    assert torch.allclose(freq, torch.tensor([0.1, 0.3, 0.0, 0.6], dtype=torch.float64), atol=0.02)
    assert torch.allclose(lq.exp(), pop.probs[ids])
    uni = NegativeSampler(4)
    assert torch.allclose(uni.log_q(torch.tensor([0, 3])).exp(), torch.tensor([0.25, 0.25]))
    with pytest.raises(ConfigError, match="model.negatives"):
        NegativeSampler(4, "zipf")


def _stream(est, p, items, steps=3000, seed=0):
    g = torch.Generator().manual_seed(seed)
    for present in torch.rand(steps, len(p), generator=g) < p:
        est.update(items[present].repeat(2))        # repeats within a batch count once; may be empty
    return est.probability(items)


def test_streaming_frequency_converges():
    levels = torch.tensor([0.6, 0.3, 0.15])
    p = levels.repeat_interleave(25)               # 25 independent items per level
    items = torch.arange(len(p)) * 7919 + 3        # arbitrary ids, hashed
    est = _stream(StreamingFrequency(num_buckets=1 << 16, alpha=0.01), p, items)
    by_level = est.view(3, 25).mean(1)
    assert torch.allclose(by_level, levels, rtol=0.05)
    assert float(StreamingFrequency(8).probability(torch.tensor([3]))) == 1.0   # never seen


def test_streaming_frequency_more_hashes_fewer_collisions():
    p = torch.full((60,), 0.2)
    items = torch.arange(60) * 104729 + 11
    one = _stream(StreamingFrequency(num_buckets=64, alpha=0.01, num_hashes=1), p, items, steps=1500)
    four = _stream(StreamingFrequency(num_buckets=64, alpha=0.01, num_hashes=4), p, items, steps=1500)
    # collisions shorten the gaps (over-estimate p); the max over hashes (Yi et al. 2019, multiple hashings) removes most of it
    assert float((one / p - 1).abs().mean()) > 2 * float((four / p - 1).abs().mean())


def test_gramian_loss_value_and_gradient():
    u = _rand(6, 3, seed=8).requires_grad_()
    v = _rand(6, 3, seed=9).requires_grad_()
    gu, gv = gramian(u.detach()), gramian(v.detach())
    loss = gramian_loss(u, v, gu, gv, lam=2.0)
    pair = ((u * v).sum(-1) - 1).pow(2).mean()
    exact = pair + 2.0 * gram_penalty(gramian(u), gramian(v))
    assert float(loss.detach()) == pytest.approx(float(exact.detach()), rel=1e-10)   # the penalty's value is g
    grads = torch.autograd.grad(loss, (u, v))
    ref = torch.autograd.grad(exact, (u, v))
    assert all(torch.allclose(a, b) for a, b in zip(grads, ref))
    with pytest.raises(ConfigError, match="model.pair_loss"):
        gramian_loss(u, v, gu, gv, 1.0, pair_loss="hinge")


def test_sogram_and_sagram_losses_use_the_other_batch():
    u, v = _rand(5, 3, seed=10).requires_grad_(), _rand(5, 3, seed=11).requires_grad_()
    ug, vg = _rand(5, 3, seed=12).requires_grad_(), _rand(5, 3, seed=13).requires_grad_()
    est_u, est_v = SOGram(3, 1.0).double(), SOGram(3, 1.0).double()
    loss = sogram_loss(u, v, ug, vg, est_u, est_v, lam=0.5)
    ref = gramian_loss(u, v, gramian(ug.detach()), gramian(vg.detach()), lam=0.5)
    assert float(loss.detach()) == pytest.approx(float(ref.detach()), rel=1e-12)
    loss.backward()
    assert ug.grad is None and vg.grad is None and u.grad is not None
    sa_u, sa_v = SAGram(5, 3).double(), SAGram(5, 3).double()
    rows = torch.arange(5)
    sagram_loss(u, v, ug, vg, rows, rows, sa_u, sa_v, lam=0.5)
    assert torch.allclose(sa_u.cache, ug.detach()) and torch.allclose(sa_v.gram_avg, gramian(vg.detach()))


def test_prepare_cosine_and_temperature():
    u, v = _rand(4, 3, seed=14), _rand(6, 3, seed=15)
    pu, pv = prepare(u, v, "cosine", 0.1)
    cos = F.cosine_similarity(u.unsqueeze(1), v.unsqueeze(0), dim=-1)
    assert torch.allclose(pu @ pv.T, cos / 0.1)
    with pytest.raises(ConfigError, match="model.score"):
        prepare(u, v, "l2")


def test_streaming_frequency_warm_start_reads_the_first_gap():
    est = StreamingFrequency(num_buckets=1 << 12, alpha=0.05, warm_start=True)
    plain = StreamingFrequency(num_buckets=1 << 12, alpha=0.05)
    for t in range(1, 41):  # item 1 in every 4th batch, item 2 in every batch
        ids = torch.tensor([1, 2]) if t % 4 == 0 else torch.tensor([2])
        est.update(ids)
        plain.update(ids)
    p = est.probability(torch.tensor([1, 2]))
    assert torch.allclose(p, torch.tensor([0.25, 1.0]))
    assert float(plain.probability(torch.tensor([1]))) > 0.5  # Algorithm 2 from B = 0: still near 1 after 10 hits


def test_streaming_frequency_counts_copies_when_items_repeat_in_a_batch():
    """The logQ correction of an in-batch softmax needs E[copies per batch] (each copy is one negative):
    with batches of 50 pairs drawn from item shares 0.7 / 0.2 / 0.1 that is 35 / 10 / 5, where Algorithm 2's
    per-batch hit probability saturates at ~1 for all three."""
    shares = torch.tensor([0.7, 0.2, 0.1])
    items = torch.tensor([11, 22, 33])
    est = StreamingFrequency(num_buckets=1 << 12, alpha=0.05, warm_start=True)
    g = torch.Generator().manual_seed(0)
    burn, steps, reads = 100, 5000, []
    for t in range(burn + steps):
        est.update(items[torch.multinomial(shares, 50, replacement=True, generator=g)])
        if t >= burn:
            reads.append(est.expected_count(items))
    mean = torch.stack(reads).mean(0)
    # per item the read is an exponential moving average (α = 0.05) of Binomial(50, share) counts over a gap
    # of ~1 batch: stationary sd sqrt(50·s·(1−s)·α/(2−α)) ≤ 0.52; averaged over 5,000 AR(1) reads (ρ = 0.95,
    # ~128 effective) its sd is ≤ 0.05: 0.25 = 5 standard deviations of that average
    assert torch.allclose(mean, 50 * shares, atol=0.25)
    assert torch.allclose(est.probability(items), torch.ones(3), atol=0.01)   # Algorithm 2 alone: saturated
    assert torch.allclose(est.log_q(items), est.expected_count(items).log())
    # items that never repeat in a batch: the expected count is Algorithm 2's probability
    once = StreamingFrequency(num_buckets=1 << 12, alpha=0.05, warm_start=True)
    for t in range(1, 41):
        once.update(torch.tensor([1, 2]) if t % 4 == 0 else torch.tensor([2]))
    assert torch.allclose(once.expected_count(torch.tensor([1, 2])), once.probability(torch.tensor([1, 2])))
