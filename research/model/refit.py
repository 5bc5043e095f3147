"""Refit a format-3 checkpoint's sampling prior with shrinkage LAMBDA and temperature TAU:
usage refit.py IN OUT CORPUS_PATH LAMBDA TAU [diag]"""
import sys, torch
from pathlib import Path
from sda.data.folder import load_audio_folder
from sda.data.windows import Augmentation, WindowSampler, split_by_file
from sda.dsp.spectrogram import log_mel
from sda.model import load_model
src, dst, corpus, lam, tau = sys.argv[1:6]
lam, tau = float(lam), float(tau)
m = load_model(src); v = m.vae; s = v.settings
train, _ = split_by_file(list(load_audio_folder(Path(corpus), 48000).clips), 0.15, 0, 48000)
w = WindowSampler(train, s.window_samples, s.window_samples // 8, -60.0, Augmentation.none()).fixed_windows()
with torch.no_grad():
    mus, vs = [], []
    for b in w.split(64):
        mu, lv = v.posterior(log_mel(b, s)); mus.append(mu.flatten(1).double()); vs.append(lv.flatten(1).double().exp())
mu, var = torch.cat(mus), torch.cat(vs)
cov = torch.cov(mu.T) + torch.diag(var.mean(0))
cov = (1 - lam) * cov + lam * torch.diag(cov.diagonal())
r = torch.load(src, weights_only=True)
r["state_dict"]["prior_mean"].copy_(mu.mean(0))
r["state_dict"]["prior_scale"].copy_(torch.linalg.cholesky(cov) * tau)
torch.save(r, dst)
print("windows", mu.shape[0])
