import contextlib


@contextlib.contextmanager
def capture_encoder_out(model, enabled=True):
    """Records what ``model.encoder`` returns during a ``model(...)`` call, in the yielded dict's
    ``"encoder_out"`` key. A forward hook, rather than calling the encoder and decoder separately,
    keeps the call going through ``model.forward`` (and so through data-parallel wrappers)."""
    captured = {}
    if not enabled:
        yield captured
        return

    def hook(module, args, output):
        captured["encoder_out"] = output

    handle = model.encoder.register_forward_hook(hook)
    try:
        yield captured
    finally:
        handle.remove()
