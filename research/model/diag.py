"""Diagnose held-out reconstruction of a model on a corpus: mel-domain SC, STFT SC after GL
(the evaluation's figure), STFT SC of inverse-mel magnitude (no phase), and the same for the true mel."""
import sys, torch
from pathlib import Path
from sda.config import PhaseConfig
from sda.data.folder import load_audio_folder
from sda.data.windows import Augmentation, WindowSampler, split_by_file
from sda.dsp.spectrogram import SpectrogramSettings, log_mel, stft, decompress
from sda.dsp.phase import spectral_convergence, inverse_mel
from sda.evaluation import _rebuild
from sda.model import load_model
torch.set_num_threads(1)
m = load_model(sys.argv[1]); path = sys.argv[2]
s = m.settings; phase = PhaseConfig()
ds = load_audio_folder(Path(path), 48000)
train, held = split_by_file(list(ds.clips), 0.15, 0, 48000)
part = train if len(sys.argv) > 3 and sys.argv[3] == "train" else held
w = WindowSampler(part, s.window_samples, s.window_samples // 2, -60.0, Augmentation.none()).fixed_windows()
mag = stft(w, s).abs(); lm = log_mel(w, s)
def sc(a, b): return ((a - b).flatten(1).norm(dim=1) / b.flatten(1).norm(dim=1)).mean().item()
with torch.no_grad():
    mu, _ = m.vae.encode(lm); dec = m.vae.decode(mu)
    for label, x in (("true", lm), ("model", dec)):
        melsc = sc(torch.expm1(x), torch.expm1(lm))
        invmag = inverse_mel(decompress(x), s, phase.inverse_mel.value)
        magsc = sc(invmag[..., :mag.shape[-1]], mag)
        gl = spectral_convergence(_rebuild(x, s, phase, w.shape[-1]), mag, s).mean().item()
        print(f"{label:6s} melSC={melsc:.3f} invmelSC={magsc:.3f} GL_SC={gl:.3f} L1={(x-lm).abs().mean().item():.3f} "
              f"energy ratio={torch.expm1(x).pow(2).sum().item()/torch.expm1(lm).pow(2).sum().item():.3f}")
    # per-window
    per = ((torch.expm1(dec) - torch.expm1(lm)).flatten(1).norm(dim=1) / torch.expm1(lm).flatten(1).norm(dim=1))
    print("per-window melSC", [round(v, 2) for v in per.tolist()])
