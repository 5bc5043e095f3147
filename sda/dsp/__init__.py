"""Pure functions on tensors: spectrogram, phase reconstruction, chunking, filters, stereo,
normalization, resampling and quality metrics. Nothing here knows about Hydra, files or the model.

Audio is `[channels, samples]`; batches are `[batch, channels, samples]`.
"""
