"""The methods registry refuses a parameter a method cannot take, for plain functions and for the task-vector family."""
import pytest
import torch

from core.merge.methods import FAMILIES, METHODS, register
from core.merge.methods.registry import receivable
from core.merge.methods.sparsify import BERNOULLI, EPSILON, GAMMA, MAGNITUDE, MAGPRUNE, OUTLIERS, Sparsifier, bernoulli
from core.merge.methods.task_arithmetic import DENSITY, family_params
from core.merge.methods.task_vectors import TaskVectors
from core.merge.params import Param

ALPHA = Param(name="alpha", kind=float, default=0.5, per_model=False, help="a", low=0, high=1)
ORDER = ["linear", "task_arithmetic", "ties", "dare_ties", "dare_linear", "breadcrumbs", "breadcrumbs_ties", "della",
         "della_linear", "sce", "ram", "ramplus_tl", "slerp", "nuslerp", "multislerp", "karcher", "model_stock",
         "nearswap", "arcee_fusion", "passthrough"]


@pytest.fixture
def scratch_registry():
    """Registrations made by a test are removed again, so METHODS stays the real ones."""
    before = dict(METHODS)
    yield
    METHODS.clear()
    METHODS.update(before)


def test_the_package_registers_every_method_in_the_order_the_ui_lists():
    assert list(METHODS) == ORDER
    assert [family.__name__.rsplit(".", 1)[1] for family in FAMILIES] == ["linear", "task_arithmetic", "sce", "ram",
                                                                           "spherical", "sphere_means", "model_stock",
                                                                           "selective", "passthrough"]


def test_a_plain_function_cannot_be_declared_with_a_parameter_it_does_not_take(scratch_registry):
    def fixed(tensors, base, *, weight, generator=None):
        return tensors[0]

    weight = METHODS["linear"].param("weight")
    register("ok", label="x", paper="http://x", params=(weight,), base="unused")(fixed)
    with pytest.raises(TypeError, match=r"method 'bad': function cannot receive parameter\(s\) \['alpha'\]"):
        register("bad", label="x", paper="http://x", params=(weight, ALPHA), base="unused")(fixed)
    assert "ok" in METHODS and "bad" not in METHODS


def test_a_function_taking_any_keyword_must_say_what_it_reads(scratch_registry):
    with pytest.raises(TypeError, match="must name what it reads in `accepts`"):
        register("vague", label="x", paper="http://x", params=(ALPHA,), base="unused")(
            lambda tensors, base, *, generator=None, **params: tensors[0])
    assert "vague" not in METHODS


@pytest.mark.parametrize("sparsifier,foreign", [(None, DENSITY), (MAGNITUDE, GAMMA), (BERNOULLI, EPSILON),
                                                (OUTLIERS, EPSILON), (MAGPRUNE, GAMMA), (MAGNITUDE, ALPHA)])
def test_a_family_member_cannot_be_declared_with_a_parameter_its_sparsifier_does_not_take(scratch_registry, sparsifier,
                                                                                        foreign):
    params = family_params(sparsifier, normalize=False, rescale=False)
    merge = TaskVectors(sparsifier)
    register("member_ok", label="x", paper="http://x", params=params, base="required", stream=merge.stream)(merge)
    with pytest.raises(TypeError, match=rf"function cannot receive parameter\(s\) \['{foreign.name}'\]"):
        register("member_bad", label="x", paper="http://x", params=(*params, foreign), base="required")(merge)
    assert "member_bad" not in METHODS


def test_a_family_member_refuses_an_undeclared_parameter_when_called():
    tensors, base = torch.ones(2, 3), torch.zeros(3)
    merge = TaskVectors(BERNOULLI)
    params = {"weight": [1.0, 1.0], "lambda": 1.0, "normalize": False, "int8_mask": False, "density": [1.0, 1.0],
              "rescale": False}
    assert torch.equal(merge(tensors.clone(), base, **params), torch.full((3,), 2.0))
    with pytest.raises(TypeError, match=r"not \['gamma'\]"):
        merge(tensors.clone(), base, **params, gamma=[0.1, 0.1])


def test_a_sparsifier_cannot_declare_a_parameter_its_function_does_not_take():
    with pytest.raises(TypeError, match=r"sparsifier 'dare': bernoulli cannot receive parameter\(s\) \['gamma'\]"):
        Sparsifier("dare", bernoulli, random=True, params=(GAMMA,))


def test_register_accepts_each_real_declaration_again(scratch_registry):
    for name, method in list(METHODS.items()):
        register(f"copy_{name}", label=method.label, paper=method.paper, params=method.params, base=method.base,
                 min_inputs=method.min_inputs, max_inputs=method.max_inputs, random=method.random,
                 elementwise=method.elementwise, check=method.check, stream=method.stream,
                 blockwise=method.blockwise, coefficients=method.coefficients)(method.merge)
        assert METHODS[f"copy_{name}"].params == method.params
        assert {p.name for p in method.params} <= receivable(name, method.merge)
        if isinstance(method.merge, TaskVectors):  # a member reads exactly what it declares
            assert {p.name for p in method.params} == method.merge.accepts
    assert len(METHODS) == 2 * len(ORDER)
