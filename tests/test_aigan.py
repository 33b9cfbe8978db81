"""AI-GAN: the hinge term, the generator's eps-ball, training moves targeted success, the cache."""

import torch
from torch import nn

from dsara.attacks.aigan import (
    AiGanAttack,
    AiGanConfig,
    Generator,
    l2_hinge,
    prepare_generator,
    random_targets,
)


def tiny_net():
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(),
                         nn.Linear(4 * 8 * 8, 4)).eval()


def test_hinge_and_its_gradient_vanish_within_c():
    delta = torch.full((2, 3, 4, 4), 0.01, requires_grad=True)  # ||delta||_2 = 0.01 * sqrt(48)
    c = 0.01 * 48 ** 0.5 + 1e-3
    loss = l2_hinge(delta, c)
    loss.backward()
    assert loss.item() == 0 and (delta.grad == 0).all()
    delta2 = torch.full((2, 3, 4, 4), 0.1, requires_grad=True)
    scale = torch.tensor([1.0, 2.0]).view(2, 1, 1, 1)  # two distinct rows
    loss2 = l2_hinge(delta2 * scale, 0.1)
    loss2.backward()
    norms = torch.tensor([0.1, 0.2]) * 48 ** 0.5
    assert abs(loss2.item() - (norms - 0.1).mean().item()) < 1e-5
    assert (delta2.grad != 0).all()


def test_random_targets_differ_from_labels():
    y = torch.arange(20) % 4
    t = random_targets(y, 4, torch.Generator().manual_seed(0))
    assert (t != y).all() and t.min() >= 0 and t.max() <= 3 and len(set(t.tolist())) > 1


def test_generator_examples_are_in_the_ball():
    G = Generator(3, 4, 8 / 255, width=4).eval()
    x = torch.rand(5, 3, 8, 8)
    attack = AiGanAttack(G)
    x_adv = attack(tiny_net(), x, torch.arange(5) % 4, 8 / 255, torch.Generator().manual_seed(0))
    assert (x_adv - x).abs().max() <= 8 / 255 + 1e-6 and 0 <= x_adv.min() and x_adv.max() <= 1
    assert attack.n == 5 and attack.summary()["images_per_s"] > 0


def test_training_raises_targeted_success_and_the_cache_is_reused(tmp_path):
    model = tiny_net()
    x = torch.rand(64, 3, 8, 8)
    y = torch.arange(64) % 4
    eps = 32 / 255
    cfg = AiGanConfig(width=8, stage1_epochs=1, stage2_epochs=4, batch_size=16, pgd_steps=2)
    logs = []
    G, info = prepare_generator(model, x, y, eps, 4, tmp_path, cfg, log=logs.append)
    assert info["trained_now"] and (tmp_path / "ai_gan.pt").is_file()
    gen = torch.Generator().manual_seed(1)
    attack = AiGanAttack(G)
    attack(model, x, y, eps, gen)
    untrained = AiGanAttack(Generator(3, 4, eps, width=8).eval())
    untrained(model, x, y, eps, torch.Generator().manual_seed(1))
    assert attack.summary()["targeted_success"] > untrained.summary()["targeted_success"]
    G2, info2 = prepare_generator(model, x, y, eps, 4, tmp_path, cfg, log=logs.append)
    assert not info2["trained_now"] and "from cache" in logs[-1]
    for a, b in zip(G.state_dict().values(), G2.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    with torch.no_grad():  # other weights: the cache does not apply
        model[0].weight.add_(0.1)
    _, info3 = prepare_generator(model, x, y, eps, 4, tmp_path, cfg, log=logs.append)
    assert info3["trained_now"]
