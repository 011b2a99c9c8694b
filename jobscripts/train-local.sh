#!/bin/bash
# Plain mpiexec on one machine: NP ranks, cores shared among them.
#   jobscripts/train-local.sh 2 inputs/gpt-tiny.deck [--set key=value ...]
set -eu
NP=${1:?usage: train-local.sh NP DECK [--set k=v ...]}
DECK=${2:?usage: train-local.sh NP DECK [--set k=v ...]}
shift 2
PARTITA=${PARTITA:-$(dirname "$0")/../build/partita}
exec mpiexec.mpich -np "$NP" "$PARTITA" train "$DECK" "$@"
