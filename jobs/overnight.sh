#!/bin/sh
# Run tonight's overnight job (jobs/overnight.yaml), or finish it. The sweep folder is named
# after the night, the date 12 hours ago, so a retry or a restart after midnight resumes the same
# folder (done files are verified and skipped) instead of starting a new one.
#
#   jobs/overnight.sh [overrides...]        e.g. jobs/overnight.sh device=cuda:1
#
# SDA_PYTHON: the Python with sda installed (default: the checkout's .venv).
set -eu
cd "$(dirname "$0")/.."
night=$(date -d '12 hours ago' +%F)
exec "${SDA_PYTHON:-.venv/bin/python}" -m sda.run --config-dir jobs --config-name overnight \
    "hydra.sweep.dir=outputs/jobs/overnight/$night" "$@"
