"""Compute kernels: weights regenerated where they are used, and the training step's passes.

- :mod:`hiddenite.kernels.triton_linear`: a Triton kernel for the hidden ``Linear`` forward
  that regenerates each weight from its Xorshift lane inside the kernel and applies the mask
  from packed bits, so the weights never exist in memory. Triton is optional: the package
  imports and runs without it (:func:`~hiddenite.kernels.triton_linear.hidden_linear` then
  takes the reference path); the kernel also runs on the CPU under Triton's interpreter
  (``TRITON_INTERPRET=1``), which is how the tests check it without a GPU.
- :mod:`hiddenite.kernels.topk_cpu`: compiled (numba) CPU passes of the edge-popup training
  step (bracketed selection, masked product, score gradient), driven by
  :class:`hiddenite.masks.TopKSelector`.
- :mod:`hiddenite.kernels.mask_cpu`: the load's one-pass check of a restored edge-popup layer.

See ``docs/kernels.md``.
"""
