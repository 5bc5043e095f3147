"""sda: train a small generative model on your recordings and render batches of new textures.

from sda import GenerationConfig, GenerationPipeline, load_model, save_result
pipeline = GenerationPipeline(load_model("default"), GenerationConfig(duration_s=5.0))
result = pipeline.generate([7])[0]
save_result(result, "renders")
"""

# First, before any of sda computes anything: pins CPU numerics (see sda.numerics). Plain
# imports sort before `from` imports, so it stays first.
import sda.numerics  # noqa: F401
from sda.config import GenerationConfig
from sda.model import load_model
from sda.outputs import save_result
from sda.pipeline import GenerationPipeline, GenerationResult

__all__ = ["GenerationConfig", "GenerationPipeline", "GenerationResult", "load_model", "save_result"]
