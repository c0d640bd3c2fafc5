"""Sequence parallelism for video experts (DeepSpeed-Ulysses over torch.distributed groups).

* ``dims.ParallelDims``: validates sequence/data-parallel degrees against the world size;
* ``groups``: process-group helpers (gloo on 127.0.0.1 for CPU, NCCL on GPU); no globals;
* ``ulysses.UlyssesSequence``: the token layout that splits a VideoDiT's tokens over N ranks;
* ``comm_stats``: counts the bytes that go through the all-to-alls.
"""
