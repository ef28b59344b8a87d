"""Conformance suite every pruning scheme runs: shapes, exact densities and structural invariants.

Property-based (hypothesis) over random layer shapes, parameters and weights. A new scheme registered
in SCHEME_REGISTRY is picked up by the generic tests; its own invariant gets a test below.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from automl.policy import SCHEMES, LayerDecision, LayerShape, PolicyError
from search_spaces.schemes import PATTERN_LIBRARY, SCHEME_REGISTRY, SchemeError, get_scheme, round_half_up

SETTINGS = settings(max_examples=40, deadline=None)
sparsities = st.floats(min_value=0.0, max_value=0.95, allow_nan=False)


def _weight(seed: int, shape: tuple[int, ...]) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


@st.composite
def layer_and_decision(draw, scheme: str):
    """A (weight, shape, decision) triple that fits `scheme`."""
    seed = draw(st.integers(0, 10_000))
    s = draw(sparsities)
    if scheme == "nm":
        m = draw(st.sampled_from([2, 4, 8, 16]))
        n = draw(st.integers(1, m - 1))
        out, k = draw(st.integers(1, 12)), draw(st.sampled_from([1, 3]))
        cin = m * draw(st.integers(1, 4))
        d = LayerDecision("nm", n=n, m=m)
    elif scheme == "block1xn":
        n = draw(st.sampled_from([2, 4, 8]))
        out, cin, k = n * draw(st.integers(1, 4)), draw(st.integers(1, 12)), draw(st.sampled_from([1, 3]))
        d = LayerDecision("block1xn", sparsity=s, n=n)
    elif scheme == "pattern":
        out, cin, k = draw(st.integers(1, 10)), draw(st.integers(1, 10)), 3
        d = LayerDecision("pattern", sparsity=s)
    elif scheme == "block_punched":
        r, c = draw(st.sampled_from([1, 2, 4, 8])), draw(st.sampled_from([1, 3, 4, 9]))
        k = draw(st.sampled_from([1, 3]))
        out = r * draw(st.integers(1, 3))
        cin = c * draw(st.integers(1, 3)) if k == 1 else draw(st.integers(1, 6)) * (c if c in (4, 8) else 1)
        d = LayerDecision("block_punched", sparsity=s, block=(r, c))
    else:
        out, cin, k = draw(st.integers(1, 16)), draw(st.integers(1, 16)), draw(st.sampled_from([1, 3]))
        d = LayerDecision(scheme, sparsity=0.0 if scheme in ("dense", "channel") else s)
    kind = "conv3x3" if k == 3 else "conv1x1"
    shape = LayerShape("layer", kind, cin, out, (k, k))
    return _weight(seed, (out, cin, k, k)), shape, d


MASK_SCHEMES = ["dense", "unstructured", "nm", "block1xn", "pattern", "block_punched"]


def test_registry_covers_every_policy_scheme() -> None:
    assert set(SCHEME_REGISTRY) == set(SCHEMES)
    assert [n for n, c in SCHEME_REGISTRY.items() if c.physical] == ["channel"]
    with pytest.raises(SchemeError, match="unknown scheme"):
        get_scheme("nope")


@pytest.mark.parametrize("scheme", MASK_SCHEMES + ["channel"])
@SETTINGS
@given(data=st.data())
def test_mask_shape_and_density_match_formula(scheme: str, data) -> None:
    weight, shape, d = data.draw(layer_and_decision(scheme))
    impl = get_scheme(scheme)
    impl.check(shape, d)
    mask = impl.mask(weight, d)
    assert mask.shape == weight.shape and mask.dtype == torch.bool
    density = float(mask.sum()) / mask.numel()
    assert density == pytest.approx(impl.density(shape.out_channels, shape.gemm_cols, shape.kernel_size, d),
                                    abs=1e-12)
    # Deterministic: the same weight gives the same mask.
    assert torch.equal(mask, impl.mask(weight.clone(), d))


@SETTINGS
@given(data=st.data())
def test_unstructured_exact_count_and_magnitude_order(data) -> None:
    weight, _, d = data.draw(layer_and_decision("unstructured"))
    mask = get_scheme("unstructured").mask(weight, d)
    assert int((~mask).sum()) == round_half_up(weight.numel() * d.sparsity)
    if mask.any() and (~mask).any():
        assert weight.abs()[mask].min() >= weight.abs()[~mask].max()


@SETTINGS
@given(data=st.data())
def test_nm_every_group_has_at_most_n_nonzeros(data) -> None:
    weight, _, d = data.draw(layer_and_decision("nm"))
    mask = get_scheme("nm").mask(weight, d)
    groups = (weight * mask).reshape(weight.shape[0], -1, d.m)
    assert int((groups != 0).sum(-1).max()) <= d.n
    assert int(mask.reshape(weight.shape[0], -1, d.m).sum(-1).min()) == d.n  # exactly n kept per group


@SETTINGS
@given(data=st.data())
def test_block1xn_blocks_all_zero_or_all_kept(data) -> None:
    weight, shape, d = data.draw(layer_and_decision("block1xn"))
    mask = get_scheme("block1xn").mask(weight, d)
    blocks = mask.reshape(shape.out_channels // d.n, d.n, shape.in_channels, -1)
    per_block = blocks.sum(dim=(1, 3))
    full = d.n * blocks.shape[-1]
    assert bool(((per_block == 0) | (per_block == full)).all())
    total = per_block.numel()
    achieved = float((per_block == 0).sum()) / total
    assert abs(achieved - d.sparsity) <= 1.0 / total  # within one structural unit (a block)


@SETTINGS
@given(data=st.data())
def test_pattern_every_kept_kernel_is_a_library_pattern(data) -> None:
    weight, _, d = data.draw(layer_and_decision("pattern"))
    mask = get_scheme("pattern").mask(weight, d)
    kernels = mask.reshape(-1, 9)
    library = {tuple(p) for p in PATTERN_LIBRARY}
    assert all(len(p) == 9 and sum(p) == 4 and p[4] == 1 for p in library) and len(library) == 8
    kept = kernels.any(dim=1)
    for row in kernels[kept]:
        assert tuple(int(v) for v in row) in library
    achieved = 1.0 - float(kept.sum()) / kernels.shape[0]
    assert abs(achieved - d.sparsity) <= 1.0 / kernels.shape[0]


def test_pattern_picks_the_pattern_keeping_most_energy() -> None:
    w = torch.zeros(1, 1, 3, 3)
    w[0, 0, 2, 2], w[0, 0, 1, 2], w[0, 0, 2, 1], w[0, 0, 1, 1] = 5, 4, 3, 1  # bottom-right square
    mask = get_scheme("pattern").mask(w, LayerDecision("pattern"))
    assert torch.equal(mask, w != 0)


@SETTINGS
@given(data=st.data())
def test_block_punched_columns_shared_within_block(data) -> None:
    weight, shape, d = data.draw(layer_and_decision("block_punched"))
    r, c = d.block
    mask = get_scheme("block_punched").mask(weight, d)
    g = mask.reshape(shape.out_channels, -1)
    blocks = g.reshape(shape.out_channels // r, r, -1, c)
    assert bool((blocks == blocks[:, :1]).all())  # every row of a block has the same kept columns
    punched = (~blocks[:, 0]).sum(-1)  # per block
    assert bool((punched == round_half_up(c * d.sparsity)).all())
    assert abs(float(punched[0, 0]) / c - d.sparsity) <= 1.0 / c


@pytest.mark.parametrize(("kind", "kernel", "decision", "field"), [
    ("conv1x1", (1, 1), LayerDecision("pattern", sparsity=0.5), "scheme"),
    ("depthwise", (3, 3), LayerDecision("nm", n=2, m=4), "scheme"),
    ("depthwise", (3, 3), LayerDecision("block1xn", n=2), "scheme"),
    ("conv3x3", (3, 3), LayerDecision("nm", n=2, m=16), "m"),
    ("conv3x3", (3, 3), LayerDecision("block1xn", n=3, sparsity=0.5), "n"),
    ("conv3x3", (3, 3), LayerDecision("block_punched", block=(8, 5), sparsity=0.5), "block"),
    ("conv3x3", (3, 3), LayerDecision("pattern", pattern_size=3), "pattern_size"),
])
def test_bad_input_raises_clear_scheme_error(kind, kernel, decision, field) -> None:
    groups = 8 if kind == "depthwise" else 1
    shape = LayerShape("net.conv", kind, 8, 8, kernel, groups)
    with pytest.raises(SchemeError) as info:
        get_scheme(decision.scheme).check(shape, decision)
    assert info.value.layer == "net.conv" and info.value.field_name == field
    assert "net.conv" in str(info.value)
    assert isinstance(info.value, PolicyError)
