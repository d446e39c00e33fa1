"""Shared test setup: run Triton kernels in the CPU interpreter, import the flat modules from the repo root, and
let the programs the tests start hear Ctrl-C."""
import os
import signal
import sys

# Must be set before triton.jit decorates any kernel, i.e. before attention_kernel is imported anywhere.
os.environ.setdefault("TRITON_INTERPRET", "1")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# A shell starts background jobs with SIGINT ignored, and an ignored signal stays ignored in every program started
# from there: the Ctrl-C tests' SIGINT would do nothing. A handled one is reset to the default in a new program.
signal.signal(signal.SIGINT, signal.default_int_handler)
