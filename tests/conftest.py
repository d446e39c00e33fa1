"""Shared test setup: run Triton kernels in the CPU interpreter and import the flat modules from the repo root."""
import os
import sys

# Must be set before triton.jit decorates any kernel, i.e. before attention_kernel is imported anywhere.
os.environ.setdefault("TRITON_INTERPRET", "1")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
