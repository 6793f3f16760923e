"""Registry, option validation errors, hybrid loss weights, time average and resume checks."""

import json

import numpy as np
import pytest
import torch

from megagrape.errors import ConfigError
from megagrape.mixture import (
    KNOWN_METHODS,
    OBSERVATION_FIELDS,
    MixtureMethod,
    Observation,
    TimeAverage,
    build_method,
    hybrid_loss_weights,
    method_class,
    options_class,
    register_method,
)
from megagrape.mixture.grape import GrapeOptions

DOMAINS = ["web", "code"]
TASKS = ["piqa"]


def build(name, **options):
    return build_method(name, options, DOMAINS, TASKS, None, [10, 30])


def test_every_known_method_builds_with_defaults_and_declares_valid_needs():
    assert set(KNOWN_METHODS) == {"grape", "doge", "doremi", "odm", "mgda", "imtl", "epo", "static"}
    for name in KNOWN_METHODS:
        method = build(name)
        assert method.name == name == method_class(name).name
        assert method_class(name).required_needs <= method.needs <= OBSERVATION_FIELDS
        assert method.domain_weights.tolist() == pytest.approx([0.5, 0.5])


def test_class_level_facts():
    needing_targets = {name for name in KNOWN_METHODS if method_class(name).needs_targets}
    assert needing_targets == {"grape", "doge"}
    fixed = {name for name in KNOWN_METHODS if not method_class(name).reweights}
    assert fixed == {"static"}
    own_weights = {name for name in KNOWN_METHODS if not method_class(name).takes_initial_weights}
    assert own_weights == {"static"}


def test_register_method_rejects_duplicates_and_non_methods():
    with pytest.raises(
        ValueError, match=r"register_method\('grape'\): already registered by Grape"
    ):
        register_method("grape", GrapeOptions)(type("Other", (MixtureMethod,), {}))
    with pytest.raises(TypeError, match="is not a MixtureMethod"):
        register_method("plain", GrapeOptions)(type("Plain", (), {}))
    with pytest.raises(TypeError, match="unknown fields"):
        type("Typo", (MixtureMethod,), {"required_needs": frozenset({"domain_grams"})})
    assert "plain" not in KNOWN_METHODS


def test_unknown_method_lists_known_ones():
    with pytest.raises(
        ConfigError, match=r"'grap' is not a known method; did you mean 'grape'\?.*doremi"
    ):
        build("grap")


@pytest.mark.parametrize(
    "name, key, nearest",
    [
        ("grape", "mu_alpha", "mu_a"),
        ("doremi", "smooth", "smoothing"),
        ("mgda", "max_iters", "max_iter"),
    ],
)
def test_unknown_option_names_the_key_and_the_nearest_valid_one(name, key, nearest):
    with pytest.raises(
        ConfigError, match=rf"mixture\.options\.{key}: unknown option.*did you mean '{nearest}'"
    ):
        build_method(name, {key: 1.0}, DOMAINS, TASKS, None, None)


@pytest.mark.parametrize(
    "name, field, value",
    [
        ("grape", "mu_a", 0.0),
        ("grape", "mu_z", -1.0),
        ("grape", "mu_a", float("nan")),
        ("grape", "mu_z", "fast"),
        ("grape", "eps_a", 1.0),
        ("grape", "eps_z", -0.1),
        ("grape", "roi", "second_order"),
        ("grape", "target_gradient", "sqrt"),
        ("grape", "weights_ema", 1.5),
        ("doge", "mu", 0.0),
        ("doge", "eps", 2.0),
        ("doge", "clip", "yes"),
        ("doremi", "eta", 0.0),
        ("doremi", "eta", float("inf")),
        ("doremi", "smoothing", 1.0),
        ("doremi", "smoothing", True),
        ("odm", "reward_scale", 0.0),
        ("odm", "warmup_steps", -1),
        ("odm", "warmup_steps", 2.5),
        ("mgda", "normalization", "max"),
        ("mgda", "max_iter", 0),
        ("mgda", "tol", 0.0),
        ("imtl", "eps", -1e-3),
        ("epo", "balance_threshold", 0.0),
        ("static", "source", "regmix"),
    ],
)
def test_bad_option_values_name_field_value_and_range(name, field, value):
    with pytest.raises(ConfigError, match=rf"mixture\.options\.{field} = .*allowed: ") as error:
        build(name, **{field: value})
    assert repr(value) in str(error.value)


def test_doge_clip_bounds_must_be_ordered():
    with pytest.raises(ConfigError, match=r"mixture\.options\.dw_max = 1\.0.*> dw_min = 2"):
        build("doge", dw_min=2.0, dw_max=1.0)


@pytest.mark.parametrize(
    "preference, message",
    [
        ([1.0], "got 1 entries for 2 domains"),
        ([1.0, -1.0], "entry for 'code' is -1.0"),
        ([1.0, 0.0], "entry for 'code' is 0.0"),
        ({"web": 1.0, "books": 2.0}, r"unknown domains \['books'\] and missing domains \['code'\]"),
        ("1,2", "a list of 2 numbers > 0"),
    ],
)
def test_bad_epo_preference(preference, message):
    with pytest.raises(ConfigError, match=rf"mixture\.options\.preference.*{message}"):
        build("epo", preference=preference)


def test_bad_task_weights():
    with pytest.raises(ConfigError, match=r"mixture\.options\.task_weights"):
        build("doge", task_weights=[0.5, 0.5])
    with pytest.raises(ConfigError, match=r"mixture\.options\.initial_task_weights.*positive sum"):
        build("grape", initial_task_weights=[0.0])


def test_options_must_be_a_mapping_and_classes_are_exposed():
    with pytest.raises(ConfigError, match=r"mixture\.options must be a mapping"):
        build_method("grape", [1, 2], DOMAINS, TASKS, None, None)
    assert options_class("grape")().mu_a == 1.5


@pytest.mark.parametrize(
    "weights, message",
    [
        ([1.0], "has 1 entries but the run has 2 domains"),
        ([0.5, 0.6], "sum to 1.1"),
        ([1.5, -0.5], r"'code' \(index 1\) is -0.5"),
        ([float("nan"), 1.0], r"'web' \(index 0\) is nan"),
    ],
)
def test_bad_initial_weights(weights, message):
    with pytest.raises(ConfigError, match=rf"mixture\.initial_weights.*{message}"):
        build_method("grape", {}, DOMAINS, TASKS, torch.tensor(weights, dtype=torch.float64), None)


def test_run_facts_are_validated():
    with pytest.raises(ConfigError, match="needs at least 1 domain"):
        build_method("mgda", {}, [], [], None, None)
    with pytest.raises(ConfigError, match="'web' appears more than once"):
        build_method("mgda", {}, ["web", "web"], [], None, None)
    with pytest.raises(
        ConfigError,
        match=r"optimises the mixture for target tasks.*without targets \(doremi, epo, imtl, mgda, odm\)",
    ):
        build_method("grape", {}, DOMAINS, [], None, None)


def test_missing_observation_field_is_a_trainer_error():
    with pytest.raises(ValueError, match=r"needs Observation\.domain_gram"):
        build("mgda").update(Observation(step=1, lr=1e-3))
    with pytest.raises(ValueError, match=r"shape \(3, 3\).*expects \(2, 2\)"):
        build("mgda").update(Observation(step=1, lr=1e-3, domain_gram=torch.eye(3)))


def test_state_from_another_method_or_run_is_rejected():
    state = build("doremi").state_dict()
    with pytest.raises(ConfigError, match="for method 'doremi' but the config says"):
        build("grape").load_state_dict(state)
    other = build_method("doremi", {}, ["a", "b", "c"], [], None, None).state_dict()
    with pytest.raises(ConfigError, match="has 3 entries but this run has 2"):
        build("doremi").load_state_dict(other)


def test_state_dicts_are_json_serialisable():
    for name in KNOWN_METHODS:
        state = build(name).state_dict()
        assert json.loads(json.dumps(state)) == state


def test_hybrid_loss_weights():
    weights = hybrid_loss_weights(torch.tensor([0.6, 0.4, 0.0]), torch.tensor([0.5, 0.25, 0.25]))
    assert weights.tolist() == pytest.approx([1.2, 1.6, 0.0])
    # Unbiased: E_{x~s}[α_k / s_k l] = sum_k α_k l_k.
    losses = np.array([2.0, 3.0, 5.0])
    assert float((np.array([0.5, 0.25, 0.25]) * weights.numpy() * losses).sum()) == pytest.approx(
        0.6 * 2 + 0.4 * 3
    )
    assert hybrid_loss_weights(torch.tensor([1.0, 0.0]), torch.tensor([1.0, 0.0])).tolist() == [
        1.0,
        0.0,
    ]
    with pytest.raises(
        ConfigError, match=r"domain 'code' weight 0\.4 but its sampling probability is 0"
    ):
        hybrid_loss_weights(torch.tensor([0.6, 0.4]), torch.tensor([1.0, 0.0]), DOMAINS)


def test_time_average_is_step_weighted_and_resumable():
    average = TimeAverage(2)
    average.add(torch.tensor([1.0, 0.0]), duration=1)
    average.add(torch.tensor([0.0, 1.0]), duration=3)
    assert average.mean().tolist() == [0.25, 0.75]
    resumed = TimeAverage(2)
    resumed.load_state_dict(json.loads(json.dumps(average.state_dict())))
    for avg in (average, resumed):
        avg.add(torch.tensor([0.5, 0.5]), duration=4)
    assert torch.equal(average.mean(), resumed.mean())
    assert average.as_dict(DOMAINS) == {
        "domain_weights": {"web": 0.375, "code": 0.625},
        "steps": 8.0,
        "updates": 3,
    }
    with pytest.raises(ValueError, match="no weights"):
        TimeAverage(2).mean()


@pytest.mark.parametrize(
    ("alpha", "sampling", "entry"),
    [
        (
            [float("nan"), 1.0],
            [0.5, 0.5],
            r"domain weights \(alpha\) >= 0, but domain 'web' has nan",
        ),
        ([1.2, -0.2], [0.5, 0.5], r"domain weights \(alpha\) >= 0, but domain 'code' has -0\.2"),
        ([0.5, float("inf")], [0.5, 0.5], r"domain 'code' has inf"),
        ([0.5, 0.5], [float("nan"), 0.5], r"sampling weights >= 0, but domain 'web' has nan"),
        ([0.5, 0.5], [1.5, -0.5], r"sampling weights >= 0, but domain 'code' has -0\.5"),
    ],
)
def test_hybrid_loss_weights_reject_nan_infinite_and_negative_weights(alpha, sampling, entry):
    with pytest.raises(ConfigError, match=entry):
        hybrid_loss_weights(torch.tensor(alpha), torch.tensor(sampling), DOMAINS)
