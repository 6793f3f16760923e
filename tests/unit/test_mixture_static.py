"""Static mixtures and weights files (RegMix, CRISP/GRAPE configs, mixture_average.json)."""

import json

import pytest
import torch

from megagrape.errors import ConfigError
from megagrape.mixture import Observation, TimeAverage, build_method, load_weights_file

DOMAINS = ["arxiv", "github", "wiki"]


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return path


def static(**options):
    return build_method("static", options, DOMAINS, [], None, [100, 300, 600])


def test_uniform_natural_inline_and_update_is_a_no_op():
    assert static().domain_weights.tolist() == pytest.approx([1 / 3] * 3)
    natural = static(source="natural")
    assert natural.domain_weights.tolist() == pytest.approx([0.1, 0.3, 0.6], rel=1e-15)
    update = natural.update(Observation(step=7, lr=1e-3))
    assert (
        update.skipped is None and update.domain_weights.tolist() == natural.domain_weights.tolist()
    )
    assert natural.needs == frozenset()
    inline = static(source="inline", weights={"wiki": 0.5, "github": 0.25, "arxiv": 0.25})
    assert inline.domain_weights.tolist() == [0.25, 0.25, 0.5]


@pytest.mark.parametrize(
    "name, text",
    [
        ("list.json", "[0.2, 0.3, 0.5]"),
        ("map.json", '{"wiki": 0.5, "arxiv": 0.2, "github": 0.3}'),
        (
            "average.json",
            '{"domain_weights": {"arxiv": 0.2, "github": 0.3, "wiki": 0.5}, "steps": 100}',
        ),
        (
            "regmix.yaml",
            "train:\n  train_arxiv: 0.2\n  train_github: 0.3\n  train_wiki: 0.5\nvalid:\n  valid_wiki: 1.0\n",
        ),
        (
            "crisp.json",
            '{"train_domains": "arxiv,github,wiki", "train_dw": "0.2,0.3,0.5", "mu_train": 1.5}',
        ),
        ("doge.json", '{"train_dw": [0.2, 0.3, 0.5]}'),
    ],
)
def test_weights_file_shapes(tmp_path, name, text):
    weights = load_weights_file(write(tmp_path, name, text), DOMAINS)
    assert weights.dtype == torch.float64
    assert weights.tolist() == pytest.approx([0.2, 0.3, 0.5], rel=1e-15)
    assert (
        static(source="file", path=str(tmp_path / name)).domain_weights.tolist() == weights.tolist()
    )


def test_rounded_published_weights_are_accepted_and_renormalised(tmp_path):
    # 4-digit tables (e.g. GRAPE's crisp.json) sum to 1.0001.
    weights = load_weights_file(write(tmp_path, "w.json", "[0.3334, 0.3334, 0.3333]"), DOMAINS)
    assert weights.sum().item() == pytest.approx(1.0, abs=1e-15)


def test_two_stage_workflow_reads_the_proxy_time_average(tmp_path):
    average = TimeAverage(3)
    average.add(torch.tensor([0.2, 0.3, 0.5], dtype=torch.float64), duration=100)
    average.add(torch.tensor([0.4, 0.3, 0.3], dtype=torch.float64), duration=300)
    path = write(tmp_path, "mixture_average.json", json.dumps(average.as_dict(DOMAINS)))
    base = static(source="file", path=str(path))
    assert base.domain_weights.tolist() == pytest.approx([0.35, 0.3, 0.35], rel=1e-14)


@pytest.mark.parametrize(
    "text, message",
    [
        ('{"arxiv": 0.2, "github": 0.3, "wiki": 0.4, "books": 0.1}', "does not have: ['books']"),
        ('{"arxiv": 0.5, "github": 0.5}', "no weight for domains ['wiki']"),
        ("[0.5, 0.5]", "lists 2 weights but the run has 3 domains"),
        ("[0.2, 0.3, 0.6]", "sum to 1.1"),
        ("[0.2, -0.3, 1.1]", r"'github' \(index 1\) is -0.3"),
        ('{"train_dw": "0.2,x,0.5"}', "must hold numbers"),
        ("{not json", "not valid JSON"),
        ('"text"', "must hold a list of weights"),
    ],
)
def test_bad_weights_files(tmp_path, text, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_weights_file(write(tmp_path, "w.json", text), DOMAINS)


def test_normalize_rescales(tmp_path):
    path = write(tmp_path, "w.json", "[2, 3, 5]")
    with pytest.raises(ConfigError, match="normalize: true"):
        static(source="file", path=str(path))
    assert static(
        source="file", path=str(path), normalize=True
    ).domain_weights.tolist() == pytest.approx([0.2, 0.3, 0.5])


def test_missing_file_and_option_conflicts(tmp_path):
    with pytest.raises(ConfigError, match="cannot be read"):
        static(source="file", path=str(tmp_path / "absent.json"))
    with pytest.raises(ConfigError, match=r"mixture\.options\.path"):
        static(source="file")
    with pytest.raises(ConfigError, match=r"mixture\.options\.path"):
        static(source="uniform", path="w.json")
    with pytest.raises(ConfigError, match=r"mixture\.options\.weights"):
        static(source="inline")
    with pytest.raises(ConfigError, match="token counts"):
        build_method("static", {"source": "natural"}, DOMAINS, [], None, None)
    with pytest.raises(ConfigError, match="initial_weights"):
        build_method("static", {}, DOMAINS, [], torch.tensor([0.2, 0.3, 0.5]), None)
