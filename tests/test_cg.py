"""conjugate_gradient on dicts of tensors against dense linear algebra."""

from __future__ import annotations

import pytest
import torch

from autosim_core.hypergrad import conjugate_gradient

SHAPES = {"weight": (3, 4), "bias": (5,)}  # two tensors of different shapes: n = 17
N = 17


def flatten(tree: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.cat([tree[k].reshape(-1) for k in SHAPES])


def unflatten(flat: torch.Tensor, shapes: dict[str, tuple[int, ...]] = SHAPES) -> dict[str, torch.Tensor]:
    out, i = {}, 0
    for k, shape in shapes.items():
        size = int(torch.tensor(shape).prod())
        out[k] = flat[i:i + size].reshape(shape)
        i += size
    return out


def matvec_of(a: torch.Tensor, shapes: dict[str, tuple[int, ...]] = SHAPES):
    def matvec(v: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return unflatten(a @ torch.cat([v[k].reshape(-1) for k in shapes]), shapes)
    return matvec


def symmetric_with_eigenvalues(eigs: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    n = len(eigs)
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=torch.float64))
    return q @ torch.diag(eigs) @ q.T


def random_b(gen: torch.Generator) -> dict[str, torch.Tensor]:
    return unflatten(torch.randn(N, generator=gen, dtype=torch.float64))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_cg_matches_dense_solve_on_spd_dict_system(seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    m = torch.randn(N, N, generator=gen, dtype=torch.float64)
    a = m @ m.T + 0.5 * torch.eye(N, dtype=torch.float64)
    b = random_b(gen)
    res = conjugate_gradient(matvec_of(a), b, max_iter=5 * N, tol=1e-12)
    expected = torch.linalg.solve(a, flatten(b))
    assert not res.negative_curvature
    assert set(res.solution) == set(SHAPES)
    assert all(res.solution[k].shape == SHAPES[k] for k in SHAPES)
    torch.testing.assert_close(flatten(res.solution), expected, rtol=1e-8, atol=1e-8)
    true_residual = float(torch.linalg.norm(flatten(b) - a @ flatten(res.solution)) / torch.linalg.norm(flatten(b)))
    assert res.residual < 1e-10
    assert true_residual < 1e-8
    assert 1 <= res.iterations <= 5 * N


@pytest.mark.parametrize("n", [1, 2, 5, 40])
def test_cg_matches_dense_solve_for_several_sizes(n: int) -> None:
    gen = torch.Generator().manual_seed(100 + n)
    eigs = torch.rand(n, generator=gen, dtype=torch.float64) * 9 + 1  # condition number <= 10
    a = symmetric_with_eigenvalues(eigs, gen)
    shapes = {"x": (n,)}
    b = {"x": torch.randn(n, generator=gen, dtype=torch.float64)}
    res = conjugate_gradient(matvec_of(a, shapes), b, max_iter=3 * n, tol=1e-12)
    torch.testing.assert_close(res.solution["x"], torch.linalg.solve(a, b["x"]), rtol=1e-8, atol=1e-8)
    assert not res.negative_curvature
    assert res.iterations <= 3 * n


def test_cg_float32_few_iterations_close_to_solve() -> None:
    """The estimators run CG in float32 with a handful of iterations on well-conditioned systems."""
    gen = torch.Generator().manual_seed(7)
    a = symmetric_with_eigenvalues(torch.linspace(1.0, 2.0, N, dtype=torch.float64), gen).float()
    b = {k: v.float() for k, v in random_b(gen).items()}
    res = conjugate_gradient(matvec_of(a), b, max_iter=10, tol=1e-6)
    expected = torch.linalg.solve(a.double(), flatten(b).double())
    torch.testing.assert_close(flatten(res.solution).double(), expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("damping", [2.5, 4.0])
def test_damping_makes_an_indefinite_system_solvable(damping: float) -> None:
    gen = torch.Generator().manual_seed(3)
    eigs = torch.linspace(-2.0, 5.0, N, dtype=torch.float64)  # indefinite; A + damping I is PD
    a = symmetric_with_eigenvalues(eigs, gen)
    b = random_b(gen)
    res = conjugate_gradient(matvec_of(a), b, damping=damping, max_iter=5 * N, tol=1e-12)
    expected = torch.linalg.solve(a + damping * torch.eye(N, dtype=torch.float64), flatten(b))
    assert not res.negative_curvature
    torch.testing.assert_close(flatten(res.solution), expected, rtol=1e-7, atol=1e-8)


def test_damping_is_added_to_the_operator_not_already_in_it() -> None:
    """damping=d on A must equal damping=0 on A + d I."""
    gen = torch.Generator().manual_seed(4)
    a = symmetric_with_eigenvalues(torch.linspace(0.5, 3.0, N, dtype=torch.float64), gen)
    b = random_b(gen)
    eye = torch.eye(N, dtype=torch.float64)
    r1 = conjugate_gradient(matvec_of(a), b, damping=0.7, max_iter=4, tol=1e-14)
    r2 = conjugate_gradient(matvec_of(a + 0.7 * eye), b, damping=0.0, max_iter=4, tol=1e-14)
    torch.testing.assert_close(flatten(r1.solution), flatten(r2.solution), rtol=1e-10, atol=1e-12)
    assert r1.iterations == r2.iterations == 4


def krylov_minimiser(a: torch.Tensor, b: torch.Tensor, k: int) -> torch.Tensor:
    """argmin of x^T A x / 2 - b^T x over span{b, Ab, ..., A^(k-1) b} (a Galerkin solve)."""
    cols = [b]
    for _ in range(k - 1):
        cols.append(a @ cols[-1])
    v, _ = torch.linalg.qr(torch.stack(cols, dim=1))
    y = torch.linalg.solve(v.T @ a @ v, v.T @ b)
    return v @ y


def test_negative_curvature_at_the_first_step_returns_b() -> None:
    gen = torch.Generator().manual_seed(5)
    a = symmetric_with_eigenvalues(-torch.linspace(1.0, 3.0, N, dtype=torch.float64), gen)  # negative definite
    b = random_b(gen)
    res = conjugate_gradient(matvec_of(a), b, damping=0.5, max_iter=10)
    assert res.negative_curvature
    assert res.iterations == 0
    torch.testing.assert_close(flatten(res.solution), flatten(b))
    assert res.residual == 1.0


def test_negative_curvature_stop_after_some_iterations() -> None:
    """A indefinite, b mostly in its positive eigenspace: CG makes progress, then meets a direction
    of negative curvature, stops, flags it and returns the iterate it reached (the Galerkin
    minimiser over the Krylov space it built), with the residual of that iterate."""
    n = 6
    eigs = torch.tensor([1.0, 1.5, 2.0, 3.0, 4.0, -1.0], dtype=torch.float64)
    a = torch.diag(eigs)
    b = {"x": torch.tensor([1.0, 1.0, 1.0, 1.0, 1.0, 0.3], dtype=torch.float64)}
    shapes = {"x": (n,)}
    res = conjugate_gradient(matvec_of(a, shapes), b, max_iter=20, tol=1e-12)
    assert res.negative_curvature
    assert 1 <= res.iterations < n
    expected = krylov_minimiser(a, b["x"], res.iterations)
    torch.testing.assert_close(res.solution["x"], expected, rtol=1e-8, atol=1e-10)
    true_residual = float(torch.linalg.norm(b["x"] - a @ res.solution["x"]) / torch.linalg.norm(b["x"]))
    assert res.residual == pytest.approx(true_residual, rel=1e-6)
    # with enough damping the same system is PD and solved exactly
    damped = conjugate_gradient(matvec_of(a, shapes), b, damping=2.0, max_iter=20, tol=1e-12)
    assert not damped.negative_curvature
    torch.testing.assert_close(damped.solution["x"], b["x"] / (eigs + 2.0), rtol=1e-8, atol=1e-10)


def test_iteration_cap_is_reported() -> None:
    gen = torch.Generator().manual_seed(6)
    a = symmetric_with_eigenvalues(torch.logspace(0, 3, N, dtype=torch.float64), gen)
    b = random_b(gen)
    res = conjugate_gradient(matvec_of(a), b, max_iter=3, tol=1e-12)
    assert res.iterations == 3
    assert not res.negative_curvature
    true_residual = float(torch.linalg.norm(flatten(b) - a @ flatten(res.solution)) / torch.linalg.norm(flatten(b)))
    assert res.residual == pytest.approx(true_residual, rel=1e-6)
    assert res.residual > 1e-6
    torch.testing.assert_close(flatten(res.solution), krylov_minimiser(a, flatten(b), 3), rtol=1e-6, atol=1e-9)


def test_zero_right_hand_side() -> None:
    b = {"w": torch.zeros(3, 4), "b": torch.zeros(5)}
    res = conjugate_gradient(lambda v: v, b)
    assert res.iterations == 0 and res.negative_curvature is False and res.residual == 0.0
    assert all(torch.equal(res.solution[k], b[k]) for k in b)


def test_defaults_are_ten_iterations_and_a_relative_residual_of_1e_6() -> None:
    """A 12 x 12 SPD system with spread eigenvalues: CG needs all 12 steps in exact arithmetic,
    so the default cap of 10 is reached; a 2 x 2 one is solved to 1e-6 in its 2 steps."""
    eig = torch.logspace(0, 3, 12, dtype=torch.float64)
    q, _ = torch.linalg.qr(torch.randn(12, 12, generator=torch.Generator().manual_seed(0), dtype=torch.float64))
    a = q @ torch.diag(eig) @ q.T
    b = {"x": torch.ones(12, dtype=torch.float64)}
    capped = conjugate_gradient(lambda v: {"x": a @ v["x"]}, b)
    assert capped.iterations == 10 and capped.residual > 1e-6 and capped.negative_curvature is False
    small = torch.tensor([[4.0, 1.0], [1.0, 3.0]], dtype=torch.float64)
    rhs = torch.tensor([1.0, 2.0], dtype=torch.float64)
    solved = conjugate_gradient(lambda v: {"x": small @ v["x"]}, {"x": rhs})
    assert solved.iterations == 2 and solved.residual < 1e-6
    torch.testing.assert_close(solved.solution["x"], torch.linalg.solve(small, rhs), rtol=0, atol=1e-12)


def test_zero_curvature_stops_like_negative_curvature() -> None:
    res = conjugate_gradient(lambda v: {"x": torch.zeros_like(v["x"])}, {"x": torch.ones(3)})
    assert res.negative_curvature is True and res.iterations == 0
    assert torch.equal(res.solution["x"], torch.ones(3))


def test_the_tolerance_is_relative_to_the_right_hand_side() -> None:
    """A tiny b needs as many steps as a unit one: the stop is on ||r|| / ||b||."""
    eig = torch.logspace(0, 2, 8, dtype=torch.float64)
    q, _ = torch.linalg.qr(torch.randn(8, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64))
    a = q @ torch.diag(eig) @ q.T
    steps = [conjugate_gradient(lambda v: {"x": a @ v["x"]}, {"x": scale * torch.ones(8, dtype=torch.float64)},
                                tol=1e-3, max_iter=20).iterations for scale in (1.0, 1e-9)]
    assert steps[0] == steps[1] > 2
