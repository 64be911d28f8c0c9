"""The device a run gets and the launch environment it joins with (trainer/runtime.py).

The test hosts have no Ascend runtime (MindSpore's Ascend plugin does not load here: no CANN), so
an Ascend host whose runtime fails is faked by what makes a host look like one: CANN's variables
or /dev/davinci device nodes."""
from __future__ import annotations

import os

import pytest

from trainer.config import ConfigError, load_config
from trainer.runtime import CANN_VARIABLES, ascend_host_signs, resolve_device_target

from tests.trainer.test_config import RECIPE


@pytest.fixture
def plain_host(monkeypatch):
    """This host with none of CANN's variables set (the suite may run under a sourced CANN)."""
    for name in CANN_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    if ascend_host_signs():
        pytest.skip("this host has Ascend device nodes")


def test_auto_on_a_plain_host_is_cpu(plain_host):
    assert resolve_device_target(load_config(RECIPE)) == "CPU"


@pytest.mark.parametrize("variable", CANN_VARIABLES)
def test_auto_on_an_ascend_host_whose_runtime_fails_is_one_line(plain_host, monkeypatch, variable):
    """A sourced CANN of another version (or a broken install) must not train the Ascend recipe
    on CPU processes in float32 with one INFO line as the only sign."""
    monkeypatch.setenv(variable, "/usr/local/Ascend/ascend-toolkit/latest")
    with pytest.raises(ConfigError) as raised:
        resolve_device_target(load_config(RECIPE))
    message = str(raised.value)
    assert "\n" not in message and f"${variable}" in message
    assert "the Ascend runtime does not load (" in message      # MindSpore's own reason, quoted
    assert "source CANN's set_env.sh" in message and "device_target=CPU" in message
    # An explicit CPU run on that host is what the user asked for.
    assert resolve_device_target(load_config(RECIPE, ["device_target=CPU"])) == "CPU"
