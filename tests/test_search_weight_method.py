"""The search's weight step with another training method (``weight_method``, issue 12 item 7)."""

import copy

import pytest
import torch
from test_search import run_first_epochs, tiny

from dsara import DsaraError
from dsara.search import SearchConfig, run
from dsara.search.config import load_search_config
from dsara.search.loop import Search
from dsara.search.steps import weight_step
from dsara.train.losses import AdvParams, trades


def _search(tmp_path, **kw) -> Search:
    return Search(tiny(tmp_path, **kw).validate())


def test_weight_step_follows_the_chosen_method(tmp_path):
    """The TRADES weight step moves the weights by exactly the SGD step of TRADES' loss."""
    s = _search(tmp_path, weight_method="trades", weight_beta=3.0, grad_clip=1e9)
    (x, y), _ = next(zip(s.train.epoch(0), s.val.epoch(0)))
    ref = copy.deepcopy(s.model)
    torch.manual_seed(5)
    stats = weight_step(s.model, None, y, s.w_opt, s.cfg, s.amp, s.weights, x=x)
    torch.manual_seed(5)
    p = AdvParams(s.cfg.eps, s.cfg.step_size, s.cfg.pgd_steps, beta=3.0, craft_mode="eval",
                  start="normal")  # TRADES: eval mode, x + 0.001 N(0, 1)

    class Aux(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, xx, return_aux=False):
            return (self.m(xx), None) if return_aux else self.m(xx)

    loss, _ = trades(Aux(ref), x, y, p)
    weights = ref.weight_parameters()
    grads = torch.autograd.grad(loss, weights, allow_unused=True)
    assert stats["train_loss_adv"].item() == pytest.approx(loss.item(), rel=1e-5)
    lr = s.cfg.lr
    for w_new, w_old, g in zip(s.weights, weights, grads):
        expected = w_old.detach() - lr * ((0 if g is None else g) + s.cfg.weight_decay * w_old)
        torch.testing.assert_close(w_new.detach(), expected, rtol=1e-4, atol=1e-6)
    for a, b in zip(s.model.arch_parameters(), ref.arch_parameters()):
        assert torch.equal(a, b)  # the weight step never touches alpha


@pytest.mark.parametrize("method", ["trades", "iat-manifold"])
def test_search_runs_and_resumes_with_another_weight_method(tmp_path, method):
    kw = {"epochs": 2, "stage1_epochs": 1, "weight_method": method, "max_steps": 1,
          "pgd_steps": 1}
    straight = run(tiny(tmp_path, "straight", **kw))
    run_first_epochs(tiny(tmp_path, "part", **kw), epochs_done=1)
    resumed = run(tiny(tmp_path, "part", **kw), resume=True)
    a = torch.load(straight.run_dir / "checkpoint.pt", weights_only=True)["model"]
    b = torch.load(resumed.run_dir / "checkpoint.pt", weights_only=True)["model"]
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)
    assert straight.history[-1]["train_acc_adv"] is None  # no PGD batch of the weight-train split


def test_iat_manifold_mixes_at_the_supernets_cell_boundaries(tmp_path):
    from dsara.search.weight_method import _WithAux
    from dsara.train.methods import iat

    s = _search(tmp_path)
    net = _WithAux(s.model).eval()
    points = iat.mix_points(net)
    assert len(points) == len(s.model.cells) and points[1] is s.model.cells[1]
    x = torch.rand(4, 3, 8, 8)
    mixed = iat._forward_mixed(net, x, 0.5, torch.tensor([1, 0, 3, 2]), points[2])[0]
    assert mixed.shape == (4, s.model.classifier.out_features)
    assert not torch.allclose(mixed, net(x))


def test_weight_method_defaults_and_bad_values():
    assert SearchConfig().weight_method == "pgd-at"
    cfg = load_search_config(None, ["order=first", "weight_method=iat",
                                    "weight_method_options.alpha=0.5"])
    assert cfg.weight_method_options == {"alpha": 0.5}
    with pytest.raises(DsaraError, match="weight_method 'mart-ss' cannot train the supernet "
                                         r"\(it needs a run-level setup"):
        load_search_config(None, ["weight_method=mart-ss"])
    with pytest.raises(DsaraError, match="weight_method 'pgd' cannot train.*usable: pgd-at, trades"):
        load_search_config(None, ["weight_method=pgd"])
    with pytest.raises(DsaraError, match="unknown method option 'x' for bang"):
        load_search_config(None, ["order=first", "weight_method=bang",
                                  "weight_method_options.x=1"])


def test_a_study_can_sweep_the_weight_method():
    from dsara.study.definition import definition_from_dict

    raw = {"search": {"space": "tiny", "dataset": "synthetic", "epochs": 1, "order": "first"},
           "params": {"weight_method": {"type": "categorical", "choices": ["pgd-at", "trades"]}},
           "objective": {"kind": "supernet", "metrics": ["pgd_acc"]}, "sampler": {"kind": "tpe"}}
    d = definition_from_dict(raw)
    assert d.search_config({"weight_method": "trades"}, "x").weight_method == "trades"
    raw["params"]["weight_method"]["choices"] = ["pgd-at", "ladder"]
    with pytest.raises(DsaraError, match="weight_method = 'ladder' is not a valid"):
        definition_from_dict(raw)


def test_retrain_params_reach_the_retrain_config_only(tmp_path):
    from test_study import write_definition

    from dsara.study.definition import load_definition, retrain_config

    retrain = {"epochs": 1, "steps": 1, "device": "cpu", "method": "bang"}
    params = {"retrain.method": {"type": "categorical", "choices": ["iat", "bang"]},
              "retrain.method_options.beta": {"type": "float", "low": 0.0, "high": 2.0}}
    d = load_definition(write_definition(tmp_path, objective__kind="retrain",
                                         objective__retrain=retrain, params=params))
    values = {"retrain.method": "bang", "retrain.method_options.beta": 0.5}
    cfg = retrain_config(d, "a.json", "out", values).resolved()
    assert cfg.method == "bang" and cfg.method_options["beta"] == 0.5
    assert retrain_config(d, "a.json", "out", {"retrain.method": "iat"}).method == "iat"
    assert d.search_config(values, "x").to_dict() == d.search_config({}, "x").to_dict()
    with pytest.raises(DsaraError, match=r"a retrain\.\* parameter needs \[objective\] kind"):
        load_definition(write_definition(tmp_path, name="s.toml", params=params))


@pytest.mark.slow
def test_a_study_can_sweep_the_retraining_method(tmp_path):
    import json

    import optuna
    from test_study import storage_url, write_definition

    from dsara.study import manage, worker

    retrain = {"epochs": 1, "batch_size": 16, "val_size": 16, "val_steps": 1, "steps": 1,
               "device": "cpu"}
    params = {"retrain.method": {"type": "categorical", "choices": ["iat", "bang"]}}
    path = write_definition(tmp_path, objective__kind="retrain", objective__retrain=retrain,
                            budget__n_trials=2, params=params)
    db = storage_url(tmp_path)
    manage.create("sweep", path, db, tmp_path / "art")
    assert worker.run_worker("sweep", db, log=lambda s: None).completed == [0, 1]
    for t in optuna.load_study(study_name="sweep", storage=db).trials:
        cfg = json.loads((tmp_path / "art" / "sweep" / f"trial-{t.number}" / "retrain" /
                          "config.json").read_text())
        assert cfg["method"] == t.params["retrain.method"]
    bad = write_definition(tmp_path, name="bad.toml", objective__kind="retrain",
                           objective__retrain=retrain,
                           params={"retrain.method": {"type": "categorical",
                                                      "choices": ["iat", "nope"]}})
    with pytest.raises(DsaraError, match="retrain.method = 'nope': unknown training method"):
        manage.create("bad", bad, db, tmp_path / "art")
