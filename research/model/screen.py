"""Screen a training setting: train on one corpus for a fixed number of epochs, then evaluate on it.
usage: screen.py RUN_NAME CORPUS EPOCHS [overrides...]
Appends one JSON line to research/model/screen.jsonl and prints a summary line."""
import json, sys, time
from pathlib import Path
import torch
from sda.config import TrainConfig, EvaluateConfig, to_train_config, to_evaluate_config
from sda.preflight import compose_config
from sda.training import train_model
from sda.evaluation import evaluate_model

CORPORA = {"demo": "data/demo_corpus", "textures": "data/corpora/sonic_pi_textures",
           "loops": "data/corpora/sonic_pi_loops", "one_shots": "data/corpora/sonic_pi_one_shots"}
run, corpus, epochs, *overrides = sys.argv[1:]
models = Path("research/model/models")
name = f"{run}_{corpus}"
model_path = models / f"{name}.pt"
base = Path.cwd()
t0 = time.time()
if not model_path.exists():
    cfg = to_train_config(compose_config("train", [f"dataset.path={CORPORA[corpus]}", f"name={name}",
        f"models_dir={models}", f"max_epochs={epochs}", "max_minutes=600", "device=cpu", "patience=100000",
        *overrides], TrainConfig))
    result = train_model(cfg, base_dir=base, command="screen " + " ".join(sys.argv[1:]))
    rec = result.record
    train_info = dict(wall_s=rec.wall_time_s, wps=rec.windows_per_second, epochs=rec.epochs, best_epoch=rec.best_epoch,
                      val_sc_mel=rec.validation_mel_spectral_convergence, active=rec.active_latent_dims)
else:
    train_info = {}
t1 = time.time()
ecfg = to_evaluate_config(compose_config("evaluate", [f"model.checkpoint={model_path}", "dataset=folder",
    f"dataset.path={CORPORA[corpus]}", "generated_clips=16"], EvaluateConfig))
ev = evaluate_model(ecfg, base)
f, s = ev.figures, ev.summary
size = model_path.stat().st_size
line = dict(run=run, corpus=corpus, epochs=int(epochs), overrides=overrides, trained_on=ev.trained_on_corpus,
            sc=f["model"]["reconstruction_spectral_convergence"], l1=f["model"]["reconstruction_log_mel_l1"],
            fd=f["model"]["frechet_distance"], fd_floor=f["held_out"]["frechet_distance"], fd_noise=f["shaped_noise"]["frechet_distance"],
            closed=s["frechet_gap_closed"], mod_fd=f["model"]["modulation_frechet_distance"], mod_closed=s["modulation_frechet_gap_closed"],
            near=f["model"]["nearest_training_db"], near_held=f["held_out"]["nearest_training_db"], ratio=s["nearest_training_ratio"],
            copy_share=f["model"]["near_copy_share"], size_mb=size / 1e6, train=train_info, eval_s=time.time() - t1)
with open("research/model/screen.jsonl", "a") as fh:
    fh.write(json.dumps(line) + "\n")
fmt = lambda v: "-" if v is None else f"{v:.3f}"
print(f"{run:24s} {corpus:9s} ep={epochs} SC={fmt(line['sc'])} FD={fmt(line['fd'])} floor={fmt(line['fd_floor'])} noise={fmt(line['fd_noise'])} "
      f"closed={fmt(line['closed'])} modclosed={fmt(line['mod_closed'])} ratio={fmt(line['ratio'])} size={line['size_mb']:.2f}MB "
      f"train={train_info.get('wall_s', 0):.0f}s wps={train_info.get('wps', 0):.0f} eval={line['eval_s']:.0f}s", flush=True)
