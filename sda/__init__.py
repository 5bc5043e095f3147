"""sda: train a small generative model on your recordings and render batches of new textures.

from sda import GenerationConfig, GenerationPipeline, load_model, save_result
pipeline = GenerationPipeline(load_model("default"), GenerationConfig(duration_s=5.0))
result = pipeline.generate([7])[0]
save_result(result, "renders")
"""

import gc

# The imports (torch's above all) make a few hundred thousand objects that live as long as the
# process, and Python's collector scanned them again and again while they were made: 0.12-0.37 s
# of every command's start-up on the 2-core CPU. It is paused for them and restored after.
_collecting = gc.isenabled()
gc.disable()
try:
    # First, before any of sda computes anything: pins CPU numerics (see sda.numerics). Plain
    # imports sort before `from` imports, so it stays first.
    import sda.numerics  # noqa: F401
    from sda.config import GenerationConfig
    from sda.model import load_model
    from sda.outputs import save_result
    from sda.pipeline import GenerationPipeline, GenerationResult
finally:
    if _collecting:
        gc.enable()

__all__ = ["GenerationConfig", "GenerationPipeline", "GenerationResult", "load_model", "save_result"]
