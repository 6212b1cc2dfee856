"""The numbers the host and the compiled library must agree on, compared by name: the bucket
row's words, the bucket flags, the deferred-step limit, the HELD node's words and the rule kinds
(csrc/common/step_plan.h and lr_step.h, reported by ``lrfused::step_encoding``), and the element
types the kernels update. The schedule kinds' layouts are compared in test_schedules.py."""

import pytest
import torch

import lrfused
from lrfused import _ops, _reference, _rules, _step_plan

pytestmark = pytest.mark.skipif(not lrfused.has_kernels(), reason="the compiled library is not loaded")


def test_the_step_encoding_is_the_same_on_both_sides():
    compiled = _ops.step_encoding()
    host = _step_plan.ENCODING | _rules.ENCODING
    for name, value in host.items():
        assert compiled.get(name) == value, (name, value, compiled.get(name))
    assert not set(compiled) - set(host) - {name for name in compiled if name.startswith("element.")}, (
        "a number the library reports that the host does not write"
    )


def test_the_bucket_words_are_numbered_without_gaps():
    words = sorted(
        value for name, value in _step_plan.ENCODING.items() if name.startswith("bucket.") and name != "bucket.words"
    )
    # bucket.state_begin starts MAX_STATES words, one per state list.
    begin = _step_plan.ENCODING["bucket.state_begin"]
    words += list(range(begin + 1, begin + _step_plan.MAX_STATES))
    assert sorted(words) == list(range(_step_plan.BUCKET_WORDS))


def test_the_element_types_are_the_kernel_dtypes():
    compiled = {
        name.removeprefix("element."): value
        for name, value in _ops.step_encoding().items()
        if name.startswith("element.")
    }
    assert set(compiled) == {str(dtype).removeprefix("torch.") for dtype in _reference.KERNEL_DTYPES}
    assert sorted(compiled.values()) == list(range(len(compiled)))
    assert torch.float32 in _reference.KERNEL_DTYPES
