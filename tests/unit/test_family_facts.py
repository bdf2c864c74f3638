"""Every registered family states the facts the code outside edit_r1/models/ asks for
(edit_r1/models/family.py): a new family that forgets one fails here, not in a benchmark run."""

from __future__ import annotations

import dataclasses
import inspect
from pathlib import Path

import pytest

from edit_r1.config import load_config
from edit_r1.inference import SamplingSettings
from edit_r1.models.family import Geometry
from edit_r1.models.registry import POLICY_FAMILIES, family_names, policy_class
from edit_r1.models.tiny import KIT_NAMES
from edit_r1.settings import ModelSettings

REPO = Path(__file__).resolve().parents[2]


def constructor_parameters(cls) -> set[str]:
    return set(inspect.signature(cls.__init__).parameters)


@pytest.mark.parametrize("family", family_names())
def test_family_states_its_facts(family):
    cls = policy_class(family)
    assert cls.family == family and all(policy_class(alias) is cls for alias in cls.aliases)
    assert cls.tiny_kit_folder in KIT_NAMES
    assert set(cls.benchmark_architectures) == set(cls.benchmark_text_tokens) == {"small", "full"}
    assert cls.transformer_class is not None
    assert set(cls.sampling_flags) <= {f.name for f in dataclasses.fields(SamplingSettings)}
    accepted = constructor_parameters(cls)
    assert set(cls.encoder_names) <= accepted
    config = load_config(f"{REPO / 'config' / family}_nft.py:tiny")
    assert set(cls.options_from_settings(ModelSettings.from_config(config))) <= accepted
    assert set(cls.sampling_options(SamplingSettings())) <= accepted


@pytest.mark.parametrize("family", family_names())
def test_edit_geometry_keeps_the_area_and_the_latent_grid(family):
    geometry = policy_class(family).edit_geometry((640, 480), 256 * 256, None)
    assert isinstance(geometry, Geometry)
    for width, height in (geometry.output, geometry.reference):
        assert width % 16 == 0 and height % 16 == 0
        assert 0.5 < width * height / (256 * 256) < 1.5


def test_unknown_family_names_the_known_ones():
    with pytest.raises(ValueError, match="expected one of"):
        policy_class("sdxl")
    assert family_names() == tuple(POLICY_FAMILIES)
