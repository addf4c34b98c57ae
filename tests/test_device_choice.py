"""Where models run: the CPU/GPU choice and copying GPU results to the host. The GPU itself is never
needed: the probe model runs on the CPU here, and the CUDA branches are checked on a CPU-only machine."""

from __future__ import annotations

import ctranslate2
import numpy as np
import pytest

from qmdd.models.runtime import PROBE_IDS, host_array, pick_device, write_probe_model
from qmdd.protocol.errors import ErrorCode, QmddError

no_gpu = pytest.mark.skipif(ctranslate2.get_cuda_device_count() > 0, reason="checks the CPU-only branches")


def test_host_array_widens_float16_to_float32() -> None:
    values = np.arange(6, dtype=np.float16).reshape(2, 3)
    array = host_array(ctranslate2.StorageView.from_array(values))
    assert array.dtype == np.float32
    assert np.array_equal(array, values.astype(np.float32))


def test_probe_model_runs_one_forward_pass(tmp_path) -> None:
    # The same model `cuda_problem` runs on the GPU: a broken probe would read as "no usable GPU".
    write_probe_model(str(tmp_path))
    encoder = ctranslate2.Encoder(str(tmp_path), device="cpu", compute_type="float32")
    hidden = host_array(encoder.forward_batch([PROBE_IDS]).last_hidden_state)
    assert hidden.shape == (1, len(PROBE_IDS), 8)
    assert np.isfinite(hidden).all()


def test_cpu_is_cpu_int8() -> None:
    assert pick_device("cpu") == ("cpu", "int8")


@no_gpu
def test_auto_without_a_gpu_is_the_cpu() -> None:
    assert pick_device("auto") == ("cpu", "int8")


@no_gpu
def test_cuda_without_a_gpu_is_a_typed_error() -> None:
    with pytest.raises(QmddError) as raised:
        pick_device("cuda")
    assert raised.value.code == ErrorCode.MODEL_LOAD_FAILED
    assert any("QMDD_DEVICE" in hint for hint in raised.value.hints)
