"""Compute kernels that regenerate the frozen weights where they are used.

:mod:`hiddenite.kernels.triton_linear`: a Triton kernel for the hidden ``Linear`` forward that
regenerates each weight from its Xorshift lane inside the kernel and applies the mask from
packed bits, so the weights never exist in memory. Triton is optional: the package imports
and runs without it (:func:`~hiddenite.kernels.triton_linear.hidden_linear` then takes the
reference path), and the kernel also runs on the CPU under Triton's interpreter
(``TRITON_INTERPRET=1``), which is how the tests check it without a GPU.
"""
