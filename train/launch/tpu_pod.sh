#!/usr/bin/env bash
# Runs one recipe on every host of a Cloud TPU pod slice (TPU VM), one process per host.
#
#   TPU_NAME=my-v3-256 ZONE=europe-west4-a bash train/launch/tpu_pod.sh finetune train/configs/squad_v1.json \
#       --model google/mobilebert-uncased --train-file gs://.../train-v1.1.json --validation-file ...
#
# On a pod, `--distributed` calls jax.distributed.initialize() with no arguments: the TPU runtime tells each
# process its id, the process count and the coordinator. Every host reads its own rows of each global batch.
# Paths must be visible from every host (a bucket or a shared disk); the output dir must be shared too
# (orbax writes one checkpoint from all hosts).
set -euo pipefail
: "${TPU_NAME:?set TPU_NAME}" "${ZONE:?set ZONE}"
cmd=${1:?usage: tpu_pod.sh COMMAND RECIPE [FLAGS...]}; recipe=${2:?recipe file}; shift 2
flag=--config-file; [ "$cmd" = distill ] && flag=--config
REPO=${REPO:-https://github.com/mobilebert-jax/mobilebert-jax}  # or copy your checkout with `gcloud ... scp`
gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone "$ZONE" --worker=all --command="
  set -e
  [ -d mobilebert-jax ] || git clone $REPO mobilebert-jax
  cd mobilebert-jax && pip install -q 'jax[tpu]' -e .
  mobilebert-jax $cmd $flag $recipe --distributed $*
"
