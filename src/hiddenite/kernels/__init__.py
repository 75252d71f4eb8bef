"""Compute kernels: weights regenerated where they are used, and the training step's passes.

- :mod:`hiddenite.kernels.triton_linear`: a Triton kernel for the hidden ``Linear`` forward
  that regenerates each weight from its Xorshift lane inside the kernel and applies the mask
  from packed bits, so the weights never exist in memory. Triton is optional: the package
  imports and runs without it (:func:`~hiddenite.kernels.triton_linear.hidden_linear` then
  takes the reference path); the kernel also runs on the CPU under Triton's interpreter
  (``TRITON_INTERPRET=1``), which is how the tests check it without a GPU.
- :mod:`hiddenite.kernels.triton_conv`: the hidden ``Conv2d`` (groups 1) on the same kernel:
  its weight is the ``out x (in * kh * kw)`` matrix the kernel regenerates, fed with the
  input's im2col rows (a 1x1's channels-last view).
- :mod:`hiddenite.kernels.triton_model`: :func:`~hiddenite.kernels.triton_model.weight_free_`
  swaps a model's eligible hidden layers for twins that hold seeds and mask bits only.
- :mod:`hiddenite.kernels.topk_cpu`: compiled (numba) CPU passes of the edge-popup training
  step (bracketed selection, masked product, score gradient), driven by
  :class:`hiddenite.masks.TopKSelector`.
- :mod:`hiddenite.kernels.mask_cpu`: the load's one-pass check of a restored edge-popup layer.

See ``docs/kernels.md``.
"""
