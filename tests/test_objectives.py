"""fkt.objectives: NT-Xent checked against the SimCLR formula written out here, the weighted sum, the finite check."""

from __future__ import annotations

import math

import pytest
import torch

from fkt.objectives import NonFiniteLoss, check_finite, classification_loss, contrastive_loss, weighted_total


def nt_xent_reference(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """SimCLR (Chen et al. 2020), eq. 1 averaged over all 2N anchors, in float64, written out plainly.

    z = [z1; z2] (2N x d), each row L2-normalised; s_ij = z_i . z_j / tau for i != j;
    l(i) = -log( exp(s_{i,p(i)}) / sum_{k != i} exp(s_ik) ), p(i) = the other view of the same image."""
    z = torch.cat([z1, z2]).double()
    z = z / z.norm(dim=1, keepdim=True)
    n2 = z.shape[0]
    n = n2 // 2
    total = z.new_zeros(())
    for i in range(n2):
        positive = (i + n) % n2
        sims = [(z[i] @ z[k]) / temperature for k in range(n2) if k != i]
        log_denominator = torch.logsumexp(torch.stack(sims), dim=0)
        total = total + (log_denominator - (z[i] @ z[positive]) / temperature)
    return total / n2


def dot_product_version(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """The same loss without the normalisation (what a bug would compute)."""
    z = torch.cat([z1, z2]).double()
    n = len(z1)
    sim = z @ z.T / temperature
    sim.fill_diagonal_(float("-inf"))
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(n)])
    return torch.nn.functional.cross_entropy(sim, target)


@pytest.mark.parametrize("batch", [2, 5, 7, 16])
@pytest.mark.parametrize("temperature", [0.5, 0.1])
def test_contrastive_loss_is_simclr_nt_xent(batch, temperature):
    gen = torch.Generator().manual_seed(batch * 100 + int(temperature * 10))
    z1 = torch.randn(batch, 8, generator=gen)
    z2 = z1 + 0.5 * torch.randn(batch, 8, generator=gen)  # correlated views, as after training a little
    loss = contrastive_loss(temperature)(z1, z2)
    assert loss.ndim == 0 and loss.dtype == torch.float32
    assert loss.item() == pytest.approx(nt_xent_reference(z1, z2, temperature).item(), rel=1e-5, abs=1e-5)


def test_contrastive_loss_gradients_match_reference():
    gen = torch.Generator().manual_seed(0)
    z1 = torch.randn(5, 6, generator=gen, dtype=torch.float64, requires_grad=True)
    z2 = torch.randn(5, 6, generator=gen, dtype=torch.float64, requires_grad=True)
    g_lightly = torch.autograd.grad(contrastive_loss(0.1)(z1, z2), [z1, z2])
    g_ref = torch.autograd.grad(nt_xent_reference(z1, z2, 0.1), [z1, z2])
    for a, b in zip(g_lightly, g_ref):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-8)


def test_contrastive_loss_is_invariant_to_scaling_projections():
    """Cosine similarity: scaling any projection by a positive factor changes nothing."""
    gen = torch.Generator().manual_seed(1)
    z1, z2 = torch.randn(7, 4, generator=gen), torch.randn(7, 4, generator=gen)
    loss = contrastive_loss(0.5)
    base = loss(z1, z2)
    scale_rows = torch.rand(7, 1, generator=gen) * 20 + 0.05
    torch.testing.assert_close(loss(3.0 * z1, 0.01 * z2), base, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(loss(z1 * scale_rows, z2), base, rtol=1e-5, atol=1e-5)
    # ... which a dot-product loss would not be: the check above can tell the two apart
    assert not math.isclose(dot_product_version(3.0 * z1, z2, 0.5).item(), dot_product_version(z1, z2, 0.5).item(),
                            rel_tol=1e-3)


def test_contrastive_loss_known_values():
    """Identical, mutually orthogonal views: the positive has cosine 1, the 2N-2 negatives cosine 0."""
    n, t = 4, 0.5
    z = torch.eye(n) * 7.0
    expected = -math.log(math.exp(1 / t) / (math.exp(1 / t) + (2 * n - 2) * math.exp(0.0)))
    assert contrastive_loss(t)(z, z.clone()).item() == pytest.approx(expected, rel=1e-6)
    # lower temperature, sharper: the loss of these well-separated pairs falls
    assert contrastive_loss(0.1)(z, z.clone()).item() < expected
    # swapping the two views is symmetric
    gen = torch.Generator().manual_seed(2)
    a, b = torch.randn(5, 3, generator=gen), torch.randn(5, 3, generator=gen)
    assert contrastive_loss(t)(a, b).item() == pytest.approx(contrastive_loss(t)(b, a).item(), rel=1e-6)


def test_contrastive_loss_configuration():
    loss = contrastive_loss(0.2)
    assert loss.temperature == 0.2
    assert loss.gather_distributed is False
    assert contrastive_loss(0.2, world_size=4).gather_distributed is True


def test_classification_loss_is_mean_cross_entropy():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    targets = torch.tensor([0, 0, 1])
    expected = sum(-torch.log_softmax(row, 0)[t].item() for row, t in zip(logits, targets)) / 3
    assert classification_loss(logits, targets).item() == pytest.approx(expected, rel=1e-6)


def test_weighted_total():
    ssl = torch.tensor(2.0, requires_grad=True)
    ce = torch.tensor(3.0, requires_grad=True)
    total = weighted_total({"ssl": ssl, "ce": ce}, {"ce": 0.5})
    assert total.item() == pytest.approx(2.0 + 0.5 * 3.0)  # a term without a weight counts once
    total.backward()
    assert ssl.grad.item() == 1.0 and ce.grad.item() == 0.5
    assert weighted_total({"ssl": torch.tensor(2.0), "ce": torch.tensor(3.0)}, {"ce": 0.0}).item() == 2.0
    assert weighted_total({"ce": torch.tensor(3.0)}, {"ssl": 9.0, "ce": 2.0}).item() == 6.0


def test_check_finite_passes_finite_terms():
    check_finite({"ssl": torch.tensor(1.5), "ce": torch.tensor(0.0)}, step=3)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_check_finite_names_term_and_step(bad):
    with pytest.raises(NonFiniteLoss) as err:
        check_finite({"ssl": torch.tensor(1.0), "ce": torch.tensor(bad)}, step=17)
    message = str(err.value)
    assert "'ce'" in message and "step 17" in message and str(bad) in message
    assert "'ssl'" not in message
    assert isinstance(err.value, RuntimeError)
