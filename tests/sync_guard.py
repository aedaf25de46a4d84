"""A context manager that makes every host read of a tensor's value raise: what waits for a GPU."""

from __future__ import annotations

import contextlib
from unittest import mock

import torch


class HostSync(AssertionError):
    """Raised where the code would make the host wait for the device."""


@contextlib.contextmanager
def no_host_sync():
    """Inside: ``Tensor.item``, ``tolist``, ``__bool__``, ``__float__``, ``__int__``, ``nonzero`` and boolean-mask
    indexing (data-dependent shapes) raise ``HostSync``. On a CPU they cost nothing, on a GPU each one waits."""

    def refuse(name):
        def raiser(self, *args, **kwargs):
            raise HostSync(f"Tensor.{name} reads the device on the host")

        return raiser

    getitem = torch.Tensor.__getitem__

    def checked_getitem(self, index):
        parts = index if isinstance(index, tuple) else (index,)
        if any(isinstance(p, torch.Tensor) and p.dtype == torch.bool and p.dim() > 0 for p in parts):
            raise HostSync("boolean-mask indexing has a data-dependent shape")
        return getitem(self, index)

    names = ("item", "tolist", "__bool__", "__float__", "__int__", "__index__", "nonzero")
    with contextlib.ExitStack() as stack:
        for name in names:
            stack.enter_context(mock.patch.object(torch.Tensor, name, refuse(name)))
        stack.enter_context(mock.patch.object(torch.Tensor, "__getitem__", checked_getitem))
        stack.enter_context(mock.patch.object(torch, "nonzero", refuse("nonzero")))
        yield
