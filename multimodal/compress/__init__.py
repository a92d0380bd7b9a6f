"""Make a trained ``MultimodalSLM`` small and fast for the edge (``slm-compress``).

One module per technique, applied by ``cli.py`` in this order: pruning (``structured`` over
``prune_layers`` whole layers, ``prune_heads`` attention head groups and ``prune`` FFN channels,
all physically sliced), ``share`` (tie embedding and LM head, share core layers), ``quantize``
(int8 weights per output channel), then ``onnx_export``. ``storage`` is the on-disk format they
share: plain safetensors whose metadata says which tensors are int8 and which are aliases of
another. ``early_exit``, ``distill`` and ``finetune`` train; ``bench_*``, ``measure`` and
``demo_data`` are ``jobs/bench_edge.py``'s parts.
"""
