import pytest

from optbench import registry
from optbench.spec import OptimizerSpec, Requirements

DESIGN_OPTIMIZERS = {"adamw", "adam", "sgd", "slimadam", "slimadam-snr", "adam-mini", "adafactor", "adam8bit",
                     "galore", "smmf", "microadam", "lion", "apollo", "apollo-mini"}
DESIGN_TASKS = {"digits-mlp", "digits-cnn", "digits-vit", "topics-gpt", "topics-lstm", "cifar10-resnet18",
                "gpt2-small", "vit-s-cifar10"}


def test_unknown_optimizer_lists_known_names():
    with pytest.raises(registry.UnknownNameError, match=r"unknown optimizer 'adamx'; known: .*adamw"):
        registry.get_optimizer("adamx")


def test_unknown_task_and_preset_list_known_names():
    with pytest.raises(ValueError, match=r"unknown task 'mnist'; known: .*digits-mlp"):
        registry.get_task("mnist")
    with pytest.raises(ValueError, match=r"unknown preset 'fast'; known: smoke, cpu, gpu"):
        registry.check_preset("fast")


def test_every_design_name_is_registered():
    assert DESIGN_OPTIMIZERS <= set(registry.optimizers())
    assert DESIGN_TASKS <= set(registry.tasks())


def test_missing_requirement_is_listed_with_reason():
    req = Requirements(packages=("surely_not_an_installed_module_xyz",))
    assert "surely_not_an_installed_module_xyz" in req.unmet()
    assert "cuda" in Requirements(devices=("cuda",)).unmet("cpu")
    assert Requirements().unmet("cpu") is None


def test_unknown_hyperparameter_names_known_ones():
    spec = registry.get_optimizer("adamw")
    with pytest.raises(ValueError, match=r"unknown hyperparameter 'beta' for optimizer 'adamw'; known: .*betas"):
        spec.resolve_hparams({"beta": 0.9})


def test_name_clash_is_refused():
    adamw = registry.get_optimizer("adamw")
    impostor = OptimizerSpec(name="adamw", family="x", paper="x", build=lambda m, lr: None, state_bytes=lambda m: 0)
    with pytest.raises(ValueError, match="already registered"):
        registry.register_optimizer(impostor)
    assert registry.get_optimizer("adamw") is adamw


def test_defaults_left_out_are_read_from_the_build_signature():
    def build(model, lr, *, beta=0.9, eps=1e-8, extra=None):
        return None

    spec = OptimizerSpec(name="signature-defaults", build=build)
    assert spec.defaults == {"beta": 0.9, "eps": 1e-8, "extra": None}
    assert spec.resolve_hparams({"beta": 0.5}) == {"beta": 0.5, "eps": 1e-8, "extra": None}
    declared = OptimizerSpec(name="declared-defaults", build=build, defaults={"beta": 0.99})
    assert declared.defaults == {"beta": 0.99}
