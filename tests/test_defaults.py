"""One default per key: where a schema key is a constructor's argument (the config group spread into it), the
schema's default is the constructor's, so the two cannot drift apart; the exceptions are listed with their reason."""

from __future__ import annotations

import dataclasses
import inspect

import pytest

from reluvit.attention import attention_layer
from reluvit.data.datamodules import DATAMODULES
from reluvit.evaluate.fewshot import FewshotEvaluator
from reluvit.run import schema
from reluvit.run.module import ViTClassifier
from reluvit.soft import SoftAttention, soft_attention_macs

CONSTRUCTORS = [(schema.AttentionConfig, attention_layer), (schema.SoftConfig, SoftAttention),
                (schema.SoftConfig, soft_attention_macs),
                (schema.RecipeConfig, ViTClassifier), (schema.FewshotConfig, FewshotEvaluator),
                *((schema.DataConfig, module) for module in dict.fromkeys(DATAMODULES.values()))]
EXCEPTIONS = {
    ("AttentionConfig", "soft"): "a nested group (SoftConfig) where attention_layer takes None for SOFT's defaults",
    ("FewshotConfig", "num_workers"): "an interpolation: the probe decodes with the run's data.num_workers",
}


def _default(field: dataclasses.Field):
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return dataclasses.MISSING


def _same(a, b) -> bool:
    """Equal, a list and a tuple of the same items included (YAML has no tuples)."""
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return list(a) == list(b)
    return a == b


def pairs():
    for config, constructor in CONSTRUCTORS:
        parameters = inspect.signature(constructor).parameters
        for field in dataclasses.fields(config):
            parameter = parameters.get(field.name)
            default = _default(field)
            if parameter is None or parameter.default is inspect.Parameter.empty or default in (dataclasses.MISSING,
                                                                                                 "???"):
                continue
            yield pytest.param(config, field.name, default, parameter.default,
                               id=f"{config.__name__}.{field.name}-{constructor.__name__}")


@pytest.mark.parametrize("config, key, schema_default, constructor_default", list(pairs()))
def test_the_schema_default_is_the_constructors(config, key, schema_default, constructor_default):
    if (config.__name__, key) in EXCEPTIONS:
        pytest.skip(EXCEPTIONS[(config.__name__, key)])
    assert _same(schema_default, constructor_default), \
        f"{config.__name__}.{key}: schema {schema_default!r}, constructor {constructor_default!r}"


def test_the_check_finds_the_shared_keys():
    assert len(list(pairs())) >= 30
