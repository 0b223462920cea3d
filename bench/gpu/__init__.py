"""The GPU bench: bare onnxruntime on CUDA (and TensorRT FP16 where it is there), with IO binding.

``python -m bench.gpu`` times the ResNet-50-shaped graph (``pipeline/models/vision.py``) and the zoo's
models at batch sizes 1, 8, 32 and 64: items per second and the p99 of one batch's run, per execution
provider, into ``bench/results/gpu.json`` and ``gpu.png``. Sessions are opened exactly as the worker
opens them (``open_session``, ``run_bound``). Without CUDA it says so and writes nothing.
:func:`bench.gpu.measure.gpu_block` is the same measurement as a JSON block, for the pipeline bench.
"""
