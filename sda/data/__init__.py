"""Training data: a folder of audio as mono clips, training windows with augmentation, and the
synthesized demo corpus."""
