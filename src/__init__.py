"""The top layer: config, building from a config, data, training, evaluation, inference, export."""
import os

# The Winograd transforms (m2det/kernels/winograd_f23.c) are OpenMP loops. libgomp's idle threads
# spin after every parallel region unless OMP_WAIT_POLICY=PASSIVE, which libgomp reads when it
# starts: next to MindSpore's own thread pool the spinning made a training step ~3x slower on a
# busy machine (docs/BENCHMARKS.md, "Narrow-layer training speed"). Everything of the project
# imports `src` before MindSpore, so the default is set here; a value the user set wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
