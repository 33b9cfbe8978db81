"""Transfer attacks: MI-FGSM, the surrogate ensemble, white-box equality on the target itself."""

import pytest
import torch
from torch import nn

from dsara.attacks.gradient import fgsm, pgd
from dsara.attacks.transfer import Ensemble, TransferConfig, mifgsm, transfer_attack
from dsara.errors import DsaraError


def tiny_net(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(),
                         nn.Linear(4 * 8 * 8, 4)).eval()


def batch():
    gen = torch.Generator().manual_seed(3)
    return torch.rand(6, 3, 8, 8, generator=gen), torch.arange(6) % 4


def test_mifgsm_with_mu_0_and_one_step_is_fgsm():
    model, (x, y) = tiny_net(), batch()
    torch.testing.assert_close(mifgsm(model, x, y, 8 / 255, mu=0.0, iters=1),
                               fgsm(model, x, y, 8 / 255, random_start=False))


def test_mifgsm_momentum_matters_and_stays_in_the_ball():
    model, (x, y) = tiny_net(), batch()
    eps = 8 / 255
    a, b = mifgsm(model, x, y, eps, mu=1.0), mifgsm(model, x, y, eps, mu=0.0)
    assert not torch.equal(a, b)
    assert (a - x).abs().max() <= eps + 1e-6 and 0 <= a.min() and a.max() <= 1


def test_ensemble_averages_logits():
    class Const(nn.Module):
        def __init__(self, v):
            super().__init__()
            self.v = torch.tensor(v)

        def forward(self, x):
            return self.v.expand(len(x), -1)
    ens = Ensemble([Const([1.0, 0.0]), Const([3.0, 4.0])])
    torch.testing.assert_close(ens(torch.zeros(2, 1)), torch.tensor([[2.0, 2.0], [2.0, 2.0]]))
    with pytest.raises(DsaraError, match="--surrogate"):
        Ensemble([])


def test_transfer_from_the_target_itself_is_the_white_box_attack():
    model, (x, y) = tiny_net(), batch()
    eps = 8 / 255
    with torch.no_grad():
        predicted = model(x).argmax(1)
    mi = transfer_attack([model], "mifgsm")(tiny_net(1), x, y, eps, None)
    torch.testing.assert_close(mi, mifgsm(model, x, predicted, eps))
    attack = transfer_attack([model], "pgd", TransferConfig(labels="true"))
    got = attack(tiny_net(1), x, y, eps, torch.Generator().manual_seed(5))
    want = pgd(model, x, y, eps, eps / 4, 20, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(got, want)


def test_a_different_surrogate_gives_different_examples():
    (x, y), eps = batch(), 8 / 255
    a = transfer_attack([tiny_net(0)], "mifgsm")(None, x, y, eps, None)
    b = transfer_attack([tiny_net(1)], "mifgsm")(None, x, y, eps, None)
    assert not torch.equal(a, b)
