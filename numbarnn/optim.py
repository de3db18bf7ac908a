"""Optimisers with ``torch.optim``'s update rules, working on each module's flat parameter and gradient buffers.

Every numbarnn module keeps all its parameters in one flat vector (``module._param_flat``) and all its gradients in
another of the same layout (``module._grad_flat``); the named parameters are views into them. An optimiser therefore
updates a whole module with one vectorised expression per step, writing in place, with every state and scratch
buffer allocated once in the constructor.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ._module import Module

if TYPE_CHECKING:
    from collections.abc import Iterable

    from ._typing import FloatArray


def _as_module_list(modules: Module | Iterable[Module]) -> list[Module]:
    """The modules as a list: accepts one module or an iterable of modules; rejects duplicates."""
    if isinstance(modules, Module):
        modules = [modules]
    try:
        modules = list(modules)
    except TypeError:
        raise TypeError(f"modules must be a numbarnn module or a list of them, got {type(modules).__name__}") from None
    if not modules:
        raise ValueError("optimizer got an empty list of modules; pass the modules to train, e.g. [rnn, linear]")
    for index, module in enumerate(modules):
        if not isinstance(module, Module):
            raise TypeError(
                f"modules[{index}] must be a numbarnn module (RNN, RNNCell, Linear), got {type(module).__name__}"
            )
    if len({id(module) for module in modules}) != len(modules):
        raise ValueError("some modules appear more than once in the list; each module must be given once")
    return modules


def _check_non_negative(value, description):
    if not 0.0 <= value:
        raise ValueError(f"Invalid {description}: {value}")


class Optimizer:
    """Shared part of the optimisers: the module list, ``zero_grad`` and the per-module loop of ``step``."""

    def __init__(self, modules: Module | Iterable[Module]) -> None:
        self.modules = _as_module_list(modules)
        self.steps_taken = 0  # t in the formulas, counted from 1 at the first step

    def zero_grad(self) -> None:
        """Set the gradients of every module to zero."""
        for module in self.modules:
            module.zero_grad()

    def step(self) -> None:
        """Update every module's parameters in place from its current gradients."""
        self.steps_taken += 1
        for index, module in enumerate(self.modules):
            self._update(index, module._param_flat, module._grad_flat)

    def _update(self, index, param, grad):
        raise NotImplementedError

    def _settings(self) -> dict[str, object]:
        """The constructor's settings, for ``repr``."""
        raise NotImplementedError

    def _state_buffer(self, value: float = 0.0) -> list[FloatArray]:
        """One preallocated vector per module, shaped and typed like its flat parameters."""
        return [np.full_like(module._param_flat, value) for module in self.modules]

    def _gradient_with_weight_decay(self, index, param, grad):
        """``grad + weight_decay * param`` in a scratch buffer (or ``grad`` itself when there is no decay)."""
        if self.weight_decay == 0:
            return grad
        decayed = self._decayed[index]
        np.multiply(param, self.weight_decay, out=decayed)
        decayed += grad
        return decayed

    def __repr__(self) -> str:
        settings = ", ".join(f"{name}={value!r}" for name, value in self._settings().items())
        return f"{type(self).__name__}({settings}; {len(self.modules)} module(s))"


class SGD(Optimizer):
    r"""Stochastic gradient descent with optional momentum, Nesterov momentum and L2 weight decay, exactly as
    ``torch.optim.SGD``:

    .. math::
        g \leftarrow g + \lambda p, \quad
        b \leftarrow \mu b + (1 - \tau) g \;(b = g \text{ at the first step}), \quad
        g \leftarrow g + \mu b \text{ (Nesterov) or } b, \quad
        p \leftarrow p - \gamma g

    Parameters
    ----------
    modules : Module or iterable of Module
        The modules whose parameters the optimiser updates, in place, from their gradients.
    lr : float
        Learning rate :math:`\gamma`.
    momentum : float, default 0
        :math:`\mu`.
    dampening : float, default 0
        :math:`\tau`.
    weight_decay : float, default 0
        :math:`\lambda`.
    nesterov : bool, default False
        Needs ``momentum > 0`` and ``dampening == 0``.
    """

    def __init__(
        self,
        modules: Module | Iterable[Module],
        lr: float,
        momentum: float = 0.0,
        dampening: float = 0.0,
        weight_decay: float = 0.0,
        nesterov: bool = False,
    ) -> None:
        _check_non_negative(lr, "learning rate")
        _check_non_negative(momentum, "momentum value")
        _check_non_negative(weight_decay, "weight_decay value")
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("Nesterov momentum requires a momentum and zero dampening")
        super().__init__(modules)
        self.lr, self.momentum, self.dampening = float(lr), float(momentum), float(dampening)
        self.weight_decay, self.nesterov = float(weight_decay), bool(nesterov)
        self._decayed = self._state_buffer() if self.weight_decay else None
        self.momentum_buffers = self._state_buffer() if self.momentum else None
        self._scratch = self._state_buffer()

    def _settings(self):
        return dict(
            lr=self.lr,
            momentum=self.momentum,
            dampening=self.dampening,
            weight_decay=self.weight_decay,
            nesterov=self.nesterov,
        )

    def _update(self, index, param, grad):
        grad = self._gradient_with_weight_decay(index, param, grad)
        scratch = self._scratch[index]
        if self.momentum:
            buffer = self.momentum_buffers[index]
            if self.steps_taken == 1:
                buffer[:] = grad  # torch starts the buffer at the first gradient, undamped
            else:
                buffer *= self.momentum
                np.multiply(grad, 1.0 - self.dampening, out=scratch)
                buffer += scratch
            if self.nesterov:
                np.multiply(buffer, self.momentum, out=scratch)
                scratch += grad
                grad = scratch
            else:
                grad = buffer
        np.multiply(grad, self.lr, out=scratch)
        param -= scratch


class Adam(Optimizer):
    r"""Adam with bias correction and optional L2 weight decay (added to the gradient), exactly as
    ``torch.optim.Adam`` (``amsgrad=False``):

    .. math::
        g \leftarrow g + \lambda p, \quad m \leftarrow m + (1 - \beta_1)(g - m), \quad
        v \leftarrow \beta_2 v + (1 - \beta_2) g^2, \quad
        p \leftarrow p - \frac{\gamma}{1 - \beta_1^t} \frac{m}{\sqrt{v} / \sqrt{1 - \beta_2^t} + \epsilon}

    Parameters
    ----------
    modules : Module or iterable of Module
        The modules whose parameters the optimiser updates, in place, from their gradients.
    lr : float, default 1e-3
        Learning rate :math:`\gamma`.
    betas : (float, float), default (0.9, 0.999)
        Each in [0, 1).
    eps : float, default 1e-8
        :math:`\epsilon`, added to the denominator.
    weight_decay : float, default 0
        :math:`\lambda`.
    """

    def __init__(
        self,
        modules: Module | Iterable[Module],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
    ) -> None:
        _check_non_negative(lr, "learning rate")
        _check_non_negative(eps, "epsilon value")
        beta1, beta2 = betas
        for position, beta in enumerate((beta1, beta2)):
            if not 0.0 <= beta < 1.0:
                raise ValueError(f"Invalid beta parameter at index {position}: {beta}")
        _check_non_negative(weight_decay, "weight_decay value")
        super().__init__(modules)
        self.lr, self.betas, self.eps = float(lr), (float(beta1), float(beta2)), float(eps)
        self.weight_decay = float(weight_decay)
        self.exp_avg = self._state_buffer()
        self.exp_avg_sq = self._state_buffer()
        self._decayed = self._state_buffer() if self.weight_decay else None
        self._scratch = self._state_buffer()

    def _settings(self):
        return dict(lr=self.lr, betas=self.betas, eps=self.eps, weight_decay=self.weight_decay)

    def _update(self, index, param, grad):
        beta1, beta2 = self.betas
        grad = self._gradient_with_weight_decay(index, param, grad)
        exp_avg, exp_avg_sq, scratch = self.exp_avg[index], self.exp_avg_sq[index], self._scratch[index]
        np.subtract(grad, exp_avg, out=scratch)  # torch's lerp_(grad, 1 - beta1)
        scratch *= 1.0 - beta1
        exp_avg += scratch
        exp_avg_sq *= beta2
        np.multiply(grad, grad, out=scratch)
        scratch *= 1.0 - beta2
        exp_avg_sq += scratch
        step = self.steps_taken
        step_size = self.lr / (1.0 - beta1**step)
        bias_correction2_sqrt = (1.0 - beta2**step) ** 0.5
        np.sqrt(exp_avg_sq, out=scratch)
        scratch /= bias_correction2_sqrt
        scratch += self.eps
        np.divide(exp_avg, scratch, out=scratch)
        scratch *= step_size
        param -= scratch


class Adagrad(Optimizer):
    r"""Adagrad with optional learning-rate decay and L2 weight decay, exactly as ``torch.optim.Adagrad``:

    .. math::
        g \leftarrow g + \lambda p, \quad s \leftarrow s + g^2, \quad
        p \leftarrow p - \frac{\gamma}{1 + (t - 1)\eta} \frac{g}{\sqrt{s} + \epsilon}

    Parameters
    ----------
    modules : Module or iterable of Module
        The modules whose parameters the optimiser updates, in place, from their gradients.
    lr : float, default 1e-2
        Learning rate :math:`\gamma`.
    lr_decay : float, default 0
        :math:`\eta`.
    weight_decay : float, default 0
        :math:`\lambda`.
    initial_accumulator_value : float, default 0
        Starting value of every :math:`s`.
    eps : float, default 1e-10
        :math:`\epsilon`, added to the denominator.
    """

    def __init__(
        self,
        modules: Module | Iterable[Module],
        lr: float = 1e-2,
        lr_decay: float = 0.0,
        weight_decay: float = 0.0,
        initial_accumulator_value: float = 0.0,
        eps: float = 1e-10,
    ) -> None:
        _check_non_negative(lr, "learning rate")
        _check_non_negative(lr_decay, "lr_decay value")
        _check_non_negative(weight_decay, "weight_decay value")
        _check_non_negative(initial_accumulator_value, "initial_accumulator_value value")
        _check_non_negative(eps, "epsilon value")
        super().__init__(modules)
        self.lr, self.lr_decay, self.eps = float(lr), float(lr_decay), float(eps)
        self.weight_decay = float(weight_decay)
        self.initial_accumulator_value = float(initial_accumulator_value)
        self.sum = self._state_buffer(self.initial_accumulator_value)
        self._decayed = self._state_buffer() if self.weight_decay else None
        self._scratch = self._state_buffer()

    def _settings(self):
        return dict(
            lr=self.lr,
            lr_decay=self.lr_decay,
            weight_decay=self.weight_decay,
            initial_accumulator_value=self.initial_accumulator_value,
            eps=self.eps,
        )

    def _update(self, index, param, grad):
        grad = self._gradient_with_weight_decay(index, param, grad)
        state_sum, scratch = self.sum[index], self._scratch[index]
        np.multiply(grad, grad, out=scratch)
        state_sum += scratch
        clr = self.lr / (1.0 + (self.steps_taken - 1) * self.lr_decay)
        np.sqrt(state_sum, out=scratch)
        scratch += self.eps
        np.divide(grad, scratch, out=scratch)
        scratch *= clr
        param -= scratch
