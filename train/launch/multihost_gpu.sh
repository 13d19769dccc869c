#!/usr/bin/env bash
# Runs one recipe on several GPU hosts: ONE process per host, each driving all of that host's GPUs.
# Start this script on every host with the same COORDINATOR (host 0's address and a free port), the
# host count and each host's own index:
#
#   COORDINATOR=10.0.0.1:12355 NUM_HOSTS=4 HOST_ID=0 bash train/launch/multihost_gpu.sh \
#       finetune train/configs/squad_v1.json --model google/mobilebert-uncased --train-file ... --bf16
#
# Under SLURM (srun, one task per node) or Open MPI, leave the three variables unset:
# jax.distributed.initialize() reads the cluster's own variables. `--distributed` makes the job call it
# before any other JAX work; each process then reads its rows of every global batch and all processes
# write the orbax checkpoints together, so --output-dir must be on a filesystem every host sees.
set -euo pipefail
cmd=${1:?usage: multihost_gpu.sh COMMAND RECIPE [FLAGS...]}; recipe=${2:?recipe file}; shift 2
flag=--config-file; [ "$cmd" = distill ] && flag=--config
if [ -n "${COORDINATOR:-}" ]; then
  export JAX_COORDINATOR_ADDRESS="$COORDINATOR" JAX_NUM_PROCESSES="${NUM_HOSTS:?set NUM_HOSTS}" \
         JAX_PROCESS_ID="${HOST_ID:?set HOST_ID}"
fi
exec mobilebert-jax "$cmd" "$flag" "$recipe" --distributed "$@"
